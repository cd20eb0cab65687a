"""Did it learn: the held-out split, and the values hlbd train records on it each epoch,
held to what the model computes on those pairs."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
import torch.nn.functional as F
from helpers.backends import sqlite_only
from helpers.exact import exact_metrics
from helpers.tiny import RESUMABLE, tiny_config

from hlbd.checkpoint import load_checkpoint
from hlbd.config import TrainConfig
from hlbd.data import BUNDLED, load_dataset
from hlbd.errors import HlbdError
from hlbd.evaluate import HeldOut, answer
from hlbd.model import build_model
from hlbd.runner import prepare_data, resume_run, start_run
from hlbd.split import held_out_hash, split_pairs, stratum
from hlbd.tokenizer import Tokenizer


def write_dataset(path, modules: dict[str, list[tuple[str, str]]]) -> str:
    path.write_text(json.dumps({"data": {m: [{"input": i, "output": o} for i, o in items]
                                         for m, items in modules.items()}}))
    return str(path)


# -- the split ----------------------------------------------------------------------------

def test_the_split_is_a_function_of_the_data_and_the_seed_stratified_by_module():
    pairs = load_dataset(BUNDLED)
    split = split_pairs(pairs, 0.1, seed=3)
    shuffled = list(pairs)
    random.Random(1).shuffle(shuffled)
    again = split_pairs(shuffled, 0.1, seed=3)
    assert sorted(map(repr, again.held_out)) == sorted(map(repr, split.held_out))
    assert again.info == split.info
    assert split_pairs(pairs, 0.1, seed=4).info["held_out_sha256"] != \
        split.info["held_out_sha256"]
    modules = {}
    for pair in pairs:
        modules[stratum(pair)] = modules.get(stratum(pair), 0) + 1
    held = {}
    for pair in split.held_out:
        held[stratum(pair)] = held.get(stratum(pair), 0) + 1
    # Each module gives its own tenth (rounded), so none is left out of the evaluation.
    assert held == split.info["held_out_by_stratum"] == {
        m: int(n * 0.1 + 0.5) for m, n in modules.items()}
    assert len(split.train) + len(split.held_out) == len(pairs)
    assert not set(map(id, split.train)) & set(map(id, split.held_out))
    assert split.info["held_out_sha256"] == held_out_hash(split.held_out)
    assert (split.info["train_pairs"], split.info["held_out_pairs"]) == (
        len(split.train), len(split.held_out))


def test_by_default_a_tenth_is_held_out_of_data_with_50_pairs_or_more(tmp_path, caplog):
    config = TrainConfig()
    data = prepare_data(config)
    assert config.val_fraction == 0.1
    assert config.split["held_out_pairs"] == len(data.held_out) == 14
    assert config.split["train_pairs"] == len(data.pairs) == 143 - 14
    small = write_dataset(tmp_path / "small.json",
                          {"m": [(f"q{i}", f"a{i}") for i in range(49)]})
    config = TrainConfig(datasets=[small])
    with caplog.at_level(logging.WARNING, logger="hlbd.runner"):
        data = prepare_data(config)
    assert config.val_fraction == 0.0 and config.split is None and data.held_out == []
    assert "49 pairs (fewer than 50): nothing is held out" in caplog.text
    config = TrainConfig(val_fraction=0.0)
    assert prepare_data(config).held_out == [] and config.split is None


@pytest.mark.parametrize("flags, message", [
    ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
    ({"val_fraction": -0.1}, "--val-fraction must be in [0, 1)"),
    ({"val_dataset": "x.json", "val_fraction": 0.2}, "leave out --val-fraction"),
    ({"eval_every": 0}, "--eval-every must be at least 1"),
    ({"eval_max_pairs": -1}, "--eval-max-pairs must be >= 0"),
])
def test_bad_evaluation_flags_are_refused_naming_the_flag(flags, message):
    with pytest.raises(HlbdError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(**flags).validate()


# -- what a run records ---------------------------------------------------------------------

def values_at(store, run_id: str, key: str) -> dict[int, float]:
    return {p["epoch"]: p["value"] for p in store.points(run_id, key) if p["scope"] == "epoch"}


def test_each_epochs_held_out_values_are_what_the_model_computes_on_those_pairs(
        store, tmp_path):
    """The last epoch's val_loss and val_token_accuracy are the model's, recomputed by
    hand from the final checkpoint over the held-out pairs of the split recorded in the
    run's config; its exact match is what greedy answers to those questions give."""
    outcome = start_run(tiny_config(epochs=3, save_interval=0, eval_max_pairs=1000),
                        store, runs_root=tmp_path / "runs", progress=False)
    run = store.get_run(outcome.run_id)
    state = load_checkpoint(outcome.run_dir / "checkpoint_epoch_3.pt")
    config = TrainConfig.from_dict(run["config"])
    tokenizer = Tokenizer(state["vocab"])
    model = build_model(len(tokenizer), config)
    model.load_state_dict(state["model"])
    model.eval()
    held_out = prepare_data(TrainConfig.from_dict(run["config"])).held_out
    assert held_out_hash(held_out) == run["config"]["split"]["held_out_sha256"]
    total = correct = 0
    loss = 0.0
    right = {}
    with torch.no_grad():
        for pair in held_out:
            prompt = [tokenizer.bos_id, *tokenizer.encode(pair.input), tokenizer.sep_id]
            target = [*tokenizer.encode(pair.output), tokenizer.eos_id]
            logits = model(torch.tensor([prompt + target[:-1]]))[0, len(prompt) - 1:]
            loss += float(F.cross_entropy(logits, torch.tensor(target), reduction="sum"))
            correct += int((logits.argmax(-1) == torch.tensor(target)).sum())
            total += len(target)
            got = answer(model, tokenizer, pair.input, torch.device("cpu"))
            right.setdefault(pair.module, []).append(got == pair.output)
    assert values_at(store, outcome.run_id, "val_loss")[3] == pytest.approx(loss / total,
                                                                           rel=1e-5)
    assert values_at(store, outcome.run_id, "val_token_accuracy")[3] == pytest.approx(
        correct / total)
    hits = [h for module in right.values() for h in module]
    assert values_at(store, outcome.run_id, "val/exact")[3] == pytest.approx(
        sum(hits) / len(hits))
    for module, module_hits in right.items():
        assert values_at(store, outcome.run_id, f"val/exact/{module}")[3] == \
            pytest.approx(sum(module_hits) / len(module_hits))
    # Evaluation time is its own value; the epoch's wall time is training alone.
    assert all(v > 0 for v in values_at(store, outcome.run_id, "eval_seconds").values())


