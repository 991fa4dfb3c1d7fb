"""Training shards and their manifest: the on-disk contract between
`data_prep.fineweb_shards` (writer) and `trainer.data.stream` (reader).

A shard set is a folder with `manifest.json` and parquet files:

    {"format": "trainer.fineweb_shards/1",
     "text_column": "text",
     "token_counter": "tokenizer:/path/or/hub-name" | "whitespace",
     "complete": true,
     "params": {...the creation arguments...},
     "created_with": {"pyarrow": "..."},
     "shards": [{"path": "shard-00000.parquet", "rows": 10000, "tokens": 7412345,
                 "sha256": "<hex>", "source_start": 0, "source_end": 10000}, ...]}

Shard paths are relative to the manifest's folder, so a shard set can be moved
or copied as a whole. `source_start`/`source_end` are the half-open range of
input-document indices the shard was cut from (before subsampling): they let
the writer resume and let anyone trace a document back to its source.

Every error names the manifest or shard file and the field at fault
(`ShardError`, a `ValueError`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.errors import DataError
from trainer.fsutil import sha256_file, write_atomic  # noqa: F401 - sha256_file re-exported

MANIFEST_FORMAT = "trainer.fineweb_shards/1"
MANIFEST_NAME = "manifest.json"


class ShardError(DataError):
    """A manifest or shard that is missing, corrupt or malformed; the message names the file."""


class ShardInfo(BaseModel):
    """One shard as the manifest records it."""

    model_config = ConfigDict(extra="ignore")

    path: str = Field(description="Parquet file, relative to the manifest's folder")
    rows: int = Field(ge=0, description="Documents in the shard")
    tokens: int = Field(ge=0, description="Tokens in the shard, counted as the manifest's token_counter says")
    sha256: str = Field(min_length=64, max_length=64, description="Hex SHA-256 of the file's bytes")
    source_start: int = Field(0, ge=0, description="First input-document index the shard was cut from")
    source_end: int = Field(0, ge=0, description="One past the last input-document index the shard covers")


class Manifest(BaseModel):
    """A shard set. `root` (the manifest's folder) is set by `load_manifest`, not stored."""

    model_config = ConfigDict(extra="ignore")

    format: str = Field(MANIFEST_FORMAT, description="Manifest format tag")
    text_column: str = Field("text", description="Column holding the document text in every shard")
    token_counter: str = Field("whitespace", description="How `tokens` was counted")
    complete: bool = Field(True, description="False while the writer is still adding shards")
    params: dict[str, Any] = Field(default_factory=dict, description="Creation arguments of the writer")
    created_with: dict[str, str] = Field(default_factory=dict, description="Library versions (informative)")
    shards: list[ShardInfo] = Field(default_factory=list)

    root: Path | None = Field(None, exclude=True)

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def shard_path(self, index: int) -> Path:
        """Absolute path of shard `index` (paths in the manifest are relative to its folder)."""
        root = self.root if self.root is not None else Path(".")
        return root / self.shards[index].path

    def fingerprint(self) -> str:
        """A short hash of the shard list (paths, rows, checksums): resume state is bound to it."""
        text = json.dumps([(s.path, s.rows, s.sha256) for s in self.shards])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, no timestamps): equal shard sets give equal bytes."""
        return json.dumps(self.model_dump(mode="json", exclude={"root"}), indent=1, sort_keys=True) + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_file(path: str | os.PathLike) -> Path:
    """A manifest path, or a folder holding `manifest.json` -> the manifest file path."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest (a file, or a folder with `manifest.json`)."""
    path = manifest_file(path)
    if not path.is_file():
        raise ShardError(f"manifest not found: {path} (the demo's shards: python -m data_prep.demo_data; "
                         f"FineWeb's: python -m data_prep.fineweb_shards)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ShardError(f"{path}: the top level must be a JSON object")
    if raw.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: field 'format' is {raw.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ShardError(f"{path}: invalid manifest: {fields}") from None
    manifest.root = path.resolve().parent
    return manifest


def save_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write the manifest atomically (temporary file + rename), so readers never see half a file."""
    path = manifest_file(path)
    write_atomic(path, manifest.to_json())
    return path


def missing_shards(manifest: Manifest) -> list[str]:
    """Manifest paths of the shards whose file does not exist."""
    return [s.path for i, s in enumerate(manifest.shards) if not manifest.shard_path(i).is_file()]


def check_shard(manifest: Manifest, index: int, checksum: bool = True) -> str | None:
    """One shard's problem as a message naming the file, or None when it is fine.

    Checks: the file exists, its SHA-256 matches (when `checksum`), it is parquet,
    it has the text column, and its row count matches the manifest.
    """
    info, path = manifest.shards[index], manifest.shard_path(index)
    if not path.is_file():
        return f"{path}: missing shard (listed in the manifest as {info.path!r})"
    if checksum:
        got = sha256_file(path)
        if got != info.sha256:
            return (f"{path}: checksum mismatch (manifest sha256 {info.sha256[:16]}..., "
                    f"file {got[:16]}...): the shard is corrupt or was rewritten")
    try:
        meta = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        return f"{path}: not a readable parquet file: {e}"
    if manifest.text_column not in schema.names:
        return (f"{path}: no column {manifest.text_column!r} (the manifest's text_column); "
                f"columns: {', '.join(schema.names)}")
    if meta.num_rows != info.rows:
        return f"{path}: {meta.num_rows} rows, the manifest says {info.rows}"
    return None


def verify_manifest(manifest: Manifest, checksum: bool = True) -> list[str]:
    """Every shard's problem (see `check_shard`); an empty list means the shard set is sound."""
    problems = [p for i in range(len(manifest.shards)) if (p := check_shard(manifest, i, checksum))]
    if not manifest.complete:
        problems.append(f"{manifest.root}: manifest is marked incomplete (the writer did not finish)")
    return problems


def read_shard_texts(manifest: Manifest, index: int, checksum: bool = True) -> list[str]:
    """All texts of shard `index`, in row order ([rows] strings; a null text reads as "").

    The file is read once; the checksum (when asked) is computed on the same bytes
    that are then parsed. Raises `ShardError` naming the file on a missing file,
    a checksum mismatch, a missing text column or a row count that disagrees.
    """
    info, path = manifest.shards[index], manifest.shard_path(index)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"{path}: missing shard (listed in the manifest as {info.path!r})") from None
    if checksum:
        got = sha256_bytes(data)
        if got != info.sha256:
            raise ShardError(f"{path}: checksum mismatch (manifest sha256 {info.sha256[:16]}..., "
                             f"file {got[:16]}...): the shard is corrupt or was rewritten")
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"{path}: not a readable parquet file: {e}") from None
    names = parquet.schema_arrow.names
    if manifest.text_column not in names:
        raise ShardError(f"{path}: no column {manifest.text_column!r} (the manifest's text_column); "
                         f"columns: {', '.join(names)}")
    column = parquet.read(columns=[manifest.text_column]).column(0)
    if len(column) != info.rows:
        raise ShardError(f"{path}: {len(column)} rows, the manifest says {info.rows}")
    return ["" if t is None else t for t in column.to_pylist()]
