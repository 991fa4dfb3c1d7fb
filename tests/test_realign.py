"""The realign recipe (M3) end to end on tiny models and generated data.

Realignment must raise translation retrieval at the aligned layer above its value before
training (decoder LLM through LoRA, encoder with full fine-tuning); the run logs retrieval by
layer, per-language accuracy and the zero-shot mean to MLflow; a run killed after the phase
change resumes to the same losses; 2 ZeRO-3 ranks complete; bad configs fail naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from alignment_helpers import data  # noqa: F401 - a fixture
from alignment_helpers import final_metrics, job_dict, launch, ok, run_inprocess, step_rows, write_job
from trainer.config import ConfigError, load_job
from trainer.engine import reset_optimizer_moments
from trainer.train import main

# Retrieval over 60 sentences (chance 1/60): realignment must add at least this much at the aligned layer.
RETRIEVAL_MARGIN = {"tiny:llama": 0.05, "tiny:xlmr": 0.2}
RESUME_RTOL = 1e-4   # a resumed run recomputes the uninterrupted run's steps (in-process vs subprocess threads)


@pytest.fixture(scope="module")
def llama_run(data, tmp_path_factory, tiny_cache):
    """tiny:llama + LoRA: 40 realignment steps, 20 task steps, checkpoints every 20."""
    raw = job_dict("realign", data, tmp_path_factory.mktemp("realign-llama") / "run", tiny_cache, steps=40)
    raw["checkpoint"] = {"every": 20}
    summary, final = run_inprocess(raw)
    return raw, summary, final


def test_realignment_raises_retrieval_of_a_decoder_llm_through_lora(llama_run):
    raw, summary, final = llama_run
    assert len(summary["losses"]) == raw["optim"]["max_steps"]
    assert final["retrieval_after"] > final["retrieval_before"] + RETRIEVAL_MARGIN["tiny:llama"], final
    # retrieval_<tag> is the aligned layer's entry (-1 = the last of 5 hidden_states) of the per-layer means
    assert final["retrieval_after"] == pytest.approx(final["retrieval_after_layer4"])


def test_realign_logs_retrieval_by_layer_task_accuracy_and_artifacts_to_mlflow(llama_run):
    raw, summary, final = llama_run
    client = mlflow.MlflowClient(tracking_uri=raw["tracking"]["uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    languages = raw["task"]["eval_languages"]
    for key in ["retrieval_before", "retrieval_after", "retrieval_final", "zero_shot_accuracy", "source_accuracy",
                *[f"accuracy_{lang}" for lang in languages], *[f"retrieval_before_layer{i}" for i in range(5)]]:
        assert run.data.metrics[key] == pytest.approx(final[key]), key
    # the retrieval set is English + the aligned subset here, so the subset mean is the overall mean
    assert final["retrieval_after_subset"] == pytest.approx(final["retrieval_after"])
    zero_shot = [final[f"accuracy_{lang}"] for lang in languages if lang != "eng_Latn"]
    assert final["zero_shot_accuracy"] == pytest.approx(sum(zero_shot) / len(zero_shot))
    history = lambda key: [m.step for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    assert history("align_loss") == [10, 20, 30, 40] and history("task_loss") == [50, 60]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/retrieval_after")}
    assert {"eval/retrieval_after/retrieval_pairs.csv", "eval/retrieval_after/retrieval_layers.png",
            "eval/retrieval_after/retrieval_heatmap_layer4.png"} <= artifacts
    assert {"eval/task_accuracy.csv", "eval/retrieval_layers.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    exported = load_file(str(Path(summary["export_dir"]) / "trainable.safetensors"))
    assert "head.weight" in exported and any("lora_A" in name for name in exported)
    assert all(t.numel() > 0 for t in exported.values())


def test_realignment_raises_retrieval_of_an_encoder_with_full_fine_tuning(data, tmp_path, tiny_cache):
    raw = job_dict("realign", data, tmp_path / "xlmr", tiny_cache, model="tiny:xlmr", finetune="full", lr=2e-3,
                   steps=30)
    summary, final = run_inprocess(raw)
    assert final["retrieval_after"] > final["retrieval_before"] + RETRIEVAL_MARGIN["tiny:xlmr"], final
    assert final["source_accuracy"] > 0.45, final   # chance is 1/3: the English task is being learned
    exported = load_file(str(Path(summary["export_dir"]) / "trainable.safetensors"))
    assert any("embeddings.word_embeddings" in name for name in exported)   # full fine-tuning exports all
    assert not any("lora" in name or "pooler" in name for name in exported)


@pytest.mark.slow
def test_killed_in_the_task_phase_resumes_to_the_same_losses_and_metrics(llama_run, tmp_path):
    raw, _, final = llama_run
    raw = {**raw, "output_dir": str(tmp_path / "killed"),
           "tracking": {**raw["tracking"], "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    job = write_job(raw, tmp_path / "job.yaml")
    killed = launch(job, 1, fault="after_step:50")   # checkpoints at 20, 40 (the phase change), 60
    assert killed.returncode != 0
    resumed = ok(launch(job, 1))
    assert "resuming from" in resumed.stderr and "step-00000040" in resumed.stderr
    reference = {row["step"]: row["loss"] for row in step_rows(Path(llama_run[0]["output_dir"]))}
    again = {row["step"]: row["loss"] for row in step_rows(tmp_path / "killed")}
    assert sorted(again) == sorted(reference)
    for step, loss in reference.items():
        assert again[step] == pytest.approx(loss, rel=RESUME_RTOL), step
    resumed_final = final_metrics(tmp_path / "killed")
    # evaluated before the kill, carried by the checkpoint into the resumed run's final report
    assert resumed_final["retrieval_before"] == pytest.approx(final["retrieval_before"])
    assert resumed_final["retrieval_after"] == pytest.approx(final["retrieval_after"])


@pytest.mark.slow
def test_two_zero3_ranks_complete_and_log(data, tmp_path, tiny_cache):
    raw = job_dict("realign", data, tmp_path / "two", tiny_cache, max_steps=24, steps=20)
    raw["engine"] = {"deepspeed": "zero3"}
    ok(launch(write_job(raw, tmp_path / "job.yaml"), 2))
    final = final_metrics(tmp_path / "two")
    assert final["retrieval_after"] > final["retrieval_before"], final
    client = mlflow.MlflowClient(tracking_uri=raw["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("realign-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"   # one run: rank 0 logs
    assert runs[0].data.metrics["zero_shot_accuracy"] == pytest.approx(final["zero_shot_accuracy"])
    exported = load_file(str(tmp_path / "two" / "export" / "trainable.safetensors"))
    assert all(t.numel() > 0 for t in exported.values())   # gathered from ZeRO-3 partitions, not empty


@pytest.mark.parametrize("override, key", [
    ("alignment.steps=500", "alignment.steps"),
    ("task.eval_languages=[xx_Fake]", "task.eval_languages"),
    ("alignment.objective=triplet", "alignment.objective"),
    ("parallel.languges=[deu_Latn]", "parallel.languges"),
    ("alignment.query=both", "alignment.query"),
])
def test_bad_config_fails_naming_the_key(override, key, data, tmp_path, tiny_cache, capsys):
    job = write_job(job_dict("realign", data, tmp_path / "bad", tiny_cache, objective="two_b"), tmp_path / "job.yaml")
    assert main([str(job), override]) == 2
    assert key in capsys.readouterr().err


def test_missing_sections_are_named_and_the_baseline_needs_no_pairs(data, tmp_path, tiny_cache):
    raw = job_dict("realign", data, tmp_path / "bad", tiny_cache)
    for section, message in [("parallel", "parallel: required"), ("task", "task.train_files")]:
        job = write_job({k: v for k, v in raw.items() if k != section}, tmp_path / f"no_{section}.yaml")
        with pytest.raises(ConfigError, match=message):
            load_job(job)
    baseline = {k: v for k, v in raw.items() if k != "parallel"}
    baseline["alignment"] = {**raw["alignment"], "enabled": False}
    assert load_job(write_job(baseline, tmp_path / "baseline.yaml")).parallel is None


def test_reset_optimizer_state_restarts_adam_inside_wrappers():
    """After the reset one step equals a fresh AdamW's first step (without it, it does not)."""
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(4))
    used = torch.optim.AdamW([weights], lr=0.1)
    for _ in range(3):                       # a "contrastive phase" with large gradients
        weights.grad = 100 * torch.randn(4)
        used.step()
    fresh, kept = (torch.nn.Parameter(weights.detach().clone()) for _ in range(2))
    not_reset = torch.optim.AdamW([kept], lr=0.1)
    not_reset.load_state_dict(copy.deepcopy(used.state_dict()))

    class Wrapper:                           # DeepSpeed-style: engine.optimizer.optimizer is the torch one
        def __init__(self, inner):
            self.optimizer = inner

    reset_optimizer_moments(Wrapper(used))
    reference = torch.optim.AdamW([fresh], lr=0.1)
    grad = torch.randn(4)
    for param, optimizer in [(weights, used), (fresh, reference), (kept, not_reset)]:
        param.grad = grad.clone()
        optimizer.step()
    assert torch.allclose(weights, fresh)
    assert not torch.allclose(kept, fresh)