@pytest.mark.slow
@sqlite_only  # a training run: the store's backend changes nothing of what it measures
def test_a_tiny_model_learns_to_answer_held_out_questions_above_chance(store, tmp_path):
    """n + 0 = n for n < 100: a tenth of the questions is never trained on, and the model
    answers them exactly (chance: about one in a hundred)."""
    dataset = write_dataset(tmp_path / "plus0.json",
                            {"arithmetic": [(f"{n} + 0 = ?", str(n)) for n in range(100)]})
    outcome = start_run(tiny_config(datasets=[dataset], epochs=20, lr=5e-3, t_0=20,
                                    eval_every=5), store, runs_root=tmp_path / "runs",
                        progress=False)
    exact = values_at(store, outcome.run_id, "val/exact")
    assert sorted(exact) == [5, 10, 15, 20]
    assert exact[20] >= 0.5
    assert exact[20] == values_at(store, outcome.run_id, "val/exact/arithmetic")[20]
    assert store.get_run(outcome.run_id)["config"]["split"]["held_out_pairs"] == 10


def test_eval_every_and_max_pairs_bound_the_evaluation(store, tmp_path):
    outcome = start_run(tiny_config(epochs=5, eval_every=2, eval_max_pairs=0), store,
                        runs_root=tmp_path / "runs", progress=False)
    assert sorted(values_at(store, outcome.run_id, "val_loss")) == [2, 4, 5]
    assert values_at(store, outcome.run_id, "val/exact") == {}  # no pair decoded


def test_a_held_out_file_is_evaluated_on_and_named_in_the_config(store, tmp_path):
    val = write_dataset(tmp_path / "val.json", {"arithmetic": [("1 + 1 = ?", "2"),
                                                               ("2 + 2 = ?", "4")]})
    outcome = start_run(tiny_config(epochs=1, val_dataset=val), store,
                        runs_root=tmp_path / "runs", progress=False)
    split = store.get_run(outcome.run_id)["config"]["split"]
    assert split["file"] == val and split["held_out_pairs"] == 2
    assert split["train_pairs"] == 143  # the training data is all trained on
    assert set(values_at(store, outcome.run_id, "val_loss")) == {1}


def test_a_resume_with_evaluation_equals_the_run_that_never_stopped(store, tmp_path):
    straight = start_run(tiny_config(RESUMABLE, epochs=4, save_interval=1), store,
                         runs_root=tmp_path / "a", progress=False)
    cut = start_run(tiny_config(RESUMABLE, epochs=2, save_interval=1), store,
                    runs_root=tmp_path / "b", progress=False)
    resume_run(store, cut.run_id, epochs=4, progress=False)
    assert exact_metrics(store.epochs(cut.run_id)) == exact_metrics(
        store.epochs(straight.run_id))
    for key in ("val_loss", "val_token_accuracy", "val/exact"):
        assert values_at(store, cut.run_id, key) == values_at(store, straight.run_id, key)


def test_a_resume_whose_data_no_longer_gives_the_split_is_refused(store, tmp_path):
    data = write_dataset(tmp_path / "d.json",
                         {"m": [(f"question {i}", f"answer {i}") for i in range(60)]})
    first = start_run(tiny_config(datasets=[data], epochs=1, save_interval=1), store,
                      runs_root=tmp_path / "runs", progress=False)
    other = write_dataset(tmp_path / "other.json",
                          {"m": [(f"question {i}", f"answer {i}") for i in range(60)]})
    run = store.get_run(first.run_id)
    config = TrainConfig.from_dict({**run["config"], "datasets": [other]})
    assert prepare_data(config).held_out  # the same pairs from another file: same split
    edited = json.loads((tmp_path / "d.json").read_text())
    for i in range(60):
        edited["data"]["m"][i]["output"] = f"changed {i}"
    (tmp_path / "d.json").write_text(json.dumps(edited))
    with pytest.raises(HlbdError, match="held-out pairs are not the ones"):
        resume_run(store, first.run_id, epochs=2, progress=False)
    assert [e["epoch"] for e in store.epochs(first.run_id)] == [1]
    assert store.get_run(first.run_id)["status"] == "finished"


def test_held_out_pairs_are_encoded_as_the_training_pairs_are():
    tokenizer = Tokenizer.build(["1 + 1 = ?", "2"])
    held = HeldOut.encode(load_dataset(BUNDLED)[:1], tokenizer, 256)
    assert held.answers[0][-1] == tokenizer.eos_id
    assert held.prompts[0][0] == tokenizer.bos_id and held.prompts[0][-1] == tokenizer.sep_id
