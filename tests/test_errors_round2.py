"""#32 items 5 and 6: the second bad-input round. Each case is one message naming the file, key or path and what
is valid, a non-zero exit, no traceback (with several ranks: one line, from rank 0), refused before `prepare` runs
and before config.yaml or an MLflow run is written where it can be; checkpoints load with `weights_only=True`.

No case trains: each fails before the first step (most before anything is written), in a second or two once
torch is imported.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainer import errors
from trainer import merge as merge_cli
from trainer.checkpoint import TRAINER_STATE, load_own, rank_file, write_manifest
from trainer.errors import ResumeError, on_every_rank, report
from trainer.train import main

from test_errors import _export, one_error, snapshot   # one error line, no traceback: the shared check

ROOT = Path(__file__).resolve().parents[1]
MARK = "prepare-ran"   # the file a job's `prepare` command writes: whether a check came before it


@pytest.fixture
def job(tmp_path, tiny_cache) -> Path:
    """A valid stage-1 job in tmp_path (data, store and output there); no case here trains it."""
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "one two three four"}) + "\n")
    raw = {"recipe": "stage1", "seed": 0, "output_dir": str(tmp_path / "run"),
           "prepare": [f"touch {tmp_path / MARK}"],
           "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "cache_dir": tiny_cache},
           "data": {"files": [str(tmp_path / "docs.jsonl")], "max_length": 32},
           "optim": {"lr": 1e-3, "max_steps": 2, "micro_batch_size": 4},
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "round2"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def refused_before_anything(job: Path, capsys, *overrides: str) -> str:
    """`trainer.train JOB overrides` exits 2 with one error line and no traceback, before `prepare` ran and before
    anything was written (no output_dir, no MLflow store); returns stderr."""
    assert main([str(job), *overrides]) == 2
    err = one_error(capsys)
    tmp = job.parent
    assert not (tmp / MARK).exists() and not (tmp / "run").exists() and not (tmp / "mlflow.db").exists(), err
    return err


# --- job files, output_dir, checkpoint.resume -------------------------------------------------------------

def test_a_binary_file_or_a_folder_as_the_job_file_is_one_message(tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x80\x03\x93PK\x00\xff" * 20)
    assert main([str(binary)]) == 2
    assert f"{binary}: not a text file (byte 0x80 at offset 0 is not UTF-8)" in one_error(capsys)
    assert main([str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder, not a job file" in one_error(capsys)


def test_output_dir_that_is_a_file_or_under_one_is_refused(job, capsys):
    afile = job.parent / "notes.txt"
    afile.write_text("mine\n")
    for out, expected in ((afile, f"output_dir: {afile} is a file, not a folder"),
                          (afile / "run", f"output_dir: {afile / 'run'}: {afile} is a file, not a folder")):
        assert expected in refused_before_anything(job, capsys, f"output_dir={out}")
    assert afile.read_text() == "mine\n"


def test_output_dir_equal_to_an_input_folder_is_refused(job, capsys):
    err = refused_before_anything(job, capsys, f"output_dir={job.parent}")
    assert f"output_dir {job.parent} is the folder of the input data.files ({job.parent / 'docs.jsonl'})" in err


@pytest.mark.parametrize("make, reason", [
    (lambda tmp: tmp / "nowhere", "it does not exist"),
    (lambda tmp: tmp / "docs.jsonl", "not a directory"),
    (lambda tmp: _corrupt_checkpoint(tmp / "ckpt"), "ds/model.pt does not match its sha256"),
])
def test_a_missing_or_corrupt_resume_path_is_one_message(job, capsys, make, reason):
    path = make(job.parent)
    err = refused_before_anything(job, capsys, f"checkpoint.resume={path}")
    assert f"checkpoint.resume: {path} is not a usable checkpoint ({reason}" in err
    assert "auto (the newest complete one in" in err and "none (start from step 0)" in err


def _corrupt_checkpoint(root: Path) -> Path:
    ckpt = root / "step-00000002"
    (ckpt / "ds").mkdir(parents=True)
    (ckpt / "ds" / "model.pt").write_bytes(b"\x00" * 64)
    torch.save({"rank": 0}, ckpt / rank_file(0))
    (ckpt / TRAINER_STATE).write_text(json.dumps({"step": 2, "world_size": 1}))
    write_manifest(ckpt)
    (ckpt / "ds" / "model.pt").write_bytes(b"\x01" * 64)   # same size, other bytes
    return ckpt


# --- checks that come before `prepare` and before anything is written ------------------------------------

def test_an_unknown_or_broken_deepspeed_config_is_refused_before_prepare(job, capsys):
    err = refused_before_anything(job, capsys, "engine.deepspeed=zero4")
    assert "engine.deepspeed: 'zero4' is neither a shipped config (single, zero1, zero2, zero3" in err
    broken = job.parent / "mine.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}')
    assert f"engine.deepspeed: {broken} is not valid JSON" in refused_before_anything(
        job, capsys, f"engine.deepspeed={broken}")


def test_a_missing_flare_task_export_is_refused_before_prepare_or_right_after_it(tmp_path, tiny_cache, capsys):
    flare = ROOT / "jobs" / "demo_flare.yaml"
    missing = tmp_path / "no_finetune" / "export"
    common = [f"output_dir={tmp_path / 'run'}", f"model.task_export={missing}", f"model.cache_dir={tiny_cache}",
              f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main([str(flare), *common, "prepare=[]"]) == 2                 # nothing could make it: refused at once
    assert f"model.task_export: {missing}/config.yaml not found" in one_error(capsys)
    assert not (tmp_path / "run").exists()
    assert main([str(flare), *common, f"prepare=[touch {tmp_path / MARK}]"]) == 2   # `prepare` may make it: after it
    assert f"model.task_export: {missing}/config.yaml not found" in one_error(capsys)
    assert (tmp_path / MARK).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]   # no config.yaml
    assert not (tmp_path / "mlflow.db").exists()                                 # no FAILED MLflow run


# --- model paths ---------------------------------------------------------------------------------------------

def test_a_relative_model_path_with_one_slash_fails_at_once(job, capsys, monkeypatch):
    monkeypatch.chdir(job.parent)
    (job.parent / "models").mkdir()                                    # models/ is a folder here: a local path
    err = refused_before_anything(job, capsys, "model.llm.name_or_path=models/foo")
    assert f"model path models/foo does not exist (a local path: {job.parent / 'models' / 'foo'}" in err


def test_a_hub_name_neither_cached_nor_reachable_is_named_in_seconds(job, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    err = refused_before_anything(job, capsys, "model.llm.name_or_path=no-such-org/no-such-model")
    assert "model no-such-org/no-such-model is not a local path" in err and "HF_HUB_OFFLINE is set" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)   # as offline, without waiting for DNS
    err = refused_before_anything(job, capsys, "model.llm.name_or_path=no-such-org/no-such-model")
    assert "the hub cannot be reached to fetch it (ConnectionError: Name or service not known)" in err


# --- tracking stores -----------------------------------------------------------------------------------------

def test_a_garbage_sqlite_store_is_named_in_train_and_report(job, capsys):
    from trainer.report import main as report_cli

    garbage = job.parent / "garbage.db"
    garbage.write_bytes(b"these bytes are not a database\n")
    err = refused_before_anything(job, capsys, f"tracking.uri=sqlite:///{garbage}")
    assert f"tracking.uri: sqlite:///{garbage}: {garbage} is not an SQLite database" in err
    assert report_cli(["round2", "--uri", f"sqlite:///{garbage}"]) == 2
    assert f"--uri: sqlite:///{garbage}: {garbage} is not an SQLite database" in one_error(capsys)
    from trainer.tracking import BUFFER_FILE, main as tracking_cli

    (job.parent / "offline").mkdir()
    (job.parent / "offline" / BUFFER_FILE).write_text("")
    assert tracking_cli(["upload", str(job.parent / "offline"), "--uri", f"sqlite:///{garbage}"]) == 2
    assert f"--uri: sqlite:///{garbage}: {garbage} is not an SQLite database" in one_error(capsys)
    nowhere = job.parent / "no_folder" / "mlflow.db"
    assert f"the folder {nowhere.parent} does not exist" in refused_before_anything(
        job, capsys, f"tracking.uri=sqlite:///{nowhere}")
    assert garbage.read_bytes() == b"these bytes are not a database\n"


# --- a full disk ----------------------------------------------------------------------------------------------

def test_a_full_disk_during_a_run_is_named_with_the_path_and_the_free_space(job, capsys, monkeypatch):
    import trainer.run

    def full(path, data, fsync=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # as write() raises it: no file name

    monkeypatch.setattr(trainer.run, "write_atomic", full)
    out = job.parent / "run"
    assert main([str(job), "prepare=[]"]) == 2
    err = one_error(capsys)
    assert f"disk full while writing {out} (free space on " in err and "make room there" in err


def test_a_full_disk_in_a_data_cli_is_one_message(tmp_path, capsys, monkeypatch):
    from data_prep import fineweb_shards

    def full(params, out, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out) / "shard-00000.parquet"))

    monkeypatch.setattr(fineweb_shards, "prepare_shards", full)
    assert fineweb_shards.main(["--input", str(tmp_path), "--out", str(tmp_path / "shards")]) == 2
    assert f"disk full while writing {tmp_path / 'shards' / 'shard-00000.parquet'}" in one_error(capsys)
    monkeypatch.setattr(fineweb_shards, "prepare_shards", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):                              # a bug keeps its traceback
        fineweb_shards.main(["--input", str(tmp_path), "--out", str(tmp_path / "shards")])


def test_disk_full_recognises_every_form_of_a_full_disk(tmp_path, monkeypatch):
    named = errors.disk_full(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.pt")))
    assert str(named).startswith(f"disk full while writing {tmp_path / 'a.pt'} (free space on /")
    rust = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                        'left on device" })')                                  # safetensors
    assert "disk full while writing" in str(errors.disk_full(rust, tmp_path))
    sqlite = Exception("(sqlite3.OperationalError) database or disk is full")   # MLflow's store
    assert errors.disk_full(sqlite, tmp_path) is not None
    try:                                                                          # raised while handling ENOSPC
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("checkpoint failed")
    except RuntimeError as chained:
        assert errors.disk_full(chained, tmp_path) is not None
    torch_writer = RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                                "file data/0: file write failed")              # torch.save: no errno at all
    assert errors.disk_full(torch_writer, tmp_path) is None or errors.free_space(tmp_path)[1] < errors.LOW_SPACE
    monkeypatch.setattr(errors, "free_space", lambda path: ("/", 10_000_000, 50_000_000_000))
    assert "(free space on /: 10.0 MB of 50.0 GB)" in str(errors.disk_full(torch_writer, tmp_path))
    assert errors.disk_full(RuntimeError("basic_ios::clear: iostream error")) is None   # no folder to look at
    assert errors.disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert errors.user_error(ValueError("a bug")) is None


def test_merge_on_a_full_disk_is_one_message_and_leaves_no_temporary_folder(tmp_path, capsys, monkeypatch):
    import trainer.models.weights as weights

    task, align = _export(tmp_path / "task"), _export(tmp_path / "align")

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(weights, "save_file", full)
    assert merge_cli.main([str(task), str(align), "--out", str(tmp_path / "merged"), "--quiet"]) == 1
    assert "disk full while writing" in one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["align", "task"]       # no .merged-* left behind


# --- merge --out . --------------------------------------------------------------------------------------------

def test_merge_refuses_the_current_directory_and_its_parents(tmp_path, capsys, monkeypatch):
    task, align = _export(tmp_path / "in" / "task"), _export(tmp_path / "in" / "align")
    here = tmp_path / "work"
    here.mkdir()
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    before = snapshot(tmp_path)
    for out in (".", "..", str(here)):
        assert merge_cli.main([str(task), str(align), "--out", out, "--overwrite", "--quiet"]) == 1
        assert f"--out {out} is the current directory" in one_error(capsys)
    assert snapshot(tmp_path) == before and sorted(p.name for p in here.iterdir()) == ["keep.txt"]


# --- several ranks: one line, from rank 0 ------------------------------------------------------------------

def test_an_error_every_rank_raises_is_printed_by_rank_0_only(capsys, monkeypatch):
    monkeypatch.setattr(errors, "QUIET_RANK_WAIT", 0)
    shared = on_every_rank(ResumeError("checkpoint X was written by 2 ranks, this run has 3"))
    assert report(shared, prefix="error [rank 1]", rank=1) == 2
    assert capsys.readouterr().err == ""
    assert report(shared, prefix="error [rank 0]", rank=0) == 2
    assert capsys.readouterr().err == "error [rank 0]: checkpoint X was written by 2 ranks, this run has 3\n"
    own = ResumeError("rank 1's own file")                              # not shared: its rank prints it
    assert report(own, prefix="error [rank 1]", rank=1) == 2
    assert "rank 1's own file" in capsys.readouterr().err


def test_a_bad_job_file_under_a_launcher_prints_from_rank_0_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(errors, "QUIET_RANK_WAIT", 0)
    bad = tmp_path / "job.yaml"
    bad.write_text("recipe: stage1\noptim: {lr: .inf}\n")
    monkeypatch.setenv("RANK", "1")
    assert main([str(bad)]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main([str(bad)]) == 2
    assert "optim.lr" in one_error(capsys)


# --- trusted inputs: checkpoints load with weights_only=True ---------------------------------------------

class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_rank_file_that_would_run_code_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crafted = tmp_path / rank_file(0)
    torch.save({"rank": 0, "data": _RunsCode()}, crafted)
    with pytest.raises(ResumeError, match=r"rank-00000.pt: holds posix.system beyond tensors, plain values and numpy"):
        load_own(crafted)
    assert not (tmp_path / "PWNED").exists()
    import numpy as np
    import random

    own = tmp_path / "own.pt"                                          # what Checkpointer.save writes: loads
    torch.save({"rank": 0, "step": 3, "data": {"next_index": 5},
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}},
               own)
    assert load_own(own)["step"] == 3


@pytest.mark.slow
def test_two_ranks_print_one_line_from_rank_0(job):
    """Under torchrun with 2 ranks: a config error and a refusal decided on rank 0 (an unusable checkpoint.resume)
    print one message each, from rank 0, and no rank prints a traceback (torchrun itself still prints its
    ChildFailedError summary after any rank exits non-zero)."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    for override, expected in (("optim.lr=.inf", "optim.lr"),
                               (f"checkpoint.resume={job.parent / 'nowhere'}", "is not a usable checkpoint")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "trainer.train", str(job), override, "prepare=[]"]
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        ours = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert len(ours) == 1 and expected in result.stderr, result.stderr[-3000:]
        assert ours[0].startswith(("error: ", "error [rank 0]: "))
        # no rank's traceback; torchrun's own (ChildFailedError, its summary of the ranks' exit codes) stays
        assert str(ROOT / "trainer") not in result.stderr and "[rank1]:" not in result.stderr, result.stderr[-3000:]
