"""Streamed, dual-tokenized, rank-sharded and exactly resumable batches over a shard manifest (M1, stage 1).

    cfg = StreamConfig(manifest="data/fineweb-2B/manifest.json", max_length=512)
    loader = StreamLoader(cfg, llm_tokenizer, nllb_tokenizer, batch_size=8,
                          rank=rank, world_size=world_size, seed=job.seed)
    batch = next(loader)           # llm_input_ids, llm_attention_mask, nllb_input_ids, nllb_attention_mask
    loader.last_index              # its global micro-batch index k (k % world_size == rank)
    state = loader.state_dict()    # save with the checkpoint
    ...
    loader.load_state_dict(state)  # a fresh loader resumes at the exact next batch

Pipeline, and the choices made (see docs/streaming.md for the long form):

1. Global document order per epoch, computed from the manifest's row counts
   alone (no text is read): shards in a seeded random order, then a windowed
   shuffle (documents permuted inside consecutive windows of `shuffle_window`).
   Deterministic in (seed, epoch); different epochs differ.
2. Consumers. The order is cut into `consumers` contiguous slices
   [c*D/C, (c+1)*D/C) (D documents, C consumers); consumer c reads, chunks and
   batches its slice alone, endlessly (epoch after epoch), and global
   micro-batch k is batch number k // C of consumer k % C. Rank r owns the
   consumers c = r (mod world_size) and hands out global micro-batches
   r, r + world_size, r + 2*world_size, ...; inside a rank, DataLoader worker w
   owns the rank's consumers c // world_size = w (mod workers), which matches the
   DataLoader's round robin. So every document is read by exactly one consumer
   per epoch, each process tokenizes only its own documents, and the global
   micro-batch sequence depends on `consumers` but not on world_size or
   num_workers: a 1-rank run with gradient accumulation 2 sees exactly the
   micro-batches of a 2-rank run when both use the same `consumers`.
   `consumers` must be a multiple of world_size * max(1, num_workers); left
   unset it is exactly that product (one consumer per process, the least
   memory), and then the sequence changes with the launch shape. Near the end
   of a finite stream (`epochs` set) consumers run out at different batches and
   the k -> consumer k % C correspondence no longer holds for the last batches.
3. Dual tokenization: `trainer.data.chunking.DualChunker` cuts each document into spans
   that fit both tokenizers (no truncation anywhere).
4. Pools and batches: chunks are gathered into pools of `pool_batches *
   batch_size`; a pool is shuffled (or sorted by length, with `length_bucketing`,
   whose batches are then shuffled) and cut into batches, padded dynamically to
   the longest sequence of the batch on each tokenizer's `padding_side`.
5. State: per consumer of the rank (epoch, position of the current pool's first
   chunk as (document, chunk) in the consumer's slice, the consumer's batch count
   at the pool, batches of the pool already taken), per worker the local index
   of its next batch, and which worker yields next. Resuming
   re-reads one shard and re-tokenizes at most one pool of chunks; skipped
   documents are never read (their position is arithmetic on the order).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from trainer.data.chunking import DualChunker
from trainer.data.shards import Manifest, ShardError, load_manifest, missing_shards, read_shard_texts
from trainer.data.stream_config import StreamConfig
from trainer.errors import DataError

STATE_FORMAT = "trainer.stream/2"
TOKENIZE_GROUP = 8  # documents tokenized per encode_batch call


# ---------------------------------------------------------------- order and batches


def epoch_order(rows: list[int], seed: int, epoch: int, shuffle: bool = True, window: int = 10_000) -> np.ndarray:
    """The epoch's global document order: [D] int64 global document ids (shard offset + row).

    Shards in a random order, then documents permuted inside consecutive windows
    of `window` documents. Deterministic in (seed, epoch); identity without shuffle.
    """
    offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
    if not shuffle:
        return np.arange(offsets[-1], dtype=np.int64)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0xD0C5])
    perm = rng.permutation(len(rows))
    order = np.concatenate([np.arange(offsets[s], offsets[s + 1], dtype=np.int64) for s in perm] or
                           [np.zeros(0, dtype=np.int64)])
    if window > 1 and len(order) > 1:
        keys = rng.random(len(order))
        order = order[np.lexsort((keys, np.arange(len(order)) // window))]
    return order


def consumer_slice(num_docs: int, consumer: int, consumers: int) -> tuple[int, int]:
    """[lo, hi) of the epoch order that consumer `consumer` of `consumers` reads."""
    return num_docs * consumer // consumers, num_docs * (consumer + 1) // consumers


class _ShardCache:
    """Texts of the most recently used shards of one process (bounded LRU)."""

    def __init__(self, manifest: Manifest, capacity: int, checksum: bool):
        self.manifest, self.capacity, self.checksum = manifest, capacity, checksum
        self.offsets = np.concatenate([[0], np.cumsum([s.rows for s in manifest.shards], dtype=np.int64)])
        self.cache: OrderedDict[int, list[str]] = OrderedDict()

    def text(self, doc: int) -> str:
        shard = int(np.searchsorted(self.offsets, doc, side="right") - 1)
        if shard not in self.cache:
            self.cache[shard] = read_shard_texts(self.manifest, shard, self.checksum)
            while len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
        self.cache.move_to_end(shard)
        return self.cache[shard][doc - int(self.offsets[shard])]


def pad_batch(seqs: list[np.ndarray], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences -> (ids [batch, longest] LongTensor, attention mask [batch, longest]), padded on `side`."""
    longest = max(len(s) for s in seqs)
    ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, longest - len(s):], mask[i, longest - len(s):] = s, 1
        else:
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _fresh_state() -> dict[str, int]:
    return {"epoch": 0, "doc": 0, "chunk": 0, "batch": 0, "skip": 0}


