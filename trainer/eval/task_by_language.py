"""Task accuracy per language as an evaluation component any recipe composes (zero-shot transfer).

    task_eval = TaskByLanguage(rows_by_language, collate, predict, source_language="eng_Latn",
                               out_dir=Path("run/eval"))
    metrics = task_eval()      # every rank; rank 0 writes eval/task_accuracy.csv

It needs no particular model: `predict(batch) -> scores [b, C]` scores a collated batch (the
argmax is the prediction). The examples are split over the ranks (`trainer.eval.sharded`).

Metrics: `accuracy_<lang>` per language, `source_accuracy` (the training language) and
`zero_shot_accuracy` (the mean over the other languages).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from trainer.eval.sharded import task_accuracy
from trainer.fsutil import write_atomic

TABLE = "task_accuracy.csv"


class TaskByLanguage:
    def __init__(self, rows_by_language: Mapping[str, Sequence[dict]], collate: Callable[[list[dict]], dict],
                 predict: Callable[[dict], torch.Tensor], source_language: str, out_dir: Path,
                 batch_size: int = 32, rank: int = 0, world_size: int = 1):
        self.rows_by_language, self.collate, self.predict = rows_by_language, collate, predict
        self.source_language, self.out_dir = source_language, out_dir
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    @property
    def table(self) -> Path:
        return self.out_dir / TABLE

    def __call__(self) -> dict[str, float]:
        accuracy = task_accuracy(self.predict, self.rows_by_language, self.collate, self.batch_size,
                                 self.rank, self.world_size)
        source = self.source_language
        metrics = {f"accuracy_{lang}": acc for lang, acc in accuracy.items()}
        if source in accuracy:
            metrics["source_accuracy"] = accuracy[source]
        targets = [acc for lang, acc in accuracy.items() if lang != source]
        if targets:
            metrics["zero_shot_accuracy"] = sum(targets) / len(targets)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.table, "language,accuracy,examples\n" + "".join(
                f"{lang},{acc:.6f},{len(self.rows_by_language[lang])}\n" for lang, acc in accuracy.items()))
        return metrics
