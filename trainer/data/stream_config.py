"""The streaming reader's settings (schema only: the job schema imports it without importing torch)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from trainer.schema_base import Section


class StreamOptions(Section):
    """How shards are read, shuffled and batched: the options a stage-1 job's `data` section shares
    with the reader (`trainer.data.text_config.TextDataConfig` inherits them)."""

    shuffle: bool = Field(True, description="Seeded shuffling of shard order, documents (window) and chunks (pool)")
    shuffle_window: int = Field(10_000, ge=1, description="Documents are permuted inside consecutive windows of this "
                                                          "many documents of the shard-shuffled order; memory grows "
                                                          "with it (texts of the shards a window spans)")
    pool_batches: int = Field(8, ge=1, description="Chunks are shuffled (or length-bucketed) in pools of "
                                                   "pool_batches x micro_batch_size; resuming re-tokenizes at most "
                                                   "one pool")
    length_bucketing: bool = Field(False, description="Sort each pool by length before cutting it into batches "
                                                      "(less padding), then shuffle the batches")
    consumers: int | None = Field(
        None, ge=1, description="Slices the epoch's document order is cut into; global micro-batch k comes from "
                                "slice k % consumers. A multiple of world_size x max(1, num_workers); null = that "
                                "product. Fix it to get the same global batches under every launch shape")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank; 0 reads in the training "
                                                  "process. 0 and 1 give the same batch sequence")
    prefetch_factor: int = Field(4, gt=0, description="Batches each worker prepares ahead (num_workers > 0)")
    verify_checksums: bool = Field(True, description="Check each shard's sha256 against the manifest on read "
                                                     "(hashing the bytes that are read anyway)")


class StreamConfig(StreamOptions):
    """Streaming reader settings: the options plus the manifest, the span length and the reader's extras."""

    manifest: str = Field(description="Shard manifest (manifest.json, or its folder) from data_prep.fineweb_shards")
    max_length: int = Field(512, gt=0, description="Most tokens per example in EACH view, special tokens included; "
                                                   "documents are cut into spans that fit both tokenizers")
    drop_last: bool = Field(False, description="Drop a consumer's short last batch of each epoch (loses at most "
                                               "batch_size - 1 chunks per consumer per epoch)")
    epochs: int | None = Field(None, gt=0, description="Stop after this many epochs; null streams forever "
                                                       "(epoch e+1 reshuffles with seed and epoch)")
    return_text: bool = Field(False, description="Add text (the list of spans) to each batch, for tests and "
                                                 "debugging")

    def sequence_key(self) -> dict[str, Any]:
        """The settings that determine the batch sequence (a resume state must match them)."""
        return self.model_dump(include={"max_length", "shuffle", "shuffle_window", "pool_batches",
                                        "length_bucketing", "drop_last", "epochs"})
