"""A decoder-only causal transformer built from torch.nn blocks, sized for a CPU."""

from __future__ import annotations

import torch
from torch import nn


class CausalTransformer(nn.Module):
    def __init__(self, vocab_size: int, *, d_model: int, n_layers: int, n_heads: int,
                 d_ff: int, max_seq_len: int, dropout: float):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_seq_len, d_model)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, time, vocab) for token ids of shape (batch, time)."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x))


def build_model(vocab_size: int, config) -> CausalTransformer:
    """The model a config describes (config: hlbd.config.TrainConfig)."""
    return CausalTransformer(vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                             n_heads=config.n_heads, d_ff=config.d_ff,
                             max_seq_len=config.max_seq_len, dropout=config.dropout)
