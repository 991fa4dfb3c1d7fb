"""Outgrowing one allocation: resume on another number of ranks (2 -> 1 -> 2, grad_accum adjusted) gives the
uninterrupted losses; the last leg starts its 2 ranks the way `srun` does (SLURM variables, no launcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alignment_helpers import ROOT, launch, ok, step_rows
from data_prep.make_task_data import write_task_data
from trainer.config import load_job
from trainer.run import run_job
from trainer.tiny.text import write_task_files


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resize")
    write_task_data(root / "task", ["deu_Latn"], n_train=200, n_eval=16, seed=0)
    write_task_files(root / "dev", ["eng_Latn", "deu_Latn"], 16, seed=2)
    return root


def job(root: Path, out: Path, cache: str, grad_accum: int, max_steps: int = 12) -> dict:
    return {"recipe": "finetune", "seed": 3, "output_dir": str(out),
            "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
                      "cache_dir": cache},
            "task": {"benchmark": "topic", "target_languages": ["deu_Latn"], "max_length": 32, "eval_every": 0,
                     "eval_batch_size": 8,
                     "files": {"train": str(root / "task/train/{language}.jsonl"),
                               "validation": str(root / "dev/{language}.jsonl"),
                               "test": str(root / "task/eval/{language}.jsonl")}},
            "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": max_steps, "micro_batch_size": 4,
                      "grad_accum": grad_accum},
            "checkpoint": {"every": 4, "keep_last": 5},
            "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "resize-test"}}


def write(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_two_ranks_to_one_and_back_give_the_uninterrupted_losses(data, tmp_path, tiny_cache):
    ok(launch(write(job(data, tmp_path / "ref", tiny_cache, grad_accum=2), tmp_path / "ref.yaml"), 1))
    reference = [row["loss"] for row in step_rows(tmp_path / "ref")]

    out = tmp_path / "moved"
    two = write(job(data, out, tiny_cache, grad_accum=1), tmp_path / "two.yaml")
    one = write(job(data, out, tiny_cache, grad_accum=2), tmp_path / "one.yaml")
    assert launch(two, 2, fault="after_step:6").returncode != 0           # 2 ranks, killed after step 6
    killed = launch(one, 1, fault="after_step:10")                         # resumed at 4 on 1 rank, killed again
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = srun(two, 2)                       # resumed at 8 on 2 ranks, started the way srun starts tasks
    assert "written by 1 ranks; resuming on 2" in resumed
    losses = [row["loss"] for row in step_rows(out)]
    assert len(losses) == len(reference) == 12
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=1e-5, atol=1e-7)
    ranks = sorted(p.name for p in (out / "checkpoints" / "step-00000012").glob("rank-*.pt"))
    assert ranks == ["rank-00000.pt", "rank-00001.pt"]        # the srun-style tasks formed one group of two
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["test_sdev_deu_Latn"] == pytest.approx(
        json.loads((tmp_path / "ref" / "final_metrics.json").read_text())["test_sdev_deu_Latn"])


def test_another_batch_shape_is_refused_naming_grad_accum(data, tmp_path, tiny_cache):
    out = tmp_path / "run"
    run_job(load_job(write(job(data, out, tiny_cache, grad_accum=1, max_steps=4), tmp_path / "a.yaml")))
    assert (out / "checkpoints" / "step-00000004" / "portable.pt").is_file()
    with pytest.raises(RuntimeError, match="resume with the same grad_accum"):
        run_job(load_job(write(job(data, out, tiny_cache, grad_accum=2, max_steps=8), tmp_path / "b.yaml")))


def srun(job_file: Path, ntasks: int) -> str:
    """Start `ntasks` processes the way `srun` does (SLURM variables set, no launcher); returns their stderr.

    They must form one process group by themselves (`trainer.distributed.from_slurm`)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TRAINER_FAULT")}
    tasks = [subprocess.Popen([sys.executable, "-m", "trainer.train", str(job_file)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**base, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(i),
                                   "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(i),
                                   "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_JOB_ID": str(os.getpid() % 9000 + 1000)})
             for i in range(ntasks)]
    outputs = [t.communicate(timeout=600) for t in tasks]
    assert [t.returncode for t in tasks] == [0] * ntasks, "".join(err[-3000:] for _, err in outputs)
    return "".join(out + err for out, err in outputs)
