"""System values per epoch: what psutil says of the training process; nothing for what
this machine cannot measure (no CUDA here), never a made-up zero."""

from __future__ import annotations

import psutil
import torch
from helpers.tiny import tiny_config

import hlbd
from hlbd.runner import start_run
from hlbd.store import Store


def sys_keys(store: Store, run_id: str) -> set[str]:
    return {s["key"] for s in store.point_series(run_id) if s["key"].startswith("sys/")}


def test_hlbd_train_records_the_process_memory_and_cpu_time_of_each_epoch(store, tmp_path):
    before = psutil.Process().cpu_times()
    outcome = start_run(tiny_config(epochs=3), store, runs_root=tmp_path / "runs",
                        progress=False)
    after = psutil.Process().cpu_times()
    assert sys_keys(store, outcome.run_id) == {"sys/rss_bytes", "sys/cpu_seconds"}
    cpu = store.epoch_values(outcome.run_id, "sys/cpu_seconds")
    rss = store.epoch_values(outcome.run_id, "sys/rss_bytes")
    assert sorted(cpu) == sorted(rss) == [1, 2, 3]
    # The training ran in this process: its CPU time, as psutil counts it, grew through
    # the epochs within what the process used around the run.
    values = [cpu[n] for n in (1, 2, 3)]
    assert before.user + before.system <= values[0] <= values[1] <= values[2] \
        <= after.user + after.system
    assert all(10 * 2**20 < rss[n] < psutil.virtual_memory().total for n in rss)


def test_a_loop_of_ones_own_asks_for_them_with_watch_system(db_url, tmp_path):
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as plain:
        plain.watch(optimizer)
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        plain.end_epoch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with hlbd.init(db=db_url, runs_dir=str(tmp_path)) as watched:
        watched.watch(optimizer, system=True)
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        watched.end_epoch()
    store = Store.open_read_only(db_url)
    try:
        assert sys_keys(store, plain.id) == set()
        assert sys_keys(store, watched.id) == {"sys/rss_bytes", "sys/cpu_seconds"}
    finally:
        store.close()
