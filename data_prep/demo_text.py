"""Write a small English text file set for the demo and tests.

    python -m data_prep.demo_text --out data/demo/english --files 2 --docs 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.data.synthetic import english_documents


def write_demo_text(out_dir: str | Path, files: int = 2, docs_per_file: int = 400, seed: int = 0) -> list[Path]:
    """Write `files` JSONL files of `docs_per_file` generated English documents (`text` column)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = out / f"part-{i:05d}.jsonl"
        with path.open("w") as f:
            for doc in english_documents(docs_per_file, seed=seed * 1000 + i):
                f.write(json.dumps({"text": doc}) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo/english", help="output directory")
    parser.add_argument("--files", type=int, default=2, help="number of JSONL files")
    parser.add_argument("--docs", type=int, default=400, help="documents per file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_demo_text(args.out, args.files, args.docs, args.seed):
        print(path)


if __name__ == "__main__":
    main()
