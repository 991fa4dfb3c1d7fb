"""Language table lookups and URIEL angular distances, checked against values written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from trainer.languages.table import LanguageTable, UnknownLanguageError, language_table
from trainer.languages.uriel import (angular_distance, distance_matrix, feature_matrix, load_uriel,
                                pairwise_angular_distances)

# The study's pool (shared/languages_pool65.csv): ISO 639-3 code as that table writes it, Joshi class.
POOL65 = ("afr:3 twi:1 amh:2 ara:5 aze:1 bam:1 eus:4 ben:3 bul:3 mya:1 zho:5 luo:0 nld:4 pan:2 est:3 ewe:1 "
          "fin:4 fon:0 fra:5 lug:1 kat:3 deu:5 ell:3 guj:1 hau:2 heb:3 hin:4 hun:4 ibo:1 ind:3 ita:4 jpn:5 "
          "jav:1 kaz:3 kin:1 kor:4 lin:1 lit:3 msa:3 mal:1 mar:2 mos:0 nya:1 orm:1 fas:4 pol:4 por:4 ron:3 "
          "rus:4 sna:1 spa:5 swa:2 tgl:3 tam:3 tel:1 tha:3 tsn:2 tur:4 ukr:3 urd:3 vie:4 wol:2 xho:2 yor:2 "
          "zul:2")


@pytest.fixture(scope="module")
def table() -> LanguageTable:
    return language_table()


def test_table_has_exactly_the_nllb_tokenizer_codes(table):
    nllb = pytest.importorskip("transformers.models.nllb.tokenization_nllb")
    assert sorted(x.flores for x in table) == sorted(nllb.FAIRSEQ_LANGUAGE_CODES)
    assert len(table) == 202


@pytest.mark.parametrize("codes, flores", [
    (["ell_Grek", "ELL_GREK", "ell", "el"], "ell_Grek"),
    (["zho_Hans", "zho", "zh"], "zho_Hans"),
    (["arb_Arab", "arb", "ara", "ar"], "arb_Arab"),
    (["gaz_Latn", "gaz", "orm", "om"], "gaz_Latn"),        # the study writes Oromo as gaz, the pool as orm
    (["swh_Latn", "swh", "swa", "sw"], "swh_Latn"),        # Swahili: swh in subsets, swa in the pool
    (["pes_Arab", "pes", "fas", "fa"], "pes_Arab"),
    (["zsm_Latn", "zsm", "msa", "ms"], "zsm_Latn"),
    (["azj_Latn", "azj", "aze", "az"], "azj_Latn"),
    (["deu_Latn", "deu", "de"], "deu_Latn"),
    (["fon_Latn", "fon"], "fon_Latn"),                     # no ISO 639-1 code
    (["kas_Arab", "kas", "ks"], "kas_Arab"),               # bare code -> the primary script
    (["kas_Deva"], "kas_Deva"),
    (["zho_Hant"], "zho_Hant"),
])
def test_lookup_by_flores_iso3_iso1(table, codes, flores):
    for code in codes:
        assert table.flores(code) == flores, code
        assert code in table


def test_rows_know_script_family_and_iso_codes(table):
    ell = table.get("el")
    assert (ell.flores, ell.iso639_3, ell.iso639_1, ell.script, ell.family) == (
        "ell_Grek", "ell", "el", "Grek", "Indo-European")
    assert table.get("ja").script == "Jpan" and table.get("ko").script == "Hang"
    assert table.get("eus").family == "Basque"                  # isolate: its own family
    assert table.get("swa").resource_group == "low" and table.get("fra").resource_group == "high"


def test_pool65_matches_the_study_table(table):
    expected = dict(item.split(":") for item in POOL65.split())
    assert len(expected) == 65
    pool = {x.flores: x for x in table.pool("pool65")}
    resolved = {table.flores(code): int(joshi) for code, joshi in expected.items()}
    assert set(resolved) == set(pool)
    assert {c: pool[c].joshi_class for c in pool} == resolved
    assert "eng_Latn" not in pool


@pytest.mark.parametrize("bad, closest", [("ell_Latn", "ell_Grek"), ("deu_latm", "deu_Latn"),
                                          ("zho_Hanz", "zho_Hans"), ("swahili", "swh_Latn")])
def test_unknown_code_names_closest_valid_codes(table, bad, closest):
    with pytest.raises(UnknownLanguageError) as e:
        table.flores(bad, field="data.languages")
    message = str(e.value)
    assert "data.languages" in message and repr(bad) in message and closest in message


def test_resolve_reports_every_unknown_and_duplicates(table):
    with pytest.raises(UnknownLanguageError) as e:
        table.resolve(["de", "xx_Yyyy", "qqq"])
    assert "xx_Yyyy" in str(e.value) and "qqq" in str(e.value)
    with pytest.raises(ValueError, match="swh_Latn"):
        table.resolve(["swa", "swh_Latn"])


# ----------------------------------------------------------------------------------------- URIEL


def test_angular_distance_hand_computed_with_missing_features():
    nan = float("nan")
    u = np.array([1.0, 0.0, nan, 1.0, 1.0])
    v = np.array([1.0, 1.0, 1.0, nan, 0.0])
    # features both have: 0, 1, 4 -> u' = (1, 0, 1), v' = (1, 1, 0); cos = 1 / (sqrt2 sqrt2) = 1/2
    # arccos(1/2) = pi/3, divided by pi: 1/3
    assert angular_distance(u, v) == pytest.approx(1 / 3, abs=1e-12)
    # not the distance over all features with missing set to 0: (1,0,0,1,1).(1,1,1,0,0) = 1, |.| = sqrt3
    assert angular_distance(u, v) != pytest.approx(math.acos(1 / 3) / math.pi, abs=1e-6)
    dist, shared = pairwise_angular_distances(np.stack([u, v]))
    assert dist[0, 1] == pytest.approx(1 / 3, abs=1e-12) and dist[1, 0] == pytest.approx(1 / 3, abs=1e-12)
    assert shared[0, 1] == 3


def test_no_shared_feature_is_undefined_never_zero():
    nan = float("nan")
    u, v = np.array([1.0, nan, 1.0]), np.array([nan, 1.0, nan])
    assert math.isnan(angular_distance(u, v))
    assert math.isnan(angular_distance(np.array([1.0, nan]), np.array([0.0, 1.0])))   # zero vector: no angle
    assert math.isnan(angular_distance(np.array([1.0, 1.0]), np.array([1.0, nan]), min_shared=2))
    dist, _ = pairwise_angular_distances(np.stack([u, v]))
    assert math.isnan(dist[0, 1])


def test_pairwise_matches_scalar_on_uriel_rows():
    codes = ["eng_Latn", "tsn_Latn", "kaz_Cyrl", "jpn_Jpan", "deu_Latn", "yor_Latn"]
    x = feature_matrix(codes, "observed")
    dist, _ = pairwise_angular_distances(x)
    for i in range(len(codes)):
        for j in range(len(codes)):
            expected = 0.0 if i == j else angular_distance(x[i], x[j])
            np.testing.assert_equal(np.isnan(dist[i, j]), math.isnan(expected))
            if not math.isnan(expected):
                assert dist[i, j] == pytest.approx(expected, abs=1e-9)


def test_missing_observed_distances_reported_and_imputed(table):
    codes = [x.flores for x in table.pool("pool65")] + ["eng_Latn"]
    uriel = load_uriel()
    obs = uriel.observed[[uriel.row(c) for c in codes]]
    has = ~np.isnan(obs)

    def undefined(i: int, j: int) -> bool:
        """No feature observed for both, or one side is all zeros on the shared ones (no angle)."""
        both = has[i] & has[j]
        return not both.any() or not obs[i][both].any() or not obs[j][both].any()

    no_shared = {(a, b) for i, a in enumerate(codes) for j, b in enumerate(codes) if i < j and undefined(i, j)}
    affected = sorted({c for pair in no_shared for c in pair})
    assert "tsn_Latn" in affected              # Tswana: one observed feature out of 289

    dist, report = distance_matrix(codes, "imputed")
    assert report.languages_with_undefined_pairs == affected
    assert set(report.undefined_observed_pairs) == no_shared
    assert report.observed_features["tsn_Latn"] == int(has[codes.index("tsn_Latn")].sum())
    assert not np.isnan(dist).any()            # imputation gives every pair a distance

    obs_dist, _ = distance_matrix(codes, "observed")
    for a, b in no_shared:
        assert math.isnan(obs_dist[codes.index(a), codes.index(b)])


def test_imputed_keeps_observed_values_and_fills_the_rest_from_knn():
    uriel = load_uriel()
    i = uriel.row("kaz_Cyrl")
    imputed = feature_matrix(["kaz_Cyrl"], "imputed")[0]
    observed = ~np.isnan(uriel.observed[i])
    np.testing.assert_array_equal(imputed[observed], uriel.observed[i][observed])
    np.testing.assert_array_equal(imputed[~observed], uriel.knn[i][~observed])


def test_shipped_features_rebuild_from_lang2vec(tmp_path):
    from data_prep.build_uriel_features import DEFAULT_OUT, build, find_lang2vec_data

    out = tmp_path / "uriel_features.csv"
    build(find_lang2vec_data(), out)
    assert out.read_bytes() == DEFAULT_OUT.read_bytes()


# --- URIEL+ as the subset study used it --------------------------------------------------------------

def test_urielplus_distance_is_the_angular_distance_over_shared_features():
    import csv as csv_module
    from importlib import resources

    from trainer.languages.uriel import URIELPLUS_FILE

    text = resources.files("trainer.languages").joinpath(URIELPLUS_FILE).read_text(encoding="utf-8")
    rows = {row[0]: row for row in csv_module.reader(line for line in text.splitlines() if not line.startswith("#"))}
    assert rows["gaz_Latn"][1] == "gaz" and rows["swh_Latn"][1] == "swh"          # the study's codes
    assert len(rows["eng_Latn"]) - 3 == 452
    langs = ["eng_Latn", "gaz_Latn", "deu_Latn", "swh_Latn"]
    dist, report = distance_matrix(langs, "urielplus")
    assert report.observed_features["gaz_Latn"] < 30 < report.observed_features["deu_Latn"]   # sparse Oromo
    for i, a in enumerate(langs):
        for j, b in enumerate(langs):
            if i == j:
                continue
            u = [float(x) if x else None for x in rows[a][3:]]
            v = [float(x) if x else None for x in rows[b][3:]]
            shared = [(x, y) for x, y in zip(u, v) if x is not None and y is not None]
            dot = sum(x * y for x, y in shared)
            norm = math.sqrt(sum(x * x for x, _ in shared)) * math.sqrt(sum(y * y for _, y in shared))
            expected = math.acos(max(-1.0, min(1.0, dot / norm))) / math.pi
            assert dist[i, j] == pytest.approx(expected, abs=1e-9), (a, b)
    assert not np.allclose(dist, distance_matrix(langs, "imputed")[0])             # another source, other numbers


def test_select_languages_runs_with_urielplus_features(tmp_path):
    from data_prep import select_languages

    out = tmp_path / "subsets.yaml"
    select_languages.main(["--features", "urielplus", "--heuristics", "featural_max", "featural_min",
                           "--sizes", "5", "--out", str(out)])
    doc = yaml.safe_load(out.read_text())
    assert doc["metadata"]["features"]["mode"] == "urielplus" and "URIEL+" in doc["metadata"]["features"]["source"]
    assert set(doc["subsets"]["featural_max_5"]["languages"]) == {"arb_Arab", "gaz_Latn", "tsn_Latn", "vie_Latn",
                                                                  "zsm_Latn"}


def test_subsets_metadata_and_the_cli_name_the_imputation_used(tmp_path, capsys):
    from data_prep import select_languages

    pool = ["gaz_Latn", "kaz_Cyrl", "deu_Latn", "jpn_Jpan", "swh_Latn"]
    docs, printed = {}, {}
    for imputation in ("none", "knn", "softimpute"):
        out = tmp_path / f"{imputation}.yaml"
        select_languages.main(["--features", "urielplus", "--imputation", imputation, "--languages", *pool,
                               "--heuristics", "featural_max", "--sizes", "2", "--no-progress", "--out", str(out)])
        docs[imputation] = yaml.safe_load(out.read_text())["metadata"]["features"]
        printed[imputation] = capsys.readouterr().out
    handling = {k: [line for line in printed[k].splitlines() if line.strip().startswith("handling:")] for k in docs}
    assert docs["none"]["imputation"] == "none" and "no imputation" in docs["none"]["missing_features"]
    assert handling["none"] == [f"  handling: {docs['none']['missing_features']}"]
    assert "mode=urielplus;" in printed["none"]
    # --imputation knn: the metadata and the handling line say knn (KNNImputer, k = 9), never "no imputation"
    knn = docs["knn"]
    assert knn["imputation"] == "knn"
    assert "no imputation" not in knn["missing_features"]
    assert "knn imputation" in knn["missing_features"] and "KNNImputer (k = 9" in knn["missing_features"]
    assert handling["knn"] == [f"  handling: {knn['missing_features']}"] and "no imputation" not in printed["knn"]
    assert "mode=urielplus, imputation=knn;" in printed["knn"]
    assert all(knn["imputed_features"][c] > 0 for c in pool)      # what the line says is what the run did
    soft = docs["softimpute"]
    assert soft["imputation"] == "softimpute" and "softimpute imputation" in soft["missing_features"]
    assert "largest singular value / 50" in soft["missing_features"] and "no imputation" not in printed["softimpute"]
    assert handling["softimpute"] == [f"  handling: {soft['missing_features']}"]
    assert "mode=urielplus, imputation=softimpute;" in printed["softimpute"]
    assert all(soft["imputed_features"][c] > 0 for c in pool)


@pytest.mark.slow
def test_shipped_urielplus_features_rebuild_from_the_package(tmp_path):
    pytest.importorskip("urielplus")
    from data_prep.build_urielplus_features import DEFAULT_OUT, build

    out = tmp_path / "urielplus_features.csv"
    build(out)
    assert out.read_bytes() == DEFAULT_OUT.read_bytes()


def test_urielplus_knn_imputation_fills_every_observed_feature_and_is_explicit():
    from sklearn.impute import KNNImputer

    from trainer.languages.uriel import load_urielplus

    langs = ["gaz_Latn", "eng_Latn", "swh_Latn"]
    none = feature_matrix(langs, "urielplus")
    knn = feature_matrix(langs, "urielplus", imputation="knn")
    codes, _, values = load_urielplus()
    kept = ~np.isnan(values).all(axis=0)
    expected = KNNImputer(n_neighbors=9).fit_transform(values[:, kept])[[codes.index(c) for c in langs]]
    np.testing.assert_allclose(knn[:, kept], expected)
    observed = ~np.isnan(none)
    np.testing.assert_array_equal(knn[observed], none[observed])          # observed values are kept
    with pytest.raises(ValueError, match="applies to features urielplus"):
        feature_matrix(langs, "observed", imputation="knn")


def test_soft_impute_hand_worked_two_by_two_fixed_points():
    """[[1, 2], [2, z]], z missing, no clipping. softImpute's fixed point z = S_lambda([[1, 2], [2, z]])[1, 1].
    lambda = 0.5 keeps both singular values (3 and 1 at z = 1): S = M - lambda (v1 v1' - v2 v2') for eigenvalues of
    opposite sign, whose [1, 1] entry vanishes when the eigenvectors are at 45 degrees, i.e. z = 1 (hand-worked).
    lambda = 2 drops the second (|e2| < 2): z solves z = (e1 - lambda) v1y^2 with the 2 x 2 closed-form eigenpair,
    found here by bisection."""

    from trainer.languages.uriel import soft_impute

    x = np.array([[1.0, 2.0], [2.0, np.nan]])
    kw = dict(convergence_threshold=1e-14, max_iters=100_000, min_value=None, max_value=None)
    r = soft_impute(x, shrinkage=0.5, **kw)
    assert r.converged and r.values[1, 1] == pytest.approx(1.0, abs=1e-9)

    lam = 2.0

    def gap(z):
        e1 = (1 + z + math.sqrt((1 - z) ** 2 + 16)) / 2
        v1y2 = (e1 - 1) ** 2 / (4 + (e1 - 1) ** 2)           # eigenvector (2, e1 - 1), normalised, second entry^2
        return (e1 - lam) * v1y2 - z

    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    e2 = (1 + lo - math.sqrt((1 - lo) ** 2 + 16)) / 2
    assert abs(e2) < lam                                      # the second component is thresholded away
    r = soft_impute(x, shrinkage=lam, **kw)
    assert r.converged and r.values[1, 1] == pytest.approx(lo, abs=1e-9)
    np.testing.assert_array_equal(r.values[[0, 0, 1], [0, 1, 0]], [1.0, 2.0, 2.0])


def _soft_threshold_by_svd(m: np.ndarray, lam: float) -> np.ndarray:
    """S_lambda(m) = U diag(max(s - lambda, 0)) V' from LAPACK's SVD (the implementation goes through the
    eigendecomposition of a Gram matrix instead)."""
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u * np.maximum(s - lam, 0.0)) @ vt


def test_soft_impute_reaches_the_fixed_point_of_an_independent_soft_threshold():
    from trainer.languages.uriel import soft_impute

    rng = np.random.default_rng(0)
    truth = (rng.random((40, 2)) @ rng.random((2, 25)) > 0.5).astype(float)      # 0/1, low rank
    x = truth.copy()
    missing = rng.random(x.shape) < 0.3
    x[missing] = np.nan
    zero_filled = np.where(missing, 0.0, x)
    default = soft_impute(x)
    assert default.shrinkage == pytest.approx(np.linalg.svd(zero_filled, compute_uv=False)[0] / 50)
    assert default.converged and default.iterations < 400

    lam = 1.0
    r = soft_impute(x, shrinkage=lam, convergence_threshold=1e-12, max_iters=20_000)
    z = r.values
    assert r.converged and not np.isnan(z).any()
    np.testing.assert_array_equal(z[~missing], truth[~missing])                  # observed entries never change
    assert z.min() >= 0 and z.max() <= 1                                          # URIEL+'s bounds
    expected = np.clip(_soft_threshold_by_svd(z, lam), 0, 1)
    np.testing.assert_allclose(z[missing], expected[missing], atol=1e-8)          # a fixed point of S_lambda
    s = np.linalg.svd(_soft_threshold_by_svd(z, lam), compute_uv=False)
    assert (s > 1e-9).sum() < min(x.shape) // 2                                   # the reconstruction is low-rank
    assert np.abs(z - truth)[missing].mean() < np.abs(zero_filled - truth)[missing].mean()   # better than 0s


def test_urielplus_softimpute_keeps_observed_values_and_fills_0_1():
    from trainer.languages.uriel import load_urielplus, soft_impute, urielplus_softimpute_imputed

    langs = ["gaz_Latn", "eng_Latn", "swh_Latn", "kaz_Cyrl"]
    none = feature_matrix(langs, "urielplus")
    soft = feature_matrix(langs, "urielplus", imputation="softimpute")
    observed = ~np.isnan(none)
    np.testing.assert_array_equal(soft[observed], none[observed])
    assert not np.isnan(soft).any() and set(np.unique(soft)) <= {0.0, 1.0}
    _, _, values = load_urielplus()
    kept = ~np.isnan(values).all(axis=0)
    np.testing.assert_array_equal(urielplus_softimpute_imputed()[:, kept], np.round(soft_impute(values[:, kept]).values))
    assert soft_impute(values[:, kept]).converged
    dist, report = distance_matrix(langs, "urielplus", imputation="softimpute")
    assert not np.isnan(dist).any() and report.imputed_features["gaz_Latn"] == len(values[0]) - observed[0].sum()
    with pytest.raises(ValueError, match="applies to features urielplus"):
        feature_matrix(langs, "observed", imputation="softimpute")
