"""Parallel corpora: file formats, missing languages, hub fallback, uniform sampling, rank sharding."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from data_prep.make_parallel_data import parse_languages, write_parallel_data
from trainer.data import parallel
from trainer.data.pair_sampling import BalancedPairStream, language_probabilities, sample_pairs
from trainer.data.parallel import ParallelCorpus, PairTable, ParallelDataConfig, load_parallel
from trainer.tiny.text import parallel_sentences

# Uniform sampling tolerance: every language's share of the draws within 0.03 of 1/L.
# With 6000 draws over 3 languages the binomial standard deviation of a share is 0.006 (5 sd).
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def skewed_dir(tmp_path_factory):
    """Generated pairs: German 1000, Greek 100, Chinese 10 (three scripts)."""
    out = tmp_path_factory.mktemp("parallel")
    write_parallel_data(out, [("deu_Latn", 1000), ("ell_Grek", 100), ("zho_Hans", 10)], seed=3)
    return out


@pytest.fixture(scope="module")
def skewed(skewed_dir) -> ParallelCorpus:
    return load_parallel(ParallelDataConfig(files=[str(skewed_dir)]))


def test_generated_files_one_pair_per_line(skewed_dir):
    lines = (skewed_dir / "eng_Latn-ell_Grek.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 100
    pairs = [json.loads(line) for line in lines]
    assert [(p["eng_Latn"], p["ell_Grek"]) for p in pairs] == parallel_sentences("ell_Grek", 100, seed=3)
    assert any("\u03b1" <= ch <= "\u03c9" for ch in pairs[0]["ell_Grek"])    # Greek letters


def test_make_parallel_data_cli_and_tsv(tmp_path):
    assert parse_languages(["de:5", "zh"], 7) == [("deu_Latn", 5), ("zho_Hans", 7)]
    with pytest.raises(ValueError, match="listed twice"):
        parse_languages(["de", "deu_Latn"], 3)
    paths = write_parallel_data(tmp_path, [("arb_Arab", 4)], seed=1, fmt="tsv")
    rows = [line.split("\t") for line in paths[0].read_text(encoding="utf-8").splitlines()]
    assert [tuple(r) for r in rows] == parallel_sentences("arb_Arab", 4, seed=1)


def test_local_formats_and_either_side_order(tmp_path):
    pairs = parallel_sentences("rus_Cyrl", 5, seed=0)
    (tmp_path / "ru-en.tsv").write_text("".join(f"{o}\t{e}\n" for e, o in pairs), encoding="utf-8")
    hin = parallel_sentences("hin_Deva", 4, seed=0)
    pq.write_table(pa.table({"translation": [{"en": e, "hi": o} for e, o in hin]}), tmp_path / "en-hi.parquet")
    corpus = load_parallel(ParallelDataConfig(files=[str(tmp_path)]))
    assert corpus.sizes() == {"hin_Deva": 4, "rus_Cyrl": 5}
    assert [corpus.tables["rus_Cyrl"][i] for i in range(5)] == pairs
    assert [corpus.tables["hin_Deva"][i] for i in range(4)] == hin


def test_language_without_data_lists_what_is_available(skewed_dir):
    cfg = ParallelDataConfig(files=[str(skewed_dir)], languages=["deu", "fon_Latn"])
    with pytest.raises(ValueError) as e:
        load_parallel(cfg)
    message = str(e.value)
    assert "no parallel data for fon_Latn (Fon)" in message
    assert "deu_Latn (1 file), ell_Grek (1 file), zho_Hans (1 file)" in message
    corpus = load_parallel(cfg.model_copy(update={"on_missing": "skip"}))
    assert corpus.languages == ["deu_Latn"] and "fon_Latn" in corpus.skipped


def test_unknown_language_in_config_names_closest_codes(skewed_dir):
    with pytest.raises(ValidationError, match="ell_Grek"):
        ParallelDataConfig(files=[str(skewed_dir)], languages=["ell_Latn"])


def test_subset_from_subsets_file(skewed_dir, tmp_path):
    subsets = tmp_path / "subsets.yaml"
    subsets.write_text("subsets:\n  two: {heuristic: random, size: 2, seed: 1, languages: [ell_Grek, zho_Hans]}\n",
                       encoding="utf-8")
    corpus = load_parallel(ParallelDataConfig(files=[str(skewed_dir)], subsets_file=str(subsets), subset="two"))
    assert corpus.languages == ["ell_Grek", "zho_Hans"]
    with pytest.raises(ValueError, match="available|subsets: two"):
        load_parallel(ParallelDataConfig(files=[str(skewed_dir)], subsets_file=str(subsets), subset="three"))


def test_hub_falls_back_to_nllb_where_opus_lacks_the_language(monkeypatch):
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "allenai/nllb" and config == "eng_Latn-fon_Latn":
            return datasets.Dataset.from_dict({"translation": [{"eng_Latn": "Hello.", "fon_Latn": "Kudo."}]})
        if name == "Helsinki-NLP/opus-100" and config == "de-en":
            return datasets.Dataset.from_dict({"translation": [{"de": "Hallo.", "en": "Hello."}]})
        raise FileNotFoundError(f"{name} {config}")

    monkeypatch.setattr(parallel.datasets, "load_dataset", fake_load)
    corpus = load_parallel(ParallelDataConfig(languages=["fon", "de"], hub=["opus-100", "nllb"]))
    assert corpus.tables["fon_Latn"][0] == ("Hello.", "Kudo.")
    assert corpus.tables["deu_Latn"][0] == ("Hello.", "Hallo.")
    assert ("Helsinki-NLP/opus-100", "de-en", "train") in calls
    assert not any(name == "Helsinki-NLP/opus-100" and "fon" in str(cfg) for name, cfg, _ in calls)  # no ISO 639-1
    with pytest.raises(ValueError, match="no parallel data for yor_Latn.*hub allenai/nllb"):
        load_parallel(ParallelDataConfig(languages=["yor"], hub=["opus-100", "nllb"]))


# ------------------------------------------------------------------------------------------ sampling


def test_sampling_is_uniform_over_languages_on_a_skewed_corpus(skewed):
    draws = sample_pairs(skewed, 6000, seed=0)
    counts = Counter(d["language"] for d in draws)
    for lang in ("deu_Latn", "ell_Grek", "zho_Hans"):
        assert abs(counts[lang] / 6000 - 1 / 3) <= TOLERANCE, counts
    # proportional sampling (T = 1) instead follows the sizes 1000 : 100 : 10
    prop = Counter(d["language"] for d in sample_pairs(skewed, 6000, temperature=1.0, seed=0))
    assert abs(prop["deu_Latn"] / 6000 - 1000 / 1110) <= TOLERANCE


def test_language_probabilities_formula():
    p = language_probabilities({"a": 400, "b": 100, "c": 0}, temperature=2.0)
    assert p == pytest.approx({"a": 20 / 30, "b": 10 / 30})              # sqrt sizes, empty language out
    assert language_probabilities({"a": 400, "b": 100}) == {"a": 0.5, "b": 0.5}


def test_sampling_is_deterministic_under_a_seed(skewed):
    a = [d["id"] for d in sample_pairs(skewed, 300, seed=5)]
    assert a == [d["id"] for d in sample_pairs(skewed, 300, seed=5)]
    assert a != [d["id"] for d in sample_pairs(skewed, 300, seed=6)]


def test_small_language_is_repeated_by_whole_passes(skewed):
    zho = [d["id"] for d in sample_pairs(skewed, 900, seed=1) if d["language"] == "zho_Hans"]
    assert len(zho) >= 30
    for start in range(0, 30, 10):                      # every pass of 10 draws covers all 10 pairs once
        assert sorted(zho[start:start + 10]) == sorted(f"zho_Hans:{i}" for i in range(10))


def test_rank_shards_do_not_overlap_and_cover_everything(skewed):
    world = 3
    seen = [set(d["id"] for d in sample_pairs(skewed, 9000, seed=2, rank=r, world_size=world))
            for r in range(world)]
    for r in range(world):
        for q in range(r + 1, world):
            assert not seen[r] & seen[q]
    every = {f"{lang}:{i}" for lang, n in skewed.sizes().items() for i in range(n)}
    assert set().union(*seen) == every
    # the shards use the same global language probabilities
    counts = Counter(d["language"] for d in sample_pairs(skewed, 3000, seed=2, rank=1, world_size=world))
    assert all(abs(c / 3000 - 1 / 3) <= TOLERANCE for c in counts.values())


def test_dataloader_workers_are_disjoint_shards(skewed):
    def run(rank: int) -> list[str]:
        stream = BalancedPairStream(skewed, seed=4, rank=rank, world_size=2, num_samples=400)
        return [d["id"] for d in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)]

    rank0, rank1 = run(0), run(1)
    assert len(rank0) == len(rank1) == 400
    assert not set(rank0) & set(rank1)                 # 2 ranks x 2 workers = 4 disjoint shards
    assert run(1) == rank1                             # deterministic with workers too


def test_too_many_shards_for_a_language_fails_clearly():
    corpus = ParallelCorpus("eng_Latn", {"deu_Latn": PairTable(["a", "b"], ["x", "y"], "test")})
    with pytest.raises(ValueError, match="deu_Latn has 2 pairs, fewer than the 3 shards"):
        sample_pairs(corpus, 1, rank=0, world_size=3)
