"""Teacher vectors for MT-LLM stage 2 (M1): the fine-tuned LLM's pooled representation of every training
example, computed once, stored with the example ids, and looked up by id.

    cache = compute_teacher_cache(embed, examples, collate, batch_size=32, fingerprint={...})
    cache.save(folder)                              # vectors.safetensors + meta.json
    x = TeacherCache.load(folder).lookup(ids)       # [b, d] fp32 for a batch's example ids

Row alignment does not depend on how the training data is shuffled, sharded over ranks or resumed:
vectors are computed in the order of the sorted ids (no shuffling), and a batch finds its rows by
the ids it carries. `fingerprint` (the teacher export's checksum, the data, the pooling) is stored in
meta.json; a cache whose fingerprint differs from the job's is refused, naming the differences.
meta.json also holds vectors.safetensors' size and sha256, checked once when the cache is loaded (a
truncated or corrupt file is a DataError naming it; caches written before hold no checksum).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.errors import DataError
from trainer.fsutil import replace_dir, sha256_file, temp_dir_beside, write_atomic

VECTORS_FILE = "vectors.safetensors"
META_FILE = "meta.json"


@dataclass
class TeacherCache:
    ids: list[str]                 # row i holds the vector of example ids[i] (sorted)
    vectors: torch.Tensor          # [N, d] fp32
    fingerprint: dict

    def __post_init__(self):
        self.row_of = {example_id: i for i, example_id in enumerate(self.ids)}

    def rows(self, ids: Sequence[str]) -> torch.Tensor:
        """Row indices [b] of `ids`; an id the cache lacks is a ValueError naming it."""
        missing = [i for i in ids if i not in self.row_of]
        if missing:
            raise ValueError(f"teacher cache: no vector for example {missing[0]!r} ({len(missing)} missing); "
                             f"rebuild it for this data")
        return torch.tensor([self.row_of[i] for i in ids], dtype=torch.long)

    def lookup(self, ids: Sequence[str]) -> torch.Tensor:
        """[b, d] fp32 teacher vectors of `ids`, in their order."""
        return self.vectors[self.rows(ids)]

    def save(self, folder: str | Path) -> Path:
        """Write the cache as a folder, atomically (complete or absent)."""
        folder = Path(folder)
        tmp = temp_dir_beside(folder)
        save_file({"vectors": self.vectors.contiguous()}, str(tmp / VECTORS_FILE))
        checksum = {"size": (tmp / VECTORS_FILE).stat().st_size, "sha256": sha256_file(tmp / VECTORS_FILE)}
        write_atomic(tmp / META_FILE, json.dumps({"ids": self.ids, "fingerprint": self.fingerprint,
                                                  "files": {VECTORS_FILE: checksum}}))
        return replace_dir(tmp, folder)

    @classmethod
    def load(cls, folder: str | Path) -> "TeacherCache":
        """The cache in `folder`, its vectors checked against meta.json's size and sha256 (once, here)."""
        folder = Path(folder)
        meta_path, path = folder / META_FILE, folder / VECTORS_FILE
        rebuild = f"delete {folder} to have it rebuilt (or python -m data_prep.teacher_cache JOB.yaml)"
        try:
            meta = json.loads(meta_path.read_text())
            ids, fingerprint = meta["ids"], meta["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"teacher cache: {meta_path} is missing or unreadable ({e}); {rebuild}") from None
        entry = (meta.get("files") or {}).get(VECTORS_FILE)
        if not path.is_file():
            raise DataError(f"teacher cache: {path} is missing; {rebuild}")
        if entry is not None:
            if path.stat().st_size != entry["size"]:
                raise DataError(f"teacher cache: {path} has {path.stat().st_size} bytes, {meta_path} says "
                                f"{entry['size']} (truncated or replaced); {rebuild}")
            if sha256_file(path) != entry["sha256"]:
                raise DataError(f"teacher cache: {path} does not match its sha256 in {meta_path} (corrupt); {rebuild}")
        try:
            vectors = load_file(str(path))["vectors"]
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise DataError(f"teacher cache: {path} is unreadable ({e}); {rebuild}") from None
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise DataError(f"teacher cache: {path} holds {tuple(vectors.shape)} vectors for {len(ids)} ids in "
                            f"{meta_path}; {rebuild}")
        return cls(ids, vectors, fingerprint)


def check_fingerprint(cache: TeacherCache, expected: dict, folder: str | Path) -> None:
    """The cache was made by this teacher on this data, or a ValueError lists what differs."""
    differing = {k: (cache.fingerprint.get(k), v) for k, v in expected.items() if cache.fingerprint.get(k) != v}
    if differing:
        shown = "; ".join(f"{k}: cached {old!r}, now {new!r}" for k, (old, new) in differing.items())
        raise ValueError(f"teacher cache {folder} was made for another teacher or data ({shown}); delete it or "
                         f"point teacher_cache elsewhere")


@torch.no_grad()
def compute_teacher_cache(embed: Callable[[dict], torch.Tensor], examples: Sequence, collate: Callable[[list], dict],
                          batch_size: int, fingerprint: dict) -> TeacherCache:
    """`embed(batch) -> [b, d]` over `examples` (objects with an `id`) in sorted-id order -> the cache (fp32, CPU)."""
    ordered = sorted(examples, key=lambda e: e.id)
    ids = [e.id for e in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("teacher cache: example ids are not unique; the cache could not be looked up by id")
    chunks = [embed(collate(ordered[i:i + batch_size])).float().cpu() for i in range(0, len(ordered), batch_size)]
    return TeacherCache(ids, torch.cat(chunks), fingerprint)
