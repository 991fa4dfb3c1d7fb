"""Evaluation split over the ranks of a job: task counts per language (confusion, tagging, QA), translation retrieval.

Under ZeRO-3 every forward pass gathers parameters collectively, so every rank must run the same
number of forward passes: each rank takes every `world_size`-th example (`rank_slice`), padded by
repeating its last one to the same count on every rank; padded rows are dropped from the
results. Counts are summed over ranks (task confusion, any task's counts) or embeddings gathered (retrieval, scored on
rank 0 and broadcast), so every rank returns the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from trainer import distributed
from trainer.eval.metrics import accuracy
from trainer.eval.retrieval import (HiddenStates, RetrievalResult, embed_languages, retrieval_accuracy,
                                    tokenize_languages)
from trainer.eval.task_scores import ClassificationScorer


def rank_slice(n: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """Indices `rank, rank + world, ...` of `n` items padded to `ceil(n / world)`; returns (indices, real count)."""
    if n < world_size:
        raise ValueError(f"evaluation: {n} examples cannot be split over {world_size} ranks")
    mine = list(range(rank, n, world_size))
    size = -(-n // world_size)
    return mine + [mine[-1]] * (size - len(mine)), len(mine)


def retrieval_over_ranks(hidden_states: HiddenStates, tokenizer, sentences: Mapping[str, Sequence[str]],
                         layers: Sequence[int] | None = None, k: int = 4, batch_size: int = 32,
                         max_length: int | None = None, rank: int = 0, world_size: int = 1,
                         candidates: str = "knn", pooling: str = "mean") -> RetrievalResult:
    """`trainer.eval.retrieval.evaluate_retrieval` with the sentences split over the ranks.

    Each rank embeds its slice of every language, rank 0 scores the gathered embeddings
    (margin retrieval, all ordered pairs, every layer) and broadcasts the result.
    """
    tokenized = tokenize_languages(tokenizer, sentences, max_length)
    n = len(next(iter(sentences.values())))
    indices, real = rank_slice(n, rank, world_size)
    index = torch.tensor(indices)
    mine = {lang: {key: t[index] for key, t in enc.items()} for lang, enc in tokenized.items()}
    languages, chosen, emb = embed_languages(hidden_states, mine, batch_size, layers, pooling=pooling)
    emb = emb[:, :, :real]
    if world_size == 1:
        return retrieval_accuracy(emb, languages, chosen, k, candidates)
    parts = distributed.all_gather_object(emb)
    result = None
    if rank == 0:
        full = torch.empty(emb.shape[0], emb.shape[1], n, emb.shape[3], dtype=emb.dtype)
        for r, part in enumerate(parts):
            full[:, :, r::world_size] = part
        result = retrieval_accuracy(full, languages, chosen, k, candidates)
    return distributed.broadcast_object(result)


@torch.no_grad()
def counts_over_ranks(count: Callable[[list, int], Sequence[float] | torch.Tensor],
                      examples_by_language: Mapping[str, Sequence], batch_size: int, size: int,
                      rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Per language, the sum over its examples of `count(chunk, keep)` [size] (float64), summed over ranks.

    Each rank takes its slice of every language (`rank_slice`, padded by repeating its last example) in
    chunks of `batch_size`; `count(chunk, keep)` must run its forward on the whole chunk (the same
    forwards on every rank, as ZeRO-3 needs) and count only its first `keep` examples (the real ones;
    the padding repeats come last). Every rank returns the same sums.
    """
    totals = []
    for examples in examples_by_language.values():
        indices, real = rank_slice(len(examples), rank, world_size)
        total = torch.zeros(size, dtype=torch.float64)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            keep = max(0, min(len(chunk), real - start))
            total += torch.as_tensor(count([examples[i] for i in chunk], keep), dtype=torch.float64)
        totals += total.tolist()
    summed = distributed.all_reduce_sum(totals) if world_size > 1 else totals
    return {lang: torch.tensor(summed[i * size:(i + 1) * size], dtype=torch.float64)
            for i, lang in enumerate(examples_by_language)}


def task_confusion(predict: Callable[[dict], torch.Tensor], examples_by_language: Mapping[str, Sequence],
                   collate: Callable[[list], dict], batch_size: int, num_labels: int,
                   rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Confusion counts per language [num_labels (gold), num_labels (predicted)], summed over ranks.

    `predict(batch) -> scores [b, C]` (argmax = prediction). The collated batch's `gold` entry
    (removed before `predict`) or else its `labels` are the gold classes. Every rank evaluates its
    slice of every language (`counts_over_ranks`), so every rank runs the same forwards.
    """
    scorer = ClassificationScorer(predict, collate, num_labels, metric=accuracy)
    sums = counts_over_ranks(scorer.count, examples_by_language, batch_size, scorer.size, rank, world_size)
    return {lang: c.view(num_labels, num_labels) for lang, c in sums.items()}
