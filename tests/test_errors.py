"""Bad input never costs a run: each case of docs/errors.md, its message, its exit status, and what is left on disk.

Every case asserts that the message names what the user must fix, that the exit status is
non-zero, and that nothing that existed before was changed (and nothing half-made was left).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from trainer import merge as merge_cli
from trainer.checkpoint import MANIFEST, TRAINER_STATE, find_latest_complete, rank_file, write_manifest
from trainer.config import ConfigError, validate
from trainer.errors import NonFiniteError
from trainer.fsutil import temp_dir_beside, write_atomic
from trainer.loop import check_finite
from trainer.sweep import SweepConfig
from trainer.tiny.text import english_documents
from trainer.train import main

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (what "left as it was" compares)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    return err


# --- a small stage-1 job that trains in a few seconds ----------------------------------------------

@pytest.fixture(scope="module")
def stage1(tmp_path_factory, tiny_cache):
    tmp = tmp_path_factory.mktemp("errors")
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(40, seed=1)))
    job = {"recipe": "stage1", "seed": 0, "output_dir": str(tmp / "run"),
           "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "cache_dir": tiny_cache},
           "data": {"files": [str(docs)], "max_length": 32},
           "optim": {"lr": 1e-3, "max_steps": 2, "micro_batch_size": 4},
           "checkpoint": {"every": 1},
           "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "errors"}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main([str(path)]) == 0
    return tmp, path


def test_a_changed_config_does_not_resume_another_jobs_checkpoints(stage1, capsys):
    tmp, job = stage1
    before = snapshot(tmp / "run")
    assert main([str(job), "optim.lr=5e-4", "optim.max_steps=3"]) == 2
    err = one_error(capsys)
    assert "optim.lr: 0.001 -> 0.0005" in err and "checkpoint.resume=none" in err and "output_dir" in err
    assert snapshot(tmp / "run") == before                          # config.yaml and checkpoints untouched
    assert main([str(job), "model.lora.r=8"]) == 2                    # a changed LoRA rank: no size-mismatch traceback
    assert "model.lora.r: 4 -> 8" in one_error(capsys)
    assert snapshot(tmp / "run") == before


def test_harmless_changes_resume(stage1, capsys):
    tmp, job = stage1
    assert main([str(job), "optim.max_steps=3", "tracking.log_every=2"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert yaml.safe_load((tmp / "run" / "config.yaml").read_text())["optim"]["max_steps"] == 3


def test_infinite_learning_rate_is_a_config_error_before_anything_loads(stage1, capsys):
    _, job = stage1
    start = time.perf_counter()
    assert main([str(job), "optim.lr=.inf"]) == 2
    assert "optim.lr" in one_error(capsys) and time.perf_counter() - start < 5


def test_a_diverging_run_stops_and_exports_nothing(stage1, tmp_path, capsys):
    _, job = stage1
    out = tmp_path / "diverged"
    assert main([str(job), f"output_dir={out}", "optim.lr=1e30", "optim.max_steps=6", "optim.max_grad_norm=null",
                 "checkpoint.every=0"]) == 2
    err = one_error(capsys)
    assert "Training stopped" in err and "step" in err
    assert not (out / "export").exists() and not (out / "checkpoints").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]   # valid JSON only
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)


def test_check_finite_names_the_step_and_the_last_finite_values():
    check_finite({"loss": 1.0, "grad_norm": 2.0}, 1, None)
    with pytest.raises(NonFiniteError, match=r"step 4: loss = nan; the last finite values were at step 3: loss = 0\.5"):
        check_finite({"loss": float("nan"), "grad_norm": 1.0}, 4, (3, {"loss": 0.5, "grad_norm": 1.0}))
    with pytest.raises(NonFiniteError, match="grad_norm = inf"):
        check_finite({"loss": 1.0, "grad_norm": float("inf")}, 2, None)
    check_finite({"loss": 1.0, "grad_norm": float("inf")}, 2, None, skip_grad_norm=True)   # fp16 loss scaling


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ('{"text": ""}\n{"text": "   "}\n', "is empty: nothing to train on"),
])
def test_empty_text_is_refused(stage1, tmp_path, capsys, content, message):
    _, job = stage1
    docs = tmp_path / "empty.jsonl"
    docs.write_text(content)
    assert main([str(job), f"output_dir={tmp_path / 'out'}", f"data.files=[{docs}]"]) == 2
    err = one_error(capsys)
    assert message in err and str(docs) in err
    assert not (tmp_path / "out" / "export").exists()


def test_a_missing_local_model_path_is_named_at_once(stage1, tmp_path, capsys):
    _, job = stage1
    start = time.perf_counter()
    assert main([str(job), f"output_dir={tmp_path / 'out'}", "model.llm.name_or_path=/no/such/model"]) == 2
    assert "model path /no/such/model does not exist" in one_error(capsys)
    assert time.perf_counter() - start < 20 and not (tmp_path / "out").exists()


def test_an_unreachable_tracking_server_fails_in_seconds_naming_it(stage1, tmp_path, capsys):
    _, job = stage1
    start = time.perf_counter()
    assert main([str(job), f"output_dir={tmp_path / 'out'}", "tracking.uri=http://127.0.0.1:9"]) == 2
    assert "http://127.0.0.1:9 cannot be reached" in one_error(capsys)
    assert time.perf_counter() - start < 20 and not (tmp_path / "out").exists()


def test_a_buffered_run_trains_without_its_server_and_uploads_later(stage1, tmp_path, capsys):
    import mlflow

    from trainer.tracking import main as tracking_cli

    _, job = stage1
    out = tmp_path / "offline"
    out.mkdir()
    (out / ".mlflow_run_id").write_text("0123456789abcdef\n")   # an earlier attempt's run: not contacted
    assert main([str(job), f"output_dir={out}", "tracking.uri=http://127.0.0.1:9",
                 "tracking.if_unreachable=buffer", "checkpoint.every=0"]) == 0
    assert (out / "export" / "trainable.safetensors").is_file() and (out / "mlflow_buffer.jsonl").is_file()
    store = f"sqlite:///{tmp_path / 'later.db'}"
    assert tracking_cli(["upload", str(out), "--uri", store]) == 0
    client = mlflow.MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("errors").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["optim.lr"] == "0.001"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert "export" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert tracking_cli(["upload", str(out), "--uri", store]) == 2     # uploaded once only
    assert "uploaded already" in capsys.readouterr().err


# --- task and parallel files -----------------------------------------------------------------------

@pytest.mark.parametrize("lines, message", [
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1\n', ":2: not valid JSON"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": "positive"}\n', ":2: label 'positive'"),
    ('{"text": "a"}\n', ":1: no column 'label'"),
    ("", "no examples"),
])
def test_task_file_errors_name_the_file_and_line(tmp_path, lines, message):
    from trainer.data.task import read_task_file
    from trainer.errors import DataError

    path = tmp_path / "eng_Latn.jsonl"
    path.write_text(lines)
    with pytest.raises(DataError) as err:
        read_task_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_data_names_the_command_that_makes_it(tmp_path):
    from trainer.data.files import expand_files
    from trainer.data.shards import load_manifest
    from trainer.errors import DataError, MissingDataError

    with pytest.raises(MissingDataError, match=r"data.files: '.*nope\*.jsonl' matches no file .*data_prep.demo_data"):
        expand_files([str(tmp_path / "nope*.jsonl")])
    with pytest.raises(DataError, match="data_prep.demo_data.*data_prep.fineweb_shards"):
        load_manifest(tmp_path / "shards")


def test_parallel_file_errors_name_the_file_and_line(tmp_path):
    from trainer.data.parallel import read_pair_file
    from trainer.errors import DataError

    path = tmp_path / "eng_Latn-deu_Latn.jsonl"
    path.write_text('{"eng_Latn": "a", "deu_Latn": "b"}\nnot json\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        read_pair_file(path, "eng_Latn")
    path.write_text("")
    with pytest.raises(DataError, match="no sentence pairs"):
        read_pair_file(path, "eng_Latn")


# --- sweeps ----------------------------------------------------------------------------------------

def test_an_empty_inline_subset_is_refused():
    with pytest.raises(ConfigError, match=r"subsets.inline.mine: an empty language list"):
        validate({"name": "s", "job": "job.yaml", "subsets": {"inline": {"mine": [], "ok": ["deu_Latn"]}}},
                 SweepConfig, source="sweep")


def test_a_selection_that_yields_no_subset_is_refused(tmp_path):
    from trainer.sweep import SubsetAxis, subset_axis_entries

    axis = SubsetAxis(select={"heuristics": ["featural_max"], "sizes": [5], "pool": ["deu_Latn", "fra_Latn"]})
    with pytest.raises(ConfigError, match="yields no subset"):
        subset_axis_entries(axis, tmp_path)


def test_data_generators_do_not_write_into_a_non_empty_folder(tmp_path, capsys):
    from data_prep import make_parallel_data, make_task_data

    out = tmp_path / "mine"
    out.mkdir()
    (out / "eng_Latn-deu_Latn.jsonl").write_text("precious\n")
    before = snapshot(out)
    for cli, args in ((make_parallel_data, ["--n", "3", "--languages", "deu_Latn"]),
                      (make_task_data, ["--train", "3", "--eval", "3", "--languages", "deu_Latn"])):
        with pytest.raises(SystemExit) as stop:
            cli.main(["--out", str(out), *args])
        assert stop.value.code == 2 and "--overwrite" in one_error(capsys)
    assert snapshot(out) == before
    make_parallel_data.main(["--out", str(out), "--overwrite", "--n", "3", "--languages", "deu_Latn"])
    assert (out / "eng_Latn-deu_Latn.jsonl").read_text() != "precious\n"


def _exit_status(cli, args: list[str]) -> int:
    """A data CLI's exit status: `main` returns it or calls sys.exit with it."""
    try:
        status = cli.main(args)
    except SystemExit as stop:
        return stop.code
    return status if isinstance(status, int) else 0


