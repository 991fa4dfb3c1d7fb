"""Language-balanced sampling of translation pairs, sharded over ranks and DataLoader workers.

Sampling (`BalancedPairStream`): at each step a language is drawn with
probability `p_l ~ n_l ** (1 / T)` (temperature `T`; `None` or `inf` =
uniform over languages whatever their sizes, `T = 1` = proportional to size),
then that language's next example in a shuffled order that is reshuffled
after each pass (small corpora are repeated, large ones subsampled).
Deterministic under `seed`. Sharding: each language's examples are split
into `world_size * num_workers` disjoint parts after a seeded permutation,
so ranks (and DataLoader workers) never share an example; every shard draws
languages with the same global probabilities. A language with fewer pairs
than shards fails on every rank alike, naming the language and its size.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterator

import numpy as np
import torch

from trainer.data.parallel import ParallelCorpus, ParallelDataConfig, load_parallel
from trainer.errors import DataError
from trainer.languages.table import LanguageTable


def language_probabilities(sizes: dict[str, int], temperature: float | None = None) -> dict[str, float]:
    """p_l ~ n_l ** (1 / T) over languages with data; T None or inf: uniform."""
    langs = sorted(lang for lang, n in sizes.items() if n > 0)
    if not langs:
        raise DataError("no language has any pairs to sample from")
    if temperature is None or math.isinf(temperature):
        weights = np.ones(len(langs))
    else:
        if temperature <= 0:
            raise DataError(f"temperature must be > 0 (or None/inf for uniform), got {temperature}")
        weights = np.array([sizes[lang] for lang in langs], dtype=np.float64) ** (1.0 / temperature)
    weights /= weights.sum()
    return dict(zip(langs, weights.tolist()))


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class BalancedPairStream(torch.utils.data.IterableDataset):
    """Yields {"language", "english", "other", "id"} dicts, languages drawn with `language_probabilities`.

    `rank`/`world_size` (and DataLoader workers, detected at iteration) select
    a disjoint part of every language's examples. `num_samples`: examples this
    rank yields in total (split over its workers); None = endless.
    """

    def __init__(self, corpus: ParallelCorpus, temperature: float | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_samples: int | None = None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.corpus = corpus
        self.temperature = temperature
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_samples = num_samples
        self.probabilities = language_probabilities(corpus.sizes(), temperature)
        self.check_shards(world_size)

    def check_shards(self, num_shards: int) -> None:
        """Every language needs at least one example per shard; checked on every rank alike."""
        small = {lang: n for lang, n in self.corpus.sizes().items() if n < num_shards}
        if small:
            listed = ", ".join(f"{lang} has {n} pairs" for lang, n in small.items())
            raise DataError(f"{listed}, fewer than the {num_shards} shards (ranks x DataLoader workers); "
                             f"every shard needs at least one: add data, drop the language or use fewer shards")

    def shard_indices(self, lang: str, shard: int, num_shards: int) -> np.ndarray:
        """The example indices of `lang` that belong to `shard` of `num_shards` (a seeded permutation, sliced)."""
        n = len(self.corpus.tables[lang])
        perm = np.random.default_rng([self.seed, _stable(lang)]).permutation(n)
        return perm[shard::num_shards]

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shard, num_shards = self.rank * workers + worker, self.world_size * workers
        self.check_shards(num_shards)
        langs = list(self.probabilities)
        probs = np.array([self.probabilities[lang] for lang in langs])
        parts = {lang: self.shard_indices(lang, shard, num_shards) for lang in langs}
        cursor = {lang: 0 for lang in langs}
        passes = {lang: 0 for lang in langs}
        order = {lang: parts[lang] for lang in langs}
        rng = np.random.default_rng([self.seed, shard, 1])
        total = None
        if self.num_samples is not None:
            total = self.num_samples // workers + (1 if worker < self.num_samples % workers else 0)
        produced = 0
        draws: list[int] = []
        while total is None or produced < total:
            if not draws:      # draw languages in blocks of 4096 (deterministic in seed and shard)
                draws = rng.choice(len(langs), size=4096, p=probs).tolist()[::-1]
            lang = langs[draws.pop()]
            if cursor[lang] == len(order[lang]):
                passes[lang] += 1
                cursor[lang] = 0
                order[lang] = np.random.default_rng([self.seed, shard, _stable(lang), passes[lang]]).permutation(parts[lang])
            i = int(order[lang][cursor[lang]])
            cursor[lang] += 1
            english, other = self.corpus.tables[lang][i]
            yield {"language": lang, "english": english, "other": other, "id": f"{lang}:{i}"}
            produced += 1


def sample_pairs(corpus: ParallelCorpus, n: int, temperature: float | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> list[dict]:
    """The first `n` examples of a `BalancedPairStream` (convenience for tests and small jobs)."""
    return list(BalancedPairStream(corpus, temperature, seed, rank, world_size, num_samples=n))


def stream_from_config(cfg: ParallelDataConfig, rank: int = 0, world_size: int = 1,
                       num_samples: int | None = None, table: LanguageTable | None = None) -> BalancedPairStream:
    """Load the configured corpus and wrap it in a sampler with the configured temperature and seed."""
    corpus = load_parallel(cfg, table)
    return BalancedPairStream(corpus, cfg.temperature, cfg.seed, rank, world_size, num_samples)
