"""A loop of one's own, recorded by hlbd: a character GRU on the bundled HLBD facts.

Two parameter groups (embedding and the rest, each with its LR), gradient accumulation,
clipping, CosineAnnealingWarmRestarts stepped per epoch, and on CUDA autocast with a
GradScaler. hlbd records the loss of every optimizer step, the norm clip_grad_norm_
returned (before clipping), the LR each group used, and the steps the scaler skipped.

    python examples/own_loop.py [--db runs.db] [--epochs 3] [--resume RUN_ID]
"""

from __future__ import annotations

import argparse
import random

import torch

import hlbd
from hlbd.data import bundled_dataset
from hlbd.tokenizer import Tokenizer


class CharModel(torch.nn.Module):
    def __init__(self, vocab: int, width: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.gru = torch.nn.GRU(width, width, batch_first=True)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.embed(ids))[0])


def batches(pairs: list[tuple[list[int], list[int]]], size: int, seed: int):
    """Padded (inputs, targets) batches; targets are -100 except on the answer."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), size):
        chosen = [pairs[i] for i in order[start:start + size]]
        length = max(len(q) + len(a) for q, a in chosen)
        ids = torch.zeros(len(chosen), length, dtype=torch.long)
        targets = torch.full((len(chosen), length), -100)
        for row, (q, a) in enumerate(chosen):
            seq = q + a
            ids[row, :len(seq)] = torch.tensor(seq)
            targets[row, len(q) - 1:len(seq) - 1] = torch.tensor(a)
        yield ids, targets


def train(db: str | None = None, epochs: int = 3, resume: str | None = None,
          runs_dir: str | None = None, seen: list | None = None) -> str:
    """Train and record; returns the run id. ``seen``, when given, gets what the loop
    itself computed per optimizer step: (run.step, loss, grad norm, [LR per group])."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    facts = [f for module in bundled_dataset()["data"].values() for f in module]
    tokenizer = Tokenizer.build(t for f in facts for t in (f["input"], f["output"]))
    pairs = [(tokenizer.encode(f["input"]) + [tokenizer.sep_id],
              tokenizer.encode(f["output"]) + [tokenizer.eos_id]) for f in facts]
    config = {"width": 64, "lr": 3e-3, "embed_lr": 1e-2, "batch_size": 16,
              "accumulate": 2, "max_norm": 1.0, "t_0": 2, "seed": 0}
    torch.manual_seed(config["seed"])
    model = CharModel(len(tokenizer), config["width"]).to(device)
    optimizer = torch.optim.AdamW([
        {"params": model.embed.parameters(), "lr": config["embed_lr"]},
        {"params": [*model.gru.parameters(), *model.head.parameters()], "lr": config["lr"]},
    ])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer,
                                                                     T_0=config["t_0"])
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    with hlbd.init(name="own-loop", config=config, db=db, runs_dir=runs_dir,
                   run_id=resume, resume="must" if resume else None) as run:
        if run.resumed_from:  # continue exactly where the checkpoint left off
            state = torch.load(run.resumed_from.path, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        run.watch(optimizer, scheduler)
        for epoch in range(run.epoch, epochs):
            group = []
            for ids, targets in batches(pairs, config["batch_size"], seed=epoch):
                ids, targets = ids.to(device), targets.to(device)
                with torch.autocast(device.type, enabled=device.type == "cuda"):
                    logits = model(ids)
                    loss = torch.nn.functional.cross_entropy(
                        logits.flatten(0, 1), targets.flatten())
                scaler.scale(loss / config["accumulate"]).backward()
                group.append(loss.detach())
                if len(group) < config["accumulate"]:
                    continue
                lrs = [g["lr"] for g in optimizer.param_groups]
                scaler.unscale_(optimizer)
                norm = run.clip_grad_norm_(model.parameters(), config["max_norm"])
                scaler.step(optimizer)  # skipped when the gradients are not finite
                scaler.update()
                optimizer.zero_grad()
                step_loss = torch.stack(group).mean()
                group = []
                run.log({"loss": step_loss, "ppl": step_loss.exp()})
                if seen is not None:  # only to check the record against the loop
                    seen.append((run.step, step_loss.item(), norm.item(), lrs))
            optimizer.zero_grad()  # a last, incomplete group is dropped
            scheduler.step()
            run.end_epoch()
            path = f"{run.dir}/epoch_{run.epoch}.pt"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()},
                       path)
            run.checkpoint(path)
        return run.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", default=None, metavar="RUN_ID")
    args = parser.parse_args()
    print(train(args.db, args.epochs, args.resume))


if __name__ == "__main__":
    main()
