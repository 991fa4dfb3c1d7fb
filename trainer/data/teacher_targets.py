"""Stage 1's teacher-target cache (M1): the frozen teacher's pooled vector of every text chunk, computed once.

    x = phi(LLM(llm_tokens(S)))   is constant for a given span S (the teacher is frozen), so
    `python -m data_prep.teacher_cache STAGE1_JOB.yaml` computes it once per chunk and stage 1
    (`teacher_cache: FOLDER`) looks it up instead of running the teacher forward (a third of a
    step's FLOPs). METHODS.md M1: "teacher targets can be computed once and cached (a few KB per
    sequence) and reused across runs and sweeps".

A chunk is keyed by (document, chunk): the global document id of the manifest (shard offset +
row, as `trainer.data.stream` numbers them) and the index of the span `DualChunker` cut from it;
with `data.files` the document is the row and every row is one chunk (truncated at max_length).
The keys do not depend on shuffling, ranks, workers or resuming, so one cache serves every
launch shape and every trial of a sweep.

Layout (sharded like the text: part i holds text shard i's documents, so parts can be built by
separate processes, `--shards`):

    FOLDER/meta.json             {"format", "fingerprint", "dim", "parts": [{"first_doc", "rows"}, ...]}
    FOLDER/part-00000/offsets.npy  [rows + 1] int64: document r's chunks are rows offsets[r]:offsets[r+1]
    FOLDER/part-00000/vectors.npy  [chunks, dim] float32 (memory-mapped when read)
    FOLDER/part-00000/checksums.json  {"offsets.npy": {"size", "sha256"}, "vectors.npy": {...}} (written last)

Checksums: opening the cache checks that every part's files are there with their recorded sizes (a
truncated vectors.npy is named at once); the first lookup in a part checks its files' sha256, once per
process (a cache of the paper's size is not read whole at start). A mismatch is a DataError naming the
file. Parts written before checksums were recorded are checked for their size against their own header.

fp32 storage keeps cached and live targets equal up to the order of float additions (a bf16
teacher's pooled vector is computed in fp32: `trainer.models.pooling`). Size: 4 x d_llm bytes per
chunk, 16 KB for Llama-3-8B; the paper run's 2.56M sequences take about 42 GB.

The fingerprint (LLM, its dtype, bidirectional attention, pooling, both tokenizers, max_length
and the shard manifest or the files) is stored in meta.json; a cache whose fingerprint differs
from the job's is refused, naming each difference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.data.stream import pad_batch
from trainer.errors import DataError
from trainer.fsutil import replace_dir, sha256_file, temp_dir_beside, write_atomic

FORMAT = "trainer.teacher_targets/1"
META_FILE = "meta.json"
OFFSETS_FILE = "offsets.npy"
VECTORS_FILE = "vectors.npy"
CHECKSUMS_FILE = "checksums.json"
KEYS = ("doc_index", "chunk_index")   # the batch entries a chunk is looked up by ([batch] int64 each)
TARGETS = "teacher_targets"           # the batch entry the looked-up vectors go to ([batch, dim] fp32)


def part_dir(folder: str | Path, part: int) -> Path:
    return Path(folder) / f"part-{part:05d}"


@dataclass
class Part:
    """One text shard's documents: global ids first_doc .. first_doc + rows - 1."""

    first_doc: int
    rows: int


