"""Contrastive alignment losses on pooled hidden states (M2, M3), computed in fp32.

Layer indices follow transformers' `output_hidden_states=True` convention, for a
model with `L` blocks (`len(hidden_states) == L + 1`):

- `0`: the input embeddings (GPT-2: token + position embeddings);
- `i` for `1 <= i < L`: the output of block `i`, before any final norm (M2's
  "layer 16 of 32" is `hidden_states[16]`);
- `L`, equivalently `-1`: transformers' last entry, which for Llama, Qwen2,
  Gemma 2 and GPT-2 is the output of block `L` *after* the final norm (it equals
  `last_hidden_state`; checked in tests/test_contrastive.py). The raw output of the
  last block is not in `hidden_states`. M3's default "last layer" is this entry.

Negative indices count from the end as in Python (`-1` = `L`, `-2` = block `L-1`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trainer.models.llm_forward import run_llm
from trainer.models.pooling import masked_mean


def resolve_layers(layers: int | Sequence[int], n_hidden_states: int) -> list[int]:
    """Layer indices (negative allowed) -> non-negative indices into `hidden_states`; range-checked."""
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if not wanted:
        raise ValueError("layers: give at least one layer index")
    resolved = []
    for i in wanted:
        j = i + n_hidden_states if i < 0 else i
        if not 0 <= j < n_hidden_states:
            raise ValueError(f"layer {i} out of range for {n_hidden_states} hidden states "
                             f"(0 = embeddings .. {n_hidden_states - 1} = last, -1 = last)")
        resolved.append(j)
    return resolved


def layer_embeddings(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                     layers: int | Sequence[int]) -> torch.Tensor:
    """Masked mean of `hidden_states[i]` over real tokens, averaged over `layers` -> [batch, d] fp32.

    `hidden_states`: tuple of [batch, seq, d] (transformers convention, see module docstring);
    `attention_mask`: [batch, seq], 1 = real token (either padding side). Several layers are
    averaged after pooling each (equal weights), as M3 allows "the chosen layer(s)".
    """
    indices = resolve_layers(layers, len(hidden_states))
    pooled = [masked_mean(hidden_states[i], attention_mask) for i in indices]
    return torch.stack(pooled, dim=0).mean(dim=0)


def sentence_embeddings(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        layers: int | Sequence[int]) -> torch.Tensor:
    """Run `model` (plain or peft-wrapped) and pool `layers` -> [batch, d] fp32 (gradients kept)."""
    out = run_llm(model, attention_mask, input_ids=input_ids, output_hidden_states=True)
    return layer_embeddings(out.hidden_states, attention_mask, layers)


def cosine_logits(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """[n, d], [m, d] -> [n, m] cosine similarities / temperature, in fp32 (inputs not modified)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return a @ b.T / temperature


def info_nce(source: torch.Tensor, target: torch.Tensor, temperature: float = 0.1,
             symmetric: bool = False) -> torch.Tensor:
    """M2 alignment loss on `n` parallel pairs: source, target [n, d] -> scalar fp32.

    `L = -mean_k log( exp(sim(s_k, t_k)/tau) / sum_v exp(sim(s_k, t_v)/tau) )` with cosine `sim`:
    each source sentence picks its translation among the `n` target sentences (in-batch negatives,
    target side only). This is the reference's one-directional loss (`symmetric=False`, default);
    `symmetric=True` averages it with the target -> source direction. tau = 0.1 for Llama (paper).
    """
    _check_pairs(source, target)
    logits = cosine_logits(source, target, temperature)
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def two_b_candidate_loss(source: torch.Tensor, target: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """M3 realignment loss on `B` parallel pairs: source, target [B, d] -> scalar fp32.

    The `2B` sentences `z = [s_1..s_B, t_1..t_B]` are all candidates: sentence `j` must pick its
    translation among the other `2B-1` sentences (both languages, same-language negatives included,
    itself excluded), cross-entropy over cosine / T, averaged over all `2B` sentences (symmetric by
    construction; NT-Xent form). T = 0.1 in the paper.
    """
    _check_pairs(source, target)
    b = source.shape[0]
    z = torch.cat([source, target], dim=0)
    logits = cosine_logits(z, z, temperature)
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    index = torch.arange(b, device=logits.device)
    labels = torch.cat([index + b, index])
    return F.cross_entropy(logits, labels)


def _check_pairs(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.ndim != 2 or source.shape != target.shape:
        raise ValueError(f"expected source and target of equal shape [n, d], got {tuple(source.shape)} "
                         f"and {tuple(target.shape)}")
    if source.shape[0] < 2:
        raise ValueError("contrastive loss needs at least 2 pairs per batch (no negatives otherwise)")
