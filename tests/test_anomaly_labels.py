"""The anomaly rules' defaults on a small labelled set of real runs.

Healthy: the default configuration (its model, LR schedule with warm restarts and
dropout; 36 epochs take it past the restarts at epochs 11 and 31), a tiny model, and a
tiny run stopped mid-epoch and resumed. Faulty, each fault injected for real: an LR
that blows the gradients up, one that drives the loss to NaN, weight decay that shrinks
the weights until the gradients vanish, and a resume whose checkpoint lost its
scheduler state. The defaults must flag every faulty run with the rule for its fault
and raise nothing on the healthy ones; the test prints precision and recall.
"""

from __future__ import annotations

import itertools

import torch
from helpers.tiny import tiny_config

from hlbd.anomalies import detect
from hlbd.checkpoint import load_checkpoint, save_checkpoint
from hlbd.config import TrainConfig
from hlbd.runner import resume_checkpoint, resume_run, start_run
from hlbd.trainer import make_scheduler


def test_default_thresholds_flag_every_injected_fault_and_nothing_healthy(store, tmp_path,
                                                                         capsys):
    def train(config: TrainConfig, **kwargs) -> str:
        return start_run(config, store, runs_root=tmp_path / "runs", progress=False,
                         **kwargs).run_id

    healthy = {
        "default config": train(TrainConfig(name="default", epochs=36, device="cpu",
                                            save_interval=0, step_flush_interval=1000)),
        "tiny": train(tiny_config(name="tiny", epochs=12, seed=3)),
    }
    # Stopped mid-epoch 4 (what Ctrl-C does), then resumed from its checkpoint.
    calls = itertools.count()
    stopped = train(tiny_config(name="stopped", epochs=8, save_interval=1),
                    should_stop=lambda: next(calls) >= 3 * 9 + 4)
    resume_run(store, stopped, progress=False)
    healthy["stopped and resumed"] = stopped

    faulty = {
        "lr blow-up": (train(tiny_config(name="lr50", epochs=3, lr=50.0,
                                         max_grad_norm=0.0)), "grad_explosion"),
        "loss NaN": (train(tiny_config(name="lr1e8", epochs=2, lr=1e8, max_grad_norm=0.0,
                                       weight_decay=0.0)), "nonfinite_loss"),
        "vanishing gradients": (train(tiny_config(name="wd400", epochs=6,
                                                  weight_decay=400.0)), "grad_vanishing"),
    }
    lost = train(tiny_config(name="lost-scheduler", epochs=4, save_interval=2, t_0=10))
    path = tmp_path / "runs" / lost / "checkpoint_epoch_2.pt"
    state = load_checkpoint(path)
    fresh = make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                           lr=state["config"]["lr"]),
                           TrainConfig.from_dict(state["config"]))
    state["scheduler"] = fresh.state_dict()  # what a trainer that forgot it would restore
    save_checkpoint(tmp_path / "lost.pt", {k: v for k, v in state.items()
                                           if k not in ("format", "format_version")})
    resume_checkpoint(store, tmp_path / "lost.pt", epochs=6, progress=False)
    faulty["lost scheduler state"] = (lost, "lr_unexplained")

    def flags(run_id: str) -> list[dict]:
        return detect(store.get_run(run_id), store.epochs(run_id), store.steps(run_id),
                      val_losses=store.epoch_values(run_id, "val_loss"))

    true_pos = sum(bool(flags(run_id)) for run_id, _ in faulty.values())
    false_pos = sum(bool(flags(run_id)) for run_id in healthy.values())
    precision = true_pos / max(true_pos + false_pos, 1)
    recall = true_pos / len(faulty)
    with capsys.disabled():
        print(f"\nanomaly rules (defaults) on {len(healthy) + len(faulty)} labelled real "
              f"runs: precision {precision:.2f}, recall {recall:.2f}")
        for name, run_id in healthy.items():
            print(f"  healthy  {name:22} {sorted({f['rule'] for f in flags(run_id)})}")
        for name, (run_id, _) in faulty.items():
            print(f"  fault    {name:22} {sorted({f['rule'] for f in flags(run_id)})}")
    for name, run_id in healthy.items():
        assert flags(run_id) == [], name
    for name, (run_id, rule) in faulty.items():
        assert rule in {f["rule"] for f in flags(run_id)}, name
    assert (precision, recall) == (1.0, 1.0)
