"""English text from local parquet/jsonl files, tokenized for both MT-LLM views.

A simple in-memory reader for small corpora; `trainer.data.stream` (streamed
shards) replaces it for FineWeb-scale data.
"""

from __future__ import annotations

import glob
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from trainer.config import TextDataConfig


def expand_files(patterns: list[str]) -> list[str]:
    """Globs -> sorted existing files; a pattern that matches nothing is an error naming it."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise FileNotFoundError(f"data.files: {pattern!r} matches no file "
                                    f"(for the demo data run: python -m data_prep.demo_text)")
        files += matches
    return files


def load_text_dataset(cfg: TextDataConfig) -> datasets.Dataset:
    """Read every file into one `datasets.Dataset` with the configured text column."""
    files = expand_files(cfg.files)
    suffixes = {Path(f).suffix for f in files}
    if suffixes <= {".parquet"}:
        builder = "parquet"
    elif suffixes <= {".jsonl", ".json"}:
        builder = "json"
    else:
        raise ValueError(f"data.files: use .parquet or .jsonl files, not a mix (got {sorted(suffixes)})")
    ds = datasets.load_dataset(builder, data_files=files, split="train")
    if cfg.text_column not in ds.column_names:
        raise ValueError(f"data.text_column: {cfg.text_column!r} is not a column of {files[0]} "
                         f"(columns: {', '.join(ds.column_names)})")
    return ds


class DualViewCollator:
    """Texts -> LLM view and NLLB view tensors, each padded and truncated to `max_length`.

    Keys: llm_input_ids, llm_attention_mask, nllb_input_ids, nllb_attention_mask ([batch, seq]).
    """

    def __init__(self, llm_tokenizer: PreTrainedTokenizerBase, nllb_tokenizer: PreTrainedTokenizerBase,
                 max_length: int, text_column: str = "text"):
        self.llm_tokenizer = llm_tokenizer
        self.nllb_tokenizer = nllb_tokenizer
        self.max_length = max_length
        self.text_column = text_column

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        texts = [row[self.text_column] for row in rows]
        llm = self.llm_tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        nllb = self.nllb_tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
        return {"llm_input_ids": llm["input_ids"], "llm_attention_mask": llm["attention_mask"],
                "nllb_input_ids": nllb["input_ids"], "nllb_attention_mask": nllb["attention_mask"]}


def endless_batches(dataset, batch_size: int, collate, seed: int, shuffle: bool = True):
    """Yield collated batches forever, reshuffling each epoch with a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        order = torch.randperm(len(dataset), generator=generator) if shuffle else torch.arange(len(dataset))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([dataset[int(i)] for i in order[start:start + batch_size]])
        epoch += 1
        if len(dataset) < batch_size:
            raise ValueError(f"data: {len(dataset)} examples is fewer than one micro-batch of {batch_size}")
