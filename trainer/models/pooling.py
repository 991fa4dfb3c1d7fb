"""Pooling `phi` over last hidden states, correct for left and right padding.

Choice (M1): `mean` averages every position the attention mask marks as real,
special tokens included (the LLM's BOS; the NLLB language tag and `</s>` on
the encoder side), because the mask is the only thing both sides agree on and
the special tokens carry no padding artefacts.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "bos", "eos")


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] -> [batch] index of the first real token (0 under right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    masked = torch.where(attention_mask.bool(), positions, attention_mask.shape[1])
    return masked.min(dim=1).values


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] -> [batch] index of the last real token (seq-1 under left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    masked = torch.where(attention_mask.bool(), positions, -1)
    return masked.max(dim=1).values


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq, d], [batch, seq] -> [batch, d] mean over real tokens, in fp32."""
    weights = attention_mask.to(torch.float32).unsqueeze(-1)
    total = (hidden.to(torch.float32) * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp(min=1.0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, seq, d] -> [batch, d] by `mean`, `bos` (first real token) or `eos` (last real token); fp32."""
    if mode == "mean":
        return masked_mean(hidden, attention_mask)
    if mode in ("bos", "eos"):
        index = first_token_index(attention_mask) if mode == "bos" else last_token_index(attention_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, index].to(torch.float32)
    raise ValueError(f"pooling: unknown mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")
