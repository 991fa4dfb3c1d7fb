"""Demo English corpus for stage 1, prepared the way FineWeb is: parquet in, shards + manifest out.

    python -m data_prep.demo_text                       # -> data/demo/shards/manifest.json
    python -m data_prep.demo_text --out data/demo --files 2 --docs 400 --docs-per-shard 100

1. OUT/fineweb/part-0000N.parquet: generated English documents with FineWeb's
   `text` and `id` columns (`write_demo_text`).
2. OUT/shards/: the shard CLI run on them, exactly as for real FineWeb:
   python -m data_prep.fineweb_shards --input OUT/fineweb --out OUT/shards
       --docs-per-shard 100 --keep-columns id --quiet
   `jobs/demo_stage1.yaml` reads OUT/shards through `data.manifest`.

Re-running with the same arguments rewrites nothing (the CLI is idempotent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import fineweb_shards
from data_prep.cli_checks import require_count
from trainer.errors import UserError, report
from trainer.data.shards import manifest_file
from trainer.tiny.text import english_documents


def write_demo_text(out_dir: str | Path, files: int = 2, docs_per_file: int = 400, seed: int = 0) -> list[Path]:
    """Write `files` parquet files of `docs_per_file` generated English documents (`text`, `id` columns)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = out / f"part-{i:05d}.parquet"
        docs = english_documents(docs_per_file, seed=seed * 1000 + i)
        ids = [f"demo-{seed}-{i}-{j}" for j in range(len(docs))]
        pq.write_table(pa.table({"text": docs, "id": ids}), path)
        paths.append(path)
    return paths


def write_demo_shards(out_dir: str | Path, files: int = 2, docs_per_file: int = 400, seed: int = 0,
                      docs_per_shard: int = 100) -> Path:
    """Both steps of the module doc; returns the manifest path (OUT/shards/manifest.json)."""
    out = Path(out_dir)
    write_demo_text(out / "fineweb", files, docs_per_file, seed)
    code = fineweb_shards.main(["--input", str(out / "fineweb"), "--out", str(out / "shards"),
                                "--docs-per-shard", str(docs_per_shard), "--keep-columns", "id", "--quiet"])
    if code != 0:
        raise RuntimeError(f"data_prep.fineweb_shards failed on {out / 'fineweb'} (exit code {code})")
    return manifest_file(out / "shards")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo", help="output folder (fineweb/ and shards/ inside)")
    parser.add_argument("--files", type=int, default=2, help="number of input parquet files")
    parser.add_argument("--docs", type=int, default=400, help="documents per input file")
    parser.add_argument("--docs-per-shard", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:                                            # before anything is written
        require_count("--files", args.files, "the number of input parquet files")
        require_count("--docs", args.docs, "the number of documents per input file")
        require_count("--docs-per-shard", args.docs_per_shard, "the number of documents per shard")
    except UserError as e:
        sys.exit(report(e))
    write_demo_shards(args.out, args.files, args.docs, args.seed, args.docs_per_shard)


if __name__ == "__main__":
    main()
