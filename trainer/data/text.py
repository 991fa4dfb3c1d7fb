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

import hashlib
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.batches import MicroBatches
from trainer.data.chunking import DualChunker
from trainer.data.files import expand_files
from trainer.data.shards import load_manifest, read_shard_texts
from trainer.data.stream import StreamConfig, StreamLoader
from trainer.data.teacher_targets import Part
from trainer.data.text_config import TextDataConfig
from trainer.errors import DataError
from trainer.fsutil import sha256_file

ROW_COLUMN = "_row"   # data.files: each row's index, the teacher cache's document id


def load_text_dataset(cfg: TextDataConfig) -> datasets.Dataset:
    """Read every file into one `datasets.Dataset` with the configured text column."""
    files = expand_files(cfg.files)
    suffixes = {Path(f).suffix for f in files}
    if suffixes <= {".parquet"}:
        builder = "parquet"
    elif suffixes <= {".jsonl", ".json"}:
        builder = "json"
    else:
        raise DataError(f"data.files: use .parquet or .jsonl files, not a mix (got {sorted(suffixes)})")
    empty = [f for f in files if Path(f).stat().st_size == 0]
    if empty:
        raise DataError(f"data.files: {empty[0]} is empty (no documents)")
    ds = datasets.load_dataset(builder, data_files=files, split="train")
    if cfg.text_column not in ds.column_names:
        raise DataError(f"data.text_column: {cfg.text_column!r} is not a column of {files[0]} "
                        f"(columns: {', '.join(ds.column_names)})")
    if not any(isinstance(t, str) and t.strip() for t in ds[cfg.text_column]):
        raise DataError(f"data.files: every {cfg.text_column!r} text in {', '.join(files)} is empty: nothing to "
                        f"train on")
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
        batch = {"llm_input_ids": llm["input_ids"], "llm_attention_mask": llm["attention_mask"],
                 "nllb_input_ids": nllb["input_ids"], "nllb_attention_mask": nllb["attention_mask"]}
        if ROW_COLUMN in rows[0]:   # the teacher cache's keys: the row is the document, one chunk each
            batch["doc_index"] = torch.tensor([row[ROW_COLUMN] for row in rows], dtype=torch.long)
            batch["chunk_index"] = torch.zeros(len(rows), dtype=torch.long)
        return batch


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
    dataset = load_text_dataset(cfg)
    dataset = dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
    return MicroBatches(dataset, micro_batch_size, collate, seed=seed, shuffle=cfg.shuffle,
                        rank=rank, world_size=world_size)


def text_identity(cfg: TextDataConfig) -> str:
    """What the text is, for the teacher cache's fingerprint: the manifest's shard-list hash, or a hash of
    the files' names and bytes (`data.files`)."""
    if cfg.manifest is not None:
        return f"manifest:{load_manifest(cfg.manifest).fingerprint()}"
    digest = hashlib.sha256()
    for path in expand_files(cfg.files):
        digest.update(f"{Path(path).name}:{sha256_file(path)};".encode())
    return f"files:{digest.hexdigest()[:16]}:{cfg.text_column}"


ChunkIds = Callable[[int], list[list[np.ndarray]]]   # part -> per document, each chunk's LLM ids


def teacher_chunks(cfg: TextDataConfig, llm_tokenizer: PreTrainedTokenizerBase,
                   nllb_tokenizer: PreTrainedTokenizerBase) -> tuple[list[Part], ChunkIds]:
    """The text as the teacher cache stores it: its parts, and `llm_ids(part)` -> per document of the part,
    the LLM view ([n] int64 ids, special tokens included) of each of its chunks.

    `data.manifest`: part i = shard i, chunked by `DualChunker` exactly as the stream cuts it (so both
    tokenizers matter). `data.files`: one part, each row one chunk, truncated at max_length as
    `DualViewCollator` does.
    """
    if cfg.manifest is not None:
        manifest = load_manifest(cfg.manifest)
        firsts = np.concatenate([[0], np.cumsum([s.rows for s in manifest.shards], dtype=np.int64)])
        parts = [Part(int(firsts[i]), s.rows) for i, s in enumerate(manifest.shards)]
        chunker = DualChunker(llm_tokenizer, nllb_tokenizer, cfg.max_length)

        def shard_ids(part: int) -> list[list[np.ndarray]]:
            texts = read_shard_texts(manifest, part, cfg.verify_checksums)
            return [[c.llm_ids for c in chunks] for chunks in chunker.chunk_documents(texts)]

        return parts, shard_ids
    texts = list(load_text_dataset(cfg)[cfg.text_column])

    def row_ids(part: int) -> list[list[np.ndarray]]:
        encoded = llm_tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        return [[np.asarray(ids, dtype=np.int64)] for ids in encoded]

    return [Part(0, len(texts))], row_ids
