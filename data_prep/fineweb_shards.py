"""FineWeb (or any parquet text corpus) -> training shards with a manifest.

    # local parquet files (a folder, searched recursively, a file, or a glob)
    python -m data_prep.fineweb_shards --input /data/fineweb/sample/10BT --out data/fineweb-2B \\
        --docs-per-shard 10000 --tokenizer meta-llama/Meta-Llama-3-8B --token-budget 2000000000 \\
        --sample-rate 0.25
    # the hub (streamed through `datasets`; needs network access)
    python -m data_prep.fineweb_shards --hub HuggingFaceFW/fineweb --hub-config sample-10BT --out ...
    # check an existing shard set: every file present, checksums, text column, row counts
    python -m data_prep.fineweb_shards --verify data/fineweb-2B

Output: `OUT/shard-00000.parquet ...` with `--docs-per-shard` documents each (the
last one may hold fewer) and `OUT/manifest.json` (format in `trainer.data.shards`).
Each shard keeps the text column, a `source_index` column (the document's
index in the input order) and any `--keep-columns`.

Choices:
- Input order is deterministic: local files sorted by path, rows in file order;
  the hub stream in its own order. No shuffling here; the reader shuffles.
- Subsampling: document `i` is kept when a hash of (`--seed`, i) falls below
  `--sample-rate`, independent of everything else, so a sample is reproducible
  and spreads over the whole input. `--token-budget` then stops after the first
  kept document that brings the total to the budget. Tokens are counted with
  `--tokenizer` (no special tokens); without one, whitespace-separated words are
  counted and the manifest says `token_counter: whitespace`.
- Idempotent and resumable: shard bytes depend only on the arguments and the
  input (fixed parquet settings, no timestamps). Re-running with the same
  arguments keeps every shard whose checksum still matches, skips the input it
  covers (cheap for local files: parquet metadata), regenerates a missing or
  corrupt shard (named in the output), and finishes an interrupted run. The
  manifest is rewritten after each shard, marked `complete` at the end.
  Different arguments on an existing folder are refused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from trainer.data.shards import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    Manifest,
    ShardError,
    ShardInfo,
    check_shard,
    load_manifest,
    manifest_file,
    save_manifest,
    sha256_bytes,
    verify_manifest,
)
from trainer.errors import report as report_error, user_error
from trainer.fsutil import listed_path, write_atomic

COMPRESSION = "zstd"
ROW_GROUP_SIZE = 1000
COUNT_BATCH = 256  # documents tokenized together when counting


@dataclass
class PrepParams:
    """Creation arguments; recorded in the manifest and compared on re-runs."""

    input: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    docs_per_shard: int = 10_000
    token_budget: int | None = None
    tokenizer: str | None = None
    sample_rate: float = 1.0
    seed: int = 0
    keep_columns: list[str] = field(default_factory=list)

    def check(self) -> None:
        if (self.input is None) == (self.hub is None):
            raise ValueError("give exactly one of --input (local parquet) or --hub (dataset name)")
        if self.docs_per_shard <= 0:
            raise ValueError(f"--docs-per-shard must be positive (got {self.docs_per_shard})")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"--sample-rate must be in (0, 1] (got {self.sample_rate})")
        if self.token_budget is not None and self.token_budget <= 0:
            raise ValueError(f"--token-budget must be positive (got {self.token_budget})")
        if self.text_column in self.keep_columns or "source_index" in self.keep_columns:
            raise ValueError("--keep-columns must not repeat the text column or source_index")


@dataclass
class PrepReport:
    """What a run did: shards kept as they were, shards written, and problems found on the way."""

    manifest: Manifest
    reused: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- sources


def local_files(pattern: str) -> list[Path]:
    """A folder (searched recursively for *.parquet), a file, or a glob -> sorted parquet files."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
    elif any(c in pattern for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    else:
        files = [path] if path.is_file() else []
    if not files:
        raise FileNotFoundError(f"--input {pattern!r}: no parquet file found")
    return files


def iter_local(files: list[Path], columns: list[str], start: int) -> Iterator[dict[str, Any]]:
    """Rows of `files` in order from global row `start`; whole files and row groups are skipped
    through the parquet metadata, without reading them."""
    skip = start
    for path in files:
        pf = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise ShardError(f"{path}: no column {missing[0]!r} (columns: {', '.join(pf.schema_arrow.names)})")
        if skip >= pf.metadata.num_rows:
            skip -= pf.metadata.num_rows
            continue
        groups = list(range(pf.metadata.num_row_groups))
        while groups and skip >= pf.metadata.row_group(groups[0]).num_rows:
            skip -= pf.metadata.row_group(groups.pop(0)).num_rows
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=columns):
            if skip:
                cut = min(skip, batch.num_rows)
                batch, skip = batch.slice(cut), skip - cut
            yield from batch.to_pylist()


