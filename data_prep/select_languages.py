"""Choose language subsets for realignment (M3) and write them to subsets.yaml.

    python -m data_prep.select_languages --out subsets.yaml                  # all heuristics, n = 5 10 20 40
    python -m data_prep.select_languages --heuristics featural_max featural_min --sizes 5 8
    python -m data_prep.select_languages --pool my_pool.csv --seen-file seen.txt

The pool is the study's 65 languages by default (`pool65` in the package's
language table), or a file: a CSV with a `flores`, `iso639_3` or `code`
column, or plain text with one code per line; or `--languages` codes. Any
code the language table knows is accepted (`orm`, `swa`, `ara` resolve to
gaz_Latn, swh_Latn, arb_Arab). See docs/languages.md.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

from data_prep.cli_checks import ArgumentError
from trainer.config import validate
from trainer.errors import UserError, report
from trainer.languages import subset_search
from trainer.languages.subsets import (DEFAULT_SEEDS, DEFAULT_SIZES, HEURISTICS, SEEN_PRESETS, SelectionConfig,
                                      select_subsets, validate_subsets, write_subsets)
from trainer.languages.table import language_table
from trainer.languages.uriel import FEATURE_MODES, IMPUTATIONS


def read_codes(path: Path) -> list[str]:
    """Language codes from a CSV (column flores, iso639_3 or code) or a text file (one per line, # comments)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        for col in ("flores", "iso639_3", "code"):
            if rows and col in rows[0]:
                return [r[col].strip() for r in rows if r[col].strip()]
        raise ValueError(f"{path}: expected a column named flores, iso639_3 or code "
                         f"(columns: {', '.join(rows[0]) if rows else 'none'})")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("subsets.yaml"), help="output YAML (default: subsets.yaml)")
    p.add_argument("--pool", default="pool65", help="pool65 (default) or a CSV/text file of codes")
    p.add_argument("--languages", nargs="+", default=None, help="pool given as codes (overrides --pool)")
    p.add_argument("--heuristics", nargs="+", default=list(HEURISTICS), choices=list(HEURISTICS),
                   metavar="H", help=f"heuristics to run (default: all): {', '.join(HEURISTICS)}")
    p.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), help="subset sizes (default: 5 10 20 40)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                   help="seeds for the seeded heuristics (default: 17 23 42 66)")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument("--seen-preset", default="llama-3.1", choices=list(SEEN_PRESETS),
                      help="languages seen in pre-training, by model (default: llama-3.1)")
    seen.add_argument("--seen", nargs="+", default=None, help="languages seen in pre-training, as codes")
    seen.add_argument("--seen-file", type=Path, default=None, help="languages seen in pre-training, from a file")
    p.add_argument("--english", default="eng_Latn", help="anchor language (counted in objectives, never selected)")
    p.add_argument("--imputation", default="none", choices=list(IMPUTATIONS),
                   help="with --features urielplus: none (default: distances over shared features), knn (KNNImputer over the URIEL+ table) or "
                        "softimpute (URIEL+'s default strategy, its parameters, over the URIEL+ table)")
    p.add_argument("--features", default="imputed", choices=list(FEATURE_MODES),
                   help="URIEL features: imputed (observed, gaps filled by kNN; default), observed, knn; or urielplus "
                        "(URIEL+ as the subset study used it: sources by union, no imputation)")
    p.add_argument("--min-shared", type=int, default=1,
                   help="observed mode: fewest shared features for a defined distance (default 1)")
    p.add_argument("--on-undefined", default="error", choices=["error", "drop"],
                   help="observed mode: fail on undefined distances, or drop those languages")
    p.add_argument("--exact-max-combinations", type=int, default=subset_search.DEFAULT_EXACT_MAX_COMBINATIONS,
                   help="exact search when C(candidates, n) is at most this (default 10,000,000)")
    p.add_argument("--restarts", type=int, default=subset_search.DEFAULT_RESTARTS,
                   help="local-search starts above the exact threshold (default 16)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the local-search random starts")
    p.add_argument("--no-full-pools", action="store_true", help="omit the <resource pool>_all subsets")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (default: a bar over heuristics and the long searches, on stderr)")
    return p


