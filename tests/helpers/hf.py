"""A tiny transformers Trainer on the bundled HLBD facts: a 2-layer GPT-2 built from its
config (randomly initialised, nothing downloaded), tokenised by hlbd's tokenizer.

``trainer(...)`` returns a Trainer whose optimizer has two parameter groups (the
embeddings at their own LR) under a linear warmup, so that each step's LR differs and
``lr/1`` is not ``lr``; ``Seen`` is a callback recording what the Trainer itself
computed per step (its logs, and each group's LR read by an optimizer hook of its own)
for a test to hold the record to.
"""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from hlbd.data import bundled_dataset
from hlbd.tokenizer import Tokenizer

IGNORE = -100


def examples(limit: int = 48) -> tuple[list[dict], int]:
    """(examples, vocabulary size): ``[BOS] input [SEP] output [EOS]``, the loss on the
    answer only."""
    facts = [f for module in bundled_dataset()["data"].values() for f in module][:limit]
    tokenizer = Tokenizer.build(t for f in facts for t in (f["input"], f["output"]))
    rows = []
    for f in facts:
        prompt = [tokenizer.bos_id, *tokenizer.encode(f["input"]), tokenizer.sep_id]
        answer = [*tokenizer.encode(f["output"]), tokenizer.eos_id]
        rows.append({"input_ids": prompt + answer,
                     "labels": [IGNORE] * len(prompt) + answer})
    return rows, len(tokenizer)


def collate(batch: list[dict]) -> dict:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class NanAt(GPT2LMHeadModel):
    """GPT-2 whose loss is NaN on the micro-batches listed in ``nan_calls`` (counted
    over training forwards): a diverging step, as the Trainer sees one."""

    nan_calls: frozenset[int] = frozenset()

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls in self.nan_calls and out.loss is not None:
                out.loss = out.loss * float("nan")
        return out


def model(vocab: int, nan_calls=()) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=1, eos_token_id=3, pad_token_id=0)
    built = NanAt(config)
    built.nan_calls = frozenset(nan_calls)
    return built


def trainer(output_dir, callbacks, *, epochs: int = 2, nan_calls=(), **overrides) -> Trainer:
    rows, vocab = examples()
    net = model(vocab, nan_calls)
    embeddings = [p for n, p in net.named_parameters() if "wte" in n or "wpe" in n]
    rest = [p for n, p in net.named_parameters() if not ("wte" in n or "wpe" in n)]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": 3e-3},
                                   {"params": embeddings, "lr": 1e-2}])
    settings = {"output_dir": str(output_dir), "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 2, "num_train_epochs": epochs,
                "max_grad_norm": 0.5, "logging_steps": 1, "save_strategy": "no",
                "eval_strategy": "epoch", "per_device_eval_batch_size": 16,
                "report_to": "none", "use_cpu": True, "disable_tqdm": True,
                "dataloader_num_workers": 0, "seed": 0, "data_seed": 0,
                # NanAt's forward takes **kwargs: keep the columns the Trainer cannot see
                "remove_unused_columns": False, "label_names": ["labels"], **overrides}
    args = TrainingArguments(**settings)
    steps_per_epoch = -(-len(rows) // (8 * settings["gradient_accumulation_steps"]))
    total = args.max_steps if args.max_steps > 0 else steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, total)
    return Trainer(model=net, args=args, train_dataset=rows, eval_dataset=rows[:16],
                   data_collator=collate, callbacks=callbacks,
                   optimizers=(optimizer, scheduler))


class Seen(TrainerCallback):
    """What the Trainer computed, per optimizer step: ``logs[global_step]`` (its loss,
    grad_norm, learning_rate) and ``lrs[n]``, each group's LR as the n-th real step ran
    (read by this callback's own optimizer hook), ``evals`` its evaluate() results."""

    def __init__(self) -> None:
        self.logs: dict[int, dict] = {}
        self.lrs: list[list[float]] = []
        self.evals: list[dict] = []
        self._hooked = False

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if not self._hooked:
            self._hooked = True
            inner = getattr(optimizer, "optimizer", optimizer)
            inner.register_step_pre_hook(
                lambda opt, a, k: self.lrs.append([g["lr"] for g in opt.param_groups]))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs[state.global_step] = dict(logs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evals.append(dict(metrics or {}))
