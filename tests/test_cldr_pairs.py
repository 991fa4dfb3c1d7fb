"""data_prep.cldr_pairs: CLDR phrase pairs (babel, offline) in the project's parallel format.

Splits disjoint by item for every language, fallback names dropped and counted, the multi-way
retrieval set readable by `load_multiway`, locales mapped through the language table, one-line errors.
"""

from __future__ import annotations

import json

import pytest

from data_prep import cldr_pairs
from data_prep.cldr_pairs import ENGLISH, MANIFEST, babel_locale_id, resolve_languages, write_cldr_pairs
from trainer.data.pairs import load_multiway
from trainer.data.parallel import ParallelDataConfig, load_parallel, read_pair_file
from trainer.languages.table import language_table

LANGUAGES = ["deu_Latn", "rus_Cyrl", "zho_Hans", "arb_Arab", "amh_Ethi", "swh_Latn"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("cldr") / "pairs"
    counts = write_cldr_pairs(root, LANGUAGES, eval_fraction=0.2, seed=0)
    return root, counts


def english_sides(folder, code):
    _, eng, _ = read_pair_file(folder / f"{ENGLISH}-{code}.jsonl", ENGLISH)
    return eng


def test_splits_disjoint_by_item_across_languages(out):
    root, _ = out
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    train, held = set(manifest["items"]["train"]), set(manifest["items"]["eval"])
    assert train and held and not train & held
    assert set(manifest["items"]["retrieval"]) <= held
    # an English phrase is one item (English names are kept once), so no English text crosses the splits,
    # whichever language's file it is in
    train_en = {e for code in LANGUAGES for e in english_sides(root / "train", code)}
    eval_en = {e for code in LANGUAGES for e in english_sides(root / "eval", code)}
    assert train_en and eval_en and not train_en & eval_en
    assert abs(len(held) / (len(held) + len(train)) - 0.2) < 0.01


def test_fallbacks_dropped_and_counted(out):
    root, counts = out
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    n_items = len(manifest["items"]["train"]) + len(manifest["items"]["eval"])
    for code in LANGUAGES:
        c = counts[code]
        assert c.kept + c.dropped == n_items
        rows = [json.loads(line) for split in ("train", "eval")
                for line in (root / split / f"{ENGLISH}-{code}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == c.kept
        assert all(r[ENGLISH].casefold() != r[code].casefold() for r in rows)
        assert manifest["counts"][code]["dropped_same_as_english"] == c.same
    # German writes many names as English does ("Kenya"-like) and Swahili leaves many out: both are counted
    assert counts["deu_Latn"].same > 100 and counts["swh_Latn"].missing > 100
    # the observation: Russian and Chinese name all territories differently from English
    assert counts["rus_Cyrl"].kept > 1000 and counts["zho_Hans"].kept > 1000


def test_readable_by_the_parallel_reader_and_multiway(out):
    root, counts = out
    corpus = load_parallel(ParallelDataConfig(files=[str(root / "train")], languages=LANGUAGES))
    assert corpus.sizes() == {code: counts[code].train for code in LANGUAGES}
    multi = load_multiway(ParallelDataConfig(files=[str(root / "retrieval")], languages=LANGUAGES))
    assert list(multi) == [ENGLISH, *LANGUAGES]
    sizes = {len(v) for v in multi.values()}
    assert len(sizes) == 1 and sizes.pop() > 50
    # a known translation is where it belongs (Germany in German, if Germany was held out)
    pairs = dict(zip(multi[ENGLISH], multi["deu_Latn"]))
    if "Germany" in pairs:
        assert pairs["Germany"] == "Deutschland"


def test_deterministic_and_seeded(tmp_path):
    a = write_cldr_pairs(tmp_path / "a", ["fra_Latn", "jpn_Jpan"], seed=3)
    b = write_cldr_pairs(tmp_path / "b", ["fra_Latn", "jpn_Jpan"], seed=3)
    c = write_cldr_pairs(tmp_path / "c", ["fra_Latn", "jpn_Jpan"], seed=4)
    for split in ("train", "eval", "retrieval"):
        for code in ("fra_Latn", "jpn_Jpan"):
            name = f"{split}/{ENGLISH}-{code}.jsonl"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a == b
    assert (tmp_path / "a/eval" / f"{ENGLISH}-fra_Latn.jsonl").read_bytes() != \
        (tmp_path / "c/eval" / f"{ENGLISH}-fra_Latn.jsonl").read_bytes()
    # an earlier output is replaced on a rerun, anything else is refused without --overwrite
    write_cldr_pairs(tmp_path / "a", ["fra_Latn"], seed=3)
    assert not (tmp_path / "a/train" / f"{ENGLISH}-jpn_Jpan.jsonl").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    with pytest.raises(Exception, match="--overwrite"):
        write_cldr_pairs(tmp_path / "other", ["fra_Latn"])


@pytest.mark.parametrize("code,locale", [("zho_Hans", "zh_Hans"), ("zho_Hant", "zh_Hant"), ("srp_Cyrl", "sr_Cyrl"),
                                         ("arb_Arab", "ar"), ("kor_Hang", "ko"), ("deu_Latn", "de"),
                                         ("swh_Latn", "sw"), ("uzn_Latn", "uz_Latn")])
def test_locales_from_the_language_table(code, locale):
    assert babel_locale_id(language_table().get(code)) == locale


def test_errors_name_the_language(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cldr_pairs.main(["--out", str(tmp_path / "x"), "--languages", "deu_Latn", "ace_Arab"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ace_Arab" in err and "no CLDR locale" in err and "deu_Latn" in err.split("covers:")[1]
    with pytest.raises(SystemExit):
        cldr_pairs.main(["--out", str(tmp_path / "x"), "--languages", "xyz_Latn"])
    assert "xyz_Latn" in capsys.readouterr().err
    with pytest.raises(Exception, match="eng_Latn is the English side"):
        resolve_languages(["eng_Latn"])
    with pytest.raises(SystemExit):
        cldr_pairs.main(["--out", str(tmp_path / "x"), "--eval-fraction", "1.5"])
    assert "--eval-fraction" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
