"""Task metrics from a confusion matrix [gold, predicted] (M1: accuracy for NLI and Belebele, macro-F1 for NusaX)."""

from __future__ import annotations

import torch


def accuracy(confusion: torch.Tensor) -> float:
    """Correct / all."""
    total = confusion.sum()
    return float(confusion.diagonal().sum() / total) if total > 0 else float("nan")


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class never gold nor predicted scores 0
    (scikit-learn's `f1_score(average="macro", zero_division=0)`, as NusaX's evaluation)."""
    tp = confusion.diagonal()
    fp = confusion.sum(dim=0) - tp
    fn = confusion.sum(dim=1) - tp
    denominator = 2 * tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1e-12), torch.zeros_like(tp))
    return float(f1.mean())


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}
