"""Translation pairs as contrastive micro-batches, and multi-way parallel sets for retrieval.

    stream = stream_from_config(job.parallel, rank, world_size)      # trainer.data.parallel
    batches = PairBatches(stream, batch_size=16, collate=PairCollator(tokenizer, 64))
    batch = next(batches)    # input_ids / attention_mask [2B, s]: rows 0..B-1 English, B..2B-1 translations

A micro-batch mixes languages as the stream draws them (one language per pair), so in-batch
negatives include other languages' sentences. Both sides are tokenized in one call, padded to one
length, and run through the model in one forward pass.
"""

from __future__ import annotations

import itertools

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.pair_sampling import BalancedPairStream, stream_from_config
from trainer.data.parallel import ParallelDataConfig, load_parallel
from trainer.errors import DataError


class PairCollator:
    """Rows {"english", "other"} -> {"input_ids", "attention_mask"} [2B, s], English rows first."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        texts = [r["english"] for r in rows] + [r["other"] for r in rows]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class PairBatches:
    """Endless, resumable micro-batches over this rank's `BalancedPairStream`.

    The stream is deterministic in its seed and shard, so the position is one number: pairs
    consumed. Resuming replays the stream up to it (cheap: no tokenization while skipping).
    """

    def __init__(self, stream: BalancedPairStream, batch_size: int, collate: PairCollator):
        if batch_size < 2:
            raise DataError(f"alignment batch size must be >= 2 (in-batch negatives), got {batch_size}")
        self.stream = stream
        self.batch_size = batch_size
        self.collate = collate
        self.consumed = 0
        self._it = iter(stream)

    def __iter__(self) -> "PairBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rows = list(itertools.islice(self._it, self.batch_size))
        if len(rows) < self.batch_size:
            raise StopIteration
        self.consumed += len(rows)
        return self.collate(rows)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "batch_size": self.batch_size, "seed": self.stream.seed,
                "rank": self.stream.rank, "world_size": self.stream.world_size,
                "languages": sorted(self.stream.probabilities)}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [f"{key}: saved {state.get(key)!r}, now {mine[key]!r}"
                  for key in ("batch_size", "seed", "rank", "world_size", "languages") if state.get(key) != mine[key]]
        if differ:
            raise DataError("parallel data: cannot resume this pair stream: " + "; ".join(differ))
        self._it = iter(self.stream)
        self.consumed = int(state["consumed"])
        for _ in itertools.islice(self._it, self.consumed):
            pass


def load_multiway(cfg: ParallelDataConfig, n: int | None = None) -> dict[str, list[str]]:
    """A multi-way parallel set: {English code: sentences, language: translations, ...}, first `n` rows.

    Every language's English side must be the same sentences in the same order (files written by
    `data_prep.make_parallel_data` with one seed, or FLORES-200); an error names the first row
    that differs. English comes first, then the languages in the configured order.
    """
    corpus = load_parallel(cfg)
    order = [lang for lang in cfg.languages if lang in corpus.tables] or corpus.languages
    out: dict[str, list[str]] = {}
    english: list[str] | None = None
    first = None
    for lang in order:
        table = corpus.tables[lang]
        eng, other = table.english[:n], table.other[:n]
        if english is None:
            english, first = eng, lang
            out[corpus.english] = eng
        elif eng != english:
            if len(eng) != len(english):
                raise DataError(f"multi-way set: {lang} has {len(eng)} sentences, {first} has {len(english)}")
            row = next(i for i, (a, b) in enumerate(zip(eng, english)) if a != b)
            raise DataError(f"multi-way set: the English side of {lang} differs from that of {first} at row {row} "
                             f"({eng[row]!r} vs {english[row]!r}); retrieval needs the same English sentences in "
                             f"the same order for every language (max_pairs_per_language samples each language "
                             f"differently: use eval.retrieval_sentences instead)")
        out[lang] = other
    if len(out) < 2:
        raise DataError("multi-way set: need English and at least one other language")
    return out


def pair_batches(cfg: ParallelDataConfig, batch_size: int, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 rank: int = 0, world_size: int = 1) -> PairBatches:
    """This rank's share of `cfg`'s pairs, `batch_size` pairs per micro-batch ([2B, s], English rows first)."""
    return PairBatches(stream_from_config(cfg, rank=rank, world_size=world_size), batch_size,
                       PairCollator(tokenizer, max_length))