class StreamDataset(IterableDataset):
    """The per-process part of the stream; use it through `StreamLoader`, which owns the resume state.

    Rank r's local consumer L is global consumer L * world_size + r; its local
    micro-batch j comes from local consumer j % per_rank and is global
    micro-batch j * world_size + r. Logical worker w yields the local indices
    j = w (mod workers). Iterating yields collated batches with an extra
    `_stream_state` entry (JSON: worker, local consumer, its state after this
    batch, the local index j) that `StreamLoader` removes.
    """

    def __init__(self, cfg: StreamConfig, manifest: Manifest, llm_tokenizer: PreTrainedTokenizerBase,
                 nllb_tokenizer: PreTrainedTokenizerBase, batch_size: int, rank: int, world_size: int, seed: int):
        self.cfg, self.manifest = cfg, manifest
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.workers = max(1, cfg.num_workers)
        self.consumers = cfg.consumers or world_size * self.workers
        if self.consumers % (world_size * self.workers):
            raise DataError(f"consumers={self.consumers} (data.consumers in a job) is not a multiple of world_size x "
                             f"max(1, num_workers) = {world_size} x {self.workers}; use a common multiple of the "
                             f"launch shapes to compare, or leave it unset")
        self.per_rank = self.consumers // world_size
        self.chunker = DualChunker(llm_tokenizer, nllb_tokenizer, cfg.max_length)
        self.pad = {}
        for name, tok in (("llm", llm_tokenizer), ("nllb", nllb_tokenizer)):
            if tok.pad_token_id is None:
                raise DataError(f"the {name} tokenizer has no pad token: set tokenizer.pad_token "
                                 f"(for Llama 3, the EOS token) before building the stream")
            self.pad[name] = (tok.pad_token_id, tok.padding_side)
        self.rows = [s.rows for s in manifest.shards]
        min_rows = max(1, min((r for r in self.rows if r), default=1))
        window = cfg.shuffle_window if cfg.shuffle else 1
        self.cache_shards = math.ceil(window / min_rows) + 1  # per consumer
        # per local consumer state (None: the start), per logical worker its next local index, rotation
        self.resume: tuple[list[dict | None], list[int], int] = (
            [None] * self.per_rank, list(range(self.workers)), 0)
        self._orders: OrderedDict[int, np.ndarray] = OrderedDict()

    # --- what each consumer reads

    def _docs(self, epoch: int, consumer: int) -> np.ndarray:
        if epoch not in self._orders:  # shared by the process's consumers; two epochs kept (consumers drift)
            self._orders[epoch] = epoch_order(self.rows, self.seed, epoch, self.cfg.shuffle, self.cfg.shuffle_window)
            while len(self._orders) > 2:
                self._orders.popitem(last=False)
        order = self._orders[epoch]
        lo, hi = consumer_slice(len(order), consumer, self.consumers)
        return order[lo:hi]

    def _pool_rng(self, epoch: int, batch: int, consumer: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, batch, consumer, 0xB00C])

    # --- iteration

    def _chunks(self, docs: np.ndarray, doc: int, chunk: int, cache: _ShardCache) -> Iterator[tuple]:
        """(chunk, global doc id, chunk index, position after it) from position (doc, chunk) of `docs`."""
        start_doc = doc
        while doc < len(docs):
            group = docs[doc:doc + TOKENIZE_GROUP]
            chunked = self.chunker.chunk_documents([cache.text(int(g)) for g in group])
            for k, chunks in enumerate(chunked):
                d = doc + k
                for j in range(chunk if d == start_doc else 0, len(chunks)):
                    after = (d, j + 1) if j + 1 < len(chunks) else (d + 1, 0)
                    yield chunks[j], int(group[k]), j, after
            doc += len(group)

    def _pool_batches(self, pool: list[tuple], rng: np.random.Generator, final: bool) -> list[list[tuple]]:
        bs = self.batch_size
        if self.cfg.length_bucketing:
            lengths = np.array([len(c.llm_ids) + len(c.nllb_ids) for c, *_ in pool])
            order = np.lexsort((rng.random(len(pool)), lengths))
        elif self.cfg.shuffle:
            order = rng.permutation(len(pool))
        else:
            order = np.arange(len(pool))
        batches = [[pool[i] for i in order[s:s + bs]] for s in range(0, len(pool), bs)]
        if self.cfg.length_bucketing and self.cfg.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if final and self.cfg.drop_last:
            batches = [b for b in batches if len(b) == bs]
        return batches

    def _collate(self, items: list[tuple]) -> dict[str, Any]:
        chunks = [c for c, *_ in items]
        llm_ids, llm_mask = pad_batch([c.llm_ids for c in chunks], *self.pad["llm"])
        nllb_ids, nllb_mask = pad_batch([c.nllb_ids for c in chunks], *self.pad["nllb"])
        batch: dict[str, Any] = {"llm_input_ids": llm_ids, "llm_attention_mask": llm_mask,
                                 "nllb_input_ids": nllb_ids, "nllb_attention_mask": nllb_mask,
                                 "doc_index": torch.tensor([d for _, d, _, _ in items], dtype=torch.long),
                                 "chunk_index": torch.tensor([j for _, _, j, _ in items], dtype=torch.long)}
        if self.cfg.return_text:
            batch["text"] = [c.text for c in chunks]
        return batch

    def consumer_batches(self, consumer: int, state: dict | None, cache: _ShardCache) -> Iterator[tuple[dict, dict]]:
        """(batch, state after it) of global consumer `consumer`, from `state` (None: the start)."""
        state = dict(state or _fresh_state())
        pool_size = self.cfg.pool_batches * self.batch_size
        while self.cfg.epochs is None or state["epoch"] < self.cfg.epochs:
            epoch = state["epoch"]
            chunks = self._chunks(self._docs(epoch, consumer), state["doc"], state["chunk"], cache)
            while True:
                pool = []
                after = (state["doc"], state["chunk"])
                for item in chunks:
                    pool.append(item)
                    after = item[3]
                    if len(pool) == pool_size:
                        break
                if not pool:
                    break
                final = len(pool) < pool_size
                batches = self._pool_batches(pool, self._pool_rng(epoch, state["batch"], consumer), final)
                next_pool = {"epoch": epoch, "doc": after[0], "chunk": after[1],
                             "batch": state["batch"] + len(batches), "skip": 0}
                for i in range(state["skip"], len(batches)):
                    now = next_pool if i + 1 == len(batches) else {**state, "skip": i + 1}
                    yield self._collate(batches[i]), now
                state = next_pool
            state = {"epoch": epoch + 1, "doc": 0, "chunk": 0, "batch": state["batch"], "skip": 0}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        states, next_local, rotation = self.resume
        worker = ((info.id if info is not None else 0) + rotation) % self.workers
        mine = range(worker, self.per_rank, self.workers)
        cache = _ShardCache(self.manifest, self.cache_shards * len(mine), self.cfg.verify_checksums)
        running: dict[int, Iterator[tuple[dict, dict]]] = {}
        exhausted: set[int] = set()
        j = next_local[worker]
        while len(exhausted) < len(mine):  # local batch j from local consumer j % per_rank, round robin
            local, index, j = j % self.per_rank, j, j + self.workers
            if local in exhausted:
                continue
            if local not in running:
                running[local] = self.consumer_batches(local * self.world_size + self.rank, states[local], cache)
            item = next(running[local], None)
            if item is None:
                exhausted.add(local)
                continue
            batch, state = item
            batch["_stream_state"] = json.dumps({"worker": worker, "local": local, "state": state, "index": index})
            yield batch


