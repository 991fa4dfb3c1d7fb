"""Pooling `phi` over last hidden states, correct for left and right padding.

Choice (M1): `mean` averages every position the attention mask marks as real,
special tokens included (the LLM's BOS; the NLLB language tag and `</s>` on
the encoder side), because the mask is the only thing both sides agree on and
the special tokens carry no padding artefacts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.models.llm_forward import run_llm

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


ALIGN_POOLING_MODES = ("mean", "mean_skip_first")


def without_first_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] -> the mask with each row's first real token cleared (rows of one real token kept whole).

    For `alignment.pooling: mean_skip_first`. Decoder LLMs put an attention sink on the first token, a hidden
    state whose norm dwarfs the others (SmolLM2-135M at hidden_states[15]: about 23,600 against about 170;
    Sun et al. 2024, "Massive activations in large language models"), so a plain mean is that one vector for
    every sentence (cosine 0.9998 between unrelated phrases) and a contrastive loss on it has no gradient.
    """
    first = first_token_index(attention_mask)
    rows = torch.arange(attention_mask.shape[0], device=attention_mask.device)
    keep = attention_mask.clone()
    several = attention_mask.sum(dim=1) > 1
    keep[rows[several], first[several]] = 0
    return keep


def alignment_mask(attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The tokens a sentence vector averages under `alignment.pooling` (`mean`: every real token, the studies')."""
    if mode == "mean":
        return attention_mask
    if mode == "mean_skip_first":
        return without_first_token(attention_mask)
    raise ValueError(f"alignment.pooling: unknown mode {mode!r}; choose one of {', '.join(ALIGN_POOLING_MODES)}")


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


# --- pooling over layers ------------------------------------------------------------------------
#
# Layer indices follow transformers' `output_hidden_states=True` convention, for a
# model with `L` blocks (`len(hidden_states) == L + 1`):
#
# - `0`: the input embeddings (GPT-2: token + position embeddings);
# - `i` for `1 <= i < L`: the output of block `i`, before any final norm (M2's
#   "layer 16 of 32" is `hidden_states[16]`);
# - `L`, equivalently `-1`: transformers' last entry, which for Llama, Qwen2,
#   Gemma 2 and GPT-2 is the output of block `L` *after* the final norm (it equals
#   `last_hidden_state`; checked in tests/test_contrastive.py). The raw output of the
#   last block is not in `hidden_states`. M3's default "last layer" is this entry.
#
# Negative indices count from the end as in Python (`-1` = `L`, `-2` = block `L-1`).


class LayerIndexError(ValueError):
    """A layer index outside a model's `hidden_states` (callers name the config key)."""


def resolve_layers(layers: int | Sequence[int], n_hidden_states: int) -> list[int]:
    """Layer indices (negative allowed) -> non-negative indices into `hidden_states`; range-checked."""
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if not wanted:
        raise LayerIndexError("layers: give at least one layer index")
    resolved = []
    for i in wanted:
        j = i + n_hidden_states if i < 0 else i
        if not 0 <= j < n_hidden_states:
            raise LayerIndexError(f"layer {i} out of range for {n_hidden_states} hidden states "
                             f"(0 = embeddings .. {n_hidden_states - 1} = last, -1 = last)")
        resolved.append(j)
    return resolved


def layer_embeddings(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                     layers: int | Sequence[int], mode: str = "mean") -> torch.Tensor:
    """Masked mean of `hidden_states[i]` over real tokens, averaged over `layers` -> [batch, d] fp32.

    `hidden_states`: tuple of [batch, seq, d] (transformers' convention, in the comment above);
    `attention_mask`: [batch, seq], 1 = real token (either padding side). Several layers are
    averaged after pooling each (equal weights), as M3 allows "the chosen layer(s)". `mode`: `alignment.pooling`
    (`alignment_mask`).
    """
    indices = resolve_layers(layers, len(hidden_states))
    mask = alignment_mask(attention_mask, mode)
    pooled = [masked_mean(hidden_states[i], mask) for i in indices]
    return torch.stack(pooled, dim=0).mean(dim=0)


def sentence_embeddings(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        layers: int | Sequence[int], mode: str = "mean") -> torch.Tensor:
    """Run `model` (plain or peft-wrapped) and pool `layers` by `mode` -> [batch, d] fp32 (gradients kept)."""
    out = run_llm(model, attention_mask, input_ids=input_ids, output_hidden_states=True)
    return layer_embeddings(out.hidden_states, attention_mask, layers, mode)
