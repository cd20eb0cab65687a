"""Who may write a run: claims, heartbeats, and whether a holder is still alive.

A run is written by one live segment at a time. Claiming it is one transaction (a dead
holder taken over by a compare-and-set only one claimant can win; the new segment
inserted as running, which the unique index ``ux_segments_one_running`` allows once per
run), so the claim holds across processes and machines. Every later write of the segment
confirms, inside its own transaction, that the segment still holds the run, and now and
then refreshes the run's heartbeat; a holder whose process is gone from this host is
``crashed``, one whose heartbeat stopped is ``stale``.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, func, insert, select, update

from hlbd.errors import ClaimLostError, RunClaimedError
from hlbd.store.rows import process_columns, utcnow
from hlbd.store.tables import Run, Segment

# A live trainer refreshes its heartbeat at least this often ...
HEARTBEAT_SECONDS = 30.0
# ... so a "running" run whose heartbeat is older than this has stopped without saying so.
STALE_AFTER = timedelta(seconds=120)
# Writes closer together than this refresh the heartbeat once (it is judged in minutes,
# STALE_AFTER): a trainer writing many small batches a second dirties the run's row once.
BEAT_EVERY_SECONDS = 1.0

# Claims.confirm's statements, built once (building them per write cost more than the write).
_CONFIRM_UPDATE = (update(Segment)
                   .where(Segment.run_id == bindparam("hold_run"),
                          Segment.segment == bindparam("hold_segment"),
                          Segment.status != "crashed")
                   .values(status=Segment.status))
# On SQLite a write transaction holds the database's write lock from its BEGIN
# IMMEDIATE, so reading the segment's row sees the last committed claim and no other
# process can change it before the commit: a read is enough, and keeps the row's page
# out of every commit. A server needs the UPDATE's row lock (see Claims.confirm).
CONFIRM_READ = ("SELECT segment FROM segments WHERE run_id = ? AND segment = ? "
                "AND status != 'crashed'")
_HEARTBEAT = (update(Run).where(Run.run_id == bindparam("beat_run"))
              .values(heartbeat_at=bindparam("beat_at", type_=Run.heartbeat_at.type)))


def still_being_written(run_id: str, pid: int | None, hostname: str | None) -> str:
    """Why a live run cannot be resumed or claimed (the message for a user)."""
    return (f"run {run_id} is still being written by process {pid} on {hostname}; stop it "
            "first, or pass --force if that process is gone")


def claim(conn, run_id: str, now: datetime, force: bool, start_epoch: int,
          resumed_from: str | None, hosts: Sequence[str] | None,
          start_step: int | None = None) -> int:
    """Inside ``conn``'s transaction: take over a dead holder, insert our segment; returns
    its number (RunClaimedError when the run has a live holder, or another claimant won)."""
    holder = conn.execute(
        select(Segment.segment, Segment.pid, Segment.hostname, Run.heartbeat_at,
               Run.created_at)
        .join(Run, Run.run_id == Segment.run_id)
        .where(Segment.run_id == run_id, Segment.status == "running")).first()
    if holder is not None:
        state = holder_state(holder.pid, holder.hostname,
                             holder.heartbeat_at or holder.created_at, now)
        if state == "running" and not force:
            raise RunClaimedError(still_being_written(run_id, holder.pid, holder.hostname))
        beat = (Run.heartbeat_at.is_(None) if holder.heartbeat_at is None
                else Run.heartbeat_at == holder.heartbeat_at)
        # Compare-and-set: only if the holder is still the one we judged dead (same
        # segment, still running, no heartbeat since). One claimant can win this.
        taken = conn.execute(update(Segment).where(
            Segment.run_id == run_id, Segment.segment == holder.segment,
            Segment.status == "running",
            exists(select(Run.run_id).where(Run.run_id == run_id, beat)))
            .values(status="crashed", ended_at=now)).rowcount
        if taken != 1:
            raise RunClaimedError(
                f"run {run_id} was taken over by another process, or its holder "
                "wrote again, while this one was claiming it; nothing was written")
    segment = (conn.scalar(select(func.max(Segment.segment))
                           .where(Segment.run_id == run_id)) or 0) + 1
    conn.execute(insert(Segment).values(
        run_id=run_id, segment=segment, start_epoch=start_epoch, start_step=start_step,
        resumed_from=resumed_from, started_at=now, status="running", pid=os.getpid(),
        hostname=socket.gethostname(), **process_columns(hosts)))
    return segment


class Claims:
    """One store's side of its claims: confirming them and pacing heartbeats."""

    def __init__(self) -> None:
        self._beats: dict[tuple[str, int], float] = {}  # (run, segment): last beat's time

    def confirm(self, conn, run_id: str, segment: int, now: datetime, *,
                beat: bool = False) -> None:
        """Refresh the heartbeat, or raise ClaimLostError if a later segment took over.

        Every write of a training segment runs this in its transaction, so a segment
        that was taken over (``--force``, or judged dead while it was only paused)
        cannot add a row after the new segment started. The check updates the segment's
        own row, so on a server it waits for a takeover in progress and then
        sees its outcome (a condition on another row could read an older snapshot); on
        SQLite the write lock makes a read enough. The heartbeat is refreshed when
        ``beat`` or when this store's last refresh is BEAT_EVERY_SECONDS old.
        """
        if conn.dialect.name == "sqlite":
            mine = len(conn.exec_driver_sql(CONFIRM_READ, (run_id, segment)).all())
        else:
            mine = conn.execute(_CONFIRM_UPDATE, {"hold_run": run_id,
                                                "hold_segment": segment}).rowcount
        if mine != 1:
            raise claim_lost(run_id, segment)
        if self.beat_due(run_id, segment, force=beat):
            conn.execute(_HEARTBEAT, {"beat_run": run_id, "beat_at": now})

    def beat_due(self, run_id: str, segment: int, *, force: bool = False) -> bool:
        """Whether this write refreshes the heartbeat (``force``, or BEAT_EVERY_SECONDS
        since this store last did); if so, its time is taken as the last refresh."""
        at = time.monotonic()
        if not force and at - self._beats.get((run_id, segment), -math.inf) < BEAT_EVERY_SECONDS:
            return False
        self._beats[(run_id, segment)] = at
        return True


def claim_lost(run_id: str, segment: int) -> ClaimLostError:
    return ClaimLostError(f"run {run_id} was taken over by a later segment while segment "
                          f"{segment} (process {os.getpid()}) was running; this process "
                          "stopped without recording more")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_state(pid: int | None, hostname: str | None, heartbeat: datetime,
                 now: datetime | None = None) -> str:
    """Whether the process of a running segment is 'running', 'crashed' or 'stale'.

    'crashed': its process was on this host and is gone (kill -9, OOM killer);
    'stale': its heartbeat stopped (another host, or a hung process); else 'running'.
    """
    if hostname == socket.gethostname() and pid and not _pid_alive(pid):
        return "crashed"
    if (now or utcnow()) - heartbeat > STALE_AFTER:
        return "stale"
    return "running"


def live_status(run: dict[str, Any], now: datetime | None = None) -> str:
    """The status to show for a run: its stored status, or for 'running' whether its
    process is still there (see holder_state)."""
    if run["status"] != "running":
        return run["status"]
    return holder_state(run.get("pid"), run.get("hostname"),
                        run.get("heartbeat_at") or run["created_at"], now)
