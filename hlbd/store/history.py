"""The effective history of a run: what a resume supersedes and where it may start.

Nothing is deleted: a segment that resumes from epoch E marks the rows earlier segments
recorded after E as superseded by it (SUPERSEDED_TABLES), so each epoch and step is once
on the effective history. A segment that resumes from a checkpoint taken mid-epoch, at
step S with E epochs closed, supersedes the steps, rollups and points after S and the
epochs and anomalies after E. A run resumes from the newest checkpoint on that history
that was not pruned.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update

from hlbd.store.tables import Anomaly, Epoch, Point, Step, StepRollup

# The tables whose rows belong to an epoch of a segment, and can be superseded; of them,
# those whose rows are of one step (a rollup's, its first).
SUPERSEDED_TABLES = (Epoch, Step, StepRollup, Point, Anomaly)
STEP_TABLES = {Step: Step.step, StepRollup: StepRollup.first_step, Point: Point.step}


def supersede_after(conn, run_id: str, start_epoch: int, segment: int,
                    start_step: int | None = None) -> None:
    """Inside ``conn``'s transaction: mark the rows of ``run_id`` after ``start_epoch``
    (the rows of one step: after ``start_step``, when given) that are still effective as
    superseded by ``segment``.

    A rollup never spans a checkpoint's step: a run records its steps up to a checkpoint
    before it records the checkpoint, and a rollup is of one write."""
    for table in SUPERSEDED_TABLES:
        after = (STEP_TABLES[table] > start_step
                 if start_step is not None and table in STEP_TABLES
                 else table.epoch > start_epoch)
        conn.execute(update(table).where(
            table.run_id == run_id, after,
            table.superseded_by.is_(None)).values(superseded_by=segment))


def superseded(segments: Sequence[dict], segment: int, epoch: int,
               step: int | None = None) -> bool:
    """Whether the state segment ``segment`` reached at ``epoch`` (at ``step``, when known)
    is off the effective history: a later segment started from an earlier epoch, or from
    an earlier step, and superseded it."""
    return any(s["segment"] > segment and (
        s["start_epoch"] < epoch or (step is not None and s.get("start_step") is not None
                                     and s["start_step"] < step))
        for s in segments)


def checkpoint_candidates(segments: Sequence[dict], rows: Sequence[dict]) -> list[dict]:
    """The checkpoints a run could resume from, newest first, given its ``segments`` and
    checkpoint ``rows`` (Store.segments, Store.checkpoints).

    Candidates are the run's checkpoints and the files its segments resumed from,
    less those a later segment superseded and those pruned (their files deleted).
    Each is ``{"segment", "epoch", "path", "size_bytes", "step"}`` (size and step: None
    for a file only a segment names; step: None where it was not recorded).
    """
    candidates = [{"segment": c["segment"], "epoch": c["epoch"], "path": c["path"],
                   "size_bytes": c["size_bytes"], "step": c.get("step")}
                  for c in rows if c["pruned_at"] is None]
    candidates += [{"segment": s["segment"], "epoch": s["start_epoch"],
                    "path": s["resumed_from"], "size_bytes": None,
                    "step": s.get("start_step")}
                   for s in segments
                   if s["resumed_from"] and not _pruned_start(rows, s)]
    effective = [c for c in candidates
                 if not superseded(segments, c["segment"], c["epoch"], c["step"])]
    newest_first, seen = [], set()
    # Newest: most epochs closed, then most steps (mid-epoch checkpoints), then segment.
    for c in sorted(effective, key=lambda c: (c["epoch"], c["step"] or 0, c["segment"]),
                    reverse=True):
        if c["path"] not in seen:
            seen.add(c["path"])
            newest_first.append(c)
    return newest_first


def _pruned_start(checkpoints: Sequence[dict], segment: dict) -> bool:
    """Whether the file ``segment`` resumed from is a checkpoint of the run that was
    pruned since: the newest row of that path and epoch written before the segment."""
    written = [c for c in checkpoints if c["path"] == segment["resumed_from"]
               and c["epoch"] == segment["start_epoch"] and c["segment"] < segment["segment"]]
    return bool(written) and written[-1]["pruned_at"] is not None
