"""`hlbd generate` and `hlbd eval`: a trained run answers questions and is scored on a file,
from the checkpoint asked for (newest, best, a path); a pruned or missing one is refused."""

from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner
from helpers.backends import rows, sqlite_only
from helpers.tiny import tiny_config

from hlbd.cli import main
from hlbd.data import BUNDLED, load_dataset
from hlbd.runner import start_run
from hlbd.trained import load_trained


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def by_hand(path: str, question: str, limit: int = 50) -> str:
    """Greedy decoding written out: the most likely next token until the end token."""
    trained = load_trained(path, torch.device("cpu"))
    tokenizer, model = trained.tokenizer, trained.model
    ids = [tokenizer.bos_id, *tokenizer.encode(question), tokenizer.sep_id]
    out = []
    with torch.no_grad():
        for _ in range(limit):
            following = int(model(torch.tensor([ids]))[0, -1].argmax())
            if following == tokenizer.eos_id:
                break
            out.append(following)
            ids.append(following)
    return tokenizer.decode(out)


@pytest.fixture
def pruned_run(store, tmp_path):
    """A tiny run of 3 epochs keeping only its newest checkpoint: epochs 1 and 2 pruned."""
    outcome = start_run(tiny_config(epochs=3, save_interval=1, keep_checkpoints=1), store,
                        runs_root=tmp_path / "runs", progress=False)
    return outcome


def test_generate_prints_the_greedy_answer_of_the_newest_checkpoint(db_url, pruned_run):
    newest = str(pruned_run.run_dir / "checkpoint_epoch_3.pt")
    result = cli("generate", "--db", db_url, "--run-id", pruned_run.run_id[:8],
                 "12 + 7 = ?")
    assert result.exit_code == 0, result.output
    answer = result.stdout.strip()
    assert answer == by_hand(newest, "12 + 7 = ?")
    assert "newest: epoch 3" in result.stderr and newest in result.stderr
    # Sampling is reproducible by its seed.
    sampled = [cli("generate", "--db", db_url, "--run-id", pruned_run.run_id,
                   "--temperature", "1.5", "--seed", "4", "12 + 7 = ?").stdout
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_a_pruned_missing_or_foreign_checkpoint_is_a_clear_error(db_url, pruned_run,
                                                                  store, tmp_path):
    first = str(pruned_run.run_dir / "checkpoint_epoch_1.pt")
    result = cli("generate", "--db", db_url, "--run-id", pruned_run.run_id,
                 "--checkpoint", first, "1 + 1 = ?")
    assert result.exit_code == 1
    assert "was pruned" in result.output and "epoch 1" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = cli("generate", "--db", db_url, "--run-id", pruned_run.run_id,
                 "--checkpoint", str(tmp_path / "nothing.pt"), "1 + 1 = ?")
    assert result.exit_code == 1 and "no such checkpoint file" in result.output
    other = start_run(tiny_config(epochs=1, save_interval=1), store,
                      runs_root=tmp_path / "other", progress=False)
    result = cli("generate", "--db", db_url, "--run-id", pruned_run.run_id, "--checkpoint",
                 str(other.run_dir / "checkpoint_epoch_1.pt"), "1 + 1 = ?")
    assert result.exit_code == 1 and f"a checkpoint of run {other.run_id}" in result.output
    (pruned_run.run_dir / "checkpoint_epoch_3.pt").unlink()
    result = cli("generate", "--db", db_url, "--run-id", pruned_run.run_id, "1 + 1 = ?")
    assert result.exit_code == 1 and "has no checkpoint file on disk" in result.output


def test_eval_records_an_evaluation_once_and_show_lists_it(db_url, pruned_run):
    args = ["eval", "--db", db_url, "--run-id", pruned_run.run_id, "--dataset", BUNDLED,
            "--max-pairs", "12"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "recorded: evaluation of run" in first.stdout
    stored = rows(db_url, "SELECT key, value, pairs, exact_pairs, checkpoint_epoch "
                          "FROM evaluations WHERE run_id = :r ORDER BY key",
                  r=pruned_run.run_id)
    values = {key: value for key, value, *_ in stored}
    assert {(p, e, c) for _, _, p, e, c in stored} == {(143, 12, 3)}
    # Exact match over the first 12 pairs of the file is what greedy answers give.
    newest = str(pruned_run.run_dir / "checkpoint_epoch_3.pt")
    pairs = load_dataset(BUNDLED)[:12]
    hits = [by_hand(newest, p.input) == p.output for p in pairs]
    assert values["exact"] == pytest.approx(sum(hits) / 12)
    assert set(values) >= {"loss", "token_accuracy", "exact", "exact/arithmetic"}

    again = cli(*args)
    assert again.exit_code == 0 and "already recorded" in again.stdout
    assert rows(db_url, "SELECT count(*) FROM evaluations") == [(len(stored),)]
    more = cli(*args[:-1], "20")  # other inputs: another evaluation
    assert more.exit_code == 0 and "recorded: evaluation" in more.stdout
    shown = cli("show", "--db", db_url, pruned_run.run_id)
    assert "evaluations (hlbd eval)" in shown.output
    assert shown.output.count(BUNDLED) == 2 + 1  # two evaluations, and the datasets line


@sqlite_only  # a training run: the store's backend changes nothing of what it measures
def test_best_is_the_checkpoint_of_the_lowest_val_loss_and_runs_shows_it(db_url, store,
                                                                        tmp_path):
    """Random answers: the held-out loss is lowest early and climbs as the model
    memorises the rest; best is that early checkpoint, not the newest, and
    --keep-checkpoints 1 keeps it beside the newest."""
    rng = random.Random(1)
    items = [{"input": "".join(rng.choices("abcdefgh", k=5)),
              "output": "".join(rng.choices("abcdefgh", k=4))} for _ in range(60)]
    dataset = tmp_path / "random.json"
    dataset.write_text(json.dumps({"data": {"noise": items}}))
    outcome = start_run(tiny_config(datasets=[str(dataset)], epochs=14, lr=1e-2, t_0=14,
                                    d_model=64, d_ff=128, batch_size=8, save_interval=1,
                                    keep_checkpoints=1), store,
                        runs_root=tmp_path / "runs", progress=False)
    val = store.epoch_values(outcome.run_id, "val_loss")
    lowest = min(val, key=val.get)
    assert lowest < 14, val  # the test needs a best that is not the newest
    assert sorted(p.name for p in outcome.run_dir.glob("checkpoint_epoch_*.pt")) == sorted(
        {f"checkpoint_epoch_{lowest}.pt", "checkpoint_epoch_14.pt"})
    result = cli("generate", "--db", db_url, "--run-id", outcome.run_id,
                 "--checkpoint", "best", "abcde")
    assert result.exit_code == 0, result.output
    assert f"best: epoch {lowest}, lowest val_loss" in result.stderr
    listed = cli("runs", "--db", db_url).output
    assert "best_val_loss" in listed and f"{val[lowest]:.6g}" in listed
