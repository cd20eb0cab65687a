"""The data as token sequences: pairs encoded for training and evaluation, and the order
of each epoch's batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hlbd.data import Pair
from hlbd.errors import HlbdError
from hlbd.tokenizer import Tokenizer

IGNORE = -100  # the target of a position that is not an answer token


@dataclass
class Examples:
    """All training sequences, encoded once: ``[BOS] input [SEP] output [EOS]``.

    Targets are the next tokens of the answer (output and EOS); the prompt is ignored.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: list[int]
    answer_tokens: list[int]

    @classmethod
    def encode(cls, pairs: list[Pair], tokenizer: Tokenizer, max_seq_len: int) -> Examples:
        """Encode ``pairs``; HlbdError if ``max_seq_len`` cuts a prompt so short that its
        pair keeps no answer token to learn (it would train on prompt tokens)."""
        sequences, starts = [], []
        prompts = [[tokenizer.bos_id, *tokenizer.encode(p.input), tokenizer.sep_id]
                   for p in pairs]
        too_long = [len(p) for p in prompts if len(p) > max_seq_len]
        if too_long:
            raise HlbdError(f"--max-seq-len {max_seq_len} leaves no answer token in "
                            f"{len(too_long)} of {len(pairs)} pairs (their prompts are up "
                            f"to {max(too_long)} tokens); use --max-seq-len "
                            f"{max(too_long)} or more")
        for pair, prompt in zip(pairs, prompts):
            answer = [*tokenizer.encode(pair.output), tokenizer.eos_id]
            seq = (prompt + answer)[: max_seq_len + 1]
            sequences.append(seq)
            starts.append(min(len(prompt), len(seq) - 1))
        width = max(len(s) for s in sequences) - 1
        inputs = torch.full((len(pairs), width), tokenizer.pad_id, dtype=torch.long)
        targets = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        lengths, answer_tokens = [], []
        for i, (seq, start) in enumerate(zip(sequences, starts)):
            n = len(seq) - 1
            inputs[i, :n] = torch.tensor(seq[:-1])
            targets[i, start - 1:n] = torch.tensor(seq[start:])
            lengths.append(n)
            answer_tokens.append(n - start + 1)
        return cls(inputs, targets, lengths, answer_tokens)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: list[int], device: torch.device):
        width = max(self.lengths[i] for i in indices)
        index = torch.tensor(indices)
        x = self.inputs[index, :width].to(device, non_blocking=True)
        y = self.targets[index, :width].to(device, non_blocking=True)
        return x, y


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batch order: a function of (seed, epoch) only, so a resume replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
