"""Write small generated parallel corpora (English, other language) for tests and the demo.

    python -m data_prep.make_parallel_data --out data/demo/parallel             # 9 demo languages, 200 pairs each
    python -m data_prep.make_parallel_data --out DIR --languages deu_Latn ell_Grek zho_Hans --n 200
    python -m data_prep.make_parallel_data --out DIR --languages deu_Latn:1000 ell_Grek:10 swh_Latn:100

One JSONL file per pair, `eng_Latn-<code>.jsonl`, one pair per line:
`{"eng_Latn": "...", "<code>": "..."}`; `--format tsv` writes two
tab-separated columns instead (English first). Sentences come from
`trainer.tiny.text` (the same concept sequences rendered in each
language, so with one seed the corpora are multi-way parallel). `code:n`
sets one language's size. Any code the language table knows is accepted
and written as its FLORES-200 code.
"""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path

from data_prep.cli_checks import ArgumentError, require_count
from trainer.languages.table import language_table
from trainer.tiny.text import DEMO_LANGUAGES, parallel_sentences
from trainer.errors import UserError, report
from trainer.fsutil import check_destination

DEFAULT_LANGUAGES = [c for c in DEMO_LANGUAGES if c != "eng_Latn"]   # 9 languages, 7 scripts


def parse_languages(items: list[str], default_n: int, english: str = "eng_Latn") -> list[tuple[str, int]]:
    """`code` or `code:n` -> (FLORES code, n). Refused (an ArgumentError or UnknownLanguageError, both UserError and
    ValueError, naming the flag and what is valid): a count below 1 (`--n` or `:n`), an unknown code, a language
    listed twice, English (the other side of every pair)."""
    require_count("--n", default_n, "the number of pairs per language")
    table = language_table()
    out = []
    for item in items:
        code, _, n = item.partition(":")
        if n and (not n.isdigit() or int(n) < 1):
            raise ArgumentError(f"--languages: {item!r}: the number of pairs after ':' must be a whole number >= 1")
        out.append((table.flores(code, "--languages"), int(n) if n else default_n))
    codes = [c for c, _ in out]
    if len(set(codes)) != len(codes):
        raise ArgumentError(f"--languages: a language is listed twice: {codes}")
    if english in codes:
        raise ArgumentError(f"--languages: {english} is the English side of every pair; list the other languages")
    return out


def write_parallel_data(out_dir: str | Path, languages: list[tuple[str, int]], seed: int = 0,
                        fmt: str = "jsonl", english: str = "eng_Latn") -> list[Path]:
    """One file per (English, language) pair under `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for code, n in languages:
        if code == english:
            raise ArgumentError(f"--languages: {english} is the English side; list the other languages")
        require_count(f"--languages {code}:{n}", n, "the number of pairs")
        pairs = parallel_sentences(code, n, seed=seed, source=english)
        path = out / f"{english}-{code}.{fmt}"
        with path.open("w", encoding="utf-8") as f:
            for en, other in pairs:
                if fmt == "tsv":
                    f.write(f"{en}\t{other}\n")
                else:
                    f.write(json.dumps({english: en, code: other}, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (new or empty; see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing files")
    parser.add_argument("--languages", nargs="+", default=DEFAULT_LANGUAGES,
                        help=f"codes, optionally code:n (default: {' '.join(DEFAULT_LANGUAGES)})")
    parser.add_argument("--n", type=int, default=200, help="pairs per language (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated sentences")
    parser.add_argument("--format", choices=["jsonl", "tsv"], default="jsonl")
    args = parser.parse_args(argv)
    try:
        languages = parse_languages(args.languages, args.n)     # checked before anything is written
        check_destination(args.out, [], args.overwrite)
    except UserError as e:
        sys.exit(report(e))
    paths = write_parallel_data(args.out, languages, args.seed, args.format)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
