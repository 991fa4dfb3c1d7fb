"""Nothing lost, nothing silently wrong in a run directory (issue #32, cases 1 and 2).

A run directory knows what trained it: every checkpoint keeps the job as written and its training hash,
the export records the hash; a resume compares with the checkpoint's own configuration (whatever
config.yaml says), and a start that would replace another configuration's run refuses unless
`--overwrite`, naming what would be lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainer.checkpoint import read_trainer_state
from trainer.run import export_hash, training_config, training_hash
from trainer.tiny.text import english_documents
from trainer.train import main

from test_errors import one_error   # one error line, no traceback: the shared check


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def job_file(tmp_path_factory, tiny_cache):
    tmp = tmp_path_factory.mktemp("rundir")
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(40, seed=1)))
    job = {"recipe": "stage1", "seed": 0, "output_dir": str(tmp / "run"),
           "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "cache_dir": tiny_cache},
           "data": {"files": [str(docs)], "max_length": 32},
           "optim": {"lr": 3e-3, "max_steps": 4, "warmup_steps": 0, "micro_batch_size": 4},
           "checkpoint": {"every": 2},
           "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "rundir"}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_the_hash_leaves_out_what_does_not_change_the_training():
    config = {"seed": 0, "output_dir": "a", "prepare": ["x"], "optim": {"lr": 1e-3, "max_steps": 4, "grad_accum": 1},
              "checkpoint": {"every": 2, "resume": "auto", "portable": True}, "tracking": {"uri": "u", "log_every": 5},
              "engine": {"timeout_minutes": 30, "precision": "auto"}}
    moved = {**config, "output_dir": "b", "prepare": [], "checkpoint": {"every": 0, "resume": "none", "portable": False},
             "tracking": {"uri": "v", "log_every": 1}, "engine": {"timeout_minutes": 5, "precision": "auto"}}
    assert training_hash(config) == training_hash(moved)
    assert "output_dir" not in training_config(config) and training_config(config)["tracking"] == {}
    for key, value in (("optim", {**config["optim"], "lr": 2e-3}), ("optim", {**config["optim"], "max_steps": 8}),
                       ("optim", {**config["optim"], "grad_accum": 2}), ("seed", 1),
                       ("engine", {**config["engine"], "precision": "bf16"})):
        assert training_hash({**config, key: value}) != training_hash(config), key


def test_a_resume_compares_with_the_checkpoints_own_configuration(job_file, tmp_path, capsys):
    """#32 case 1: run A; a fresh start of B refused (it would replace A's export); config.yaml rewritten to say
    B; B resuming A's checkpoint refused all the same; B with --overwrite replaces A; B then extends its run."""
    out = tmp_path / "D"
    run = [str(job_file), f"output_dir={out}"]
    assert main(run) == 0                                                       # A: lr 3e-3, steps 2 and 4
    capsys.readouterr()
    a_state = read_trainer_state(out / "checkpoints" / "step-00000004")
    a_config = yaml.safe_load((out / "config.yaml").read_text())
    assert a_state["config"] == a_config and a_state["config_sha256"] == training_hash(a_config)
    assert export_hash(out / "export") == a_state["config_sha256"]             # the export knows what trained it
    assert yaml.safe_load((out / "export" / "config.yaml").read_text())["optim"]["lr"] == 3e-3
    run_id = (out / ".mlflow_run_id").read_text().strip()
    before = snapshot(out)

    # what the old refusal advised: a fresh start in the same folder -> refused, naming what would be lost
    assert main([*run, "optim.lr=1e-3", "checkpoint.resume=none", "optim.max_steps=2"]) == 2
    err = one_error(capsys)
    assert "--overwrite" in err and str(out / "export") in err and "metrics.jsonl" in err and run_id in err
    assert "step-00000004" in err
    assert snapshot(out) == before

    # config.yaml says lr 1e-3 (as a start that got as far as writing it would leave it): the checkpoint decides
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace("0.003", "0.001"))
    assert main([*run, "optim.lr=1e-3", "optim.max_steps=8"]) == 2
    err = one_error(capsys)
    assert "optim.lr: 0.003 -> 0.001" in err and "checkpoint" in err and "step-00000004" in err

    # asked for: A's checkpoints, export and metrics go, B trains from step 0
    assert main([*run, "optim.lr=1e-3", "checkpoint.resume=none", "optim.max_steps=2", "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-00000002"]
    b_hash = read_trainer_state(out / "checkpoints" / "step-00000002")["config_sha256"]
    assert export_hash(out / "export") == b_hash != a_state["config_sha256"]
    assert (out / ".mlflow_run_id").read_text().strip() != run_id
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    # B extended (a larger optim.max_steps resumes): from B's step 2, not A's step 4
    assert main([*run, "optim.lr=1e-3", "optim.max_steps=6"]) == 0
    assert "step-00000002" in capsys.readouterr().out                     # "(resumed from .../step-00000002)"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((out / "export" / "config.yaml").read_text())["optim"]["lr"] == 1e-3


def test_a_finished_run_without_checkpoints_is_not_replaced_by_another_configuration(job_file, tmp_path, capsys):
    """#32 case 2: `checkpoint.every=0` (the finetune and FLARE demos' default) leaves nothing to resume; a start
    with another configuration would replace the export: refused without --overwrite; the same one re-runs."""
    out = tmp_path / "E"
    run = [str(job_file), f"output_dir={out}", "checkpoint.every=0", "optim.max_steps=2"]
    assert main(run) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert main([*run, "optim.lr=1e-3", "model.lora.r=2"]) == 2
    err = one_error(capsys)
    assert str(out / "export") in err and "final_metrics.json" in err and "metrics.jsonl (2 steps)" in err
    assert "--overwrite" in err
    assert snapshot(out) == before
    # the same configuration again (harmless keys changed too) retrains and replaces it: nothing is lost
    assert main([*run, "tracking.log_every=1"]) == 0
    capsys.readouterr()
    assert main([*run, "optim.lr=1e-3", "model.lora.r=2", "--overwrite"]) == 0
    assert yaml.safe_load((out / "export" / "config.yaml").read_text())["model"]["lora"]["r"] == 2
