"""Task metrics: from a confusion matrix [gold, predicted] (M1: accuracy for NLI and Belebele, macro-F1 for
NusaX); word-level tagging scores (M3: POS accuracy, NER entity F1 as seqeval / conlleval count it); SQuAD
v1.1's exact match and token F1 with its answer normalisation (M4: TyDiQA-GoldP, as XTREME scores it).

Every tagging and QA score also comes as counts that add up over examples and ranks
(`tag_accuracy_counts`, `entity_counts`; EM and F1 summed per example), so a language's score is the
same however its examples are split.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch


def accuracy(confusion: torch.Tensor) -> float:
    """Correct / all."""
    total = confusion.sum()
    return float(confusion.diagonal().sum() / total) if total > 0 else float("nan")


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean of F1 = 2 TP / (2 TP + FP + FN) over the classes present in the gold labels or the
    predictions; a class that is neither gold nor predicted is not counted (a class gold but never
    predicted, or predicted but never gold, scores 0). This is scikit-learn's
    `f1_score(y_true, y_pred, average="macro")` with its default labels (those observed in either), as
    NusaX's evaluation and torchmetrics (the study's code) compute it. NaN for an empty confusion matrix."""
    tp = confusion.diagonal()
    fp = confusion.sum(dim=0) - tp
    fn = confusion.sum(dim=1) - tp
    denominator = 2 * tp + fp + fn                  # > 0 exactly for a class that is gold or predicted
    present = denominator > 0
    if not bool(present.any()):
        return float("nan")
    return float((2 * tp[present] / denominator[present]).mean())


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


# --- tagging (M3: POS accuracy, NER entity F1) ---------------------------------------------------------------

def tag_accuracy_counts(gold: Sequence[int], predicted: Sequence[int]) -> tuple[int, int]:
    """(words tagged right, words) of one sentence: POS accuracy over every word (XTREME's UDPOS metric). A word
    without a prediction (cut by max_length: -1) counts as wrong."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold tags but {len(predicted)} predictions")
    return sum(g == p for g, p in zip(gold, predicted)), len(gold)


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entity chunks (type, first word, last word) of IOB tags, as seqeval's default mode and conlleval read them.

    A chunk starts at `B-X`, or at `I-X` after `O` or after another type (IOB1-style, as conlleval does); it
    goes on over `I-X` of its type and ends before `O`, `B-*` or another type. Tags are `O` or `B-`/`I-`
    plus the type.
    """
    chunks, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, tag_type = tag.partition("-") if tag != "O" else ("O", "", "")
        if prefix not in ("O", "B", "I") or (prefix != "O" and not tag_type):
            raise ValueError(f"tag {tag!r} at word {i + 1} is not O, B-<type> or I-<type>")
        if start is not None and (prefix != "I" or tag_type != kind):
            chunks.add((kind, start, i - 1))
            start = None
        if prefix in ("B", "I") and start is None:
            start, kind = i, tag_type
    return chunks


def entity_counts(gold: Sequence[str], predicted: Sequence[str]) -> tuple[int, int, int]:
    """(entities predicted exactly right: type, first and last word; entities predicted; gold entities)."""
    gold_chunks, predicted_chunks = entities(gold), entities(predicted)
    return len(gold_chunks & predicted_chunks), len(predicted_chunks), len(gold_chunks)


def f1_from_counts(correct: float, predicted: float, gold: float) -> float:
    """Micro F1 = 2 correct / (predicted + gold) (= 2PR / (P + R)); 0 when there is nothing to count
    (seqeval's `f1_score`, default micro average over entity types, zero_division 0)."""
    return 2 * correct / (predicted + gold) if predicted + gold > 0 else 0.0


# --- extractive QA (M4: TyDiQA-GoldP; SQuAD v1.1's evaluate script) ------------------------------------------

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, drop ASCII punctuation, drop the articles a/an/the, squeeze
    whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (max over the gold answers)."""
    if not golds:
        raise ValueError("exact match needs at least one gold answer")
    return max(float(normalize_answer(prediction) == normalize_answer(gold)) for gold in golds)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD's F1 over the normalised answers' whitespace tokens (bag of tokens), max over the gold answers;
    an empty prediction scores 0. (An unanswered question, no span at all, is not scored here: the caller
    scores it EM 0 and F1 0, as SQuAD v1.1's evaluate script does a question missing from its
    predictions; see `trainer.eval.task_scores.QAScorer`.)"""
    if not golds:
        raise ValueError("F1 needs at least one gold answer")
    return max(_token_f1(prediction, gold) for gold in golds)