@pytest.mark.parametrize("module, args, expected", [
    ("make_task_data", ["--train", "-5", "--languages", "deu_Latn"],
     "--train -5: the number of training examples must be a whole number >= 1"),
    ("make_task_data", ["--eval", "0", "--languages", "deu_Latn"], "--eval 0: the number of evaluation examples"),
    ("make_task_data", ["--languages", "deu_Latn", "xx_Yyyy"],
     "--languages: unknown language code 'xx_Yyyy'; closest valid codes:"),
    ("make_task_data", ["--languages", "deu_Latn", "--source", "qqq"], "--source: unknown language code 'qqq'"),
    ("make_parallel_data", ["--n", "-5", "--languages", "deu_Latn"],
     "--n -5: the number of pairs per language must be a whole number >= 1"),
    ("make_parallel_data", ["--languages", "deu_Latn:-3"],
     "--languages: 'deu_Latn:-3': the number of pairs after ':' must be a whole number >= 1"),
    ("make_parallel_data", ["--languages", "deu_Latn:0"], "'deu_Latn:0': the number of pairs after ':'"),
    ("make_parallel_data", ["--languages", "zz_Qqqq"], "--languages: unknown language code 'zz_Qqqq'"),
    ("make_parallel_data", ["--languages", "eng_Latn"], "--languages: eng_Latn is the English side of every pair"),
    ("demo_text", ["--docs", "-1"], "--docs -1: the number of documents per input file must be a whole number >= 1"),
    ("demo_text", ["--files", "0"], "--files 0: the number of input parquet files"),
    ("demo_text", ["--docs-per-shard", "0"], "--docs-per-shard 0: the number of documents per shard"),
    ("select_languages", ["--languages", "deu_Latn", "fra_Latn", "jpn_Jpan", "--sizes", "2", "5"],
     "--sizes 5: the pool (--languages) has 3 languages to choose from (eng_Latn, the anchor, not counted): "
     "sizes must be 1 to 3"),
    ("select_languages", ["--languages", "deu_Latn", "fra_Latn", "--sizes", "0"], "--sizes 0: the pool"),
    ("select_languages", ["--languages", "deu_Latn", "xx", "--sizes", "1"], "--languages: unknown language code 'xx'"),
    ("select_languages", ["--languages", "deu_Latn", "fra_Latn", "jpn_Jpan", "--sizes", "3", "--heuristics",
                          "unseen", "--no-full-pools"], "no subset to write (unseen n=3: only 1 candidate languages)"),
    ("translate", ["--direction", "test", "--benchmark", "topic", "--split", "test", "--languages", "deu_Latn",
                   "--model", "tiny:nllb", "--max-examples", "-2"],
     "--max-examples -2: the number of examples translated per input must be a whole number >= 1"),
    ("translate", ["--direction", "test", "--benchmark", "topic", "--split", "test", "--languages", "deu_Latn",
                   "--model", "tiny:nllb", "--ray-actors", "0"], "--ray-actors 0: the number of Ray actors"),
    ("teacher_cache", [str(ROOT / "jobs" / "demo_stage1.yaml"), "--batch-size", "0"],
     "--batch-size 0: the number of chunks per teacher forward must be a whole number >= 1"),
    ("teacher_cache", [str(ROOT / "jobs" / "demo_stage1.yaml"), "teacher_cache=TC", "--shards", "5:2"],
     "--shards: '5:2' selects no shard: A:B needs 0 <= A < B"),
])
def test_data_clis_refuse_impossible_counts_and_unknown_languages_in_one_line(module, args, expected, tmp_path,
                                                                              capsys):
    import importlib

    cli = importlib.import_module(f"data_prep.{module}")
    out = tmp_path / "out"
    args = [a.replace("TC", str(out)) for a in args]
    if module in ("make_task_data", "make_parallel_data", "demo_text", "select_languages", "translate"):
        args = ["--out", str(out / "subsets.yaml" if module == "select_languages" else out), *args]
    assert _exit_status(cli, args) == 2
    assert expected in one_error(capsys)
    assert not out.exists()                                   # refused before anything is written


