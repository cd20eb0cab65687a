"""Did it learn: a model's loss, token accuracy and exact answers on held-out pairs.

``held_out_metrics`` measures a model on pairs it did not train on: the loss and token
accuracy over their answers (teacher forcing, as training measures them: the answer
tokens and the end-of-answer token), and exact match by greedy decoding: the answer
produced from the prompt alone equals the expected one, token for token, and ends
there. Exact match is given overall and per stratum (a Hardcore module), and for Full
samples per level (each level is a line of the answer). ``answer`` is the same decoding
for one question (``hlbd generate``).

Evaluation reads no random state (dropout is off, decoding is greedy unless a
temperature is given with its own generator), so a run evaluated each epoch resumes
exactly as one that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hlbd.data import FULL_LEVELS, Pair
from hlbd.sequences import IGNORE, Examples
from hlbd.split import stratum
from hlbd.tokenizer import Tokenizer

BATCH = 64  # pairs per forward pass


@dataclass(frozen=True)
class HeldOut:
    """The pairs a run is evaluated on: as text, as training sequences (for the loss)
    and as prompts and answers (for decoding)."""

    pairs: list[Pair]
    examples: Examples
    prompts: list[list[int]]  # [BOS] input [SEP]
    answers: list[list[int]]  # output [EOS]

    @classmethod
    def encode(cls, pairs: list[Pair], tokenizer: Tokenizer, max_seq_len: int) -> HeldOut:
        """HlbdError (as for training pairs) if ``max_seq_len`` leaves a prompt no room
        for its answer."""
        examples = Examples.encode(pairs, tokenizer, max_seq_len)
        prompts = [[tokenizer.bos_id, *tokenizer.encode(p.input), tokenizer.sep_id]
                   for p in pairs]
        answers = [[*tokenizer.encode(p.output), tokenizer.eos_id] for p in pairs]
        return cls(list(pairs), examples, prompts, answers)

    def __len__(self) -> int:
        return len(self.pairs)


@torch.no_grad()
def held_out_metrics(model: torch.nn.Module, held_out: HeldOut, tokenizer: Tokenizer,
                     device: torch.device, *, max_pairs: int | None = None) -> dict:
    """``loss`` and ``token_accuracy`` over every held-out answer; ``exact`` (and
    ``exact/<stratum>``, ``exact/level_<i>``) over the first ``max_pairs`` pairs (all
    when None; none when 0); ``pairs`` and ``exact_pairs``, how many each is over."""
    was_training = model.training
    model.eval()
    try:
        metrics = _teacher_forced(model, held_out.examples, device)
        scored = len(held_out) if max_pairs is None else min(max_pairs, len(held_out))
        if scored:
            metrics.update(_exact(model, held_out, tokenizer, device, scored))
        metrics["pairs"], metrics["exact_pairs"] = len(held_out), scored
    finally:
        model.train(was_training)
    return metrics


def val_names(metrics: dict) -> dict[str, float]:
    """held_out_metrics' values under the names a run records them by: ``val_loss``,
    ``val_token_accuracy``, ``val/exact``, ``val/exact/<module>``, ``val/exact/level_3``
    ... (how many pairs each is over is the run's config: the split's sizes and
    eval_max_pairs)."""
    named = {"loss": "val_loss", "token_accuracy": "val_token_accuracy"}
    return {named.get(key, f"val/{key}"): value for key, value in metrics.items()
            if key not in ("pairs", "exact_pairs")}


def _teacher_forced(model, examples: Examples, device: torch.device) -> dict:
    """The loss over all answer tokens, as the loop measures a step's (summed, then
    divided by the answer tokens), and the share of them predicted right."""
    loss_sum, correct, total = 0.0, 0, 0
    for start in range(0, len(examples), BATCH):
        x, y = examples.batch(list(range(start, min(start + BATCH, len(examples)))),
                              device)
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                          ignore_index=IGNORE, reduction="sum"))
        correct += int(((logits.argmax(-1) == y) & (y != IGNORE)).sum())
        total += int((y != IGNORE).sum())
    if not total:
        return {}
    return {"loss": loss_sum / total, "token_accuracy": correct / total}


def _exact(model, held_out: HeldOut, tokenizer: Tokenizer, device: torch.device,
           scored: int) -> dict:
    produced = decode_greedy(model, held_out.prompts[:scored],
                             [len(a) for a in held_out.answers[:scored]], tokenizer.eos_id,
                             device)
    hits: dict[str, list[bool]] = {}

    def score(name: str, hit: bool) -> None:
        hits.setdefault(name, []).append(hit)

    for pair, want, got in zip(held_out.pairs, held_out.answers, produced):
        # An answer with a character the vocabulary lacks cannot be produced: a miss.
        hit = got == want and tokenizer.unk_id not in want
        score("exact", hit)
        if pair.levels:
            expected = pair.output.split("\n")
            lines = tokenizer.decode(got).split("\n")
            if len(expected) == len(FULL_LEVELS):
                for i, level in enumerate(FULL_LEVELS):
                    score(f"exact/{level}", i < len(lines) and lines[i] == expected[i])
        elif stratum(pair):
            score(f"exact/{stratum(pair)}", hit)
    return {name: sum(values) / len(values) for name, values in hits.items()}


def decode_greedy(model, prompts: list[list[int]], lengths: list[int], eos_id: int,
                  device: torch.device) -> list[list[int]]:
    """For each prompt, the tokens the model produces greedily, up to and including
    its end-of-answer token, at most ``lengths[i]`` of them (enough to tell whether it
    equals an answer of that many tokens). Prompts of one length go in one batch."""
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), BATCH):
            chunk = members[start:start + BATCH]
            tokens = torch.tensor([prompts[i] for i in chunk], device=device)
            steps = min(max(lengths[i] for i in chunk), model.max_seq_len - length)
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            produced = []
            for _ in range(max(steps, 0)):
                following = model(tokens)[:, -1].argmax(-1)
                produced.append(following)
                done |= following == eos_id
                tokens = torch.cat([tokens, following[:, None]], dim=1)
                if bool(done.all()):
                    break
            if produced:
                rows = torch.stack(produced, dim=1).tolist()
                for i, row in zip(chunk, rows):
                    out[i] = _until_eos(row[:lengths[i]], eos_id)
    return out


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:tokens.index(eos_id) + 1] if eos_id in tokens else tokens


@torch.no_grad()
def answer(model, tokenizer: Tokenizer, question: str, device: torch.device, *,
           max_new_tokens: int = 200, temperature: float = 0.0,
           generator: torch.Generator | None = None) -> str:
    """The model's answer to ``question``: greedy, or sampled at ``temperature`` with
    ``generator``; stops at the end-of-answer token or the model's length."""
    model.eval()
    prompt = [tokenizer.bos_id, *tokenizer.encode(question), tokenizer.sep_id]
    tokens = torch.tensor([prompt[:model.max_seq_len]], device=device)
    produced = []
    for _ in range(min(max_new_tokens, model.max_seq_len - tokens.shape[1])):
        logits = model(tokens)[0, -1].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            following = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        else:
            following = int(logits.argmax())
        if following == tokenizer.eos_id:
            break
        produced.append(following)
        tokens = torch.cat([tokens, torch.tensor([[following]], device=device)], dim=1)
    return tokenizer.decode(produced)
