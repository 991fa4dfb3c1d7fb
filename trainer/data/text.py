"""Stage-1 English text for both MT-LLM views: `text_batches` picks the reader.

    batches = text_batches(job.data, micro_batch_size, llm_tokenizer, nllb_tokenizer,
                           seed=job.seed, rank=rank, world_size=world_size)
    batch = next(batches)        # llm_input_ids, llm_attention_mask, nllb_input_ids, nllb_attention_mask
    batches.last_index           # global micro-batch index k of that batch (k % world_size == rank)
    state = batches.state_dict() # resume with load_state_dict(state)

`data.files`: `MicroBatches` over a small corpus read into memory (each view
truncated at max_length). `data.manifest`: `trainer.data.stream.StreamLoader`
over shards from `python -m data_prep.fineweb_shards` (documents cut into spans
that fit both views). Both hand out global micro-batch k to rank k % world_size.
"""

from __future__ import annotations

import glob
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from trainer.config import TextDataConfig
from trainer.data.stream import StreamConfig, StreamLoader


def expand_files(patterns: list[str]) -> list[str]:
    """Globs -> sorted existing files; a pattern that matches nothing is an error naming it."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise FileNotFoundError(f"data.files: {pattern!r} matches no file "
                                    f"(demo data: python -m data_prep.demo_text writes data/demo/fineweb/*.parquet)")
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


class MicroBatches:
    """Endless, resumable, rank-aware micro-batches over an in-memory dataset.

    The GLOBAL sequence of micro-batches is fixed by `seed` alone: epoch `e` visits
    the examples in the order `permutation(seed, e)` (or file order without shuffle),
    cut into micro-batches of `batch_size` (a last partial batch is dropped), and
    global micro-batch `k` goes to rank `k % world_size`. So every global batch
    of `world_size * grad_accum` micro-batches holds the same examples whatever
    the split between ranks and accumulation: a 1-rank run with grad_accum=2 and a
    2-rank run with grad_accum=1 see exactly the same examples per optimizer step.

        batches = MicroBatches(dataset, 8, collate, seed=0, rank=r, world_size=w)
        batch = next(batches)            # batches.last_index: its global index k
        state = batches.state_dict()     # {"next_index": ..., ...}: JSON-able
        batches.load_state_dict(state)   # continue exactly where it stopped

    The streaming reader (`trainer.data.stream`) offers the same interface.
    """

    def __init__(self, dataset, batch_size: int, collate, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if len(dataset) < batch_size:
            raise ValueError(f"data: {len(dataset)} examples is fewer than one micro-batch of {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"data: rank {rank} outside world size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.per_epoch = len(dataset) // batch_size
        self.next_index = rank            # global index of the next micro-batch this rank takes
        self.last_index: int | None = None
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Example indices in the order epoch `epoch` visits them."""
        if self._order_epoch != epoch:
            n = len(self.dataset)
            self._order = (np.random.default_rng([self.seed % 2**63, epoch]).permutation(n) if self.shuffle
                           else np.arange(n))
            self._order_epoch = epoch
        return self._order

    def indices(self, k: int) -> list[int]:
        """Example indices of global micro-batch `k`."""
        epoch, j = divmod(k, self.per_epoch)
        return [int(i) for i in self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]]

    def __iter__(self) -> "MicroBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        k = self.next_index
        batch = self.collate([self.dataset[i] for i in self.indices(k)])
        self.last_index = k
        self.next_index = k + self.world_size
        return batch

    def state_dict(self) -> dict:
        return {"next_index": self.next_index, "seed": self.seed, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "rank": self.rank, "world_size": self.world_size,
                "num_examples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; the data, seed, batch size and rank layout must be the same."""
        mine = self.state_dict()
        differ = [f"{key}: saved {state.get(key)!r}, now {mine[key]!r}" for key in
                  ("seed", "batch_size", "shuffle", "rank", "world_size", "num_examples")
                  if state.get(key) != mine[key]]
        if differ:
            raise ValueError("data: cannot resume this batch stream: " + "; ".join(differ))
        if state["next_index"] % self.world_size != self.rank:
            raise ValueError(f"data: next_index {state['next_index']} does not belong to rank {self.rank}")
        self.next_index = int(state["next_index"])
        self.last_index = None


def text_batches(cfg: TextDataConfig, micro_batch_size: int, llm_tokenizer: PreTrainedTokenizerBase,
                 nllb_tokenizer: PreTrainedTokenizerBase, seed: int, rank: int = 0,
                 world_size: int = 1) -> MicroBatches | StreamLoader:
    """This rank's endless, resumable micro-batches of `micro_batch_size` examples (see the module doc).

    Determinism: with `files`, global micro-batch k is fixed by the seed alone, so a 1-rank run
    with grad_accum=2 sees exactly the examples per step of a 2-rank run with grad_accum=1. With
    `manifest` the same holds when `data.consumers` is set (to a multiple of world_size x
    max(1, num_workers) for every shape compared); left unset, the global sequence depends on
    world_size x max(1, num_workers), and only resuming under the same shape is exact.
    """
    if cfg.manifest is not None:
        return StreamLoader(StreamConfig(**cfg.stream_options()), llm_tokenizer, nllb_tokenizer, micro_batch_size,
                            rank=rank, world_size=world_size, seed=seed)
    collate = DualViewCollator(llm_tokenizer, nllb_tokenizer, cfg.max_length, cfg.text_column)
    return MicroBatches(load_text_dataset(cfg), micro_batch_size, collate, seed=seed, shuffle=cfg.shuffle,
                        rank=rank, world_size=world_size)
