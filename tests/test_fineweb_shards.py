"""data_prep.fineweb_shards: shards + manifest from local parquet, idempotent re-runs, repair, verify, resume."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from data_prep.fineweb_shards import PrepParams, main, prepare_shards
from trainer.data.shards import load_manifest, save_manifest, sha256_file
from trainer.data.stream import StreamConfig, StreamLoader
from trainer.tiny.text import english_documents

SIZES = (70, 45)  # two input files of different sizes, row groups of 16 rows


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("fineweb")
    docs = english_documents(sum(SIZES), seed=11, min_sentences=1, max_sentences=6)
    start = 0
    for i, n in enumerate(SIZES):
        table = pa.table({"text": docs[start:start + n], "id": [f"doc-{j}" for j in range(start, start + n)],
                          "url": [f"https://example.org/{j}" for j in range(start, start + n)]})
        pq.write_table(table, _mk(root / "input") / f"{i:03d}.parquet", row_group_size=16)
        start += n
    return root / "input", docs


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def run(capsys, *args) -> tuple[int, str]:
    code = main([*map(str, args), "--quiet"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_writes_shards_and_a_manifest(source, tmp_path, tiny_path, capsys):
    inp, docs = source
    tok_dir = tiny_path("llama")
    code, _ = run(capsys, "--input", inp, "--out", tmp_path / "out", "--docs-per-shard", 20,
                  "--tokenizer", tok_dir, "--keep-columns", "id")
    assert code == 0
    manifest = load_manifest(tmp_path / "out")
    assert manifest.complete and manifest.text_column == "text"
    assert [s.rows for s in manifest.shards] == [20, 20, 20, 20, 20, 15]
    assert manifest.params["docs_per_shard"] == 20 and manifest.params["tokenizer"] == str(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = []
    for i, info in enumerate(manifest.shards):
        assert not info.path.startswith("/") and (tmp_path / "out" / info.path).is_file()
        assert sha256_file(manifest.shard_path(i)) == info.sha256
        table = pq.read_table(manifest.shard_path(i))
        assert table.column_names == ["text", "source_index", "id"]
        assert table.column("id").to_pylist() == [f"doc-{j}" for j in table.column("source_index").to_pylist()]
        assert info.tokens == sum(len(tok(t, add_special_tokens=False)["input_ids"])
                                  for t in table.column("text").to_pylist())
        texts += table.column("text").to_pylist()
    assert texts == docs


def test_rerun_is_idempotent_and_repairs_missing_or_corrupt_shards(source, tmp_path, capsys):
    inp, _ = source
    out = tmp_path / "out"
    args = ("--input", inp, "--out", out, "--docs-per-shard", 25)
    assert run(capsys, *args)[0] == 0
    first = snapshot(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    code, text = run(capsys, *args)
    assert code == 0 and "(0 written, 5 unchanged)" in text
    assert snapshot(out) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")} == mtimes
    (out / "manifest.json").unlink()  # without a manifest, shards are regenerated and compared, not rewritten
    code, text = run(capsys, *args)
    assert code == 0 and "(0 written, 5 unchanged)" in text
    assert snapshot(out) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")} == mtimes

    (out / "shard-00001.parquet").unlink()
    corrupt = bytearray((out / "shard-00003.parquet").read_bytes())
    corrupt[100] ^= 0x55
    (out / "shard-00003.parquet").write_bytes(bytes(corrupt))
    code, text = run(capsys, "--verify", out / "manifest.json")
    assert code == 1
    assert "shard-00001.parquet: missing shard" in text and "shard-00003.parquet: checksum mismatch" in text
    code, text = run(capsys, *args)
    assert code == 0 and "shard-00001.parquet: missing shard" in text and "shard-00003.parquet: checksum" in text
    assert "(2 written, 3 unchanged)" in text
    assert snapshot(out) == first
    assert run(capsys, "--verify", out)[0] == 0


def test_verify_names_a_shard_without_the_text_column(source, tmp_path, capsys):
    inp, _ = source
    out = tmp_path / "out"
    assert run(capsys, "--input", inp, "--out", out, "--docs-per-shard", 60)[0] == 0
    path = out / "shard-00001.parquet"
    pq.write_table(pa.table({"body": ["x"] * 55}), path)
    manifest = load_manifest(out)
    manifest.shards[1].sha256 = sha256_file(path)  # a consistent checksum: only the column is wrong
    save_manifest(manifest, out)
    code, text = run(capsys, "--verify", out)
    assert code == 1 and "shard-00001.parquet: no column 'text'" in text


def test_token_budget_and_sample_rate(source, tmp_path):
    inp, docs = source

    def prep(out, seed):
        params = PrepParams(input=str(inp), docs_per_shard=10, sample_rate=0.5, seed=seed, token_budget=400)
        return prepare_shards(params, tmp_path / out, progress=False).manifest

    a, b, c = prep("a", 0), prep("b", 0), prep("c", 1)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    sources = lambda m: sum((pq.read_table(m.shard_path(i)).column("source_index").to_pylist()  # noqa: E731
                             for i in range(len(m.shards))), [])
    kept = sources(a)
    assert kept == sorted(kept) and len(kept) < len(docs) and kept != sources(c)
    counts = [len(docs[i].split()) for i in kept]  # no tokenizer: whitespace words
    assert a.token_counter == "whitespace" and a.num_tokens == sum(counts)
    assert sum(counts) >= 400 > sum(counts[:-1]), "stops at the first document that reaches the budget"
    texts = sum((pq.read_table(a.shard_path(i)).column("text").to_pylist() for i in range(len(a.shards))), [])
    assert texts == [docs[i] for i in kept]


def test_interrupted_run_resumes_to_the_same_bytes(source, tmp_path):
    inp, _ = source
    params = PrepParams(input=str(inp), docs_per_shard=12, sample_rate=0.7, seed=3)
    full = prepare_shards(params, tmp_path / "full", progress=False).manifest
    # An interrupted run: the first k shards and an incomplete manifest, where k is chosen so that
    # resuming skips a whole input file and a whole row group of the next one.
    k = next(i for i, s in enumerate(full.shards) if s.source_start > SIZES[0] + 16)
    assert 0 < k < len(full.shards) - 1
    part = tmp_path / "part"
    part.mkdir()
    for info in full.shards[:k]:
        shutil.copy(tmp_path / "full" / info.path, part / info.path)
    save_manifest(full.model_copy(update={"shards": full.shards[:k], "complete": False}), part)
    report = prepare_shards(params, part, progress=False)
    assert report.reused == [s.path for s in full.shards[:k]]
    assert report.written == [s.path for s in full.shards[k:]]
    assert snapshot(part) == snapshot(tmp_path / "full")


def test_other_arguments_are_refused_unless_overwrite(source, tmp_path, capsys):
    inp, _ = source
    out = tmp_path / "out"
    assert run(capsys, "--input", inp, "--out", out, "--docs-per-shard", 50)[0] == 0
    code, text = run(capsys, "--input", inp, "--out", out, "--docs-per-shard", 30)
    assert code == 2 and "docs_per_shard" in text and "--overwrite" in text
    assert run(capsys, "--input", inp, "--out", out, "--docs-per-shard", 30, "--overwrite")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [30, 30, 30, 25]
    assert sorted(p.name for p in out.glob("*.parquet")) == [s["path"] for s in manifest["shards"]]
    assert run(capsys, "--input", inp, "--out", out, "--docs-per-shard", 100, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]


def test_input_without_the_text_column_is_named(tmp_path, capsys):
    _mk(tmp_path / "in")
    pq.write_table(pa.table({"body": ["a b c"]}), tmp_path / "in" / "x.parquet")
    code, text = run(capsys, "--input", tmp_path / "in", "--out", tmp_path / "out")
    assert code == 2 and "x.parquet: no column 'text'" in text


def test_the_stream_reads_what_the_cli_wrote(source, tmp_path, tiny_path, capsys):
    inp, docs = source
    assert run(capsys, "--input", inp, "--out", tmp_path / "out", "--docs-per-shard", 16)[0] == 0
    llm = AutoTokenizer.from_pretrained(tiny_path("llama"))
    nllb = AutoTokenizer.from_pretrained(tiny_path("nllb"), src_lang="eng_Latn")
    cfg = StreamConfig(manifest=str(tmp_path / "out"), max_length=32, epochs=1, return_text=True)
    seen = set()
    for rank in range(2):
        for batch in StreamLoader(cfg, llm, nllb, batch_size=8, rank=rank, world_size=2):
            seen |= set(batch["doc_index"].tolist())
    assert seen == set(range(len(docs)))
