"""LLM2Vec-style bidirectional attention for decoder LLMs.

Two things make a decoder attend both ways, and both are needed:
- every attention module's `is_causal` flag is set to False; transformers'
  sdpa and flash-attention paths read it when no mask is passed (a batch with
  no padding, or batch size 1), where they would otherwise go causal;
- the model is given an explicit 4-D additive padding mask (built here) instead
  of a 2-D mask, which transformers' mask utilities return as-is rather than
  turning into a causal mask. Flash-attention takes the 2-D mask instead.
"""

from __future__ import annotations

import torch


def make_bidirectional(model: torch.nn.Module) -> int:
    """Turn off causal masking in every attention module; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
            changed += 1
    if changed == 0:
        raise ValueError(f"{type(model).__name__}: found no attention module with an is_causal flag; "
                         "bidirectional attention is not supported for this architecture")
    model.config.trainer_bidirectional = True
    return changed


def is_bidirectional(model: torch.nn.Module) -> bool:
    return bool(getattr(model.config, "trainer_bidirectional", False))


def padding_mask_4d(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, seq] 1/0 mask -> [batch, 1, seq, seq] additive mask: 0 to attend, min(dtype) for pad keys.

    Query rows of padding positions attend to the real tokens (their output is
    ignored by pooling), so no row is all -inf.
    """
    keep = attention_mask[:, None, None, :].to(torch.bool)
    keep = keep.expand(-1, 1, attention_mask.shape[1], -1)
    mask = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)
