"""MT-LLM stage 2 (M1): the teacher cache stays row-aligned by example id; distillation lowers the MSE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from data_prep.make_task_data import write_task_data
from trainer.config import load_job
from trainer.data.batches import MicroBatches
from trainer.data.task import TaskExampleCollator
from trainer.models.loading import load_llm_tokenizer
from trainer.models.task_model import build_task_model
from trainer.models.teacher_cache import TeacherCache, check_fingerprint
from trainer.models.weights import load_trainable
from trainer.recipes import tasks
from trainer.run import run_job
from trainer.tiny.text import english_documents, write_task_files

TARGETS = ["deu_Latn"]


def _write(raw: dict, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return load_job(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_cache):
    """A stage-1 export, a fine-tuned teacher (FT) and the stage-2 job dict that uses both."""
    root = tmp_path_factory.mktemp("stage2")
    write_task_data(root / "task", TARGETS, n_train=96, n_eval=32, seed=0)
    write_task_files(root / "dev", ["eng_Latn", *TARGETS], 32, seed=2)
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(64, seed=0)))
    tracking = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "stage2-test"}
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    run_job(_write({"recipe": "stage1", "output_dir": str(root / "s1"),
                    "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                              "lora": lora, "cache_dir": tiny_cache},
                    "data": {"files": [str(docs)], "max_length": 32}, "optim": {"max_steps": 4, "micro_batch_size": 8},
                    "checkpoint": {"every": 0}, "tracking": tracking}, root / "s1.yaml"))
    task = {"benchmark": "topic", "target_languages": TARGETS, "max_length": 40, "eval_every": 0.5,
            "files": {"train": str(root / "task/train/{language}.jsonl"), "validation": str(root / "dev/{language}.jsonl"),
                      "test": str(root / "task/eval/{language}.jsonl")}}
    run_job(_write({"recipe": "finetune", "output_dir": str(root / "ft"),
                    "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                              "cache_dir": tiny_cache},
                    "task": task, "optim": {"lr": 3e-3, "max_steps": 12, "micro_batch_size": 16},
                    "checkpoint": {"every": 0}, "tracking": tracking}, root / "ft.yaml"))
    stage2 = {"recipe": "stage2", "output_dir": str(root / "s2"),
              "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                        "lora": lora, "cache_dir": tiny_cache, "stage1_export": str(root / "s1" / "export"),
                        "task_export": str(root / "ft" / "export")},
              "task": task, "optim": {"lr": 3e-3, "max_steps": 20, "micro_batch_size": 16},
              "checkpoint": {"every": 0}, "tracking": tracking}
    return root, stage2


def test_cached_vectors_match_a_fresh_computation_under_shuffling_two_ranks_and_resume(exports):
    root, raw = exports
    job = _write(raw, root / "s2.yaml")
    train = tasks.examples(job, "topic", "eng_Latn", "train")
    cache = tasks.build_teacher_cache(job, train, device="cpu")
    cache.save(root / "cache")
    cache = TeacherCache.load(root / "cache")
    assert cache.ids == sorted(e.id for e in train) and cache.vectors.shape[0] == len(train)
    teacher_cfg = tasks.teacher_config(job)
    teacher = build_task_model(teacher_cfg, "classification", 3)
    load_trainable(teacher, tasks.teacher_dir(job))   # the S-DEV snapshot by default
    teacher.eval()
    collate = TaskExampleCollator(load_llm_tokenizer(teacher_cfg.llm, teacher_cfg.cache_dir), 40)
    by_id = {e.id: e for e in train}
    checked = 0
    for rank in (0, 1):                                      # two ranks, each with its shuffled share
        batches = MicroBatches(train, 8, collate, seed=3, rank=rank, world_size=2)
        for _ in range(3):
            next(batches)
        resumed = MicroBatches(train, 8, collate, seed=3, rank=rank, world_size=2)
        resumed.load_state_dict(batches.state_dict())     # resume where the first loader stopped
        for _ in range(4):
            ids = next(resumed)["ids"]
            with torch.no_grad():                          # a fresh computation for exactly these examples
                fresh = teacher(**{k: v for k, v in collate([by_id[i] for i in ids]).items()}, mode="pooled").pooled
            torch.testing.assert_close(cache.lookup(ids), fresh, rtol=1e-4, atol=1e-5)
            checked += len(ids)
    assert checked == 2 * 4 * 8
    with pytest.raises(ValueError, match="no vector for example 'topic/eng_Latn/train/nope'"):
        cache.lookup(["topic/eng_Latn/train/nope"])


def test_stage2_lowers_the_mse_to_the_teacher_and_refuses_a_stale_cache(exports):
    root, raw = exports
    summary = run_job(_write(raw, root / "s2run.yaml"))
    rows = [json.loads(line) for line in (root / "s2" / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert {"test_sdev_eng_Latn", "test_tdev_deu_Latn", "target_mean_sdev"} <= summary["metrics"].keys()
    cache = TeacherCache.load(root / "s2" / "teacher_cache")            # built by the run, reusable
    changed = {**cache.fingerprint, "task_export": "0" * 64}
    with pytest.raises(ValueError, match="made for another teacher or data"):
        check_fingerprint(cache, changed, root / "s2" / "teacher_cache")
