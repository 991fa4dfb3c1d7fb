"""Writers delete only what they created; caches the trainer reads back are verified (issue #32, cases 3 and 4).

A manifest is data, not an instruction: `data_prep.translate --overwrite` and `data_prep.fineweb_shards`
remove only files their manifest lists as relative names inside its own folder, and refuse any other
entry naming the manifest and the entry. The teacher caches (stage 1's vectors.npy parts, stage 2's
vectors.safetensors) and the translation parts carry sha256 checksums, checked once when loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.errors import DataError
from trainer.fsutil import listed_path
from trainer.tiny.text import english_documents


# --- manifests list their own files only ------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["/etc/passwd", "../victim.txt", "sub/../../victim.txt", "", None, "~/x"])
def test_a_manifest_entry_outside_its_folder_is_refused(tmp_path, entry):
    with pytest.raises(DataError) as e:
        listed_path(tmp_path / "out", entry, tmp_path / "out" / "manifest.json")
    assert str(tmp_path / "out" / "manifest.json") in str(e.value) and repr(entry) in str(e.value)


def test_a_symbolic_link_leading_out_is_refused_and_names_inside_are_kept(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("keep me")
    os.symlink(tmp_path, out / "link")
    with pytest.raises(DataError, match="symbolic link"):
        listed_path(out, "link/victim.txt", out / "manifest.json")
    assert listed_path(out, "sub/a.jsonl", out / "manifest.json") == out / "sub" / "a.jsonl"
    assert listed_path(out, "de.jsonl", out / "manifest.json") == out / "de.jsonl"


def test_translate_overwrite_never_deletes_a_file_its_manifest_names_outside_out(tmp_path):
    """#32 case 3: a manifest.json in --out naming a file elsewhere: --overwrite refuses, the file stays."""
    from data_prep.translate import MANIFEST, finished, prepare_out

    victim = tmp_path / "elsewhere" / "precious.jsonl"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "deu_Latn.jsonl").write_text("{}\n")
    for entry in (str(victim), "../elsewhere/precious.jsonl"):
        manifest = {"job": {"old": True}, "languages": {"deu_Latn": {"file": "deu_Latn.jsonl", "sha256": "x"},
                                                         "fra_Latn": {"file": entry, "sha256": "x"}}}
        (out / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(DataError) as e:
            prepare_out(out, {"new": True}, [], overwrite=True)
        assert str(out / MANIFEST) in str(e.value) and repr(entry) in str(e.value)
        assert victim.read_text() == "precious\n"                       # nothing deleted, not even inside --out
        assert (out / MANIFEST).is_file() and (out / "deu_Latn.jsonl").is_file()
        with pytest.raises(DataError):
            finished(out, {"old": True})                                 # nor read as this job's output
    # a manifest of its own files: they are replaced as before
    (out / MANIFEST).write_text(json.dumps({"job": {"old": True},
                                            "languages": {"deu_Latn": {"file": "deu_Latn.jsonl", "sha256": "x"}}}))
    prepare_out(out, {"new": True}, [], overwrite=True)
    assert not (out / "deu_Latn.jsonl").exists() and not (out / MANIFEST).exists()


def test_translate_cli_refusal_is_one_line(tmp_path, capsys, monkeypatch):
    """Through the entry point: exit 2, one message, the file elsewhere kept."""
    import data_prep.translate as translate

    victim = tmp_path / "precious.jsonl"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / translate.MANIFEST).write_text(json.dumps({"job": {}, "languages": {"x": {"file": str(victim)}}}))

    def fake_run(args):   # the model-free part of run(): the refusal happens in prepare_out
        translate.prepare_out(Path(args.out), {"new": True}, [], args.overwrite)

    monkeypatch.setattr(translate, "run", fake_run)
    code = translate.main(["--benchmark", "xnli", "--direction", "test", "--split", "test", "--languages", "deu_Latn",
                           "--model", "tiny:nllb", "--out", str(out),
                           "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(victim) in err and victim.is_file()


@pytest.fixture
def shards_source(tmp_path):
    docs = english_documents(30, seed=5, min_sentences=1, max_sentences=3)
    (tmp_path / "input").mkdir()
    pq.write_table(pa.table({"text": docs}), tmp_path / "input" / "000.parquet")
    return tmp_path / "input"


def test_fineweb_shards_never_removes_a_stale_shard_its_old_manifest_names_outside_out(shards_source, tmp_path, capsys):
    from data_prep.fineweb_shards import main

    out = tmp_path / "shards"
    args = ["--input", str(shards_source), "--out", str(out), "--quiet"]
    assert main([*args, "--docs-per-shard", "10"]) == 0
    victim = tmp_path / "precious.parquet"
    victim.write_bytes(b"precious")
    manifest = json.loads((out / "manifest.json").read_text())
    extra = dict(manifest["shards"][-1], path="../precious.parquet")
    manifest["shards"].append(extra)
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    for again in ([*args, "--docs-per-shard", "10"], [*args, "--docs-per-shard", "7", "--overwrite"]):   # same; other
        assert main(again) == 2
        err = capsys.readouterr().err
        assert "'../precious.parquet'" in err and str(out / "manifest.json") in err and "Traceback" not in err
        assert victim.read_bytes() == b"precious"