def test_duplicate_keys_in_job_and_sweep_files_are_refused_naming_the_key_and_both_lines(tmp_path, capsys):
    from trainer.config import apply_override, safe_load_unique
    from trainer.sweep import SubsetAxis, load_sweep, subset_axis_entries

    job = tmp_path / "job.yaml"
    job.write_text("recipe: stage1\n"                # line 1
                   "optim:\n"                        # line 2: the first optim section
                   "  lr: 1.0e-3\n"
                   "  max_steps: 5\n"
                   "model:\n"
                   "  lora: {r: 4}\n"
                   "optim:\n"                        # line 7: a second optim section
                   "  lr: 3.0e-3\n"                  # line 8
                   "  lr: 2.0e-3\n")                 # line 9: lr twice in one section
    start = time.perf_counter()
    assert main([str(job), f"output_dir={tmp_path / 'run'}"]) == 2
    err = one_error(capsys)
    assert "duplicate key 'optim' at line 7 (first at line 2)" in err
    assert "duplicate key 'optim.lr' at line 9 (first at line 8)" in err
    assert str(job) in err and time.perf_counter() - start < 5 and not (tmp_path / "run").exists()

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\njob: job.yaml\nsearch:\n  optim.lr: [1.0e-3]\nname: t\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'name' at line 5 \(first at line 1\)"):
        load_sweep(sweep, prepare=False)
    (tmp_path / "subsets.yaml").write_text("subsets:\n  mine: {languages: [deu_Latn]}\n"
                                           "  mine: {languages: [fra_Latn]}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'subsets.mine' at line 3 \(first at line 2\)"):
        subset_axis_entries(SubsetAxis(file="subsets.yaml"), tmp_path)
    with pytest.raises(ConfigError, match=r"duplicate key 'lr'"):
        apply_override({}, "optim={lr: 1, lr: 2}")
    # without duplicates, exactly what yaml.safe_load reads: merge keys (`<<`) may override, every shipped file loads
    merged = "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n"
    assert safe_load_unique(merged, "m") == yaml.safe_load(merged) == {"base": {"x": 1, "y": 2}, "d": {"x": 3, "y": 2}}
    for path in sorted((ROOT / "jobs").rglob("*.yaml")):
        assert safe_load_unique(path.read_text(), str(path)) == yaml.safe_load(path.read_text()), path


