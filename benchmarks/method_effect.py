"""A method's effect on retrieval, per language, over seeds: the before/after tables of docs/real.md.

    python -m benchmarks.method_effect outputs/real_realign_smollm2 outputs/real_realign_smollm2_s1 --layer 15
    python -m benchmarks.method_effect outputs/sweeps/real_subsets/trials/*/ --group-by subset --markdown

Each RUN folder is an align/realign run's output_dir: its `eval/retrieval_before/retrieval_pairs.csv` and
`eval/retrieval_after/retrieval_pairs.csv` (layer, src, tgt, accuracy: every ordered pair of the multi-way
held-out set, written by `trainer.eval.retrieval_by_layer`) and its `config.yaml` (which languages were aligned).
Per language X the score is the mean of X -> English and English -> X retrieval accuracy at `--layer` (the
aligned layer by default); runs are grouped (by the aligned languages, or `--group-by subset` for the sweep's
trials) and each group's runs are the seeds: the table gives the mean over seeds and the spread (max - min), before,
after and the change, with a mark on the languages that were aligned. The last rows: the mean change over the
aligned languages and over the held-out ones, and how many of each improved in every seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml


def pair_scores(path: Path, layer: int, english: str) -> dict[str, float]:
    """{language: mean of X->English and English->X accuracy at `layer`} from a retrieval_pairs.csv."""
    both: dict[str, list[float]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["layer"]) != layer:
                continue
            src, tgt = row["src"], row["tgt"]
            if english in (src, tgt) and src != tgt:
                both[tgt if src == english else src].append(float(row["accuracy"]))
    if not both:
        raise SystemExit(f"error: {path}: no pair with {english} at layer {layer}")
    return {lang: sum(v) / len(v) for lang, v in both.items()}


def read_run(folder: Path, layer: int | None) -> dict:
    """One run: its aligned languages, subset name, seed, layer and per-language before/after scores."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    aligned = config["alignment"]["layers"]
    if layer is None:
        layer = aligned if isinstance(aligned, (int, str)) else aligned[0]
        if layer == "middle":   # block L // 2 of the run's LLM (M2's default), read from its local config.json
            llm = Path(config["model"]["llm"]["name_or_path"]) / "config.json"
            if not llm.is_file():
                raise SystemExit(f"error: {folder}: alignment.layers is 'middle' and {llm} is not here: give --layer")
            layer = json.loads(llm.read_text())["num_hidden_layers"] // 2
    english = config["parallel"].get("english", "eng_Latn")
    scores = {tag: pair_scores(folder / "eval" / f"retrieval_{tag}" / "retrieval_pairs.csv", layer, english)
              for tag in ("before", "after")}
    languages = config["parallel"]["languages"]
    return {"folder": str(folder), "seed": config["seed"], "aligned": languages, "layer": layer,
            "subset": config["parallel"].get("subset") or ",".join(languages), **scores}


def spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def table(runs: list[dict], markdown: bool) -> str:
    """The per-language before/after table of one group of runs (its seeds)."""
    aligned = set(runs[0]["aligned"])
    languages = sorted(runs[0]["after"], key=lambda lang: (lang not in aligned, lang))
    seeds = sorted(r["seed"] for r in runs)
    lines = [f"group {runs[0]['subset']} (aligned: {', '.join(sorted(aligned))}), layer {runs[0]['layer']}, "
             f"seeds {seeds}: mean over seeds (spread max-min)", ""]
    lines.append("| language | aligned | before | after | change | improved in every seed |")
    lines.append("|---|---|---|---|---|---|")
    changes: dict[bool, list[float]] = {True: [], False: []}
    every: dict[bool, int] = {True: 0, False: 0}
    for lang in languages:
        before = [r["before"][lang] for r in runs]
        after = [r["after"][lang] for r in runs]
        delta = [a - b for a, b in zip(after, before)]
        is_aligned = lang in aligned
        changes[is_aligned].append(statistics.fmean(delta))
        improved = all(d > 0 for d in delta)
        every[is_aligned] += improved
        lines.append(f"| {lang} | {'yes' if is_aligned else ''} | {statistics.fmean(before):.3f} "
                     f"({spread(before):.3f}) | {statistics.fmean(after):.3f} ({spread(after):.3f}) | "
                     f"{statistics.fmean(delta):+.3f} ({spread(delta):.3f}) | {'yes' if improved else 'no'} |")
    for is_aligned, name in ((True, "aligned"), (False, "held out")):
        if changes[is_aligned]:
            lines.append(f"| mean, {name} ({len(changes[is_aligned])}) | | | | "
                         f"{statistics.fmean(changes[is_aligned]):+.3f} | {every[is_aligned]} of "
                         f"{len(changes[is_aligned])} |")
    text = "\n".join(lines)
    return text if markdown else text.replace("|---|---|---|---|---|---|\n", "")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run output folders (align/realign), one per seed")
    p.add_argument("--layer", type=int, help="hidden_states index (default: each run's aligned layer)")
    p.add_argument("--group-by", choices=["aligned", "subset"], default="aligned")
    p.add_argument("--markdown", action="store_true", help="(the tables are markdown either way)")
    args = p.parse_args(argv)
    runs = [read_run(Path(folder), args.layer) for folder in args.runs
            if (Path(folder) / "eval" / "retrieval_after").is_dir()]
    if not runs:
        raise SystemExit("error: no finished run among the folders (none has eval/retrieval_after/)")
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["subset"] if args.group_by == "subset" else ",".join(sorted(run["aligned"]))].append(run)
    for group in groups.values():
        print(table(group, True) + "\n")
    return runs


if __name__ == "__main__":
    main()
