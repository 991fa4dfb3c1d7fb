"""URIEL typological feature vectors and the angular distance of the realignment study (M3).

Data: `trainer/languages/uriel_features.csv`, built from the URIEL data that the
`lang2vec` package ships (see `data_prep/build_uriel_features.py`), so nothing
is downloaded and no extra package is needed at run time. Per NLLB-200
language it holds 289 features (103 syntax, 28 phonology, 158 inventory) twice:

- `observed`: URIEL's values averaged over its sources; missing where no
  source has the feature (lang2vec `*_average` sets);
- `knn`: lang2vec's k-nearest-neighbour predictions, complete (`*_knn` sets).

Missing values are NaN in every array this module returns (the CSV leaves
the cell empty; lang2vec's own files use -1).

Feature modes (`feature_matrix(..., mode=)`):

- `imputed` (default): observed values, with each missing value filled from
  the kNN prediction. Every pair of languages then has all 289 features in
  common. This is how the study's sparse pool languages (Tswana, Twi,
  Kazakh, Nyanja, ... with few or no observed features) get a distance.
- `observed`: observed values only; a distance is computed over the features
  both languages have, and is undefined (NaN) when they share fewer than
  `min_shared` features. Callers must not treat NaN as 0.
- `knn`: the kNN predictions only.
- `urielplus`: URIEL+ (Khan et al. 2025) as the subset study used it: 452 typological features with
  URIEL+'s added databases integrated, sources aggregated by union, no imputation; a distance over
  the features both languages have (`trainer/languages/urielplus_features.csv`, built by
  `data_prep/build_urielplus_features.py`; codes as the study's lists: `gaz` Oromo, `swh` Swahili).
  Imputation is explicit (`imputation`): `none` (the default; docs/languages.md says which one the
  study implies), `knn`: scikit-learn's KNNImputer (URIEL+'s kNN strategy) over the 202-language table, k = 9 (the middle of the
  3..15 range URIEL+ searches; its own cross-validated imputation runs over all of URIEL+'s 26,880
  languages and is not rerun here), or `softimpute`: URIEL+'s default strategy, as URIEL+ 1.3.2
  runs it (`soft_impute` below: shrinkage = largest singular value / 50, at most 400 iterations,
  values clipped to [0, 1], then rounded to 0/1 as URIEL+ does for union aggregation), over the same
  202-language table. A feature no language has stays missing under either imputation.
"""

from __future__ import annotations

import contextlib
import csv
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Sequence

import numpy as np

FEATURE_FILE = "uriel_features.csv"
URIELPLUS_FILE = "urielplus_features.csv"
FeatureMode = Literal["imputed", "observed", "knn", "urielplus"]
FEATURE_MODES: tuple[str, ...] = ("imputed", "observed", "knn", "urielplus")
Imputation = Literal["none", "knn", "softimpute"]
IMPUTATIONS: tuple[str, ...] = ("none", "knn", "softimpute")
URIELPLUS_KNN_NEIGHBOURS = 9
SOFTIMPUTE_MAX_ITERS = 400              # URIEL+ 1.3.2 (urielplus_imputation.py: SoftImpute(max_iters=400, ...))
SOFTIMPUTE_CONVERGENCE = 1e-3           # fancyimpute's default convergence_threshold, which URIEL+ keeps
SOFTIMPUTE_SHRINKAGE_DIVISOR = 50.0     # fancyimpute's default shrinkage: largest singular value / 50


@dataclass(frozen=True)
class UrielTable:
    """Observed and kNN feature arrays ([n_languages, n_features], NaN = missing), rows keyed by FLORES code."""

    languages: tuple[str, ...]
    uriel_codes: tuple[str, ...]
    features: tuple[str, ...]
    observed: np.ndarray
    knn: np.ndarray

    def row(self, flores: str) -> int:
        """Row index of a FLORES code; KeyError naming the code if URIEL has no data for it."""
        try:
            return self.languages.index(flores)
        except ValueError:
            raise KeyError(f"no URIEL features for {flores!r} in trainer/data/{FEATURE_FILE} "
                           f"({len(self.languages)} languages available)") from None


