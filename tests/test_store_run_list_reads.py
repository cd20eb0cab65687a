"""The store's reads for a long run list: several runs' epochs and values in one query,
and the change marks that say whether anything was written since."""

from __future__ import annotations

from helpers.replay import replay, source_run


def test_bulk_reads_equal_the_per_run_reads(store, tmp_path):
    ids = [*replay(store, source_run(store, tmp_path), 3), store.create_run("empty", {}, {})]
    epochs = store.effective_epochs(ids)
    values = store.epoch_values_of(ids, "val_loss")
    assert set(epochs) == set(values) == set(ids)
    for run_id in ids:
        assert epochs[run_id] == store.epochs(run_id)
        assert values[run_id] == store.epoch_values(run_id, "val_loss")
    assert epochs[ids[-1]] == [] and values[ids[-1]] == {}
    assert any(values[ids[0]].values())  # the tiny run evaluates: real values compared


def test_change_marks_move_with_every_write_the_run_list_shows(store, tmp_path):
    [run_id] = replay(store, source_run(store, tmp_path), 1)
    marks = store.change_marks()
    assert store.change_marks() == marks  # nothing written: the same
    for write in (lambda: store.tag(run_id, ["sweep"]),
                  lambda: store.note(run_id, "lr too high"),
                  lambda: store.create_run("next", {}, {})):
        write()
        assert store.change_marks() != marks
        marks = store.change_marks()
