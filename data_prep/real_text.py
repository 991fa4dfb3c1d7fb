"""Real English prose for stage 1 without a download: the Python standard library's documentation topics.

    python -m data_prep.real_text                  # data/real/prose/pydoc_topics.jsonl
    python -m data_prep.real_text --out DIR --min-chars 200

`pydoc_data.topics` ships with every CPython: the language reference's sections (about 80 topics, 0.46 M
characters of edited technical English, written by people). Each topic is cut at blank lines into paragraphs, and
consecutive paragraphs are joined into documents of at least `--min-chars` characters (code samples and tables
kept as they are, as FineWeb keeps them): one `{"text": ..., "topic": ...}` per line, the format stage 1's
`data.files` reads. Deterministic; written atomically; a second run rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from data_prep.cli_checks import require_count
from trainer.errors import UserError, report
from trainer.fsutil import write_atomic


def documents(min_chars: int) -> list[dict]:
    """[{"text", "topic"}]: each pydoc topic's paragraphs joined into documents of >= `min_chars` characters."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        paragraphs = [p.strip() for p in topics[name].split("\n\n") if p.strip()]
        current: list[str] = []
        for paragraph in paragraphs:
            current.append(paragraph)
            if sum(len(p) for p in current) >= min_chars:
                docs.append({"text": "\n\n".join(current), "topic": name})
                current = []
        if current:
            docs.append({"text": "\n\n".join(current), "topic": name})
    return docs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/real/prose", help="output folder (pydoc_topics.jsonl is written there)")
    p.add_argument("--min-chars", type=int, default=400, help="characters per document at least")
    args = p.parse_args(argv)
    try:
        require_count("--min-chars", args.min_chars, "characters per document")
        docs = documents(args.min_chars)
        out = Path(args.out) / "pydoc_topics.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    except (UserError, OSError) as err:      # one line, no traceback
        return report(err)
    chars = sum(len(d["text"]) for d in docs)
    print(f"wrote {out}: {len(docs)} documents, {chars:,} characters of Python {platform.python_version()}'s "
          f"documentation topics")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
