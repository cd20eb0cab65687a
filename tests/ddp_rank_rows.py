"""Run under torchrun by tests/test_ddp.py: every rank trains the same tiny run through
``hlbd.trainer.train`` and writes the rows it computed to OUT/rank<R>.json.

    torchrun --standalone --nproc-per-node 2 tests/ddp_rank_rows.py DATASET OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers.tiny import tiny_config  # tests/ is on sys.path: it holds this script

from hlbd.distributed import from_environment
from hlbd.runner import prepare_data
from hlbd.tokenizer import Tokenizer
from hlbd.trainer import Examples, train


class Rows:
    """A recorder that keeps what the loop hands it (on every rank, not only rank 0)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.epochs: list[dict] = []

    def on_steps(self, steps: list[dict]) -> None:
        self.steps += steps

    def on_epoch(self, epoch: dict, steps: list[dict], history: dict) -> None:
        self.steps += steps
        self.epochs.append(epoch)

    def on_checkpoint(self, epoch, path, size_bytes) -> None:
        pass

    def on_alive(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    dataset, out = sys.argv[1], Path(sys.argv[2])
    ranks = from_environment(60)
    config = tiny_config(datasets=[dataset], epochs=2, batch_size=4, grad_accum=3,
                         dropout=0.1, t_0=1, save_interval=0, step_flush_interval=2,
                         world_size=ranks.world_size)
    data = prepare_data(config)
    tokenizer = Tokenizer.build(t for p in data.pairs for t in (p.input, p.output))
    examples = Examples.encode(data.pairs, tokenizer, config.max_seq_len)
    rows = Rows()
    train(config, examples, tokenizer, rows, out / f"run{ranks.rank}", "ranks",
          progress=False, ranks=ranks)
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(
        {"steps": rows.steps, "epochs": rows.epochs}))
    ranks.close()


if __name__ == "__main__":
    main()
