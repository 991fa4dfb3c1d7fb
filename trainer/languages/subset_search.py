"""Search for the k-subset of languages with the largest (or smallest) summed pairwise distance.

The realignment study's featural heuristic (M3): given distances `D` [m, m]
between candidate languages and distances `a` [m] from each candidate to an
anchor language that is always present but never selected (English), find

    S* = argmax_{|S| = k} sum_{i < j in S} D[i, j] + sum_{i in S} a[i]

(argmin for the "least diverse" variant).

- `exact_search`: enumerates all C(m, k) subsets in vectorised chunks; ties
  go to the lexicographically first subset of candidate indices.
- `local_search`: the stated approximation for large C(m, k): a greedy
  construction, then best-improvement swap local search (swap one selected
  for one unselected language while that improves the objective), repeated
  from `restarts - 1` further seeded random starts; the best local optimum
  is returned. Deterministic under `seed`. No optimality guarantee; the value
  reached is returned with the subset.
- `select`: exact when C(m, k) <= `exact_max_combinations`, else local search.

A NaN distance is an undefined distance (no shared features) and is
rejected, never counted as 0.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DEFAULT_EXACT_MAX_COMBINATIONS = 10_000_000
DEFAULT_RESTARTS = 16


@dataclass(frozen=True)
class Selection:
    """A chosen subset: candidate indices (sorted), objective value, and how it was found."""

    indices: tuple[int, ...]
    objective: float
    method: str            # "exact" or "approximate"
    evaluated: int         # subsets scored (exact) or swap moves made (approximate)


def _check(dist: np.ndarray, anchor: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    dist = np.asarray(dist, dtype=np.float64)
    m = dist.shape[0]
    if dist.shape != (m, m):
        raise ValueError(f"distances must be square [m, m], got shape {dist.shape}")
    a = np.zeros(m) if anchor is None else np.asarray(anchor, dtype=np.float64)
    if a.shape != (m,):
        raise ValueError(f"anchor distances must have shape [{m}], got {a.shape}")
    off = ~np.eye(m, dtype=bool)
    if np.isnan(dist[off]).any() or np.isnan(a).any():
        pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.isnan(dist) & off)) if i < j][:10]
        raise ValueError(f"undefined (NaN) distances among the candidates, e.g. index pairs {pairs}"
                         f"{' and to the anchor' if np.isnan(a).any() else ''}; "
                         f"impute features or drop those languages (a missing distance is never 0)")
    return dist, a


def subset_objective(dist: np.ndarray, subset, anchor: np.ndarray | None = None) -> float:
    """Sum of `dist` over the pairs of `subset` plus each member's anchor distance (NaN if any is undefined)."""
    idx = list(subset)
    total = sum(float(dist[i, j]) for i, j in itertools.combinations(idx, 2))
    if anchor is not None:
        total += sum(float(anchor[i]) for i in idx)
    return total


def exact_search(dist: np.ndarray, k: int, anchor: np.ndarray | None = None, maximize: bool = True,
                 chunk_size: int = 200_000, progress: bool = False) -> Selection:
    """Score every k-subset of range(m); the best one (first in lexicographic order on ties)."""
    dist, a = _check(dist, anchor)
    m = dist.shape[0]
    if not 0 <= k <= m:
        raise ValueError(f"subset size {k} is not between 0 and the {m} candidates")
    total = math.comb(m, k)
    pairs = list(itertools.combinations(range(k), 2))
    combos = itertools.combinations(range(m), k)
    best_val, best_idx = -np.inf if maximize else np.inf, tuple(range(k))
    bar = tqdm(total=total, desc=f"exact C({m},{k})", disable=not progress, unit="subset")
    done = 0
    while done < total:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, chunk_size)), dtype=np.int64)
        block = flat.reshape(-1, k) if k else np.zeros((1, 0), dtype=np.int64)
        vals = a[block].sum(axis=1)
        for p, q in pairs:
            vals += dist[block[:, p], block[:, q]]
        j = int(np.argmax(vals) if maximize else np.argmin(vals))
        if (vals[j] > best_val) if maximize else (vals[j] < best_val):
            best_val, best_idx = float(vals[j]), tuple(int(x) for x in block[j])
        done += len(block)
        bar.update(len(block))
    bar.close()
    return Selection(best_idx, subset_objective(dist, best_idx, a), "exact", total)


