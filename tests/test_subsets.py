"""Subset selection: exact search vs brute force, the approximation vs random, heuristics, subsets.yaml."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_prep import select_languages
from trainer.languages import subset_search
from trainer.languages.subsets import SelectionConfig, load_subsets, select_subsets, validate_subsets
from trainer.languages.table import language_table
from trainer.languages.uriel import angular_distance, distance_matrix, feature_matrix

SUBSETS_FILE = Path(__file__).resolve().parents[1] / "jobs" / "subsets_pool65.yaml"
SMALL_POOL = ["deu_Latn", "fra_Latn", "jpn_Jpan", "kor_Hang", "tsn_Latn", "kaz_Cyrl",
              "yor_Latn", "arb_Arab", "hin_Deva", "fin_Latn", "vie_Latn", "eus_Latn"]


def brute_force(dist: np.ndarray, anchor: np.ndarray, k: int, maximize: bool) -> tuple[float, tuple[int, ...]]:
    """Best summed pairwise distance plus anchor distances over every k-subset, by enumeration."""
    best = None
    for subset in itertools.combinations(range(len(dist)), k):
        value = sum(dist[i][j] for i, j in itertools.combinations(subset, 2)) + sum(anchor[i] for i in subset)
        if best is None or (value > best[0] if maximize else value < best[0]):
            best = (value, subset)
    return best


def random_instance(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(m + 1, 6))
    cos = points @ points.T / np.outer(np.linalg.norm(points, axis=1), np.linalg.norm(points, axis=1))
    dist = np.arccos(np.clip(cos, -1, 1)) / np.pi
    np.fill_diagonal(dist, 0.0)
    return dist[:m, :m], dist[:m, m]


def uriel_instance(codes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    dist, _ = distance_matrix(codes + ["eng_Latn"])
    return dist[:-1, :-1], dist[:-1, -1]


@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("m, k, seed", [(6, 3, 0), (9, 4, 1), (12, 5, 2), (12, 2, 3), (12, 11, 4), (10, 1, 5)])
def test_exact_equals_brute_force(m, k, seed, maximize):
    dist, anchor = random_instance(m, seed)
    value, subset = brute_force(dist, anchor, k, maximize)
    sel = subset_search.exact_search(dist, k, anchor, maximize=maximize, chunk_size=37)   # several chunks
    assert sel.indices == subset and sel.objective == pytest.approx(value, abs=1e-9)
    assert sel.method == "exact" and sel.evaluated == math.comb(m, k)


@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("k", [3, 5, 8])
def test_exact_and_local_search_equal_brute_force_on_uriel_pool(k, maximize):
    dist, anchor = uriel_instance(SMALL_POOL)
    value, subset = brute_force(dist, anchor, k, maximize)
    assert subset_search.select(dist, k, anchor, maximize).indices == subset          # small: exact
    approx = subset_search.select(dist, k, anchor, maximize, exact_max_combinations=0)
    assert approx.method == "approximate"
    assert approx.objective == pytest.approx(value, abs=1e-9)


def test_anchor_counts_in_the_sum():
    # candidates on a line at 0, 1, 2, English at 10. Least diverse pair without English: (0, 1) and
    # (1, 2) tie at 1 (first wins); with English in the sum: (1, 2) = 1 + 9 + 8 = 18 < (0, 1) = 20.
    x = np.array([0.0, 1.0, 2.0])
    dist, anchor = np.abs(x[:, None] - x[None, :]), np.abs(x - 10.0)
    assert subset_search.exact_search(dist, 2, None, maximize=False).indices == (0, 1)
    sel = subset_search.exact_search(dist, 2, anchor, maximize=False)
    assert sel.indices == (1, 2) and sel.objective == pytest.approx(18.0)


def test_missing_distance_is_rejected_not_zero():
    dist, anchor = random_instance(5, 0)
    dist[1, 3] = dist[3, 1] = np.nan
    for search in (subset_search.exact_search, subset_search.local_search):
        with pytest.raises(ValueError, match="never 0"):
            search(dist, 2, anchor, maximize=False)


@pytest.fixture(scope="module")
def pool65():
    codes = [x.flores for x in language_table().pool("pool65")]
    dist, anchor = uriel_instance(codes)
    return codes, dist, anchor


@pytest.mark.parametrize("k", [5, 10, 20, 40])
def test_approximation_beats_random_subsets_on_pool65(pool65, k):
    codes, dist, anchor = pool65
    rng = np.random.default_rng(1234)
    randoms = []
    for _ in range(200):
        subset = rng.choice(len(codes), size=k, replace=False)
        randoms.append(sum(dist[i, j] for i, j in itertools.combinations(subset, 2)) + anchor[subset].sum())
    high = subset_search.local_search(dist, k, anchor, maximize=True)
    low = subset_search.local_search(dist, k, anchor, maximize=False)
    assert high.objective >= max(randoms) and low.objective <= min(randoms)
    assert high.method == low.method == "approximate"
    # the reported value is the objective of the reported subset
    assert high.objective == pytest.approx(subset_search.subset_objective(dist, high.indices, anchor))


def test_local_search_is_deterministic(pool65):
    _, dist, anchor = pool65
    a = subset_search.local_search(dist, 10, anchor, restarts=4, seed=7)
    b = subset_search.local_search(dist, 10, anchor, restarts=4, seed=7)
    assert a == b


# ------------------------------------------------------------------------------- heuristics, yaml


@pytest.fixture(scope="module")
def small_doc():
    cfg = SelectionConfig(pool=SMALL_POOL + ["swa", "orm"], sizes=[2, 4, 20], seeds=[17, 23],
                          seen=["deu", "fra", "hin", "vie"], pool_name="small")
    return select_subsets(cfg)


def test_small_pool_subsets_validate_and_follow_their_heuristic(small_doc):
    table = language_table()
    names = validate_subsets(small_doc)
    assert "featural_max_4" in names and "swh_Latn" in small_doc["metadata"]["pool"]["languages"]
    for name, entry in small_doc["subsets"].items():
        langs = [table.get(c) for c in entry["languages"]]
        h = entry["heuristic"]
        if h == "family_diverse":
            assert all(x.family != "Indo-European" for x in langs)
            assert len({x.family for x in langs}) == len(langs)        # sizes here <= number of families
        if h == "indo_european":
            assert all(x.family == "Indo-European" for x in langs)
        if h == "script_diverse":
            assert all(x.script != "Latn" for x in langs) and len({x.script for x in langs}) == len(langs)
        if h.startswith("latin"):
            assert all(x.script == "Latn" for x in langs)
        if h == "joshi_low":
            assert all(x.joshi_class <= 2 for x in langs)
        if h == "seen":
            assert {x.flores for x in langs} <= {"deu_Latn", "fra_Latn", "hin_Deva", "vie_Latn"}
    assert {s["heuristic"] for s in small_doc["skipped"]} >= {"featural_max", "random"}    # n=20 > 14


def test_featural_entries_are_brute_force_optimal(small_doc):
    codes = small_doc["metadata"]["pool"]["languages"]
    dist, anchor = uriel_instance(codes)
    for k in (2, 4):
        for name, maximize in (("featural_max", True), ("featural_min", False)):
            value, subset = brute_force(dist, anchor, k, maximize)
            entry = small_doc["subsets"][f"{name}_{k}"]
            assert entry["languages"] == sorted(codes[i] for i in subset)
            assert entry["objective"] == pytest.approx(value, abs=1e-6)


def test_observed_features_fail_or_drop_languages_without_distance():
    pool = ["tsn_Latn", "deu_Latn", "jpn_Jpan", "yor_Latn", "fin_Latn"]
    with pytest.raises(ValueError, match="tsn_Latn.*never counted as 0"):
        select_subsets(SelectionConfig(pool=pool, sizes=[2], heuristics=["featural_max"], features="observed"))
    doc = select_subsets(SelectionConfig(pool=pool, sizes=[2], heuristics=["featural_max"],
                                         features="observed", on_undefined="drop"))
    entry = doc["subsets"]["featural_max_2"]
    assert entry["dropped_without_distances"] == ["tsn_Latn"] and "tsn_Latn" not in entry["languages"]
    assert entry["objective"] is not None


@pytest.fixture(scope="module")
def written():
    return yaml.safe_load(SUBSETS_FILE.read_text(encoding="utf-8"))


def test_generated_file_validates_against_the_table(written):
    subsets = load_subsets(SUBSETS_FILE)
    pool = {x.flores for x in language_table().pool("pool65")}
    assert set(written["metadata"]["pool"]["languages"]) == pool
    assert all(set(langs) <= pool for langs in subsets.values())
    for heuristic in ("featural_max", "featural_min", "latin_diverse", "latin_least_diverse"):
        for n in (5, 10, 20):
            assert f"{heuristic}_{n}" in subsets
    for heuristic in ("random", "family_diverse", "script_diverse", "indo_european", "joshi_low", "joshi_mid"):
        for seed in (17, 23, 42, 66):
            assert f"{heuristic}_5_s{seed}" in subsets
    assert len(subsets["featural_max_40"]) == 40 and len(subsets["random_40_s17"]) == 40


def test_generated_objectives_recomputed_and_beat_random(written):
    codes = written["metadata"]["pool"]["languages"] + ["eng_Latn"]
    x = feature_matrix(codes, "imputed")
    eng = len(codes) - 1
    for n in (5, 10, 20, 40):
        high, low = written["subsets"][f"featural_max_{n}"], written["subsets"][f"featural_min_{n}"]
        for entry in (high, low):
            idx = [codes.index(c) for c in entry["languages"]] + [eng]
            value = sum(angular_distance(x[i], x[j]) for i, j in itertools.combinations(idx, 2))
            assert entry["objective"] == pytest.approx(value, abs=1e-5)
        randoms = [written["subsets"][f"random_{n}_s{s}"]["objective"] for s in (17, 23, 42, 66)]
        assert high["objective"] >= max(randoms + [high["random_best_objective"]])
        assert low["objective"] <= min(randoms + [low["random_best_objective"]])
        assert high["search"] == ("exact" if n == 5 else "approximate")


def test_cli_regenerates_the_file_deterministically(tmp_path, capsys, written):
    out = tmp_path / "subsets.yaml"
    doc = select_languages.main(["--out", str(out), "--no-progress"])
    assert "tsn_Latn" in capsys.readouterr().out
    fresh = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert fresh["subsets"].keys() == written["subsets"].keys() == doc["subsets"].keys()
    for name, entry in written["subsets"].items():
        assert fresh["subsets"][name]["languages"] == entry["languages"], name
        if entry["objective"] is not None:
            assert fresh["subsets"][name]["objective"] == pytest.approx(entry["objective"], abs=1e-5)


def test_cli_reads_the_pool_csv_with_macrolanguage_codes(tmp_path):
    pool = tmp_path / "pool.csv"
    pool.write_text("name,iso639_3,script\nOromo,orm,Latin\nSwahili,swa,Latin\nGerman,deu,Latin\n"
                    "Japanese,jpn,Japanese\n", encoding="utf-8")
    out = tmp_path / "s.yaml"
    doc = select_languages.main(["--pool", str(pool), "--out", str(out), "--sizes", "2",
                                 "--heuristics", "featural_max", "random", "--no-progress"])
    assert doc["metadata"]["pool"]["languages"] == ["deu_Latn", "gaz_Latn", "jpn_Jpan", "swh_Latn"]
    assert load_subsets(out)["featural_max_2"]


def test_validation_names_the_problem_and_the_closest_codes():
    doc = {"metadata": {"anchor": "eng_Latn", "pool": {"languages": ["deu_Latn", "fra_Latn", "ell_Grek"]}},
           "subsets": {
               "typo": {"heuristic": "random", "size": 2, "languages": ["deu_Latn", "ell_Latn"]},
               "alias": {"heuristic": "random", "size": 1, "languages": ["fr"]},
               "anchor": {"heuristic": "random", "size": 2, "languages": ["eng_Latn", "deu_Latn"]},
               "size": {"heuristic": "random", "size": 3, "languages": ["deu_Latn"]},
               "outside": {"heuristic": "random", "size": 1, "languages": ["jpn_Jpan"]},
               "heuristic": {"heuristic": "vibes", "size": 1, "languages": ["deu_Latn"]}}}
    with pytest.raises(ValueError) as e:
        validate_subsets(doc, source="my.yaml")
    message = str(e.value)
    assert message.startswith("my.yaml")
    assert "subsets.typo.languages: unknown language 'ell_Latn' (closest: ell_Grek" in message
    assert "'fr' is not an exact FLORES-200 code; use 'fra_Latn'" in message
    assert "subsets.anchor.languages: contains the anchor eng_Latn" in message
    assert "subsets.size.size: 3 but 1 languages" in message
    assert "subsets.outside.languages: not in the metadata pool: ['jpn_Jpan']" in message
    assert "subsets.heuristic.heuristic: 'vibes'" in message


def test_missing_subsets_file_says_how_to_write_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_prep.select_languages"):
        load_subsets(tmp_path / "nope.yaml")


def test_config_rejects_unknown_heuristic_and_mode():
    with pytest.raises(ValueError, match="featural_max"):
        SelectionConfig(pool=["deu"], heuristics=["featurl_max"])
    with pytest.raises(ValueError, match="features"):
        SelectionConfig(pool=["deu"], features="all")