# --- merge ----------------------------------------------------------------------------------------

def _export(folder: Path, name_or_path: str = "tiny:llama", r: int = 2) -> Path:
    folder.mkdir(parents=True)
    save_file({"base_model.model.layers.0.q_proj.lora_A.default.weight": torch.ones(r, 8)},
              str(folder / "trainable.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"recipe": "align", "model": {"llm": {"name_or_path": name_or_path}, "lora": {"r": r, "alpha": 2 * r}}}))
    return folder


def test_merge_never_writes_over_an_input_or_a_foreign_folder(tmp_path, capsys):
    task = _export(tmp_path / "task_run" / "export")
    (tmp_path / "task_run" / "metrics.jsonl").write_text("{}\n")
    align = _export(tmp_path / "align_run" / "export")
    before = snapshot(tmp_path)
    for out in (tmp_path / "task_run", task, task / "sub"):          # the input's run dir, the input, inside it
        assert merge_cli.main([str(task), str(align), "--weight", "0.5", "--out", str(out), "--overwrite"]) == 1
        assert "the input" in one_error(capsys)
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert merge_cli.main([str(task), str(align), "--weight", "0.5", "--out", str(unrelated)]) == 1
    assert "--overwrite" in one_error(capsys)
    assert snapshot(tmp_path) == before
    merged = tmp_path / "merged"
    assert merge_cli.main([str(task), str(align), "--weight", "0.5", "--out", str(merged), "--quiet"]) == 0
    assert merge_cli.main([str(task), str(align), "--weight", "0.7", "--out", str(merged), "--quiet"]) == 0  # its own
    assert merge_cli.main([str(task), str(align), "--weight", "0.5", "--out", str(unrelated), "--quiet",
                           "--overwrite"]) == 0
    assert not (unrelated / "keep.txt").exists()
    capsys.readouterr()


def test_merge_refuses_adapters_of_different_base_models(tmp_path, capsys):
    task = _export(tmp_path / "task", "meta-llama/Meta-Llama-3-8B")
    align = _export(tmp_path / "align", "Qwen/Qwen2.5-7B")
    assert merge_cli.main([str(task), str(align), "--out", str(tmp_path / "m")]) == 1
    assert "model.llm.name_or_path: 'meta-llama/Meta-Llama-3-8B' (task) vs 'Qwen/Qwen2.5-7B'" in one_error(capsys)
    assert not (tmp_path / "m").exists()


# --- checkpoints and files ---------------------------------------------------------------------------

def _fake_checkpoint(root: Path, step: int) -> Path:
    ckpt = root / f"step-{step:08d}"
    (ckpt / "ds").mkdir(parents=True)
    (ckpt / "ds" / "model.pt").write_bytes(os.urandom(256))
    (ckpt / rank_file(0)).write_bytes(b"rank state")
    (ckpt / TRAINER_STATE).write_text(json.dumps({"step": step, "world_size": 1}))
    write_manifest(ckpt)
    return ckpt


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    older, newer = _fake_checkpoint(tmp_path, 2), _fake_checkpoint(tmp_path, 4)
    assert "sha256" in json.loads((newer / MANIFEST).read_text())["files"]["ds/model.pt"]
    assert find_latest_complete(tmp_path) == newer
    data = bytearray((newer / "ds" / "model.pt").read_bytes())
    data[10] ^= 0xFF                                                   # same size, different bytes
    (newer / "ds" / "model.pt").write_bytes(bytes(data))
    assert find_latest_complete(tmp_path) == older
    assert "ds/model.pt does not match its sha256" in caplog.text and str(newer) in caplog.text


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "table.csv", "a,b\n")
        folder = temp_dir_beside(tmp_path / "export")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_two_processes_cannot_write_one_run_directory(stage1, tmp_path, capsys):
    """A second writer (two runs started without a launcher, or a run still going) is refused at once."""
    import fcntl

    _, job = stage1
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a+") as holder:                 # another process's run holds the directory
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("pid 12345 on elsewhere\n")
        holder.flush()
        assert main([str(job), f"output_dir={out}"]) == 2
    err = one_error(capsys)
    assert "being written by pid 12345 on elsewhere" in err and "torchrun, deepspeed, srun" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]   # nothing else written
    assert main([str(job), f"output_dir={out}", "optim.max_steps=1"]) == 0   # free again: it runs


def test_srun_variables_make_a_process_group(monkeypatch):
    from trainer.distributed import first_host, from_slurm

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert from_slurm()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "8", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(15000 + 4242)
    assert not from_slurm()                                   # launcher variables set: left alone
    assert first_host("a1,a2") == "a1" and first_host("n[10-12,15],m3") == "n10"
