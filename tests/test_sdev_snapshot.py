"""The fine-tuning run's S-DEV snapshot (#28 item 2): exported beside the final export, equal to the weights at the
best source-dev step, and the teacher stage 2 starts from by default (recorded in the log, MLflow and its config)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from data_prep.make_task_data import write_task_data
from trainer.config import ConfigError, load_job
from trainer.models.meaning import SDEV_DIR, read_snapshot, teacher_export
from trainer.models.task_model import build_stage2_model
from trainer.models.weights import save_trainable
from trainer.recipes import tasks
from trainer.run import run_job
from trainer.tiny.text import english_documents, write_task_files

TARGETS = ["deu_Latn"]


def _write(raw: dict, path: Path):
    path.write_text(yaml.safe_dump(raw))
    return load_job(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cache):
    """A finetune whose source dev score peaks before the end (the English dev labels are rotated, so learning the
    task lowers it), the same run stopped at its S-DEV step, and a stage-1 export for stage 2."""
    root = tmp_path_factory.mktemp("sdev")
    write_task_data(root / "task", TARGETS, n_train=96, n_eval=16, seed=0)
    write_task_files(root / "dev", ["eng_Latn", *TARGETS], 24, seed=2)
    english = root / "dev" / "eng_Latn.jsonl"
    rows = [json.loads(line) for line in english.read_text().splitlines()]
    english.write_text("".join(json.dumps({**row, "label": (row["label"] + 1) % 3}) + "\n" for row in rows))
    tracking = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "sdev-test"}
    task = {"benchmark": "topic", "target_languages": TARGETS, "max_length": 40, "eval_every": 0.125,
            "files": {"train": str(root / "task/train/{language}.jsonl"), "validation": str(root / "dev/{language}.jsonl"),
                      "test": str(root / "task/eval/{language}.jsonl")}}
    # inverse_sqrt without warm-up: the learning rate of step s does not depend on max_steps, so a run stopped
    # at step k has exactly the weights the longer run had at step k
    ft = {"recipe": "finetune", "output_dir": str(root / "ft"), "seed": 0,
          "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                    "cache_dir": tiny_cache},
          "task": task, "optim": {"lr": 3e-3, "max_steps": 16, "micro_batch_size": 16, "warmup_steps": 0,
                                  "schedule": "inverse_sqrt"},
          "checkpoint": {"every": 0}, "tracking": tracking}
    summary = run_job(_write(ft, root / "ft.yaml"))
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(16, seed=0)))
    s1 = {"recipe": "stage1", "output_dir": str(root / "s1"),
          "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"}, "lora": lora,
                    "cache_dir": tiny_cache},
          "data": {"files": [str(docs)], "max_length": 32},
          "optim": {"max_steps": 1, "micro_batch_size": 8}, "checkpoint": {"every": 0}, "tracking": tracking}
    run_job(_write(s1, root / "s1.yaml"))
    stage2 = {"recipe": "stage2", "output_dir": str(root / "s2"),
              "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"}, "lora": lora,
                        "cache_dir": tiny_cache, "stage1_export": str(root / "s1" / "export"),
                        "task_export": str(root / "ft" / "export")},
              "task": {**task, "eval_every": 0, "max_eval_examples": 8},
              "optim": {"lr": 3e-3, "max_steps": 2, "micro_batch_size": 16},
              "checkpoint": {"every": 0}, "tracking": tracking}
    return root, ft, summary, stage2


def test_the_sdev_snapshot_holds_the_weights_of_the_best_source_dev_step(runs):
    root, ft, summary, _ = runs
    sdev = root / "ft" / SDEV_DIR
    note = read_snapshot(sdev)
    step = summary["metrics"]["s_dev_step"]
    assert note["snapshot"] == "sdev" and note["step"] == step < 16, (note, summary["metrics"])
    history = [json.loads(line) for line in (root / "ft" / "eval" / "history.jsonl").read_text().splitlines()]
    best = max(row["dev_eng_Latn"] for row in history)                    # the best source dev score ...
    assert note["dev_eng_Latn"] == best == next(r["dev_eng_Latn"] for r in history if r["step"] == step)
    assert all(row["dev_eng_Latn"] < best for row in history if row["step"] < step)   # ... first reached there
    # the same layout as the final export: weights, config, meaning, the PEFT adapter folder
    for name in ("trainable.safetensors", "config.yaml", "meaning.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (sdev / name).is_file() and (root / "ft" / "export" / name).is_file(), name
    # independent: the same run stopped at the S-DEV step exports exactly these weights
    short = {**ft, "output_dir": str(root / "short"), "optim": {**ft["optim"], "max_steps": step}}
    run_job(_write(short, root / "short.yaml"))
    expected = load_file(str(root / "short" / "export" / "trainable.safetensors"))
    got = load_file(str(sdev / "trainable.safetensors"))
    final = load_file(str(root / "ft" / "export" / "trainable.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert any(not torch.allclose(final[n], got[n]) for n in got)       # and not the final weights
    adapter = load_file(str(sdev / "adapter" / "adapter_model.safetensors"))   # the PEFT copy of the same LoRA
    norms = lambda state: sorted(round(float(t.norm()), 5) for t in state.values())  # noqa: E731
    assert norms(adapter) == norms({n: t for n, t in got.items() if "lora_" in n})


def test_stage2_starts_from_the_sdev_snapshot_and_records_it(runs, caplog):
    root, _, _, stage2 = runs
    sdev = root / "ft" / SDEV_DIR
    job = _write(stage2, root / "s2.yaml")
    assert job.model.teacher_snapshot == "sdev" and tasks.teacher_dir(job) == sdev
    model = build_stage2_model(job.model, "classification", 3)
    head = load_file(str(sdev / "trainable.safetensors"))
    torch.testing.assert_close(model.head.weight, head["head.weight"])
    with caplog.at_level(logging.INFO, logger="trainer.recipes.stage2"):
        summary = run_job(job)
    assert any(f"from the sdev snapshot {sdev}" in m for m in caplog.messages), caplog.messages
    exported = yaml.safe_load((Path(summary["export_dir"]) / "config.yaml").read_text())
    assert exported["model"]["task_export"] == str(sdev) and exported["model"]["teacher_snapshot"] == "sdev"
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=stage2["tracking"]["uri"]).get_run(summary["run_id"])
    assert run.data.tags["teacher_snapshot"] == "sdev" and run.data.tags["teacher_export"] == str(sdev)
    assert run.data.params["model.teacher_snapshot"] == "sdev"
    # final: the run's final export, head and all
    final_job = _write({**stage2, "model": {**stage2["model"], "teacher_snapshot": "final"}}, root / "s2f.yaml")
    assert tasks.teacher_dir(final_job) == root / "ft" / "export"
    final_head = load_file(str(root / "ft" / "export" / "trainable.safetensors"))["head.weight"]
    torch.testing.assert_close(build_stage2_model(final_job.model, "classification", 3).head.weight, final_head)


def test_a_missing_or_contradictory_snapshot_fails_naming_the_key_and_both_values(tmp_path):
    old = tmp_path / "old" / "export"      # a finetune export written before snapshots existed
    save_trainable({"head.weight": torch.ones(3, 2)}, old, yaml.safe_dump({"recipe": "finetune", "model": {}}))
    with pytest.raises(ConfigError, match=r"model.teacher_snapshot: 'sdev', but model.task_export .* has no S-DEV"):
        teacher_export(old, "sdev")
    assert teacher_export(old, "final") == old
    snap = tmp_path / "new" / SDEV_DIR
    save_trainable({"head.weight": torch.ones(3, 2)}, snap, "recipe: finetune\n")
    (snap / "snapshot.json").write_text(json.dumps({"snapshot": "sdev", "step": 3}))
    assert teacher_export(snap, "sdev") == snap and teacher_export(tmp_path / "new", "sdev") == snap
    with pytest.raises(ConfigError, match=r"model.teacher_snapshot: 'final', but model.task_export .* is the S-DEV"):
        teacher_export(snap, "final")
