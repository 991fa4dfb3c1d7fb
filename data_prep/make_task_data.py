"""Write the generated 3-class task (`trainer.tiny.text.synthetic_task`) for the align/realign demos and tests.

    python -m data_prep.make_task_data --out data/demo/task --train 2000 --eval 200 \\
        --languages eng_Latn deu_Latn fra_Latn ell_Grek rus_Cyrl arb_Arab zho_Hans hin_Deva amh_Ethi swh_Latn

Writes `OUT/train/<source>.jsonl` (`--train` source-language examples, seed `--seed`) and
`OUT/eval/<lang>.jsonl` for every language (`--eval` examples, seed `--seed + 1`: the same
sentences rendered in each language, none shared with the training seed's order). One JSON
object per line: `{"text": ..., "label": 0|1|2}`. Point a job's `task.train_files` at the first
and `task.eval_dir` at the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.cli_checks import ArgumentError, require_count
from trainer.languages.table import language_table
from trainer.tiny.text import write_task_files
from trainer.errors import UserError, report
from trainer.fsutil import check_destination


def check_arguments(languages: list[str], n_train: int, n_eval: int, source: str) -> tuple[list[str], str]:
    """The languages and the source as FLORES codes, after refusing counts below 1 and unknown or repeated
    languages (a UserError naming the flag and what is valid)."""
    require_count("--train", n_train, "the number of training examples")
    require_count("--eval", n_eval, "the number of evaluation examples per language")
    table = language_table()
    try:
        languages = table.resolve(languages, "--languages")   # an unknown code: UnknownLanguageError, a UserError
    except UserError:
        raise
    except ValueError as e:                                     # a language listed twice
        raise ArgumentError(str(e)) from None
    return languages, table.flores(source, "--source")


def write_task_data(out_dir: str | Path, languages: list[str], n_train: int, n_eval: int, seed: int = 0,
                    source: str = "eng_Latn") -> dict[str, Path]:
    """Train file of `source` and eval files of every language; returns {"train": path, "eval": dir}."""
    languages, source = check_arguments(languages, n_train, n_eval, source)
    out = Path(out_dir)
    train = write_task_files(out / "train", [source], n_train, seed)[source]
    write_task_files(out / "eval", sorted(set(languages) | {source}), n_eval, seed + 1)
    return {"train": train, "eval": out / "eval"}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (new or empty; see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing files")
    parser.add_argument("--languages", nargs="+", required=True, help="evaluation languages (any known code)")
    parser.add_argument("--train", type=int, default=2000, help="source-language training examples (default 2000)")
    parser.add_argument("--eval", type=int, default=200, help="evaluation examples per language (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training set; evaluation uses seed + 1")
    parser.add_argument("--source", default="eng_Latn", help="language of the training set (default eng_Latn)")
    args = parser.parse_args(argv)
    try:
        check_arguments(args.languages, args.train, args.eval, args.source)   # before anything is written
        check_destination(args.out, [], args.overwrite)
    except UserError as e:
        sys.exit(report(e))
    paths = write_task_data(args.out, args.languages, args.train, args.eval, args.seed, args.source)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main()