def _improve(w: np.ndarray, a: np.ndarray, selected: np.ndarray, max_moves: int) -> tuple[np.ndarray, int]:
    """Best-improvement swaps on the maximisation problem (w, a) from a boolean `selected` mask."""
    g = w[:, selected].sum(axis=1) + a   # g[v] = sum over S u {anchor} of w[v, .] (w[v, v] = 0)
    moves = 0
    while moves < max_moves:
        inside, outside = np.flatnonzero(selected), np.flatnonzero(~selected)
        if len(inside) == 0 or len(outside) == 0:
            break
        # swapping i out and j in changes the objective by g[j] - w[j, i] - g[i]
        delta = g[outside][None, :] - w[np.ix_(inside, outside)] - g[inside][:, None]
        flat = int(np.argmax(delta))
        bi, bj = divmod(flat, len(outside))
        if delta[bi, bj] <= 1e-12:
            break
        i, j = inside[bi], outside[bj]
        selected[i], selected[j] = False, True
        g += w[:, j] - w[:, i]
        moves += 1
    return selected, moves


def _greedy(w: np.ndarray, a: np.ndarray, k: int, anchored: bool) -> np.ndarray:
    m = w.shape[0]
    selected = np.zeros(m, dtype=bool)
    if k == 0:
        return selected
    if not anchored and k >= 2:
        i, j = divmod(int(np.argmax(w + np.diag(np.full(m, -np.inf)))), m)
        selected[[i, j]] = True
    while selected.sum() < k:
        g = w[:, selected].sum(axis=1) + a
        g[selected] = -np.inf
        selected[int(np.argmax(g))] = True
    return selected


def local_search(dist: np.ndarray, k: int, anchor: np.ndarray | None = None, maximize: bool = True,
                 restarts: int = DEFAULT_RESTARTS, seed: int = 0, max_moves: int = 10_000,
                 progress: bool = False) -> Selection:
    """Greedy + swap local search with `restarts` starts (the first greedy, the rest seeded random).

    Deterministic: start r >= 1 draws from `numpy.random.default_rng([seed, r])`.
    Returns the best local optimum; ties go to the earliest start.
    """
    dist, a = _check(dist, anchor)
    m = dist.shape[0]
    if not 0 <= k <= m:
        raise ValueError(f"subset size {k} is not between 0 and the {m} candidates")
    sign = 1.0 if maximize else -1.0
    w = sign * dist.copy()
    np.fill_diagonal(w, 0.0)
    aw = sign * a
    best: tuple[float, tuple[int, ...]] | None = None
    moves_total = 0
    for r in tqdm(range(max(restarts, 1)), desc=f"local search k={k}", disable=not progress, unit="start"):
        if r == 0:
            start = _greedy(w, aw, k, anchored=anchor is not None)
        else:
            start = np.zeros(m, dtype=bool)
            start[np.random.default_rng([seed, r]).choice(m, size=k, replace=False)] = True
        selected, moves = _improve(w, aw, start, max_moves)
        moves_total += moves
        idx = tuple(int(i) for i in np.flatnonzero(selected))
        val = sign * subset_objective(dist, idx, a)
        if best is None or val > best[0] + 1e-12:
            best = (val, idx)
        log.debug("restart %d: objective %.6f after %d swaps", r, sign * val, moves)
    assert best is not None
    return Selection(best[1], subset_objective(dist, best[1], a), "approximate", moves_total)


def select(dist: np.ndarray, k: int, anchor: np.ndarray | None = None, maximize: bool = True,
           exact_max_combinations: int = DEFAULT_EXACT_MAX_COMBINATIONS, restarts: int = DEFAULT_RESTARTS,
           seed: int = 0, progress: bool = False) -> Selection:
    """Exact search when C(m, k) <= `exact_max_combinations`, else `local_search`."""
    m = np.asarray(dist).shape[0]
    if 0 <= k <= m and math.comb(m, k) <= exact_max_combinations:
        return exact_search(dist, k, anchor, maximize, progress=progress)
    log.info("C(%d, %d) = %d subsets > %d: greedy + swap local search with %d starts",
             m, k, math.comb(m, k) if 0 <= k <= m else 0, exact_max_combinations, restarts)
    return local_search(dist, k, anchor, maximize, restarts=restarts, seed=seed, progress=progress)
