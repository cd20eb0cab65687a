"""Run under torchrun by tests/test_ddp.py: every rank trains the same tiny run through
``hlbd.trainer.train``, each recording through an ``hlbd.Run`` into a SQLite file of its
own (not only rank 0), and writes the rows it recorded to OUT/rank<R>.json.

    torchrun --standalone --nproc-per-node 2 tests/ddp_rank_rows.py DATASET OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers.tiny import tiny_config  # tests/ is on sys.path: it holds this script

from hlbd.distributed import from_environment
from hlbd.run import Run
from hlbd.runner import prepare_data
from hlbd.sequences import Examples
from hlbd.store import Store
from hlbd.tokenizer import Tokenizer
from hlbd.trainer import train


def main() -> None:
    dataset, out = sys.argv[1], Path(sys.argv[2])
    ranks = from_environment(60)
    config = tiny_config(datasets=[dataset], epochs=2, batch_size=4, grad_accum=3,
                         dropout=0.1, t_0=1, save_interval=0, step_flush_interval=2,
                         world_size=ranks.world_size)
    data = prepare_data(config)
    tokenizer = Tokenizer.build(data.texts())
    examples = Examples.encode(data.pairs, tokenizer, config.max_seq_len)
    store = Store.open(str(out / f"rank{ranks.rank}.db"))
    run_id = store.create_run("ranks", config.to_dict(), data.dataset_stats)
    run = Run(store, run_id=run_id, run_dir=out / f"run{ranks.rank}",
              config=config.to_dict(), flush_steps=config.step_flush_interval,
              owns_store=False)
    train(config, examples, tokenizer, run, progress=False, ranks=ranks)
    run.finish()
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(
        {"steps": store.steps(run_id), "epochs": store.epochs(run_id)}, default=str))
    store.close()
    ranks.close()


if __name__ == "__main__":
    main()
