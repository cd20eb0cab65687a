"""Many runs for the tests that need a long run list: one real tiny run, trained once,
then recorded again under new run ids through the store's own writes (create_run,
record_epoch with the epoch's points, finish_run), config unchanged but its name, so
every row holds numbers a real run measured under that config."""

from __future__ import annotations

from pathlib import Path

from helpers.tiny import tiny_config
from hlbd.runner import start_run
from hlbd.store import Store

# The epoch fields a replayed run records (those record_epoch takes from a real one).
EPOCH_FIELDS = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                "nonfinite_steps", "clipped_steps", "skipped_steps", "lr", "token_accuracy",
                "wall_seconds", "tokens", "tokens_per_second")


def source_run(store: Store, root: Path) -> tuple[dict, list[dict], list[dict]]:
    """Train one tiny run into ``store``; its config, effective epochs and points."""
    run_id = start_run(tiny_config(name="source", epochs=2), store, runs_root=root / "runs",
                       progress=False).run_id
    return store.get_run(run_id)["config"], store.epochs(run_id), store.points(run_id)


def replay(store: Store, source: tuple[dict, list[dict], list[dict]], count: int,
           tags=lambda i: ()) -> list[str]:
    """Record ``source`` again ``count`` times (names run-0, run-1, ...; ``tags(i)`` the
    i-th run's tags); returns the new ids, oldest first."""
    config, epochs, points = source
    ids = []
    for i in range(count):
        run_id = store.create_run(f"run-{i}", {**config, "name": f"run-{i}"},
                                  {"bundled": 143}, tags=list(tags(i)))
        for e in epochs:
            store.record_epoch(run_id, 1, {k: e[k] for k in EPOCH_FIELDS}, points=[
                (p["key"], p["scope"], p["step"], p["epoch"], p["value"])
                for p in points if p["epoch"] == e["epoch"]])
        store.finish_run(run_id, 1, "finished")
        ids.append(run_id)
    return ids