def print_summary(doc: dict) -> None:
    """Which languages lacked URIEL distances, and every subset with its objective (vs random for searches)."""
    feats = doc["metadata"]["features"]
    affected = feats["languages_with_undefined_observed_distance"]
    partners = feats["partners_without_observed_distance"]
    imputation = feats.get("imputation", "none")
    mode = feats["mode"] + (f", imputation={imputation}" if imputation != "none" else "")
    print(f"URIEL features: mode={mode}; {len(affected)} languages (English included) have at least "
          f"one partner without a distance on observed features alone:")
    total = feats["features"].split("(")[-1].rstrip(")")
    print("  " + ", ".join(f"{c} ({partners[c]} partners, {feats['observed_features'][c]}/{total} observed)"
                           for c in affected))
    print(f"  handling: {feats['missing_features']}")     # names the imputation used (subsets.missing_handling)
    for name, s in doc["subsets"].items():
        obj = "undefined" if s["objective"] is None else f"{s['objective']:.4f}"
        how = ""
        if "search" in s:
            how = (f" [{s['search']}; random mean {s['random_mean_objective']:.4f}, "
                   f"best of {s['random_draws']} {s['random_best_objective']:.4f}]")
        print(f"{name:28s} objective {obj}{how}: {' '.join(s['languages'])}")
    for s in doc["skipped"]:
        print(f"skipped {s['heuristic']} n={s['size']}: {s['reason']}")


def check_sizes(sizes: list[int], pool: list[str], english: str, table, flag: str) -> None:
    """Refuse a subset size that no subset of the pool can have: below 1, or above the pool's selectable languages
    (the pool without the anchor), naming the sizes and the valid range. Unknown pool codes are refused too."""
    selectable = [c for c in table.resolve(pool, flag) if c != table.flores(english, "--english")]
    bad = [n for n in sizes if not 1 <= n <= len(selectable)]
    if bad:
        raise ArgumentError(f"--sizes {' '.join(map(str, bad))}: the pool ({flag}) has {len(selectable)} languages "
                            f"to choose from ({english}, the anchor, not counted): sizes must be 1 to "
                            f"{len(selectable)}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    table = language_table()
    try:
        if args.languages:
            pool, pool_name = args.languages, "command line"
        elif args.pool == "pool65":
            pool, pool_name = [x.flores for x in table.pool("pool65")], "pool65"
        else:
            pool, pool_name = read_codes(Path(args.pool)), str(args.pool)
        if args.seen is not None:
            seen, seen_source = args.seen, "command line"
        elif args.seen_file is not None:
            seen, seen_source = read_codes(args.seen_file), str(args.seen_file)
        else:
            seen, seen_source = SEEN_PRESETS[args.seen_preset], args.seen_preset
        check_sizes(args.sizes, pool, args.english, table, "--languages" if args.languages else "--pool")
    except (UserError, ValueError, FileNotFoundError) as e:
        sys.exit(report(e))
    try:
        cfg = validate(dict(
            pool=pool, pool_name=pool_name, sizes=args.sizes, heuristics=args.heuristics, seeds=args.seeds,
            seen=seen, seen_source=seen_source, english=args.english, features=args.features,
            imputation=args.imputation, min_shared=args.min_shared, on_undefined=args.on_undefined,
            exact_max_combinations=args.exact_max_combinations, restarts=args.restarts,
            search_seed=args.search_seed, full_pools=not args.no_full_pools), SelectionConfig, source="selection")
    except UserError as e:
        sys.exit(report(e))
    try:
        doc = select_subsets(cfg, table, progress=args.progress)
    except (UserError, ValueError) as e:
        sys.exit(report(e))
    if not doc["subsets"]:
        reasons = "; ".join(f"{s['heuristic']} n={s['size']}: {s['reason']}" for s in doc["skipped"])
        sys.exit(report(ArgumentError(f"no subset to write ({reasons or 'nothing selected'}); nothing written to "
                                      f"{args.out}: choose --sizes or --heuristics that fit the pool")))
    doc["metadata"]["command"] = "python -m data_prep.select_languages " + " ".join(argv if argv is not None else sys.argv[1:])
    validate_subsets(doc, table)
    write_subsets(doc, args.out)

    print_summary(doc)
    print(f"wrote {len(doc['subsets'])} subsets to {args.out} in {time.perf_counter() - start:.1f} s")
    return doc


if __name__ == "__main__":
    main()
