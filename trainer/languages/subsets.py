"""Language subsets for realignment (M3): the study's heuristics, the subsets.yaml format, validation.

Every heuristic picks `n` languages from a pool (the study's 65 by default;
English is the anchor: never selected, always implicitly aligned):

- `featural_max` / `featural_min`: the n-subset maximising / minimising the
  summed pairwise URIEL angular distance with English counted in the sum
  (`trainer.languages.uriel`, `trainer.languages.subset_search`: exact search when
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
Searched subsets also record how they were found (`exact` or
`approximate`) and a baseline: the mean and the best objective of 1000
uniform random subsets of the same size and candidates.
A size larger than the candidates is skipped and listed under `skipped`.

Missing URIEL data (the paper leaves it open; our choice): by default
(`features: imputed`) each missing observed feature is filled from
lang2vec's kNN prediction, so every pair has a distance over all 289
features. With `features: observed` a pair without shared features has no
distance: the run fails naming the pairs (`on_undefined: error`) or drops
the languages with the most undefined pairs (`on_undefined: drop`). A
missing distance is never counted as 0. Either way the document's
`metadata.features` lists the languages that lack an observed-feature
distance to some partner.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from trainer.fsutil import write_atomic
from trainer.languages import subset_search
from trainer.languages.table import Language, LanguageTable, language_table
from trainer.languages.uriel import (SOFTIMPUTE_MAX_ITERS, SOFTIMPUTE_SHRINKAGE_DIVISOR, URIELPLUS_KNN_NEIGHBOURS,
                                    FeatureMode, Imputation, distance_matrix)
from trainer.schema_base import Section

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


class SelectionConfig(Section):
    """Inputs of `select_subsets` (the CLI `python -m data_prep.select_languages` fills it)."""

    pool: list[str] = Field(description="candidate languages (any code the language table knows)")
    sizes: list[int] = Field(default_factory=lambda: list(DEFAULT_SIZES), description="subset sizes n")
    heuristics: list[str] = Field(default_factory=lambda: list(HEURISTICS), description="heuristics to run")
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS), description="seeds of seeded heuristics")
    seen: list[str] = Field(default_factory=lambda: list(SEEN_PRESETS["llama-3.1"]),
                            description="languages seen in the model's pre-training")
    seen_source: str = "llama-3.1 (model card: officially supported languages)"
    english: str = Field("eng_Latn", description="anchor: counted in every objective, never selected")
    features: FeatureMode = Field("imputed", description=(
        "Feature source and mode (trainer.languages.uriel): imputed, observed, knn (URIEL via lang2vec) or urielplus "
        "(URIEL+ as the subset study used it: sources by union, no imputation)"))
    imputation: Imputation = Field("none", description=(
        "urielplus only: none (default: distances over shared features), knn (KNNImputer, k = 9, over the "
        "shipped URIEL+ table) or softimpute (URIEL+'s default strategy with its parameters, rounded to 0/1)"))
    min_shared: int = Field(1, ge=1, description="observed mode: fewest shared features for a defined distance")
    on_undefined: Literal["error", "drop"] = Field("error", description=(
        "observed mode: fail naming the pairs without a distance, or drop those languages"))
    exact_max_combinations: int = Field(subset_search.DEFAULT_EXACT_MAX_COMBINATIONS, ge=0)
    restarts: int = Field(subset_search.DEFAULT_RESTARTS, ge=1)
    search_seed: int = 0
    full_pools: bool = Field(True, description="also write each resource pool whole as <heuristic>_all")
    pool_name: str = "pool65"

    @field_validator("heuristics")
    @classmethod
    def _heuristics(cls, v: list[str]) -> list[str]:
        unknown = [h for h in v if h not in HEURISTICS]
        if unknown:
            raise ValueError(f"unknown {unknown}; valid: {', '.join(HEURISTICS)}")
        return v

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        bad = [n for n in v if n < 1]
        if bad:
            raise ValueError(f"must be positive, got {bad}")
        return v

    @model_validator(mode="after")
    def _imputation(self) -> "SelectionConfig":
        if self.imputation != "none" and self.features != "urielplus":
            raise ValueError(f"imputation: {self.imputation} applies to features urielplus (URIEL's own imputation "
                             f"is features: imputed)")
        return self


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


def _random_baseline(dist: np.ndarray, anchor: np.ndarray, k: int, seed: int, maximize: bool,
                     draws: int = 1000) -> dict[str, float]:
    """Objectives of `draws` uniform random k-subsets: their mean and their best (max or min).

    The baseline the searched value must reach (the approximation's acceptance check).
    """
    rng = np.random.default_rng(seed)
    subsets = np.argsort(rng.random((draws, dist.shape[0])), axis=1)[:, :k]
    rows, cols = np.triu_indices(k, 1)
    values = dist[subsets[:, rows], subsets[:, cols]].sum(axis=1) + anchor[subsets].sum(axis=1)
    best = values.max() if maximize else values.min()
    return {"random_mean_objective": round(float(values.mean()), 6),
            "random_best_objective": round(float(best), 6), "random_draws": draws}


def _undefined_pairs(codes: list[str], dist: np.ndarray, index: dict[str, int]) -> list[tuple[str, str]]:
    """Pairs of `codes` whose distance is NaN (no shared features)."""
    return [(a, b) for i, a in enumerate(codes) for b in codes[i + 1:] if np.isnan(dist[index[a], index[b]])]


class _Run:
    """One `select_subsets` call: the pool, its distances, and the subsets written so far."""

    def __init__(self, cfg: SelectionConfig, table: LanguageTable):
        self.cfg, self.table = cfg, table
        self.english = table.flores(cfg.english, "english")
        pool_codes = [c for c in table.resolve(cfg.pool, "pool") if c != self.english]
        self.pool = sorted((table.get(c) for c in pool_codes), key=lambda x: x.flores)
        self.seen = set(table.resolve(cfg.seen, "seen languages"))
        codes = [x.flores for x in self.pool] + [self.english]
        self.dist, self.report = distance_matrix(codes, cfg.features, cfg.min_shared, cfg.imputation)
        self.scorer = _Scorer(codes, self.english, self.dist)
        self.subsets: dict[str, dict] = {}
        self.skipped: list[dict] = []
        self.dropped: dict[str, list[str]] = {}

    def add(self, name: str, heuristic: str, seed: int | None, langs: list[str], **extra) -> None:
        objective, mean = self.scorer.objective(langs)
        entry = {"heuristic": heuristic, "size": len(langs), "seed": seed, "languages": sorted(langs),
                 "objective": objective, "mean_pairwise_distance": mean,
                 "families": len({self.table.get(c).family for c in langs}),
                 "scripts": len({self.table.get(c).script for c in langs})}
        if objective is None:
            entry["objective_note"] = "undefined: some pair shares no observed URIEL features"
        entry.update(extra)
        self.subsets[name] = entry

    def fits(self, heuristic: str, size: int, n_candidates: int) -> bool:
        if size <= n_candidates:
            return True
        self.skipped.append({"heuristic": heuristic, "size": size,
                             "reason": f"only {n_candidates} candidate languages"})
        return False

    def _featural_candidates(self, heuristic: str, cands: list[Language]) -> list[str]:
        """Candidate codes with a distance to each other and to English (undefined ones dropped or reported)."""
        codes, index = [x.flores for x in cands], self.scorer.index
        if self.cfg.on_undefined == "drop":
            kept, dropped = _drop_undefined(codes + [self.english], self.dist, index)
            if self.english in dropped:
                raise ValueError(f"{heuristic}: {self.english} has undefined distances; use features: imputed")
            if dropped:
                self.dropped[heuristic] = dropped
            return [c for c in kept if c != self.english]
        bad = _undefined_pairs(codes + [self.english], self.dist, index)
        if bad:
            shown = ", ".join(f"{a}-{b}" for a, b in bad[:10])
            raise ValueError(
                f"{heuristic}: {len(bad)} language pairs have no URIEL distance with features="
                f"{self.cfg.features!r} (e.g. {shown}); a missing distance is never counted as 0: "
                f"use features: imputed (default) or on_undefined: drop")
        return codes

    def featural(self, heuristic: str, cands: list[Language], progress: bool) -> None:
        """Exact or approximate search for the most / least diverse subset at every size."""
        cfg, maximize = self.cfg, DISTANCE_HEURISTICS[heuristic]
        codes = self._featural_candidates(heuristic, cands)
        idx = [self.scorer.index[c] for c in codes]
        sub = self.dist[np.ix_(idx, idx)]
        anchor = self.dist[idx, self.scorer.index[self.english]]
        for size in cfg.sizes:
            if not self.fits(heuristic, size, len(idx)):
                continue
            sel = subset_search.select(sub, size, anchor, maximize=maximize,
                                       exact_max_combinations=cfg.exact_max_combinations,
                                       restarts=cfg.restarts, seed=cfg.search_seed, progress=progress)
            extra = {"search": sel.method, "candidates": len(idx),
                     **_random_baseline(sub, anchor, size, cfg.search_seed, maximize)}
            if sel.method == "approximate":
                extra["search_detail"] = (f"greedy + best-improvement swaps, {cfg.restarts} starts, "
                                          f"seed {cfg.search_seed}; C({len(idx)},{size}) = "
                                          f"{math.comb(len(idx), size):.3g} subsets")
            if heuristic in self.dropped:
                extra["dropped_without_distances"] = self.dropped[heuristic]
            self.add(f"{heuristic}_{size}", heuristic, None, [codes[i] for i in sel.indices], **extra)

    def seeded(self, heuristic: str, cands: list[Language]) -> None:
        """Group round-robin or random subsets, one per seed and size (plus the whole resource pool)."""
        if heuristic in POOL_HEURISTICS and self.cfg.full_pools and cands:
            self.add(f"{heuristic}_all", heuristic, None, [x.flores for x in cands], candidates=len(cands))
        for size in self.cfg.sizes:
            if not self.fits(heuristic, size, len(cands)):
                continue
            for seed in self.cfg.seeds:
                if heuristic in GROUP_HEURISTICS:
                    langs = round_robin(cands, _group_key(heuristic), size, seed)
                else:
                    langs = random_subset(cands, size, seed)
                self.add(f"{heuristic}_{size}_s{seed}", heuristic, seed, langs, candidates=len(cands))


def select_subsets(cfg: SelectionConfig, table: LanguageTable | None = None, progress: bool = False) -> dict:
    """Run every requested heuristic at every size (and seed); returns the subsets.yaml document.

    `progress`: a bar over heuristics (and the long searches inside them) on stderr.
    """
    table = table or language_table()
    run = _Run(cfg, table)
    bar = tqdm(cfg.heuristics, desc="heuristics", unit="heuristic", disable=not progress)
    for heuristic in bar:
        bar.set_postfix_str(heuristic)
        cands = _candidates(heuristic, run.pool, run.seen)
        if heuristic in DISTANCE_HEURISTICS:
            run.featural(heuristic, cands, progress)
        else:
            run.seeded(heuristic, cands)
    return _document(run)


MISSING_HANDLING = {
    "imputed": "missing observed URIEL features filled from lang2vec's kNN predictions, so every pair has "
               "a distance over all 289 features",
    "observed": "observed features only; a pair without shared features has no distance (never 0): "
                "the run fails (on_undefined: error) or drops those languages (on_undefined: drop)",
    "knn": "lang2vec's kNN predictions for every feature (observed values not used)",
    "urielplus": "URIEL+ values (sources by union), no imputation: a distance over the features both languages "
                 "have; a pair without shared features has no distance (never 0)",
}
URIELPLUS_IMPUTATION_HANDLING = {
    "knn": f"URIEL+ values (sources by union), knn imputation: every missing value filled by scikit-learn's "
           f"KNNImputer (k = {URIELPLUS_KNN_NEIGHBOURS}, URIEL+'s kNN strategy) over the shipped URIEL+ table, so "
           f"every pair has a distance over the features any language has",
    "softimpute": f"URIEL+ values (sources by union), softimpute imputation: every missing value filled by "
                  f"softImpute (URIEL+'s default strategy and parameters: shrinkage = largest singular value / "
                  f"{SOFTIMPUTE_SHRINKAGE_DIVISOR:g}, at most {SOFTIMPUTE_MAX_ITERS} iterations, values in [0, 1], "
                  f"rounded to 0/1) over the shipped URIEL+ table, so every pair has a distance over the features "
                  f"any language has",
}


def missing_handling(features: str, imputation: str = "none") -> str:
    """How missing features were handled in a run: the `missing_features` line of subsets.yaml's metadata and
    the CLI's "handling:" line; names the imputation used (`imputation` applies to urielplus)."""
    if features == "urielplus" and imputation != "none":
        return URIELPLUS_IMPUTATION_HANDLING.get(
            imputation, f"URIEL+ values (sources by union), missing values filled by {imputation} imputation")
    return MISSING_HANDLING[features]
FEATURE_SOURCES = {
    "urielplus": ("URIEL+ (trainer/languages/urielplus_features.csv; data_prep/build_urielplus_features.py)",
                  "syntax + phonology + inventory + morphology (452)"),
}
URIEL_SOURCE = ("URIEL via lang2vec (trainer/languages/uriel_features.csv; data_prep/build_uriel_features.py)",
                "syntax + phonology + inventory (289)")


def _document(run: _Run) -> dict:
    """The subsets.yaml document of a finished run."""
    cfg = run.cfg
    source, described = FEATURE_SOURCES.get(cfg.features, URIEL_SOURCE)
    features_meta = {"source": source, "features": described, "imputation": cfg.imputation,
                     "missing_features": missing_handling(cfg.features, cfg.imputation), **run.report.as_dict()}
    if run.dropped:
        features_meta["dropped_without_distances"] = run.dropped
    return {
        "metadata": {
            "pool": {"name": cfg.pool_name, "size": len(run.pool), "languages": [x.flores for x in run.pool]},
            "anchor": run.english,
            "objective": OBJECTIVE,
            "features": features_meta,
            "search": {"exact_max_combinations": cfg.exact_max_combinations, "restarts": cfg.restarts,
                       "seed": cfg.search_seed,
                       "exact": "all C(m, n) subsets scored when C(m, n) <= exact_max_combinations",
                       "approximation": "greedy + best-improvement swap local search, multiple starts"},
            "seen_languages": {"source": cfg.seen_source, "languages": sorted(run.seen)},
            "sizes": list(cfg.sizes),
            "seeds": list(cfg.seeds),
            "heuristics": {h: HEURISTICS[h] for h in cfg.heuristics},
        },
        "subsets": run.subsets,
        "skipped": run.skipped,
    }


def write_subsets(doc: dict, path: str | Path) -> Path:
    """Write a subsets document as YAML (language lists inline)."""
    return write_atomic(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120,
                                             default_flow_style=None))


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