# ---------------------------------------------------------------- the loader


@dataclass
class _Position:
    """A rank's position: per local consumer state, per logical worker its next local index, the next worker."""

    states: list[dict | None]
    next_local: list[int]
    next_worker: int = 0
    batches_seen: int = 0
    last_index: int | None = None


def _follow(dataset: StreamDataset, pos: _Position) -> Iterator[dict[str, Any]]:
    """Batches of `dataset` from `pos`, updating `pos` after each batch handed out."""
    dataset.resume = (list(pos.states), list(pos.next_local), pos.next_worker)
    cfg, workers = dataset.cfg, dataset.workers
    if cfg.num_workers == 0:
        source: Any = iter(dataset)
    else:
        source = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers,
                            prefetch_factor=cfg.prefetch_factor, persistent_workers=False)
    for batch in source:
        info = json.loads(batch.pop("_stream_state"))
        pos.states[info["local"]] = info["state"]
        pos.next_local[info["worker"]] = info["index"] + workers
        pos.next_worker = (info["worker"] + 1) % workers
        pos.last_index = info["index"] * dataset.world_size + dataset.rank
        pos.batches_seen += 1
        yield batch



class StreamLoader:
    """Micro-batches for one rank, with exact resume (see the module doc for the order and the consumers).

    Args:
        cfg: StreamConfig (manifest, max_length, consumers, shuffling, workers, ...).
        llm_tokenizer, nllb_tokenizer: fast HF tokenizers with pad tokens; set the NLLB tokenizer's
            `src_lang` first (its language code is read once, here). Padding side: each tokenizer's.
        batch_size: examples (chunks) per micro-batch on this rank.
        rank, world_size: this process's data-parallel rank and the number of ranks.
        seed: shuffling seed (the job seed); the order also depends on the epoch.

    An iterator (`next(loader)`, `for batch in loader`) of dicts with `llm_input_ids`,
    `llm_attention_mask`, `nllb_input_ids`, `nllb_attention_mask` ([batch, seq] LongTensors,
    seq = the longest in the batch per view, <= max_length), `doc_index` and `chunk_index` ([batch]: each
    span's global document id and its index among the document's spans: the teacher cache's keys), plus
    `text` with `cfg.return_text`. Endless unless `cfg.epochs` is set. After each batch `last_index`
    is its global micro-batch index k (k % world_size == rank). `state_dict()` describes the position
    after the last batch handed out; `load_state_dict()` on a new loader (same config, manifest, seed,
    rank, world size, worker count) continues with the very next batch. The same interface as
    `trainer.data.text.MicroBatches`.
    """

    def __init__(self, cfg: StreamConfig, llm_tokenizer: PreTrainedTokenizerBase,
                 nllb_tokenizer: PreTrainedTokenizerBase, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        if batch_size < 1:
            raise DataError(f"batch_size must be positive (got {batch_size})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        manifest = load_manifest(cfg.manifest)
        if not manifest.complete:
            raise ShardError(f"{manifest.root}: manifest is marked incomplete; finish it by re-running "
                             f"python -m data_prep.fineweb_shards with the same arguments")
        missing = missing_shards(manifest)
        if missing:
            raise ShardError(f"{manifest.root}: {len(missing)} shard(s) listed in the manifest are missing: "
                             + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if manifest.num_rows == 0:
            raise ShardError(f"{manifest.root}: the manifest lists no documents")
        self.cfg, self.manifest = cfg, manifest
        self.dataset = StreamDataset(cfg, manifest, llm_tokenizer, nllb_tokenizer, batch_size, rank, world_size,
                                     seed)
        self.workers = self.dataset.workers
        self._pos = _Position([None] * self.dataset.per_rank, list(range(self.workers)))
        self._iterator: Iterator[dict[str, Any]] | None = None

    @property
    def num_documents(self) -> int:
        return self.manifest.num_rows

    @property
    def last_index(self) -> int | None:
        """Global micro-batch index k of the last batch handed out (k % world_size == rank)."""
        return self._pos.last_index

    @property
    def batches_seen(self) -> int:
        return self._pos.batches_seen

    def __iter__(self) -> "StreamLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:  # the generator does not hold the loader: dropping the loader stops workers
            self._iterator = _follow(self.dataset, self._pos)
        return next(self._iterator)

    def close(self) -> None:
        """Stop the current iteration (and its worker processes); the position is kept."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def _key(self) -> dict[str, Any]:
        d = self.dataset
        return {"manifest": self.manifest.fingerprint(), "seed": d.seed, "rank": d.rank,
                "world_size": d.world_size, "workers": self.workers, "num_consumers": d.consumers,
                "batch_size": d.batch_size, "config": self.cfg.sequence_key()}

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out: per-consumer states, each worker's next local index,
        the next worker, and the settings they are valid for (JSON-serialisable)."""
        pos = self._pos
        return {"format": STATE_FORMAT, **self._key(), "states": [dict(s) if s else None for s in pos.states],
                "next_local": list(pos.next_local), "next_worker": pos.next_worker,
                "batches_seen": pos.batches_seen, "last_index": pos.last_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a loader with the same settings)."""
        if state.get("format") != STATE_FORMAT:
            raise DataError(f"stream state: format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        key = self._key()
        wrong = [f"{k} (state {state.get(k)!r}, now {v!r})" for k, v in key.items() if state.get(k) != v]
        if wrong:
            raise DataError("stream state was saved with other settings: " + "; ".join(wrong))
        self.close()
        self._pos = _Position([dict(s) if s else None for s in state["states"]],
                              [int(j) for j in state["next_local"]], int(state["next_worker"]),
                              int(state.get("batches_seen", 0)), state.get("last_index"))
