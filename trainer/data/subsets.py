"""Language subsets for realignment (M3): the study's heuristics, the subsets.yaml format, validation.

Every heuristic picks `n` languages from a pool (the study's 65 by default;
English is the anchor: never selected, always implicitly aligned):

- `featural_max` / `featural_min`: the n-subset maximising / minimising the
  summed pairwise URIEL angular distance with English counted in the sum
  (`trainer.data.uriel`, `trainer.data.subset_search`: exact search when
  C(pool, n) is small enough, otherwise greedy + swap local search).
- `latin_diverse` / `latin_least_diverse`: the same within Latin-script languages.
- `script_diverse`: one language per distinct non-Latin script.
- `family_diverse`: one language per distinct top-level family outside
  Indo-European. `indo_european`: Indo-European languages only.
  These three take languages round-robin over the groups (scripts,
  families, or IE genera), so every group is used once before any is used
  twice; the group order and the member within each group are drawn with the
  seed (one subset per seed).
- `random`: a uniform random n-subset of the pool, one per seed.
- `joshi_low` (classes 0-2), `joshi_mid` (3-4), `joshi_high` (5), `seen`,
  `unseen` (in the model's pre-training; the seen list is an input): a
  seeded random n-subset of that resource pool, plus the whole pool as
  `<heuristic>_all`.

Each subset records its featural objective value (the summed distance
above) whatever heuristic chose it, so heuristics can be compared on it.
A size larger than the candidates is skipped and listed under `skipped`.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from trainer.data import subset_search
from trainer.data.languages import Language, LanguageTable, language_table
from trainer.data.uriel import FEATURE_MODES, distance_matrix

log = logging.getLogger(__name__)

HEURISTICS: dict[str, str] = {
    "featural_max": "most diverse: n-subset maximising the summed pairwise URIEL angular distance, English counted",
    "featural_min": "least diverse: n-subset minimising the summed pairwise URIEL angular distance, English counted",
    "latin_diverse": "featural_max within Latin-script languages",
    "latin_least_diverse": "featural_min within Latin-script languages",
    "script_diverse": "one language per distinct non-Latin script (round-robin over scripts; seeded choice)",
    "family_diverse": "one language per distinct family outside Indo-European (round-robin; seeded choice)",
    "indo_european": "Indo-European languages only (round-robin over genera; seeded choice)",
    "random": "uniform random n-subset of the pool (seeded)",
    "joshi_low": "seeded random n-subset of Joshi classes 0-2",
    "joshi_mid": "seeded random n-subset of Joshi classes 3-4",
    "joshi_high": "seeded random n-subset of Joshi class 5",
    "seen": "seeded random n-subset of the languages seen in the model's pre-training",
    "unseen": "seeded random n-subset of the languages not seen in the model's pre-training",
}
DISTANCE_HEURISTICS = {"featural_max": True, "featural_min": False,
                       "latin_diverse": True, "latin_least_diverse": False}
GROUP_HEURISTICS = {"script_diverse", "family_diverse", "indo_european"}
POOL_HEURISTICS = {"joshi_low", "joshi_mid", "joshi_high", "seen", "unseen"}

# Officially supported languages of Llama 3.1 (model card); Llama 3 itself documents no list.
SEEN_PRESETS: dict[str, list[str]] = {
    "llama-3.1": ["eng_Latn", "deu_Latn", "fra_Latn", "ita_Latn", "por_Latn", "hin_Deva", "spa_Latn", "tha_Thai"],
}
DEFAULT_SIZES = (5, 10, 20, 40)
DEFAULT_SEEDS = (17, 23, 42, 66)
OBJECTIVE = "sum of pairwise URIEL angular distances over the subset plus English (arccos(cos)/pi)"


@dataclass
class SelectionConfig:
    """Inputs of `select_subsets` (the CLI `python -m data_prep.select_languages` fills it)."""

    pool: list[str]
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    heuristics: list[str] = field(default_factory=lambda: list(HEURISTICS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    seen: list[str] = field(default_factory=lambda: list(SEEN_PRESETS["llama-3.1"]))
    seen_source: str = "llama-3.1 (model card: officially supported languages)"
    english: str = "eng_Latn"
    features: str = "imputed"
    min_shared: int = 1
    on_undefined: str = "error"        # observed mode: "error" or "drop" languages without distances
    exact_max_combinations: int = subset_search.DEFAULT_EXACT_MAX_COMBINATIONS
    restarts: int = subset_search.DEFAULT_RESTARTS
    search_seed: int = 0
    full_pools: bool = True
    pool_name: str = "pool65"

    def check(self) -> None:
        unknown = [h for h in self.heuristics if h not in HEURISTICS]
        if unknown:
            raise ValueError(f"heuristics: unknown {unknown}; valid: {', '.join(HEURISTICS)}")
        if self.features not in FEATURE_MODES:
            raise ValueError(f"features: {self.features!r} is not one of {', '.join(FEATURE_MODES)}")
        if self.on_undefined not in ("error", "drop"):
            raise ValueError(f"on_undefined: {self.on_undefined!r} is not 'error' or 'drop'")
        bad = [n for n in self.sizes if n < 1]
        if bad:
            raise ValueError(f"sizes: must be positive, got {bad}")


def round_robin(candidates: list[Language], group: Callable[[Language], str], k: int, seed: int) -> list[str]:
    """k languages taken one per group per pass (group order and members shuffled with `seed`)."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for lang in sorted(candidates, key=lambda x: x.flores):
        groups.setdefault(group(lang), []).append(lang.flores)
    order = sorted(groups)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(groups[g])
    picked: list[str] = []
    depth = 0
    while len(picked) < k:
        for g in order:
            if depth < len(groups[g]) and len(picked) < k:
                picked.append(groups[g][depth])
        depth += 1
    return sorted(picked)


