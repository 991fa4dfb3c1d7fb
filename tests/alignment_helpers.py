"""Shared by tests/test_align.py and tests/test_realign.py: generated data, job files, launches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_prep.make_parallel_data import write_parallel_data
from data_prep.make_task_data import write_task_data
from trainer.config import load_job
from trainer.loop import FINAL_METRICS_FILE, METRICS_FILE
from trainer.run import run_job

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ["deu_Latn", "ell_Grek", "zho_Hans"]   # the realigned languages
UNSEEN = ["rus_Cyrl"]                           # evaluated, never aligned


def write_data(root: Path) -> Path:
    """Training pairs (seed 0), a 60-sentence multi-way retrieval set (seed 1), the task (seed 2)."""
    write_parallel_data(root / "pairs", [(lang, 600) for lang in SUBSET], seed=0)
    write_parallel_data(root / "multiway", [(lang, 60) for lang in SUBSET + UNSEEN], seed=1)
    write_task_data(root / "task", SUBSET + UNSEEN, n_train=600, n_eval=60, seed=2)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The generated data, once per test module (import this fixture into the module)."""
    return write_data(tmp_path_factory.mktemp("alignment-data"))


def job_dict(recipe: str, data: Path, out: Path, cache: str, model: str = "tiny:llama", finetune: str = "lora",
             max_steps: int = 60, lr: float = 3e-3, **alignment) -> dict:
    """A small align/realign job on the generated data; retrieval over English + SUBSET."""
    return {
        "recipe": recipe, "seed": 0, "output_dir": str(out),
        "model": {"llm": {"name_or_path": model}, "finetune": finetune,
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "cache_dir": cache},
        "parallel": {"files": [str(data / "pairs")], "languages": SUBSET},
        "task": {"train_files": [str(data / "task" / "train" / "eng_Latn.jsonl")],
                 "eval_dir": str(data / "task" / "eval"), "eval_languages": ["eng_Latn", *SUBSET, *UNSEEN],
                 "max_length": 40},
        "alignment": {"batch_size": 16, "max_length": 40, **alignment},
        "eval": {"retrieval": {"files": [str(data / "multiway")], "languages": SUBSET}, "retrieval_sentences": 60},
        "optim": {"lr": lr, "warmup_steps": 5, "max_steps": max_steps, "micro_batch_size": 16},
        "tracking": {"uri": f"sqlite:///{out.parent / 'mlflow.db'}", "experiment": f"{recipe}-test", "log_every": 10},
    }


def write_job(raw: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def run_inprocess(raw: dict) -> tuple[dict, dict]:
    """Run the job in this process (a world of one); returns (summary, final metrics)."""
    job = write_job(raw, Path(raw["output_dir"]).with_suffix(".yaml"))
    summary = run_job(load_job(job))
    return summary, final_metrics(Path(raw["output_dir"]))


def final_metrics(out: Path) -> dict:
    return json.loads((out / FINAL_METRICS_FILE).read_text())


def step_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def launch(job: Path, nproc: int, *overrides: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """`python -m trainer.train` (1 process) or torchrun with `nproc` CPU ranks; TRAINER_FAULT=`fault`."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "trainer.train", str(job), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "trainer.train", str(job), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("TRAINER_FAULT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)   # set by the in-process runs of this session (a world of one)
    if fault:
        env["TRAINER_FAULT"] = fault
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return result
