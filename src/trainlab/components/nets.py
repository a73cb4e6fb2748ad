"""The ``nn.Module`` classes the model builders make: LSTM language model, GPT-1-style decoder,
and the wrapper of a transformers model.

They live apart from their specs (:mod:`.models`, :mod:`.hf`) so that validating a config
imports no torch: only a builder imports this module, when it builds a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from trainlab.components.models import GPTSpec, LSTMSpec


# --- LSTM language model ----------------------------------------------------------------------


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, spec: LSTMSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, spec.embed_dim)
        self.drop = nn.Dropout(spec.dropout)
        self.lstm = nn.LSTM(spec.embed_dim, spec.hidden_dim, spec.layers, batch_first=True,
                            dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.decoder = nn.Linear(spec.hidden_dim, vocab)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if spec.tie_weights:
            self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.drop(self.embed(tokens)))
        return self.decoder(self.drop(out))


# --- GPT-1-style decoder ----------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.heads, self.pre_norm, self.dropout = heads, pre_norm, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # One fused kernel (flash / memory-efficient where the device has them).
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self._attend(self.ln1(x))
            return x + self.drop(self.ff(self.ln2(x)))
        x = self.ln1(x + self._attend(x))
        return self.ln2(x + self.drop(self.ff(x)))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, spec: GPTSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(context, d)
        self.drop = nn.Dropout(spec.dropout)
        d_ff = spec.hidden_dim or 4 * d
        self.blocks = nn.ModuleList(
            _Block(d, spec.heads, d_ff, spec.dropout, spec.norm == "pre")
            for _ in range(spec.layers))
        self.ln_f = nn.LayerNorm(d) if spec.norm == "pre" else nn.Identity()
        self.head = nn.Linear(d, vocab, bias=False)
        self.apply(_init_gpt)
        if spec.tie_weights:
            self.head.weight = self.tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.tokens(tokens) + self.positions(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _init_gpt(module: nn.Module) -> None:
    # GPT-1 initialises weights from N(0, 0.02).
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --- transformers -----------------------------------------------------------------------------


class HFModel(nn.Module):
    """A transformers model that maps token ids ``[B, L]`` to logits.

    ``[B, C]`` for sequence classification, ``[B, L, V]`` for causal LM.  The attention mask is
    ``input_ids != pad_token_id`` (no mask when the data has no padding, as packed LM text).

    transformers checks a mask's values in Python (``mask.all()``, to drop an all-ones mask):
    a host sync every forward pass.  ``padded`` is decided on the host instead, once, from
    the data before it moves (:func:`note_padding`): False, no mask at all, no sync.
    """

    def __init__(self, model: nn.Module, task: str, pad_token_id: int | None, source: str
                 ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.pad_token_id = pad_token_id
        self.source = source  # where the weights and tokenizer came from (PEFT text init)
        self.padded = True  # whether any input may hold pad tokens (note_padding)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.is_meta:
            # Tracing FLOPs and memory on the meta device: transformers inspects the mask's
            # values (``mask.all()``), which meta tensors do not have; an all-ones mask is
            # the same computation, so trace without one (the mask itself is B x L integers).
            return self._meta_forward(input_ids)
        mask = (None if self.pad_token_id is None or not self.padded
                else (input_ids != self.pad_token_id).long())
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=mask).logits
        return self._real_tokens(logits, input_ids)

    def _meta_forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The forward pass on meta tensors, without transformers' padding check: without a
        mask it reads the ids' values (``pad_token_id in input_ids``), which meta tensors do
        not have, so GPT-2 (a pad token, no mask) failed to trace and its LoRA, adapter and
        full fine-tuning runs had no FLOPs and no MFU (issue 21).  The check only warns."""
        patched = [m for m in self.model.modules()
                   if callable(getattr(m, "warn_if_padding_and_no_attention_mask", None))]
        for module in patched:  # an instance attribute shadows the method, for this call only
            module.__dict__["warn_if_padding_and_no_attention_mask"] = _no_check
        try:
            logits: torch.Tensor = self.model(input_ids=input_ids).logits
        finally:
            for module in patched:
                module.__dict__.pop("warn_if_padding_and_no_attention_mask", None)
        return self._real_tokens(logits, input_ids)

    @staticmethod
    def _real_tokens(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 3 and logits.shape[1] > input_ids.shape[1]:
            # Prompt tuning prepends virtual tokens; predictions are for the real ones.
            logits = logits[:, -input_ids.shape[1]:]
        return logits


def _no_check(*args: object, **kwargs: object) -> None:
    return None


def note_padding(model: nn.Module, splits: Sequence[object]) -> None:
    """Decide on the host, once, whether each :class:`HFModel` in ``model`` can meet padding:
    not when every split is tensors in memory none of which holds its pad token (text that
    fills ``max_length``; checked before the data moves to the device).  A Dataset's items
    (read anew each batch) may hold padding: those keep the mask."""
    for module in model.modules():
        if not isinstance(module, HFModel) or module.pad_token_id is None:
            continue
        pad = module.pad_token_id
        module.padded = any(
            not isinstance(getattr(s, "inputs", None), torch.Tensor)
            or bool((s.inputs == pad).any())  # type: ignore[attr-defined]
            for s in splits)


__all__ = ["GPT", "HFModel", "LSTMLanguageModel", "note_padding"]
