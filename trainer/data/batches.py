"""Endless, resumable, rank-aware micro-batches over examples held in memory (any recipe's in-memory data).

The streaming reader (`trainer.data.stream.StreamLoader`) offers the same interface for data
too large to hold.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.errors import DataError


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
            raise DataError(f"data: {len(dataset)} examples is fewer than one micro-batch of {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"data: rank {rank} outside world size {world_size}")
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

    def restart_at(self, done: int) -> None:
        """Continue after the first `done` global micro-batches, under this rank layout (any world size).

        The global sequence depends on the seed alone, so a run resumed on another number of ranks (the
        same micro-batches per optimizer step in all) takes exactly the micro-batches the old layout would have.
        """
        self.next_index = done + self.rank
        self.last_index = None

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; the data, seed, batch size and rank layout must be the same."""
        mine = self.state_dict()
        differ = [f"{key}: saved {state.get(key)!r}, now {mine[key]!r}" for key in
                  ("seed", "batch_size", "shuffle", "rank", "world_size", "num_examples")
                  if state.get(key) != mine[key]]
        if differ:
            raise DataError("data: cannot resume this batch stream: " + "; ".join(differ))
        if state["next_index"] % self.world_size != self.rank:
            raise DataError(f"data: next_index {state['next_index']} does not belong to rank {self.rank}")
        self.next_index = int(state["next_index"])
        self.last_index = None