def random_subset(candidates: list[Language], k: int, seed: int) -> list[str]:
    """A uniform random k-subset (sorted FLORES codes), deterministic in `seed`."""
    codes = sorted(lang.flores for lang in candidates)
    return sorted(random.Random(seed).sample(codes, k))


def _candidates(heuristic: str, pool: list[Language], seen: set[str]) -> list[Language]:
    if heuristic in ("featural_max", "featural_min", "random"):
        return pool
    if heuristic in ("latin_diverse", "latin_least_diverse"):
        return [x for x in pool if x.script == "Latn"]
    if heuristic == "script_diverse":
        return [x for x in pool if x.script != "Latn"]
    if heuristic == "family_diverse":
        return [x for x in pool if x.family != "Indo-European"]
    if heuristic == "indo_european":
        return [x for x in pool if x.family == "Indo-European"]
    if heuristic.startswith("joshi_"):
        missing = [x.flores for x in pool if x.joshi_class is None]
        if missing:
            raise ValueError(f"{heuristic}: no Joshi class in the language table for {', '.join(missing)}")
        return [x for x in pool if x.resource_group == heuristic.removeprefix("joshi_")]
    if heuristic == "seen":
        return [x for x in pool if x.flores in seen]
    if heuristic == "unseen":
        return [x for x in pool if x.flores not in seen]
    raise ValueError(f"unknown heuristic {heuristic!r}; valid: {', '.join(HEURISTICS)}")


def _group_key(heuristic: str) -> Callable[[Language], str]:
    if heuristic == "script_diverse":
        return lambda x: x.script
    if heuristic == "family_diverse":
        return lambda x: x.family
    return lambda x: x.genus or x.family      # indo_european: round-robin over genera


def _drop_undefined(codes: list[str], dist: np.ndarray, index: dict[str, int]) -> tuple[list[str], list[str]]:
    """Drop languages (most undefined pairs first) until every pair has a distance."""
    keep, dropped = list(codes), []
    while True:
        sub = dist[np.ix_([index[c] for c in keep], [index[c] for c in keep])]
        bad = np.isnan(sub).sum(axis=1)
        if bad.sum() == 0:
            return keep, dropped
        worst = keep[int(np.argmax(bad))]
        keep.remove(worst)
        dropped.append(worst)


class _Scorer:
    """Featural objective of any subset of the pool, with English as the anchor."""

    def __init__(self, codes: list[str], english: str, dist: np.ndarray):
        self.index = {c: i for i, c in enumerate(codes)}
        self.english = english
        self.dist = dist

    def objective(self, subset: list[str]) -> tuple[float | None, float | None]:
        idx = [self.index[c] for c in subset]
        anchor = self.dist[:, self.index[self.english]]
        value = subset_search.subset_objective(self.dist, idx, anchor)
        if math.isnan(value):
            return None, None
        n_pairs = math.comb(len(subset) + 1, 2)
        return round(value, 6), round(value / n_pairs, 6)


