"""The benchmark scripts run (on CPU, tiny shapes), so they cannot rot between the GPU runs they exist for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stage1_gpu_tiny_measures_rows_through_the_projects_step_and_skips_what_it_cannot_run(tmp_path, tiny_cache,
                                                                                                capsys):
    from benchmarks.stage1_gpu import main

    rows = main(["--tiny", "--rows", "baseline", "zero3", "flash_attention_2", "teacher_cache", "study_like",
                 "--cache-dir", tiny_cache,
                 "--json", str(tmp_path / "rows.json")])
    by_name = {r["row"]: r for r in rows}
    base, zero3, flash = by_name["baseline"], by_name["zero3"], by_name["flash_attention_2"]
    assert base["llm_tokens_per_second_per_gpu"] > 0 and base["vs_baseline"] == 1.0
    assert zero3["vs_baseline"] == pytest.approx(zero3["llm_tokens_per_second_per_gpu"]
                                                 / base["llm_tokens_per_second_per_gpu"])
    assert zero3["loss"] == pytest.approx(base["loss"], rel=1e-5)     # the same work under either ZeRO stage
    assert "needs CUDA" in flash["skipped"]
    assert by_name["teacher_cache"]["llm_tokens_per_second_per_gpu"] > 0    # the step with targets in the batch
    assert "need CUDA" in by_name["study_like"]["skipped"]
    out = capsys.readouterr().out
    assert "tiny:llama + tiny:nllb shapes" in out and "| flash_attention_2 |" in out and "skipped:" in out
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows


def test_stage1_gpu_without_cuda_or_tiny_says_every_row_is_skipped(capsys):
    from benchmarks.stage1_gpu import ROWS, main

    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA machine measures the rows")
    rows = main(["--rows", "baseline", "micro_batch_32"])
    assert [r["row"] for r in rows] == ["baseline", "micro_batch_32"] and len(ROWS) == 10
    assert all(r["skipped"].startswith("no CUDA") for r in rows)


def run_module(*args: str) -> subprocess.CompletedProcess:
    from benchmarks.stage1_gpu import LAUNCHER_VARIABLES

    env = {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES},   # this process's world
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_stage1_gpu_cli_runs_each_row_in_its_own_process(tmp_path, tiny_cache):
    """The GPU path: each row a fresh process that writes its result (here on CPU with --tiny --isolate)."""
    run_module("benchmarks.stage1_gpu", "--tiny", "--isolate", "--rows", "baseline",
               "--cache-dir", tiny_cache, "--json", str(tmp_path / "rows.json"))
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["baseline"]
    assert all(r.get("llm_tokens_per_second_per_gpu", 0) > 0 for r in rows), rows


@pytest.mark.slow
def test_loop_overhead_runs_both_loops_on_the_same_work(tmp_path, tiny_cache):
    run_module("benchmarks.loop_overhead", "--steps", "3", "--warmup", "1", "--hidden", "64", "--layers", "2",
               "--cache-dir", tiny_cache, "--work", str(tmp_path / "work"), "--json", str(tmp_path / "o.json"))
    result = json.loads((tmp_path / "o.json").read_text())
    assert result["ratio"] > 0 and [r["kind"] for r in result["runs"]] == ["bare", "project", "bare"]
    assert result["max_relative_loss_difference"] < 1e-4     # the engine and the bare loop train the same way


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_the_8b_step_fits_micro_batch_32_on_one_gpu(tmp_path):
    """Issue 16's memory target at the real shapes: micro-batch 32 x 512 with checkpointing, ZeRO-2, bf16."""
    run_module("benchmarks.stage1_gpu", "--rows", "baseline", "micro_batch_32", "--json", str(tmp_path / "r.json"))
    rows = {r["row"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert "skipped" not in rows["baseline"], rows
    assert "skipped" not in rows["micro_batch_32"] and rows["micro_batch_32"]["peak_memory_gib"] < 80, rows
