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


# --- checksums on the caches the trainer reads back ---------------------------------------------------------

def flip_one_bit_per_row(path: Path, rows: int, dim: int) -> None:
    """One bit of every float32 row of an .npy file, the file's size unchanged."""
    import numpy as np

    data = bytearray(path.read_bytes())
    header = len(data) - rows * dim * 4
    for r in range(rows):
        data[header + r * dim * 4 + 1] ^= 0x01
    path.write_bytes(bytes(data))


def small_stage1_cache(folder: Path):
    import torch

    from trainer.data.teacher_targets import Part, write_meta, write_part

    torch.manual_seed(0)
    write_meta(folder, {"teacher": "t"}, 8, [Part(0, 3), Part(3, 2)])
    write_part(folder, 0, [2, 1, 1], torch.randn(4, 8))
    write_part(folder, 1, [1, 2], torch.randn(3, 8))


def test_a_stage1_cache_with_a_bit_flipped_per_row_or_truncated_is_refused_naming_the_file(tmp_path):
    """#32 case 4, stage 1: same size, one bit per row -> the first lookup in the part names vectors.npy;
    truncated -> named when the cache is opened (before training), also for a part without checksums."""
    import torch

    from trainer.data.teacher_targets import CHECKSUMS_FILE, TeacherTargets

    folder = tmp_path / "cache"
    small_stage1_cache(folder)
    intact = TeacherTargets(folder, {"teacher": "t"})
    expected = intact.lookup(torch.tensor([0, 4]), torch.tensor([1, 1]))
    vectors = folder / "part-00001" / "vectors.npy"
    size = vectors.stat().st_size
    flip_one_bit_per_row(vectors, 3, 8)
    assert vectors.stat().st_size == size
    targets = TeacherTargets(folder, {"teacher": "t"})           # opening checks sizes only
    assert torch.equal(targets.lookup(torch.tensor([0]), torch.tensor([1])), expected[:1])   # part 0 intact
    with pytest.raises(DataError) as e:
        targets.lookup(torch.tensor([4]), torch.tensor([1]))
    assert str(vectors) in str(e.value) and "sha256" in str(e.value) and "--shards 1:2" in str(e.value)

    vectors.write_bytes(vectors.read_bytes()[:-10])                 # truncated: named at once
    with pytest.raises(DataError, match="truncated") as e:
        TeacherTargets(folder, {"teacher": "t"})
    assert str(vectors) in str(e.value)
    (folder / "part-00001" / CHECKSUMS_FILE).unlink()                # a cache written before checksums existed
    with pytest.raises(DataError, match="header promises") as e:
        TeacherTargets(folder, {"teacher": "t"})
    assert str(vectors) in str(e.value)


def test_a_stage2_cache_that_is_corrupt_or_truncated_is_refused_naming_the_file(tmp_path):
    import torch

    from trainer.models.teacher_cache import VECTORS_FILE, TeacherCache

    folder = tmp_path / "cache"
    TeacherCache(["a", "b", "c"], torch.randn(3, 8), {"teacher": "t"}).save(folder)
    assert torch.equal(TeacherCache.load(folder).lookup(["b"]), TeacherCache.load(folder).vectors[1:2])
    path = folder / VECTORS_FILE
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-5] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="sha256") as e:
        TeacherCache.load(folder)
    assert str(path) in str(e.value)
    path.write_bytes(good[:-7])
    with pytest.raises(DataError, match="truncated") as e:
        TeacherCache.load(folder)
    assert str(path) in str(e.value)


def test_a_corrupt_translation_part_is_named_and_an_intact_one_resumes(tmp_path):
    from data_prep.translate import Batch, PartWriter, read_parts

    writer = PartWriter(tmp_path)
    writer.append(Batch("deu_Latn", 0, ("a cat", "a dog"), "eng_Latn", "deu_Latn"), ["eine Katze", "ein Hund"])
    writer.append(Batch("deu_Latn", 1, ("hello",), "eng_Latn", "deu_Latn"), ["hallo"])
    writer.close()
    path = tmp_path / "deu_Latn.jsonl"
    assert read_parts(path)[0]["translations"] == ["eine Katze", "ein Hund"]
    path.write_text(path.read_text().replace("ein Hund", "ein Hunt"))   # same size, one letter
    with pytest.raises(DataError) as e:
        read_parts(path)
    assert f"{path}:1" in str(e.value) and "sha256" in str(e.value)


def test_stage1_with_a_corrupt_teacher_cache_stops_naming_the_file(tmp_path, tiny_cache, capsys):
    """#32 case 4 end to end: one bit flipped per row of a part's vectors.npy (same size): `trainer.train` used to
    exit 0 with other losses; now exit 2 naming the file, before a step is trained."""
    import numpy as np

    from data_prep.demo_text import write_demo_shards
    from data_prep.teacher_cache import main as build_cli
    from trainer.train import main

    demo = Path(__file__).resolve().parents[1] / "jobs" / "demo_stage1.yaml"
    manifest = write_demo_shards(tmp_path / "demo", docs_per_file=40, docs_per_shard=20)
    overrides = [f"data.manifest={manifest}", f"model.cache_dir={tiny_cache}", "optim.max_steps=2", "prepare=[]",
                 "optim.warmup_steps=0", "optim.micro_batch_size=4", "checkpoint.every=0", "tracking.export=none",
                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"teacher_cache={tmp_path / 'cache'}"]
    assert build_cli([str(demo), *overrides]) == 0
    vectors = tmp_path / "cache" / "part-00000" / "vectors.npy"
    rows, dim = np.load(vectors, mmap_mode="r").shape
    flip_one_bit_per_row(vectors, rows, dim)
    capsys.readouterr()
    assert main([str(demo), *overrides, f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(vectors) in err and "sha256" in err
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().strip()        # no step was trained