def _random_mean(dist: np.ndarray, anchor: np.ndarray, k: int, seed: int, draws: int = 1000) -> float:
    """Mean objective of `draws` uniform random k-subsets (a baseline for the searched value)."""
    rng = np.random.default_rng(seed)
    subsets = np.argsort(rng.random((draws, dist.shape[0])), axis=1)[:, :k]
    rows, cols = np.triu_indices(k, 1)
    values = dist[subsets[:, rows], subsets[:, cols]].sum(axis=1) + anchor[subsets].sum(axis=1)
    return round(float(values.mean()), 6)


def select_subsets(cfg: SelectionConfig, table: LanguageTable | None = None, progress: bool = False) -> dict:
    """Run every requested heuristic at every size (and seed); returns the subsets.yaml document."""
    cfg.check()
    table = table or language_table()
    english = table.flores(cfg.english, "english")
    pool_codes = [c for c in table.resolve(cfg.pool, "pool") if c != english]
    pool = sorted((table.get(c) for c in pool_codes), key=lambda x: x.flores)
    seen = set(table.resolve(cfg.seen, "seen languages"))
    codes = [x.flores for x in pool] + [english]
    dist, report = distance_matrix(codes, cfg.features, cfg.min_shared)
    scorer = _Scorer(codes, english, dist)

    subsets: dict[str, dict] = {}
    skipped: list[dict] = []
    dropped_all: dict[str, list[str]] = {}

    def add(name: str, heuristic: str, size: int, seed: int | None, langs: list[str], **extra) -> None:
        objective, mean = scorer.objective(langs)
        entry = {"heuristic": heuristic, "size": len(langs), "seed": seed, "languages": sorted(langs),
                 "objective": objective, "mean_pairwise_distance": mean,
                 "families": len({table.get(c).family for c in langs}),
                 "scripts": len({table.get(c).script for c in langs})}
        if objective is None:
            entry["objective_note"] = "undefined: some pair shares no observed URIEL features"
        entry.update(extra)
        subsets[name] = entry

    for heuristic in cfg.heuristics:
        cands = _candidates(heuristic, pool, seen)
        if heuristic in DISTANCE_HEURISTICS:
            cand_codes = [x.flores for x in cands]
            dropped: list[str] = []
            if cfg.on_undefined == "drop":
                cand_codes, dropped = _drop_undefined(cand_codes + [english], dist, scorer.index)
                if english in dropped:
                    raise ValueError(f"{heuristic}: English has undefined distances; use features=imputed")
                cand_codes = [c for c in cand_codes if c != english]
                if dropped:
                    dropped_all[heuristic] = dropped
            idx = [scorer.index[c] for c in cand_codes]
            sub = dist[np.ix_(idx, idx)]
            anchor = dist[idx, scorer.index[english]]
            for size in cfg.sizes:
                if size > len(idx):
                    skipped.append({"heuristic": heuristic, "size": size,
                                    "reason": f"only {len(idx)} candidate languages"})
                    continue
                sel = subset_search.select(sub, size, anchor, maximize=DISTANCE_HEURISTICS[heuristic],
                                           exact_max_combinations=cfg.exact_max_combinations,
                                           restarts=cfg.restarts, seed=cfg.search_seed, progress=progress)
                extra = {"search": sel.method, "candidates": len(idx),
                         "random_mean_objective": _random_mean(sub, anchor, size, cfg.search_seed)}
                if sel.method == "approximate":
                    extra["search_detail"] = (f"greedy + best-improvement swaps, {cfg.restarts} starts, "
                                              f"seed {cfg.search_seed}; C({len(idx)},{size}) = "
                                              f"{math.comb(len(idx), size):.3g} subsets")
                if dropped:
                    extra["dropped_without_distances"] = dropped
                add(f"{heuristic}_{size}", heuristic, size, None, [cand_codes[i] for i in sel.indices], **extra)
            continue
        if heuristic in POOL_HEURISTICS and cfg.full_pools and cands:
            add(f"{heuristic}_all", heuristic, len(cands), None, [x.flores for x in cands],
                candidates=len(cands))
        for size in cfg.sizes:
            if size > len(cands):
                skipped.append({"heuristic": heuristic, "size": size,
                                "reason": f"only {len(cands)} candidate languages"})
                continue
            for seed in cfg.seeds:
                if heuristic in GROUP_HEURISTICS:
                    langs = round_robin(cands, _group_key(heuristic), size, seed)
                else:
                    langs = random_subset(cands, size, seed)
                add(f"{heuristic}_{size}_s{seed}", heuristic, size, seed, langs, candidates=len(cands))

    features_meta = {"source": "URIEL via lang2vec (trainer/data/uriel_features.csv; "
                               "data_prep/build_uriel_features.py)",
                     "features": "syntax + phonology + inventory (289)", **report.as_dict()}
    if dropped_all:
        features_meta["dropped_without_distances"] = dropped_all
    return {
        "metadata": {
            "pool": {"name": cfg.pool_name, "size": len(pool), "languages": [x.flores for x in pool]},
            "anchor": english,
            "objective": OBJECTIVE,
            "features": features_meta,
            "search": {"exact_max_combinations": cfg.exact_max_combinations, "restarts": cfg.restarts,
                       "seed": cfg.search_seed,
                       "approximation": "greedy + best-improvement swap local search, multiple starts"},
            "seen_languages": {"source": cfg.seen_source, "languages": sorted(seen)},
            "sizes": list(cfg.sizes),
            "seeds": list(cfg.seeds),
            "heuristics": {h: HEURISTICS[h] for h in cfg.heuristics},
        },
        "subsets": subsets,
        "skipped": skipped,
    }


