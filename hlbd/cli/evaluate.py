"""``hlbd generate`` and ``hlbd eval``: ask a trained run a question, score it on a file."""

from __future__ import annotations

import click

from hlbd.cli.options import db_option, printable, table
from hlbd.store import Store

CHECKPOINT_HELP = ("newest, best (lowest val_loss, else lowest training loss, of the "
                   "checkpoints on disk) or a checkpoint file of the run.")


def checkpoint_option(func):
    return click.option("--checkpoint", default="newest", show_default=True,
                        help=CHECKPOINT_HELP)(func)


def device_option(func):
    return click.option("--device", default="cpu", show_default=True,
                        help="cpu, cuda, cuda:N, mps or auto.")(func)


@click.command()
@click.option("--run-id", required=True, help="The run's id, or a unique prefix of it.")
@checkpoint_option
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=200, show_default=True,
              help="Stop after this many tokens (or at the end-of-answer token).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0: greedy; above 0: sampled, reproducibly by --seed.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The sampling seed (with --temperature).")
@device_option
@db_option
@click.argument("question")
def generate(run_id, checkpoint, max_new_tokens, temperature, seed, device, db,
             question) -> None:
    """Print a trained run's answer to QUESTION (the tokenizer and model from its
    checkpoint); the checkpoint used goes to stderr.

    Example: hlbd generate --run-id 3f2a "12 + 7 = ?"
    """
    import torch

    from hlbd.evaluate import answer
    from hlbd.trained import choose_checkpoint, load_trained
    from hlbd.trainer import check_device

    where = check_device(device)
    store = Store.open_read_only(db)
    run_id = store.resolve_run_id(run_id)
    chosen = choose_checkpoint(store, run_id, checkpoint)
    click.echo(f"run {run_id}, checkpoint {chosen.why} ({chosen.path})", err=True)
    trained = load_trained(chosen.path, where)
    generator = torch.Generator().manual_seed(seed)
    click.echo(printable(answer(trained.model, trained.tokenizer, question, where,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                generator=generator)))


@click.command("eval")
@click.option("--run-id", required=True, help="The run's id, or a unique prefix of it.")
@click.option("--dataset", required=True,
              help="An HLBD file (either format) to score the run's model on.")
@checkpoint_option
@click.option("--max-pairs", type=click.IntRange(min=0), default=None,
              help="Answer only the first N pairs by greedy decoding (exact match); the "
                   "loss and token accuracy use them all [default: all].")
@device_option
@db_option
def eval_(run_id, dataset, checkpoint, max_pairs, device, db) -> None:
    """Score a run's checkpoint on an HLBD file and record it as an evaluation of the run:
    loss and token accuracy over the answers, exact-match answers overall and per module
    (per level for Full files). The same checkpoint, file and --max-pairs again print
    the recorded evaluation and add nothing.

    Example: hlbd eval --run-id 3f2a --dataset ../shared/data/HLBD_Hardcore_Full.json
    """
    from hlbd.trained import choose_checkpoint, evaluate_file
    from hlbd.trainer import check_device

    where = check_device(device)
    store = Store.open(db)
    run_id = store.resolve_run_id(run_id)
    chosen = choose_checkpoint(store, run_id, checkpoint)
    click.echo(f"run {run_id}, checkpoint {chosen.why} ({chosen.path})", err=True)
    result = evaluate_file(store, run_id, chosen, dataset, max_pairs=max_pairs,
                           device=where)
    identity = result.identity
    if result.recorded:
        click.echo(f"recorded: evaluation of run {run_id} on {dataset} ({identity['pairs']} "
                   f"pairs, {identity['exact_pairs']} answered) in "
                   f"{identity['seconds']:.1f}s")
    else:
        click.echo(f"already recorded at {result.evaluated_at:%Y-%m-%d %H:%M:%S} UTC (the "
                   "same checkpoint, dataset and --max-pairs): nothing added")
    first = ("loss", "token_accuracy", "exact")
    names = [k for k in first if k in result.values] + sorted(
        k for k in result.values if k not in first)
    click.echo(table(["name", "value"], [[printable(k), result.values[k]] for k in names]))


COMMANDS = [generate, eval_]
