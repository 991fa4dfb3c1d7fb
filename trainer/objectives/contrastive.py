"""Contrastive alignment losses on pooled sentence vectors (M2, M3), computed in fp32.

Pure functions on tensors: the vectors come from `trainer.models.pooling.layer_embeddings`
(masked mean of the chosen `hidden_states` layers; the index convention is documented there).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F



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


def pair_loss(objective: str, temperature: float, symmetric: bool = False):
    """The contrastive loss on (source, target) [B, d] named by `alignment.objective`.

    `info_nce` (M2; `symmetric` averages both directions) or `two_b` (M3, symmetric by construction).
    """
    if objective == "two_b":
        return partial(two_b_candidate_loss, temperature=temperature)
    if objective == "info_nce":
        return partial(info_nce, temperature=temperature, symmetric=symmetric)
    raise ValueError(f"alignment.objective: unknown {objective!r}; choose info_nce or two_b")
