"""Task accuracy per language as an evaluation component any recipe composes (zero-shot transfer).

    task_eval = TaskByLanguage(rows_by_language, collate, predict, source_language="eng_Latn",
                               out_dir=Path("run/eval"), num_labels=3)
    metrics = task_eval()      # every rank; rank 0 writes eval/task_accuracy.csv

It needs no particular model: `predict(batch) -> scores [b, C]` scores a collated batch (the
argmax is the prediction). The examples are split over the ranks (`trainer.eval.sharded.task_confusion`,
the same counts the task recipes score with).

Metrics: `accuracy_<lang>` per language, `source_accuracy` (the training language) and
`zero_shot_accuracy` (the mean over the other languages).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from trainer.eval.metrics import accuracy
from trainer.eval.sharded import task_confusion
from trainer.fsutil import write_atomic

TABLE = "task_accuracy.csv"


class TaskByLanguage:
    def __init__(self, rows_by_language: Mapping[str, Sequence[dict]], collate: Callable[[list[dict]], dict],
                 predict: Callable[[dict], torch.Tensor], source_language: str, out_dir: Path, num_labels: int,
                 batch_size: int = 32, rank: int = 0, world_size: int = 1):
        self.rows_by_language, self.collate, self.predict = rows_by_language, collate, predict
        self.num_labels = num_labels
        self.source_language, self.out_dir = source_language, out_dir
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    @property
    def table(self) -> Path:
        return self.out_dir / TABLE

    def __call__(self) -> dict[str, float]:
        confusion = task_confusion(self.predict, self.rows_by_language, self.collate, self.batch_size,
                                   self.num_labels, self.rank, self.world_size)
        scores = {lang: accuracy(c) for lang, c in confusion.items()}
        source = self.source_language
        metrics = {f"accuracy_{lang}": acc for lang, acc in scores.items()}
        if source in scores:
            metrics["source_accuracy"] = scores[source]
        targets = [acc for lang, acc in scores.items() if lang != source]
        if targets:
            metrics["zero_shot_accuracy"] = sum(targets) / len(targets)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.table, "language,accuracy,examples\n" + "".join(
                f"{lang},{acc:.6f},{len(self.rows_by_language[lang])}\n" for lang, acc in scores.items()))
        return metrics
