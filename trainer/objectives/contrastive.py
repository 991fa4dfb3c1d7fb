"""Contrastive alignment losses on pooled sentence vectors (M2, M3), computed in fp32.

Pure functions on tensors: the vectors come from `trainer.models.pooling.layer_embeddings`
(masked mean of the chosen `hidden_states` layers; the index convention is documented there).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

QUERIES = ("target", "source", "both")
# Temperatures of the studies. M2 (middle-layer alignment) by model family (transformers' model_type):
# 0.1 for Llama, 1.5 for Qwen; other families take Llama's. M3 (realignment): T = 0.1.
M2_TEMPERATURES = {"llama": 0.1, "qwen2": 1.5}
M2_DEFAULT_TEMPERATURE = 0.1
M3_TEMPERATURE = 0.1


def cosine_logits(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """[n, d], [m, d] -> [n, m] cosine similarities / temperature, in fp32 (inputs not modified)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return a @ b.T / temperature


def info_nce(source: torch.Tensor, target: torch.Tensor, temperature: float = 0.1,
             query: str = "target") -> torch.Tensor:
    """M2 alignment loss on `n` parallel pairs: source (English), target (its translation) [n, d] -> scalar fp32.

    With query sentences `q` and candidates `c` (cosine `sim`, in-batch negatives on the candidate side):
    `L = -mean_k log( exp(sim(q_k, c_k)/tau) / sum_v exp(sim(q_k, c_v)/tau) )`.
    `query="target"` (default, the middle-layer alignment study's reference implementation): the
    non-English sentence is the query, the English sentences the candidates; `"source"`: the
    English sentence queries the translations; `"both"`: the mean of the two directions.
    tau = 0.1 for Llama, 1.5 for Qwen in the study.
    """
    _check_pairs(source, target)
    if query not in QUERIES:
        raise ValueError(f"query must be one of {', '.join(QUERIES)}, got {query!r}")
    logits = cosine_logits(target, source, temperature)   # rows: target queries, columns: English candidates
    labels = torch.arange(logits.shape[0], device=logits.device)
    if query == "target":
        return F.cross_entropy(logits, labels)
    if query == "source":
        return F.cross_entropy(logits.T, labels)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


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


def pair_loss(objective: str, temperature: float, query: str = "target"):
    """The contrastive loss on (source, target) [B, d] named by `alignment.objective`.

    `info_nce` (M2; `query` picks the direction) or `two_b` (M3, symmetric by construction).
    """
    if objective == "two_b":
        return partial(two_b_candidate_loss, temperature=temperature)
    if objective == "info_nce":
        return partial(info_nce, temperature=temperature, query=query)
    raise ValueError(f"alignment.objective: unknown {objective!r}; choose info_nce or two_b")