def write_meta(folder: str | Path, fingerprint: dict, dim: int, parts: list[Part]) -> None:
    """meta.json (atomic): what the cache was made from and how its parts are laid out."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "fingerprint": fingerprint, "dim": dim,
            "parts": [{"first_doc": p.first_doc, "rows": p.rows} for p in parts]}
    write_atomic(Path(folder) / META_FILE, json.dumps(meta, indent=1, sort_keys=True))


def write_part(folder: str | Path, part: int, chunks_per_doc: list[int], vectors: torch.Tensor) -> Path:
    """Part `part`: `chunks_per_doc[r]` vectors of document r, in document then chunk order ([chunks, dim])."""
    if sum(chunks_per_doc) != len(vectors):
        raise ValueError(f"teacher targets part {part}: {len(vectors)} vectors for {sum(chunks_per_doc)} chunks")
    target = part_dir(folder, part)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(target)
    np.save(tmp / OFFSETS_FILE, np.concatenate([[0], np.cumsum(chunks_per_doc, dtype=np.int64)]))
    np.save(tmp / VECTORS_FILE, vectors.detach().float().cpu().numpy())
    write_atomic(tmp / CHECKSUMS_FILE, json.dumps({name: {"size": (tmp / name).stat().st_size,
                                                         "sha256": sha256_file(tmp / name)}
                                                  for name in (OFFSETS_FILE, VECTORS_FILE)}, indent=1))
    return replace_dir(tmp, target)


def _rebuild(folder: Path, part: int) -> str:
    return (f"rebuild it: python -m data_prep.teacher_cache JOB.yaml --shards {part}:{part + 1} "
            f"(teacher_cache={folder})")


def check_part(folder: str | Path, part: int, checksum: bool = False) -> None:
    """DataError naming the file when part `part` is incomplete, truncated or (with `checksum`) corrupt."""
    folder = Path(folder)
    d = part_dir(folder, part)
    sums_path = d / CHECKSUMS_FILE
    if not sums_path.is_file():   # written before parts recorded checksums: the .npy headers give the sizes
        for name in (OFFSETS_FILE, VECTORS_FILE):
            _check_npy_size(d / name, folder, part)
        return
    try:
        sums = json.loads(sums_path.read_text())
    except ValueError as e:
        raise DataError(f"teacher_cache: {sums_path} is unreadable ({e}); {_rebuild(folder, part)}") from None
    for name in (OFFSETS_FILE, VECTORS_FILE):
        path, entry = d / name, sums.get(name) or {}
        if not path.is_file():
            raise DataError(f"teacher_cache: {path} is missing; {_rebuild(folder, part)}")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise DataError(f"teacher_cache: {path} has {size} bytes, {sums_path} says {entry.get('size')} "
                            f"(truncated or replaced); {_rebuild(folder, part)}")
        if checksum and sha256_file(path) != entry.get("sha256"):
            raise DataError(f"teacher_cache: {path} does not match its sha256 in {sums_path} (corrupt); "
                            f"{_rebuild(folder, part)}")


def _check_npy_size(path: Path, folder: Path, part: int) -> None:
    """The size an .npy file's header promises, against the file's (no checksum to compare with)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
    except FileNotFoundError:
        raise DataError(f"teacher_cache: {path} is missing; {_rebuild(folder, part)}") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"teacher_cache: {path} is not a readable .npy file ({e}); {_rebuild(folder, part)}") from None
    size = path.stat().st_size
    if size < expected:
        raise DataError(f"teacher_cache: {path} has {size} bytes, its header promises {expected} (truncated); "
                        f"{_rebuild(folder, part)}")


def fingerprint_differences(cached: dict, expected: dict) -> list[str]:
    """'key: cached X, now Y' for every fingerprint entry that differs."""
    return [f"{k}: cached {cached.get(k)!r}, now {v!r}" for k, v in expected.items() if cached.get(k) != v]


