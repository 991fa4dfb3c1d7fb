"""Teacher vectors for MT-LLM stage 2 (M1): the fine-tuned LLM's pooled representation of every training
example, computed once, stored with the example ids, and looked up by id.

    cache = compute_teacher_cache(embed, examples, collate, batch_size=32, fingerprint={...})
    cache.save(folder)                              # vectors.safetensors + meta.json
    x = TeacherCache.load(folder).lookup(ids)       # [b, d] fp32 for a batch's example ids
    x = TeacherCache.load(folder, multiple_choice=True).lookup(ids, width=C)   # [b * C, d]: per (example, choice)

Layout: classification keeps one row per example, row i for ids[i]. Multiple choice keeps one row per
(example, choice): example ids[i]'s `choices[i]` rows are consecutive, in its choices' order, examples in
sorted-id order (meta.json's `choices` lists the counts). `lookup(ids, width)` returns the rows in the
order the student pools them (`TaskExampleCollator`: example-major, `width` rows an example, an example
with fewer choices repeating its last); `choice_positions(ids, width)` says which of those rows are an
example's own choices (the padding left out of the loss).

Row alignment does not depend on how the training data is shuffled, sharded over ranks or resumed:
vectors are computed in the order of the sorted ids (no shuffling), and a batch finds its rows by
the ids it carries. `fingerprint` (the teacher export's checksum, the data, the pooling) is stored in
meta.json; a cache whose fingerprint differs from the job's is refused, naming the differences.
meta.json also holds vectors.safetensors' size and sha256, checked once when the cache is loaded (a
truncated or corrupt file is a DataError naming it; caches written before hold no checksum). A cache
written before multiple-choice caches had a row per choice holds no `choices`: loaded for a
multiple-choice task it is a DataError naming meta.json and saying to rebuild it.
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
    ids: list[str]                 # sorted example ids
    vectors: torch.Tensor          # [N, d] fp32; multiple choice: [sum(choices), d], one row per (example, choice)
    fingerprint: dict
    choices: list[int] | None = None   # multiple choice: example ids[i]'s number of choices (its consecutive rows)

    def __post_init__(self):
        self.row_of = {example_id: i for i, example_id in enumerate(self.ids)}
        counts = self.choices if self.choices is not None else [1] * len(self.ids)
        self.first_row = [0] * len(counts)   # example i's rows: first_row[i] .. first_row[i] + counts[i] - 1
        for i in range(1, len(counts)):
            self.first_row[i] = self.first_row[i - 1] + counts[i - 1]

    def rows(self, ids: Sequence[str], width: int | None = None) -> torch.Tensor:
        """Row indices of `ids`: [b], or with `width` (multiple choice) [b * width], example-major, an example
        with fewer choices repeating its last (as the student's collator pads). An id the cache lacks, or a
        `width` that does not match the cache's layout, is a ValueError."""
        missing = [i for i in ids if i not in self.row_of]
        if missing:
            raise ValueError(f"teacher cache: no vector for example {missing[0]!r} ({len(missing)} missing); "
                             f"rebuild it for this data")
        if (width is None) != (self.choices is None):
            held = "one row per example" if self.choices is None else "a row per choice"
            raise ValueError(f"teacher cache: holds {held}, looked up {'without' if width is None else 'with'} "
                             f"choices; rebuild it for this task")
        index = [self.row_of[i] for i in ids]
        if width is None:
            return torch.tensor([self.first_row[i] for i in index], dtype=torch.long)
        wide = [(self.ids[i], self.choices[i]) for i in index if self.choices[i] > width]
        if wide:
            raise ValueError(f"teacher cache: example {wide[0][0]!r} has {wide[0][1]} choices, the batch {width}; "
                             f"rebuild it for this data")
        return torch.tensor([self.first_row[i] + min(c, self.choices[i] - 1) for i in index for c in range(width)],
                            dtype=torch.long)

    def lookup(self, ids: Sequence[str], width: int | None = None) -> torch.Tensor:
        """[b, d] fp32 teacher vectors of `ids`, in their order; with `width` (multiple choice) [b * width, d],
        row for row the student's (see `rows`)."""
        return self.vectors[self.rows(ids, width)]

    def choice_positions(self, ids: Sequence[str], width: int) -> torch.Tensor:
        """Positions among `lookup(ids, width)`'s b * width rows that are the examples' own choices (not padding)."""
        self.rows(ids, width)   # the same checks
        return torch.tensor([k * width + c for k, i in enumerate(ids) for c in range(self.choices[self.row_of[i]])],
                            dtype=torch.long)

    def save(self, folder: str | Path) -> Path:
        """Write the cache as a folder, atomically (complete or absent)."""
        folder = Path(folder)
        tmp = temp_dir_beside(folder)
        save_file({"vectors": self.vectors.contiguous()}, str(tmp / VECTORS_FILE))
        checksum = {"size": (tmp / VECTORS_FILE).stat().st_size, "sha256": sha256_file(tmp / VECTORS_FILE)}
        layout = {"choices": self.choices} if self.choices is not None else {}
        write_atomic(tmp / META_FILE, json.dumps({"ids": self.ids, **layout, "fingerprint": self.fingerprint,
                                                  "files": {VECTORS_FILE: checksum}}))
        return replace_dir(tmp, folder)

    @classmethod
    def load(cls, folder: str | Path, multiple_choice: bool | None = None) -> "TeacherCache":
        """The cache in `folder`, its vectors checked against meta.json's size and sha256 (once, here).
        `multiple_choice` (True / False): the layout the task needs (a row per choice / per example); a cache of
        the other layout is a DataError naming meta.json (None: either)."""
        folder = Path(folder)
        meta_path, path = folder / META_FILE, folder / VECTORS_FILE
        rebuild = f"delete {folder} to have it rebuilt (or python -m data_prep.teacher_cache JOB.yaml)"
        try:
            meta = json.loads(meta_path.read_text())
            ids, fingerprint, choices = meta["ids"], meta["fingerprint"], meta.get("choices")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"teacher cache: {meta_path} is missing or unreadable ({e}); {rebuild}") from None
        if multiple_choice and choices is None:
            raise DataError(f"teacher cache: {meta_path} holds one vector per example (written before multiple-choice "
                            f"caches kept one per (example, choice)), but the task is multiple choice; {rebuild}")
        if multiple_choice is False and choices is not None:
            raise DataError(f"teacher cache: {meta_path} holds one vector per (example, choice), but the task is not "
                            f"multiple choice; {rebuild}")
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
        rows = len(ids) if choices is None else sum(choices)
        if (vectors.ndim != 2 or len(vectors) != rows
                or (choices is not None and (len(choices) != len(ids) or min(choices, default=1) < 1))):
            what = f"{len(ids)} ids" + ("" if choices is None else f" with {len(choices)} choice counts summing to "
                                                                      f"{sum(choices)}")
            raise DataError(f"teacher cache: {path} holds {tuple(vectors.shape)} vectors for {what} in "
                            f"{meta_path}; {rebuild}")
        return cls(ids, vectors, fingerprint, choices)


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
    """`embed(batch) -> [rows, d]` over `examples` (objects with an `id`) in sorted-id order -> the cache (fp32, CPU).

    A batch with a `choice_mask` [b, C] (multiple choice: `rows` = b * C, example-major) keeps each example's own
    choices, in order, and drops the padding; the cache then records every example's number of choices."""
    ordered = sorted(examples, key=lambda e: e.id)
    ids = [e.id for e in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("teacher cache: example ids are not unique; the cache could not be looked up by id")
    chunks, choices = [], []
    for i in range(0, len(ordered), batch_size):
        batch = collate(ordered[i:i + batch_size])
        vectors = embed(batch).float().cpu()
        if "choice_mask" in batch:
            mask = batch["choice_mask"].cpu().bool()
            vectors = vectors[mask.flatten()]
            choices += mask.sum(1).tolist()
        chunks.append(vectors)
    if choices and len(choices) != len(ids):
        raise ValueError("teacher cache: some batches were multiple choice and some not; one task a cache")
    return TeacherCache(ids, torch.cat(chunks), fingerprint, choices or None)