@functools.lru_cache(maxsize=1)
def load_uriel() -> UrielTable:
    """The shipped feature table (read once)."""
    text = resources.files("trainer.languages").joinpath(FEATURE_FILE).read_text(encoding="utf-8")
    rows = csv.reader(line for line in text.splitlines() if not line.startswith("#"))
    header = next(rows)
    features = tuple(header[3:])
    langs: list[str] = []
    codes: list[str] = []
    obs: list[list[float]] = []
    knn: list[list[float]] = []
    for row in rows:
        values = [float(x) if x else np.nan for x in row[3:]]
        if row[2] == "observed":
            langs.append(row[0])
            codes.append(row[1])
            obs.append(values)
        elif row[2] == "knn":
            if not langs or langs[-1] != row[0]:
                raise ValueError(f"trainer/data/{FEATURE_FILE}: knn row for {row[0]} must follow its observed row")
            knn.append(values)
        else:
            raise ValueError(f"trainer/data/{FEATURE_FILE}: kind must be observed or knn, got {row[2]!r}")
    return UrielTable(tuple(langs), tuple(codes), features, np.array(obs), np.array(knn))


@functools.lru_cache(maxsize=1)
def load_urielplus() -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(FLORES codes, feature names, values [n_languages, 452] with NaN = missing) of the shipped URIEL+ table."""
    text = resources.files("trainer.languages").joinpath(URIELPLUS_FILE).read_text(encoding="utf-8")
    rows = csv.reader(line for line in text.splitlines() if not line.startswith("#"))
    header = next(rows)
    langs, values = [], []
    for row in rows:
        langs.append(row[0])
        values.append([float(x) if x else np.nan for x in row[3:]])
    return tuple(langs), tuple(header[3:]), np.array(values)


@functools.lru_cache(maxsize=1)
def urielplus_knn_imputed() -> np.ndarray:
    """The URIEL+ table [n_languages, 452] with every missing value filled by KNNImputer (k = 9)."""
    from sklearn.impute import KNNImputer

    _, _, values = load_urielplus()
    observed_anywhere = ~np.isnan(values).all(axis=0)    # a feature no language has stays missing
    filled = values.copy()
    filled[:, observed_anywhere] = KNNImputer(n_neighbors=URIELPLUS_KNN_NEIGHBOURS).fit_transform(
        values[:, observed_anywhere])
    return filled


@dataclass(frozen=True)
class SoftImputeResult:
    """`soft_impute`'s completed matrix, the shrinkage it used, its iterations, and whether it converged."""

    values: np.ndarray
    shrinkage: float
    iterations: int
    converged: bool


def soft_impute(x: np.ndarray, shrinkage: float | None = None, max_iters: int = SOFTIMPUTE_MAX_ITERS,
                convergence_threshold: float = SOFTIMPUTE_CONVERGENCE, min_value: float | None = 0.0,
                max_value: float | None = 1.0) -> SoftImputeResult:
    """softImpute (Mazumder, Hastie & Tibshirani 2010, "Spectral Regularization Algorithms for Learning Large
    Incomplete Matrices"): fill the missing (NaN) entries of `x` [n, f] by iterated soft-thresholded SVD.

    Missing entries start at 0. Each iteration takes the SVD of the current filled matrix, shrinks every
    singular value by `shrinkage` (lambda; values below it become 0, so the reconstruction is low-rank),
    clips the reconstruction to [min_value, max_value] (None: no bound) and writes it into the missing
    entries only; observed entries never change. It stops when the missing entries move by less than
    `convergence_threshold` of their norm (relative Frobenius change), or after `max_iters` iterations.
    `shrinkage=None`: the largest singular value of the zero-filled matrix / 50.

    Hand-written on purpose: URIEL+ runs softImpute through fancyimpute, which is not in the project's
    constraints (its releases pull heavy dependencies: cvxpy/cvxopt, earlier TensorFlow/Keras) and whose 0.7
    release fails with scikit-learn >= 1.6 unless patched (URIEL+ 1.3.2 patches `check_array` at import);
    scikit-learn has no softImpute. The defaults are the parameters URIEL+ 1.3.2 passes
    (`SoftImpute(max_iters=400, min_value=0, max_value=1, shrinkage_value=None)`, its
    `softimpute_imputation` running no hyper-parameter search) on top of fancyimpute's own defaults
    (zero initial fill, convergence threshold 0.001, shrinkage = largest singular value / 50), read from
    the installed urielplus package and fancyimpute's source; the URIEL+ paper's text on these values
    was not checked. One difference: fancyimpute estimates the largest singular value with a randomized
    rank-1 SVD (5 power iterations); this takes it exactly.
    """
    x = np.asarray(x, dtype=np.float64)
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    lam = float(np.linalg.norm(filled, 2) / SOFTIMPUTE_SHRINKAGE_DIVISOR) if shrinkage is None else float(shrinkage)
    if not missing.any():
        return SoftImputeResult(filled, lam, 0, True)
    converged, it = False, 0
    with _one_blas_thread():
        for it in range(1, max_iters + 1):
            recon = _soft_threshold(filled, lam)
            if min_value is not None or max_value is not None:
                recon = np.clip(recon, min_value, max_value)
            old, new = filled[missing], recon[missing]
            old_norm = float(np.linalg.norm(old))
            change = float(np.linalg.norm(old - new))
            converged = old_norm > 0 and change / old_norm < convergence_threshold
            filled[missing] = new
            if converged:
                break
    return SoftImputeResult(filled, lam, it, converged)