class TeacherTargets:
    """A built cache, read-only: `lookup(doc_index, chunk_index) -> [b, dim]` fp32 vectors.

    Opening checks the fingerprint against `expected` and that every part is present; each part's
    vectors are memory-mapped, so a rank holds only the pages it reads.
    """

    def __init__(self, folder: str | Path, expected: dict):
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise DataError(f"teacher_cache: {self.folder} holds no teacher targets ({META_FILE} missing); build "
                            f"them with python -m data_prep.teacher_cache JOB.yaml")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise DataError(f"teacher_cache: {meta_path} is {meta.get('format')!r}, not stage 1's {FORMAT!r} "
                            f"(a stage-2 cache?)")
        differences = fingerprint_differences(meta["fingerprint"], expected)
        if differences:
            raise DataError(f"teacher_cache: {self.folder} was made for another teacher or text "
                            f"({'; '.join(differences)}); rebuild it or point teacher_cache elsewhere")
        self.dim = int(meta["dim"])
        self.parts = [Part(**p) for p in meta["parts"]]
        missing = [i for i in range(len(self.parts)) if not (part_dir(self.folder, i) / VECTORS_FILE).is_file()]
        if missing:
            raise DataError(f"teacher_cache: {self.folder} lacks parts {missing[:10]} of {len(self.parts)} "
                            f"(text shards not computed yet: python -m data_prep.teacher_cache JOB.yaml "
                            f"--shards {missing[0]}:{missing[-1] + 1})")
        for i in range(len(self.parts)):   # sizes only: a truncated part is named before training starts
            check_part(self.folder, i)
        self.first_docs = np.array([p.first_doc for p in self.parts], dtype=np.int64)
        self._opened: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _part(self, part: int) -> tuple[np.ndarray, np.ndarray]:
        if part not in self._opened:
            check_part(self.folder, part, checksum=True)   # once per part and process, not per lookup
            d = part_dir(self.folder, part)
            try:
                offsets, vectors = np.load(d / OFFSETS_FILE), np.load(d / VECTORS_FILE, mmap_mode="r")
            except (ValueError, OSError) as e:
                raise DataError(f"teacher_cache: part {d} is unreadable ({e}); {_rebuild(self.folder, part)}") from None
            if (offsets.ndim != 1 or len(offsets) != self.parts[part].rows + 1 or vectors.ndim != 2
                    or vectors.shape[1] != self.dim or int(offsets[-1]) != len(vectors)):
                raise DataError(f"teacher_cache: {d / VECTORS_FILE} holds {tuple(vectors.shape)} vectors and "
                                f"{d / OFFSETS_FILE} {len(offsets) - 1} documents ending at row {int(offsets[-1])}; "
                                f"{META_FILE} says {self.parts[part].rows} documents of dimension {self.dim}; "
                                f"{_rebuild(self.folder, part)}")
            self._opened[part] = (offsets, vectors)
        return self._opened[part]

    def row(self, doc: int, chunk: int) -> tuple[int, int]:
        """(part, row of its vectors) of chunk `chunk` of global document `doc`; a DataError when absent."""
        part = int(np.searchsorted(self.first_docs, doc, side="right") - 1)
        if part < 0 or doc - self.parts[part].first_doc >= self.parts[part].rows:
            raise DataError(f"teacher_cache: {self.folder} has no document {doc}; rebuild it for this text")
        offsets, _ = self._part(part)
        r = doc - self.parts[part].first_doc
        if chunk >= offsets[r + 1] - offsets[r]:
            raise DataError(f"teacher_cache: {self.folder}: document {doc} has {offsets[r + 1] - offsets[r]} "
                            f"cached chunks, the text gave chunk {chunk}; rebuild it for this text")
        return part, int(offsets[r] + chunk)

    def lookup(self, doc_index: torch.Tensor, chunk_index: torch.Tensor) -> torch.Tensor:
        """[b] document ids, [b] chunk indices (CPU) -> [b, dim] fp32 teacher vectors, in their order."""
        rows = [self.row(int(d), int(c)) for d, c in zip(doc_index.tolist(), chunk_index.tolist())]
        return torch.from_numpy(np.stack([self._part(p)[1][i] for p, i in rows]).astype(np.float32, copy=False))


class WithTeacherTargets:
    """Wraps a micro-batch reader: each batch gains `teacher_targets` [b, dim], looked up by its `KEYS`.

    Everything else (last_index, state_dict, load_state_dict, restart_at, close, ...) is the reader's.
    The lookup happens on the host before the batch goes to the device, so it costs no device sync.
    """

    def __init__(self, batches, targets: TeacherTargets):
        self.batches, self.targets = batches, targets

    def __iter__(self) -> "WithTeacherTargets":
        return self

    def __next__(self) -> dict:
        batch = next(self.batches)
        return {**batch, TARGETS: self.targets.lookup(*(batch[k] for k in KEYS))}

    def __getattr__(self, name: str):
        return getattr(self.batches, name)


def padded_groups(items: list[tuple[int, int, np.ndarray]], batch_size: int, pad_id: int,
                  side: str) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Chunks (document, chunk, LLM ids [n]) in batches of similar length -> (the batch's indices into `items`,
    {llm_input_ids, llm_attention_mask} [b, longest]) for the teacher: sorting by length keeps the padding
    (wasted teacher FLOPs) small."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][-1]))
    for s in range(0, len(order), batch_size):
        group = order[s:s + batch_size]
        ids, mask = pad_batch([items[i][-1] for i in group], pad_id, side)
        yield group, {"llm_input_ids": ids, "llm_attention_mask": mask}
