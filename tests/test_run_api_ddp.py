"""hlbd.Run under torchrun: 2 ranks (gloo, DistributedDataParallel) are one run, recorded
by rank 0, each step once, its norm the global one that every rank saw."""

from __future__ import annotations

import textwrap

from helpers.torchrun import run_script

from hlbd.store import Store

LOOP = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    import hlbd

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": [model.module.weight], "lr": 0.1},
                           {"params": [model.module.bias], "lr": 0.02}])
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    data = torch.Generator().manual_seed(10 + rank)  # each rank its own share
    seen = []
    with hlbd.init("ddp", db=sys.argv[1], runs_dir=sys.argv[2]) as run:
        run.watch(opt, system=True)
        for epoch in range(2):
            for _ in range(3):
                x = torch.randn(8, 4, generator=data)
                loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                lrs = [g["lr"] for g in opt.param_groups]
                norm = run.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                run.log({"loss": loss.detach()})
                seen.append({"step": run.step, "loss": loss.item(), "norm": norm.item(),
                             "lrs": lrs})
            schedule.step()
            run.end_epoch()
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as out:
        json.dump({"run_id": run.id, "seen": seen}, out)
    # No barrier of the loop's own: finish() waits on every rank until rank 0 has
    # written the run's end, so no rank tears gloo down under a rank still writing.
    dist.destroy_process_group()
""")


def test_two_ranks_are_one_run_recorded_once_by_rank_0(db_url, tmp_path):
    _, ranks = run_script(LOOP, tmp_path, db_url, str(tmp_path))
    assert ranks[0]["run_id"] == ranks[1]["run_id"]  # rank 1 knows the run it is part of

    store = Store.open_read_only(db_url)
    try:
        runs = store.list_runs()
        steps = store.steps(ranks[0]["run_id"])
        epochs = store.epochs(ranks[0]["run_id"])
        lr1 = [p["value"] for p in store.points(ranks[0]["run_id"], "lr/1")]
        system = {s["key"]: s["values"] for s in store.point_series(ranks[0]["run_id"])
                  if s["key"].startswith("sys/")}
        segments = store.segments(ranks[0]["run_id"])
    finally:
        store.close()
    assert [r["run_id"] for r in runs] == [ranks[0]["run_id"]]
    assert runs[0]["status"] == "finished" and len(segments) == 1
    zero, one = ranks[0]["seen"], ranks[1]["seen"]
    assert [s["step"] for s in steps] == [s["step"] for s in zero] == list(range(1, 7))
    for row, mine, theirs in zip(steps, zero, one, strict=True):
        # The gradients were all-reduced before clipping: one global norm on both ranks.
        assert row["grad_norm"] == mine["norm"] == theirs["norm"]
        assert row["loss"] == mine["loss"] != theirs["loss"]  # rank 0's own loss
        assert row["lr"] == mine["lrs"][0]
    assert lr1 == [s["lrs"][1] for s in zero]
    assert [(e["epoch"], e["steps"]) for e in epochs] == [(1, 3), (2, 3)]
    # watch(system=True): each rank's process, gathered by rank 0, every epoch.
    assert system == {f"sys/rank{r}/{name}": 2 for r in (0, 1)
                      for name in ("rss_bytes", "cpu_seconds")}
