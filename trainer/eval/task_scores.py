"""How a task's dev and test sets are scored per language: one scorer per kind of head.

    scorer = TaggingScorer(predict, collate, tag_names=NER_TAGS, metric="entity_f1")
    sums = counts_over_ranks(scorer.count, examples_by_language, batch_size, scorer.size, rank, world_size)
    scorer.scores(sums["deu_Latn"])       # {"": 0.71}: the selection metric (and extras, e.g. {"em": ...} for QA)

A scorer turns a chunk of examples into counts that add up over examples and ranks
(`count(examples, keep)`: the forward runs on the whole chunk, only the first `keep` are counted;
see `trainer.eval.sharded.counts_over_ranks`), and counts into scores: `""` the selection metric, and
one entry per name in `extras`. `predict(batch)` runs the
model on a collated batch: class scores [b, C] (classification), tag logits [b, s, T] (tagging), or
(start_logits, end_logits) [windows, s] each (QA). The collated batch's keys are the collators' of
`trainer.data.task`, `trainer.data.tagging` and `trainer.data.qa`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainer.eval.metrics import (entity_counts, exact_match, f1_from_counts, tag_accuracy_counts, token_f1)
from trainer.eval.qa import MAX_ANSWER_TOKENS, answer_text, best_spans


class ClassificationScorer:
    """Class or choice predictions -> the confusion matrix (flattened) -> `metric(confusion)` (accuracy, macro-F1)."""

    def __init__(self, predict: Callable[[dict], torch.Tensor], collate: Callable[[list], dict], num_labels: int,
                 metric: Callable[[torch.Tensor], float]):
        self.predict, self.collate, self.num_labels, self.metric = predict, collate, num_labels, metric
        self.size, self.extras = num_labels * num_labels, ()

    def count(self, examples: list, keep: int) -> torch.Tensor:
        batch = self.collate(examples)
        gold = batch.pop("gold") if "gold" in batch else batch["labels"]
        predicted = self.predict(batch).argmax(dim=-1).cpu()
        confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.float64)
        confusion.index_put_((gold[:keep], predicted[:keep]), torch.ones(keep, dtype=torch.float64), accumulate=True)
        return confusion.flatten()

    def scores(self, counts: torch.Tensor) -> dict[str, float]:
        return {"": self.metric(counts.view(self.num_labels, self.num_labels))}


def word_predictions(predicted: torch.Tensor, word_index: torch.Tensor, num_words: Sequence[int]) -> list[list[int]]:
    """Token predictions [b, s] -> per row, one tag per word: the prediction at the word's first sub-token
    (`word_index` [b, s]: the word's index there, -1 elsewhere); -1 for a word without a token (cut off)."""
    rows = []
    for row, n in enumerate(num_words):
        words = [-1] * n
        positions = (word_index[row] >= 0).nonzero().flatten().tolist()
        for t in positions:
            if int(word_index[row, t]) < n:
                words[int(word_index[row, t])] = int(predicted[row, t])
        rows.append(words)
    return rows


class TaggingScorer:
    """Word-level tags -> `accuracy` (words right, words: POS) or `entity_f1` (exact entities right, predicted,
    gold: NER, seqeval's micro F1). `tag_names`: the names of the tag ids (entity F1 reads their IOB prefixes;
    a word without a prediction is `O`)."""

    def __init__(self, predict: Callable[[dict], torch.Tensor], collate: Callable[[list], dict],
                 tag_names: Sequence[str], metric: str):
        if metric not in ("accuracy", "entity_f1"):
            raise ValueError(f"tagging metric {metric!r}: accuracy or entity_f1")
        self.predict, self.collate, self.tag_names, self.metric = predict, collate, list(tag_names), metric
        self.size, self.extras = (2 if metric == "accuracy" else 3), ()

    def count(self, examples: list, keep: int) -> list[float]:
        batch = self.collate(examples)
        predicted = self.predict(batch).argmax(dim=-1).cpu()
        words = word_predictions(predicted, batch["word_index"], [len(e.tags) for e in examples[:keep]])
        total = [0.0] * self.size
        for e, tags in zip(examples[:keep], words):
            if self.metric == "accuracy":
                counts = tag_accuracy_counts(e.tags, tags)
            else:
                counts = entity_counts([self.tag_names[t] for t in e.tags],
                                       [self.tag_names[t] if t >= 0 else "O" for t in tags])
            total = [a + b for a, b in zip(total, counts)]
        return total

    def scores(self, counts: torch.Tensor) -> dict[str, float]:
        if self.metric == "accuracy":
            return {"": float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")}
        return {"": f1_from_counts(*counts.tolist())}


class QAScorer:
    """Answer spans -> SQuAD's F1 (the selection metric) and exact match ("em"), each the mean over examples of
    its max over the gold answers, as SQuAD v1.1's evaluate script computes them; an example with no predicted
    span (unanswered) scores EM 0 and F1 0, as that script scores a question without a prediction, even when a
    gold answer normalises to "". `predict(batch) -> (start_logits, end_logits)`."""

    def __init__(self, predict: Callable[[dict], tuple[torch.Tensor, torch.Tensor]], collate: Callable[[list], dict],
                 max_answer_tokens: int = MAX_ANSWER_TOKENS):
        self.predict, self.collate, self.max_answer_tokens = predict, collate, max_answer_tokens
        self.size, self.extras = 3, ("em",)   # counts: summed EM, summed F1, examples

    def count(self, examples: list, keep: int) -> list[float]:
        batch = self.collate(examples)
        start, end = self.predict(batch)
        spans = best_spans(start, end, batch["context_mask"], batch["example_index"], len(examples),
                           self.max_answer_tokens)
        em = f1 = 0.0
        for e, (window, first, last) in zip(examples[:keep], spans):
            if window < 0:      # unanswered (no valid span in any window): EM 0, F1 0, as SQuAD v1.1's script
                continue        # scores a question missing from its predictions (not as the answer "")
            text = answer_text(e.texts[0], batch["offsets"][window], first, last)
            golds = [gold for gold, _ in e.answers]
            em, f1 = em + exact_match(text, golds), f1 + token_f1(text, golds)
        return [em, f1, float(keep)]

    def scores(self, counts: torch.Tensor) -> dict[str, float]:
        em, f1, n = counts.tolist()
        return {"": f1 / n, "em": em / n} if n > 0 else {"": float("nan"), "em": float("nan")}
