"""Stage 1's text section, beside its reader (schema only: the job schema imports it without importing torch).

`trainer.config` re-exports it (`from trainer.config import TextDataConfig`); `trainer.data.text` reads it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from trainer.data.stream_config import StreamOptions


class TextDataConfig(StreamOptions):
    """Stage-1 English text, from exactly one source: `files` (read into memory) or `manifest` (streamed shards).

    The streaming options (inherited from `trainer.data.stream.StreamOptions`: shuffle_window and
    below) apply to `manifest` only; docs/streaming.md has the details.
    """

    files: list[str] = Field(default_factory=list, description="Local parquet/jsonl files or globs with a text column, "
                                                               "read into memory (small corpora, tests)")
    manifest: str | None = Field(None, description="Shard manifest (manifest.json or its folder) written by "
                                                   "python -m data_prep.fineweb_shards, streamed (FineWeb scale)")
    text_column: str = Field("text", description="Column to read from files (a manifest names its own)")
    max_length: int = Field(128, gt=0, description="Tokens per example in each view (LLM and NLLB), special tokens "
                                                   "included. files: each view truncated; manifest: documents cut "
                                                   "into spans that fit both views, nothing truncated")

    length_bucketing: bool | None = Field(None, description=(
        "Sort each pool by length before cutting it into batches (less padding), then shuffle the batches; "
        "null = on with data.manifest (stage 1's default; data.files keep their own order)"))

    def stream_options(self) -> dict[str, Any]:
        """The settings of the streaming reader (`trainer.data.stream.StreamConfig` keys); length bucketing on
        unless the job turns it off."""
        options = self.model_dump(include={"manifest", "max_length", *StreamOptions.model_fields})
        return options | {"length_bucketing": options["length_bucketing"] is not False}

    @model_validator(mode="after")
    def _one_source(self) -> "TextDataConfig":
        if "files" in self.model_fields_set and not self.files and self.manifest is None:
            raise ValueError("data.files: empty; give at least one parquet/jsonl file or glob (or data.manifest)")
        if self.files and self.manifest is not None:
            raise ValueError("data.files and data.manifest: give one of them, not both")
        if self.manifest is None and not self.files:
            raise ValueError("data.files or data.manifest: give parquet/jsonl files or a shard manifest")
        if self.manifest is None:
            # a dumped-and-reloaded config sets every field, so only a non-default value is a mistake
            streaming = sorted(name for name in set(StreamOptions.model_fields) - {"shuffle"}
                               if getattr(self, name) != type(self).model_fields[name].get_default())
            if streaming:
                raise ValueError(f"data.{streaming[0]}: a streaming option, used with data.manifest only "
                                 f"(data.files is read into memory)")
        elif self.text_column != "text":
            raise ValueError("data.text_column: used with data.files only (a shard manifest names its text column)")
        return self