def _one_blas_thread():
    """BLAS limited to one thread: the URIEL+ table is small (202 x 452), and OpenBLAS's threads on a busy
    machine made softImpute 20x slower here (16 s against 0.8 s on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits     # installed with scikit-learn
    except ImportError:                                 # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _soft_threshold(m: np.ndarray, lam: float) -> np.ndarray:
    """U diag(max(s - lam, 0)) V' for the SVD m = U diag(s) V', through the eigendecomposition of the smaller
    Gram matrix (m'm = V diag(s^2) V', so U diag(s) = m V): cheaper than LAPACK's SVD with singular vectors
    on the URIEL+ table (0.03 s against 1.7 s a call, measured on 2 shared cores), and the components kept
    (s > lam, lam = largest / 50 by default) come out accurate this way."""
    tall = m.shape[0] >= m.shape[1]
    w, v = np.linalg.eigh(m.T @ m if tall else m @ m.T)
    s = np.sqrt(np.clip(w, 0.0, None))
    scale = np.where(s > lam, (s - lam) / np.where(s > 0, s, 1.0), 0.0)
    return m @ (v * scale) @ v.T if tall else (v * scale) @ v.T @ m


@functools.lru_cache(maxsize=1)
def urielplus_softimpute_imputed() -> np.ndarray:
    """The URIEL+ table [n_languages, 452] with every missing value filled by `soft_impute` (URIEL+'s
    parameters) and rounded to 0/1, as URIEL+ rounds imputed values under union aggregation."""
    _, _, values = load_urielplus()
    observed_anywhere = ~np.isnan(values).all(axis=0)    # a feature no language has stays missing
    filled = values.copy()
    filled[:, observed_anywhere] = np.round(soft_impute(values[:, observed_anywhere]).values)
    return filled


def feature_matrix(languages: Sequence[str], mode: FeatureMode = "imputed", imputation: Imputation = "none") -> np.ndarray:
    """Feature vectors [len(languages), n_features] for FLORES codes (NaN = missing; see module doc for modes)."""
    if mode not in FEATURE_MODES:
        raise ValueError(f"features mode {mode!r} is not one of {', '.join(FEATURE_MODES)}")
    if imputation != "none" and mode != "urielplus":
        raise ValueError(f"imputation {imputation!r} applies to features urielplus; {mode!r} has its own modes")
    if mode == "urielplus":
        codes, _, values = load_urielplus()
        if imputation == "knn":
            values = urielplus_knn_imputed()
        elif imputation == "softimpute":
            values = urielplus_softimpute_imputed()
        elif imputation != "none":
            raise ValueError(f"imputation {imputation!r} is not one of {', '.join(IMPUTATIONS)}")
        missing = [c for c in languages if c not in codes]
        if missing:
            raise KeyError(f"no URIEL+ features for {missing[0]!r} in trainer/languages/{URIELPLUS_FILE}")
        return values[[codes.index(c) for c in languages]].copy()
    table = load_uriel()
    idx = [table.row(code) for code in languages]
    observed, knn = table.observed[idx], table.knn[idx]
    if mode == "observed":
        return observed.copy()
    if mode == "knn":
        return knn.copy()
    return np.where(np.isnan(observed), knn, observed)


def angular_distance(u: np.ndarray, v: np.ndarray, min_shared: int = 1) -> float:
    """`arccos(u.v / (|u| |v|)) / pi` over the features both vectors have (NaN = missing).

    Returns NaN (undefined, never 0) when fewer than `min_shared` features are
    shared or either restricted vector is all zeros. Range [0, 1].
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    both = ~np.isnan(u) & ~np.isnan(v)
    if both.sum() < max(min_shared, 1):
        return float("nan")
    a, b = u[both], v[both]
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0:
        return float("nan")
    return float(np.arccos(np.clip(a @ b / denom, -1.0, 1.0)) / np.pi)


