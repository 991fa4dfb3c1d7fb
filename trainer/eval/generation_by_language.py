"""Generated answers scored per language (or translation direction): M2's slot filling and translation.

    task_eval = GenerationByLanguage(examples_by_key, generate, score, source_keys={"eng_Latn"},
                                     out_dir=Path("run/eval"))
    metrics = task_eval()     # every rank; rank 0 writes eval/task_generation.csv and eval/predictions/<key>.jsonl

`generate(examples) -> [text]` decodes a chunk of examples (greedy; the same number of calls on every
rank, as ZeRO-3's gathers need); `score(examples, predictions) -> {metric: value}` scores one key's
whole set (corpus-level: BLEU, chrF, micro slot F1). Each rank generates its slice of every key
(`sharded.rank_slice`), the texts are gathered in example order and every rank scores them.

Metrics: `<metric>_<key>` per key, `source_<metric>` (the mean over `source_keys`, the training
languages) and `zero_shot_<metric>` (the mean over the other keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from trainer import distributed
from trainer.eval.sharded import rank_slice
from trainer.fsutil import write_atomic

TABLE = "task_generation.csv"


def generate_over_ranks(generate: Callable[[list], list[str]], examples: Sequence, batch_size: int,
                        rank: int = 0, world_size: int = 1) -> list[str]:
    """Every example's generated text, in order: each rank decodes its slice in chunks, the slices are gathered."""
    indices, real = rank_slice(len(examples), rank, world_size)
    mine: list[str] = []
    for start in range(0, len(indices), batch_size):
        mine += generate([examples[i] for i in indices[start:start + batch_size]])
    mine = mine[:real]
    parts = distributed.all_gather_object(mine) if world_size > 1 else [mine]
    texts = [""] * len(examples)
    for r, part in enumerate(parts):
        texts[r::world_size] = part
    return texts


class GenerationByLanguage:
    """Greedy answers of every key's examples, scored per key; see the module doc for the metrics and files."""

    def __init__(self, examples_by_key: Mapping[str, Sequence], generate: Callable[[list], list[str]],
                 score: Callable[[Sequence, list[str]], dict[str, float]], source_keys: set[str], out_dir: Path,
                 batch_size: int = 16, rank: int = 0, world_size: int = 1):
        self.examples_by_key, self.generate, self.score = examples_by_key, generate, score
        self.source_keys, self.out_dir = source_keys, out_dir
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    @property
    def table(self) -> Path:
        return self.out_dir / TABLE

    def __call__(self) -> dict[str, float]:
        scores: dict[str, dict[str, float]] = {}
        predictions: dict[str, list[str]] = {}
        for key, examples in self.examples_by_key.items():
            predictions[key] = generate_over_ranks(self.generate, examples, self.batch_size, self.rank,
                                                   self.world_size)
            scores[key] = self.score(examples, predictions[key])
        names = list(next(iter(scores.values()))) if scores else []
        metrics = {f"{name}_{key}": value for key, row in scores.items() for name, value in row.items()}
        for group, keys in (("source", [k for k in scores if k in self.source_keys]),
                            ("zero_shot", [k for k in scores if k not in self.source_keys])):
            for name in names if keys else ():
                metrics[f"{group}_{name}"] = sum(scores[k][name] for k in keys) / len(keys)
        if self.rank == 0:
            self._write(scores, names, predictions)
        return metrics

    def _write(self, scores: dict[str, dict[str, float]], names: list[str], predictions: dict[str, list[str]]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{key},{'training' if key in self.source_keys else 'zero-shot'},"
                       + "".join(f"{row[n]:.6f}," for n in names) + f"{len(self.examples_by_key[key])}\n"
                       for key, row in scores.items())
        write_atomic(self.table, f"language,kind,{''.join(n + ',' for n in names)}examples\n" + rows)
        folder = self.out_dir / "predictions"
        folder.mkdir(exist_ok=True)
        for key, texts in predictions.items():
            write_atomic(folder / f"{key}.jsonl", "".join(
                json.dumps({"id": e.id, "source": e.texts[0], "prediction": p, "gold": e.target}, ensure_ascii=False)
                + "\n" for e, p in zip(self.examples_by_key[key], texts)))