def write_subsets(doc: dict, path: str | Path) -> Path:
    """Write a subsets document as YAML (language lists inline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120,
                                   default_flow_style=None), encoding="utf-8")
    return path


def validate_subsets(doc: dict, table: LanguageTable | None = None, source: str = "subsets.yaml") -> dict[str, list[str]]:
    """Check a subsets document against the language table; returns {name: [FLORES codes]}.

    Every language must be an exact FLORES-200 code of the table (not an
    alias), appear once, be in the metadata pool, and not be the anchor;
    `size` must equal the number of languages. All problems are reported at once.
    """
    table = table or language_table()
    errors: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("subsets"), dict):
        raise ValueError(f"{source}: expected a mapping with a 'subsets' mapping")
    meta = doc.get("metadata") or {}
    anchor = meta.get("anchor", "eng_Latn")
    pool = set((meta.get("pool") or {}).get("languages") or [])

    def check_code(where: str, code) -> bool:
        if not isinstance(code, str) or code not in table:
            hint = ", ".join(x.flores for x in table.closest(str(code), 3))
            errors.append(f"{where}: unknown language {code!r} (closest: {hint})")
            return False
        if table.flores(code) != code:
            errors.append(f"{where}: {code!r} is not an exact FLORES-200 code; use {table.flores(code)!r}")
            return False
        return True

    check_code("metadata.anchor", anchor)
    for code in sorted(pool):
        check_code("metadata.pool", code)
    out: dict[str, list[str]] = {}
    for name, entry in doc["subsets"].items():
        where = f"subsets.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("languages"), list):
            errors.append(f"{where}: expected a mapping with a 'languages' list")
            continue
        langs = entry["languages"]
        ok = all([check_code(f"{where}.languages", c) for c in langs])
        if entry.get("heuristic") not in HEURISTICS:
            errors.append(f"{where}.heuristic: {entry.get('heuristic')!r} is not one of {', '.join(HEURISTICS)}")
        if entry.get("size") != len(langs):
            errors.append(f"{where}.size: {entry.get('size')!r} but {len(langs)} languages listed")
        if len(set(langs)) != len(langs):
            errors.append(f"{where}.languages: duplicates {sorted({c for c in langs if langs.count(c) > 1})}")
        if anchor in langs:
            errors.append(f"{where}.languages: contains the anchor {anchor} (it is implicit, never selected)")
        if pool and ok and not set(langs) <= pool:
            errors.append(f"{where}.languages: not in the metadata pool: {sorted(set(langs) - pool)}")
        seed = entry.get("seed")
        if seed is not None and not isinstance(seed, int):
            errors.append(f"{where}.seed: expected an integer or null, got {seed!r}")
        objective = entry.get("objective")
        if objective is not None and not isinstance(objective, (int, float)):
            errors.append(f"{where}.objective: expected a number or null, got {objective!r}")
        out[name] = list(langs)
    if errors:
        raise ValueError(f"{source}: invalid subsets:\n  " + "\n  ".join(errors))
    return out


def load_subsets(path: str | Path, table: LanguageTable | None = None) -> dict[str, list[str]]:
    """Read and validate a subsets.yaml; returns {subset name: [FLORES codes]}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"subsets file {path} does not exist "
                                f"(write one with: python -m data_prep.select_languages --out {path})")
    return validate_subsets(yaml.safe_load(path.read_text(encoding="utf-8")), table, str(path))