def pairwise_angular_distances(x: np.ndarray, min_shared: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise `angular_distance`s of the rows of `x` [n, f] (NaN = missing feature).

    Returns (distances [n, n] with NaN where undefined and 0 on the diagonal,
    shared-feature counts [n, n]).
    """
    x = np.asarray(x, dtype=np.float64)
    present = (~np.isnan(x)).astype(np.float64)
    x0 = np.nan_to_num(x, nan=0.0)
    shared = present @ present.T
    dot = x0 @ x0.T                       # only features both have contribute (others are 0)
    sq = (x0 * x0) @ present.T            # sq[i, j] = |x_i|^2 over the features x_j has
    denom = np.sqrt(sq * sq.T)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(dot / denom, -1.0, 1.0)
    dist = np.arccos(cos) / np.pi
    undefined = (shared < max(min_shared, 1)) | (denom == 0)
    dist[undefined] = np.nan
    np.fill_diagonal(dist, 0.0)
    return dist, shared.astype(np.int64)


@dataclass
class DistanceReport:
    """Which languages lack URIEL data, for the CLI output and subsets.yaml metadata."""

    mode: str
    min_shared: int
    observed_features: dict[str, int]
    imputed_features: dict[str, int]
    undefined_observed_pairs: list[tuple[str, str]]
    languages_with_undefined_pairs: list[str]

    @property
    def undefined_partners(self) -> dict[str, int]:
        """Per affected language, how many partners have no observed-feature distance with it."""
        counts: dict[str, int] = {}
        for a, b in self.undefined_observed_pairs:
            counts[a] = counts.get(a, 0) + 1
            counts[b] = counts.get(b, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "min_shared_features": self.min_shared,
            "languages_with_undefined_observed_distance": self.languages_with_undefined_pairs,
            "undefined_observed_pairs": len(self.undefined_observed_pairs),
            "partners_without_observed_distance": self.undefined_partners,
            "observed_features": self.observed_features,
            "imputed_features": self.imputed_features,
        }


def distance_matrix(languages: Sequence[str], mode: FeatureMode = "imputed",
                    min_shared: int = 1, imputation: Imputation = "none") -> tuple[np.ndarray, DistanceReport]:
    """Pairwise URIEL angular distances [n, n] for FLORES codes, plus the missing-data report.

    The report always describes the observed data (which pairs would have no
    distance on observed features alone), whatever `mode` is used for the matrix.
    """
    languages = list(languages)
    observed = feature_matrix(languages, "urielplus" if mode == "urielplus" else "observed")
    obs_dist, _ = pairwise_angular_distances(observed, min_shared)
    bad = [(languages[i], languages[j]) for i in range(len(languages)) for j in range(i + 1, len(languages))
           if np.isnan(obs_dist[i, j])]
    affected = sorted({c for pair in bad for c in pair})
    dist = obs_dist if mode == "observed" or (mode == "urielplus" and imputation == "none") else \
        pairwise_angular_distances(feature_matrix(languages, mode, imputation), min_shared)[0]
    n_obs = {c: int((~np.isnan(observed[i])).sum()) for i, c in enumerate(languages)}
    n_feat = observed.shape[1]
    report = DistanceReport(
        mode=mode, min_shared=min_shared, observed_features=n_obs,
        imputed_features={c: (n_feat - n if mode == "imputed" or imputation != "none" else 0)
                          for c, n in n_obs.items()},
        undefined_observed_pairs=bad, languages_with_undefined_pairs=affected)
    return dist, report