def iter_hub(name: str, config: str | None, split: str, columns: list[str], start: int) -> Iterator[dict[str, Any]]:
    """Rows of a hub dataset, streamed with `datasets` (needs the network), from row `start`."""
    import datasets

    stream = datasets.load_dataset(name, name=config, split=split, streaming=True)
    if stream.column_names is not None:
        missing = [c for c in columns if c not in stream.column_names]
        if missing:
            raise ShardError(f"{name} ({config}): no column {missing[0]!r} (columns: {', '.join(stream.column_names)})")
    stream = stream.select_columns(columns)
    if start:
        stream = stream.skip(start)
    yield from stream


def keep_document(index: int, seed: int, rate: float) -> bool:
    """Deterministic subsample: keep document `index` when hash(seed, index) < rate."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2 ** 64


class TokenCounter:
    """Token counts of texts with a tokenizer (no special tokens), or whitespace words without one."""

    def __init__(self, tokenizer: str | None):
        self.name = f"tokenizer:{tokenizer}" if tokenizer else "whitespace"
        self.tokenizer = self.backend = None
        if tokenizer:
            from transformers import AutoTokenizer

            from trainer.models.loading import resolve_model_path

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer))
            self.backend = getattr(self.tokenizer, "backend_tokenizer", None)  # fast path, no Python per token

    def __call__(self, texts: list[str]) -> list[int]:
        if self.backend is not None:
            return [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        if self.tokenizer is not None:
            return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [len(t.split()) for t in texts]


class DocStream:
    """Kept documents with their token counts, from input position `start` on.

    Yields (source_index, row, tokens). Counting is batched (COUNT_BATCH documents);
    documents read ahead are simply carried to the next shard.
    """

    def __init__(self, params: PrepParams, counter: TokenCounter, start: int, progress: tqdm | None = None):
        columns = [params.text_column] + list(params.keep_columns)
        if params.input is not None:
            self.rows = iter_local(local_files(params.input), columns, start)
        else:
            self.rows = iter_hub(params.hub, params.hub_config, params.hub_split, columns, start)
        self.params, self.counter, self.position, self.progress = params, counter, start, progress
        self.ready: deque[tuple[int, dict, int]] = deque()
        self.exhausted = False

    def _fill(self) -> None:
        batch: list[tuple[int, dict]] = []
        while len(batch) < COUNT_BATCH:
            row = next(self.rows, None)
            if row is None:
                self.exhausted = True
                break
            index, self.position = self.position, self.position + 1
            if self.progress is not None:
                self.progress.update(1)
            if row[self.params.text_column] is None:
                row[self.params.text_column] = ""
            if keep_document(index, self.params.seed, self.params.sample_rate):
                batch.append((index, row))
        if batch:
            counts = self.counter([row[self.params.text_column] for _, row in batch])
            self.ready.extend((i, row, n) for (i, row), n in zip(batch, counts))

    def next(self) -> tuple[int, dict, int] | None:
        if not self.ready and not self.exhausted:
            self._fill()
        return self.ready.popleft() if self.ready else None


def shard_bytes(rows: list[dict], params: PrepParams, sources: list[int]) -> bytes:
    """One shard as parquet bytes with fixed settings (zstd, row groups of ROW_GROUP_SIZE)."""
    columns = {params.text_column: pa.array([r[params.text_column] for r in rows], type=pa.string()),
               "source_index": pa.array(sources, type=pa.int64())}
    for name in params.keep_columns:
        columns[name] = pa.array([r[name] for r in rows])
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE)
    return sink.getvalue()


# ---------------------------------------------------------------- the writer


def prepare_shards(params: PrepParams, out_dir: str | Path, overwrite: bool = False,
                   progress: bool | None = None) -> PrepReport:
    """Write (or complete, or repair) the shard set for `params` in `out_dir`; see the module doc.

    Returns a `PrepReport`; its `manifest` is the final manifest (complete=True).
    """
    params.check()
    out = Path(out_dir)
    params_dict = asdict(params)
    old: Manifest | None = None
    previous: list[str] = []  # shard files of the set already in `out`, removed at the end if not reused
    if (out / MANIFEST_NAME).is_file():
        old = load_manifest(out)
        # a manifest lists its own shards: anything else in it is refused before anything is read or removed
        for shard in old.shards:
            listed_path(out, shard.path, manifest_file(out))
        previous = [s.path for s in old.shards]
        if old.params != params_dict:
            if not overwrite:
                diff = sorted(k for k in set(old.params) | set(params_dict) if old.params.get(k) != params_dict.get(k))
                raise ValueError(f"{manifest_file(out)} was written with other arguments ({', '.join(diff)} differ); "
                                 f"choose another --out or pass --overwrite")
            old = None
    counter = TokenCounter(params.tokenizer)
    manifest = Manifest(format=MANIFEST_FORMAT, text_column=params.text_column, token_counter=counter.name,
                        complete=False, params=params_dict, created_with={"pyarrow": pa.__version__}, shards=[])
    manifest.root = out.resolve()
    report = PrepReport(manifest)
    old_shards = old.shards if old is not None else []
    consistent = True  # False once a regenerated shard differs from the old manifest: old shards after it are stale
    bar = tqdm(desc="documents", unit="doc", file=sys.stderr,
               disable=None if progress is None else not progress)  # None: a bar only on a terminal
    position, tokens, index, stream = 0, 0, 0, None
    done = False
    while not done:
        name = f"shard-{index:05d}.parquet"
        if consistent and index < len(old_shards) and old_shards[index].source_start == position:
            problem = check_shard(old, index)
            if problem is None:
                info = old_shards[index]
                manifest.shards.append(info)
                report.reused.append(info.path)
                position, tokens, index, stream = info.source_end, tokens + info.tokens, index + 1, None
                done = (params.token_budget is not None and tokens >= params.token_budget) or (
                    old.complete and index == len(old_shards))
                continue
            report.problems.append(problem + " -> rewritten")
        if stream is None:
            stream = DocStream(params, counter, position, bar)
        rows, sources, shard_tokens = [], [], 0
        while len(rows) < params.docs_per_shard:
            item = stream.next()
            if item is None:
                done = True
                break
            source, row, n = item
            rows.append(row)
            sources.append(source)
            shard_tokens += n
            if params.token_budget is not None and tokens + shard_tokens >= params.token_budget:
                done = True
                break
        if not rows:
            break
        end = sources[-1] + 1  # the next shard starts right after this shard's last document
        data = shard_bytes(rows, params, sources)
        info = ShardInfo(path=name, rows=len(rows), tokens=shard_tokens, sha256=sha256_bytes(data),
                         source_start=position, source_end=end)
        target = out / name
        if not (target.is_file() and sha256_bytes(target.read_bytes()) == info.sha256):
            write_atomic(target, data)
            report.written.append(name)
        else:
            report.reused.append(name)
        if index < len(old_shards) and (old_shards[index].sha256 != info.sha256
                                        or old_shards[index].source_end != info.source_end):
            consistent = False
        manifest.shards.append(info)
        position, tokens, index = end, tokens + shard_tokens, index + 1
        save_manifest(manifest, out)
        bar.set_postfix(shards=index, tokens=tokens)
    bar.close()
    stale = set(previous) - {s.path for s in manifest.shards}
    for path in sorted(stale):
        if (out / path).is_file():
            (out / path).unlink()
            report.problems.append(f"{out / path}: left over from an earlier shard set -> removed")
    manifest.complete = True
    save_manifest(manifest, out)
    return report


def verify(path: str | Path) -> list[str]:
    """Problems of the shard set at `path` (manifest or folder): missing, corrupt, malformed shards."""
    return verify_manifest(load_manifest(path), checksum=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("input (one of)")
    src.add_argument("--input", help="local parquet: a folder (recursive), a file, or a glob")
    src.add_argument("--hub", help="hub dataset name, e.g. HuggingFaceFW/fineweb (streamed; needs network)")
    parser.add_argument("--hub-config", help="hub dataset config, e.g. sample-10BT")
    parser.add_argument("--hub-split", default="train")
    parser.add_argument("--out", help="output folder for shards and manifest.json")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--docs-per-shard", type=int, default=10_000)
    parser.add_argument("--tokenizer", help="tokenizer (hub name, local folder, tiny:NAME) to count tokens with")
    parser.add_argument("--token-budget", type=int, help="stop once this many tokens are kept")
    parser.add_argument("--sample-rate", type=float, default=1.0, help="keep this fraction of documents (hashed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample hash")
    parser.add_argument("--keep-columns", default="", help="comma-separated extra columns to copy (e.g. id,url)")
    parser.add_argument("--overwrite", action="store_true", help="replace a shard set made with other arguments")
    parser.add_argument("--verify", metavar="MANIFEST", help="only check an existing shard set and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            manifest = load_manifest(args.verify)
            problems = verify_manifest(manifest, checksum=True)
            for problem in problems:
                print(problem)
            print(f"{'FAILED' if problems else 'ok'}: {len(manifest.shards)} shards, {manifest.num_rows} documents, "
                  f"{manifest.num_tokens} tokens ({manifest.token_counter}), {len(problems)} problem(s)")
            return 1 if problems else 0
        if not args.out:
            parser.error("--out is required (or use --verify)")
        params = PrepParams(input=args.input, hub=args.hub, hub_config=args.hub_config, hub_split=args.hub_split,
                            text_column=args.text_column, docs_per_shard=args.docs_per_shard,
                            token_budget=args.token_budget, tokenizer=args.tokenizer,
                            sample_rate=args.sample_rate, seed=args.seed,
                            keep_columns=[c for c in args.keep_columns.split(",") if c])
        report = prepare_shards(params, args.out, overwrite=args.overwrite, progress=False if args.quiet else None)
    except Exception as e:   # noqa: BLE001 - a refusal or a full disk is one message; anything else a traceback
        if user_error(e, args.out, also=(ShardError, ValueError, FileNotFoundError)) is None:
            raise
        return report_error(e, where=args.out)
    for problem in report.problems:
        print(problem)
    m = report.manifest
    print(f"{manifest_file(args.out)}: {len(m.shards)} shards ({len(report.written)} written, "
          f"{len(report.reused)} unchanged), {m.num_rows} documents, {m.num_tokens} tokens ({m.token_counter})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
