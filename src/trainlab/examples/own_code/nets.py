"""Two language models written as plain PyTorch, the way a course assignment writes them.

trainlab builds them from `own-code.yaml` (model.name: python): it passes what the data knows
(`vocab_size`, `input_shape`) where a signature names it, and everything else from
`model.args`.  Edit freely: an edited file makes new runs (its hash is part of each run's id).
"""

import math

import torch
from torch import nn


class TiedLSTM(nn.Module):
    """An LSTM language model whose output layer shares the embedding's weights."""

    def __init__(self, vocab_size, embed_dim=64, layers=1, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.drop = nn.Dropout(dropout)
        # Tying needs the LSTM's output width to equal the embedding width.
        self.lstm = nn.LSTM(embed_dim, embed_dim, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(embed_dim, vocab_size)
        self.out.weight = self.embed.weight

    def forward(self, tokens):  # [B, T] -> logits [B, T, V]
        hidden, _ = self.lstm(self.drop(self.embed(tokens)))
        return self.out(self.drop(hidden))


class Block(nn.Module):
    def __init__(self, d_model, heads, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class MiniGPT(nn.Module):
    """A small decoder-only transformer (GPT-1 style: learned positions, pre-norm blocks)."""

    def __init__(self, vocab_size, input_shape, d_model=64, heads=2, layers=1, dropout=0.1):
        super().__init__()
        seq_len = input_shape[0]
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Parameter(torch.zeros(1, seq_len, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tokens.weight
        mask = torch.triu(torch.full((seq_len, seq_len), -math.inf), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens):  # [B, T] -> logits [B, T, V]
        t = tokens.shape[1]
        x = self.drop(self.tokens(tokens) + self.positions[:, :t])
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        return self.head(self.ln(x))
