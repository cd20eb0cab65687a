"""Character-level tokenizer with the HLBD tags as single tokens.

The vocabulary is the special tokens, then the six HLBD tags, then every character of
the data in sorted order: the same data always gives the same vocabulary. It is stored
with the run and inside every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD, BOS, SEP, EOS, UNK = "[PAD]", "[BOS]", "[SEP]", "[EOS]", "[UNK]"
SPECIALS = (PAD, BOS, SEP, EOS, UNK)
TAGS = ("[EMOJI]", "[PHRASE]", "[EN]", "[PY]", "[JP]", "[KR]")


class Tokenizer:
    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.sep_id, self.eos_id, self.unk_id = (
            self.index[t] for t in SPECIALS)

    @classmethod
    def build(cls, texts: Iterable[str]) -> Tokenizer:
        """A vocabulary from the data: specials, tags, then sorted characters."""
        chars: set[str] = set()
        for text in texts:
            chars.update(tok for tok in _split(text) if len(tok) == 1)
        return cls([*SPECIALS, *TAGS, *sorted(chars)])

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(tok, self.unk_id) for tok in _split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[i] for i in ids if self.vocab[i] not in SPECIALS)


def _split(text: str) -> list[str]:
    """Characters, except that a tag is one token."""
    tokens, i = [], 0
    while i < len(text):
        if text[i] == "[":
            tag = next((t for t in TAGS if text.startswith(t, i)), None)
            if tag:
                tokens.append(tag)
                i += len(tag)
                continue
        tokens.append(text[i])
        i += 1
    return tokens
