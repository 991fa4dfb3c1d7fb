"""The align recipe (M2) end to end on a tiny Llama through LoRA and generated data.

Alternating task and alignment micro-batches must raise translation retrieval at the middle
layer above its value before training; every optimizer step mixes both objectives; an
alignment-only run exports an adapter with the same tensors as a task run (so the two merge);
2 ZeRO-3 ranks complete; bad configs fail naming the key.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

from alignment_helpers import data  # noqa: F401 - a fixture
from alignment_helpers import final_metrics, job_dict, launch, ok, run_inprocess, step_rows, write_job
from trainer.config import load_job
from trainer.models.merging import merge_state_dicts
from trainer.recipes.align import objectives_of_step
from trainer.train import main

# Retrieval over 60 sentences (chance 1/60) at the middle layer: alignment must add at least this much.
RETRIEVAL_MARGIN = 0.05
MIDDLE = 2   # tiny:llama has 4 blocks: hidden_states[4 // 2]


@pytest.fixture(scope="module")
def both(data, tmp_path_factory, tiny_cache):
    """Task + alignment, grad_accum 2 (one micro-batch of each per optimizer step), 40 steps."""
    raw = job_dict("align", data, tmp_path_factory.mktemp("align-both") / "run", tiny_cache, max_steps=40)
    raw["optim"]["grad_accum"] = 2
    summary, final = run_inprocess(raw)
    return raw, summary, final


def test_alignment_raises_retrieval_at_the_middle_layer(both):
    raw, summary, final = both
    assert final["alignment_temperature"] == 0.1   # auto: the study's value for Llama, reported with the run
    assert final["retrieval_after"] > final["retrieval_before"] + RETRIEVAL_MARGIN, final
    assert final["retrieval_after"] == pytest.approx(final[f"retrieval_after_layer{MIDDLE}"])
    assert final["retrieval_before"] == pytest.approx(final[f"retrieval_before_layer{MIDDLE}"])


def test_every_step_mixes_both_objectives_and_mlflow_has_the_metrics(both):
    raw, summary, final = both
    rows = step_rows(Path(raw["output_dir"]))
    assert len(rows) == raw["optim"]["max_steps"]
    assert all({"task_loss", "align_loss"} <= row.keys() for row in rows)
    assert all(row["loss"] == pytest.approx((row["task_loss"] + row["align_loss"]) / 2) for row in rows)
    assert rows[-1]["task_loss"] < rows[0]["task_loss"] and rows[-1]["align_loss"] < rows[0]["align_loss"]
    run = mlflow.MlflowClient(tracking_uri=raw["tracking"]["uri"]).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    for key in ["retrieval_before", "retrieval_after", "zero_shot_accuracy", "source_accuracy", "accuracy_deu_Latn"]:
        assert run.data.metrics[key] == pytest.approx(final[key]), key


def test_alignment_only_exports_a_module_that_merges_with_the_task_adapter(both, tmp_path, tiny_cache, data):
    raw, summary, _ = both
    module = job_dict("align", data, tmp_path / "module", tiny_cache, max_steps=10, task=False)
    module_summary, final = run_inprocess(module)
    assert not any(k.endswith("accuracy") or k.startswith("accuracy_") for k in final)   # no task, no task eval
    assert all("task_loss" not in row for row in step_rows(tmp_path / "module"))
    task_adapter = load_file(str(Path(summary["export_dir"]) / "trainable.safetensors"))
    align_adapter = load_file(str(Path(module_summary["export_dir"]) / "trainable.safetensors"))
    assert task_adapter.keys() == align_adapter.keys() and all("lora_" in k for k in task_adapter)
    merged = merge_state_dicts(task_adapter, align_adapter, task_weight=0.9)
    name = next(iter(merged))
    assert merged[name].float().sub(0.9 * task_adapter[name] + 0.1 * align_adapter[name]).abs().max() < 1e-6


def test_objectives_alternate_by_global_micro_batch(data, tmp_path, tiny_cache):
    raw = job_dict("align", data, tmp_path / "x", tiny_cache)
    job = lambda **over: load_job(write_job({**raw, **over}, tmp_path / "job.yaml"))  # noqa: E731
    accum2 = job(optim={**raw["optim"], "grad_accum": 2})
    assert [objectives_of_step(accum2, s) for s in range(2)] == [["task", "align"]] * 2
    accum1 = job()
    assert [objectives_of_step(accum1, s) for s in range(3)] == [["task"], ["align"], ["task"]]
    accum3 = job(optim={**raw["optim"], "grad_accum": 3})
    assert objectives_of_step(accum3, 0) + objectives_of_step(accum3, 1) == ["task", "align"] * 3
    only_align = job(alignment={**raw["alignment"], "task": False})
    assert objectives_of_step(only_align, 5) == ["align"]
    only_task = job(alignment={**raw["alignment"], "enabled": False})
    assert objectives_of_step(only_task, 5) == ["task"]


@pytest.mark.slow
def test_two_zero3_ranks_complete_and_log(data, tmp_path, tiny_cache):
    raw = job_dict("align", data, tmp_path / "two", tiny_cache, max_steps=10)
    raw["engine"] = {"deepspeed": "zero3"}
    raw["optim"]["grad_accum"] = 2
    ok(launch(write_job(raw, tmp_path / "job.yaml"), 2))
    final = final_metrics(tmp_path / "two")
    assert {"retrieval_before", "retrieval_after", "zero_shot_accuracy"} <= final.keys()
    client = mlflow.MlflowClient(tracking_uri=raw["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("align-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["retrieval_after"] == pytest.approx(final["retrieval_after"])
    exported = load_file(str(tmp_path / "two" / "export" / "trainable.safetensors"))
    assert exported and all(t.numel() > 0 for t in exported.values())


@pytest.mark.parametrize("override, key", [
    ("alignment.steps=5", "alignment.steps"),                 # a realign-only key
    ("task.label_words=[yes,no]", "task.label_words"),        # 2 words for 3 labels
    ("task.prompt_template=Topic:", "task.prompt_template"),  # no {text}
    ("alignment.layers=9", "alignment.layers"),               # beyond the 5 hidden_states
])
def test_bad_config_fails_naming_the_key(override, key, data, tmp_path, tiny_cache, capsys):
    job = write_job(job_dict("align", data, tmp_path / "bad", tiny_cache), tmp_path / "job.yaml")
    assert main([str(job), override]) == 2
    assert key in capsys.readouterr().err


@pytest.mark.parametrize("family, expected", [("qwen2", 1.5), ("llama", 0.1), ("gemma2", 0.1)])
def test_temperature_auto_follows_the_model_family(family, expected, data, tmp_path, tiny_cache):
    """M2's study used tau = 0.1 for Llama and 1.5 for Qwen; an explicit value wins over the family."""
    from types import SimpleNamespace

    from trainer.objectives.contrastive import M2_DEFAULT_TEMPERATURE, M2_TEMPERATURES
    from trainer.recipes.alignment import temperature

    model = SimpleNamespace(model_type=family)
    raw = job_dict("align", data, tmp_path / "t", tiny_cache)
    auto = load_job(write_job(raw, tmp_path / "auto.yaml"))
    assert auto.alignment.temperature == "auto"
    assert temperature(SimpleNamespace(job=auto), model, M2_TEMPERATURES, M2_DEFAULT_TEMPERATURE) == expected
    fixed = load_job(write_job({**raw, "alignment": {**raw["alignment"], "temperature": 0.7}}, tmp_path / "f.yaml"))
    assert temperature(SimpleNamespace(job=fixed), model, M2_TEMPERATURES, 0.1) == 0.7


def test_the_backbone_reports_its_family(tiny_cache):
    from trainer.config import LLMConfig, LoraConfig
    from trainer.models.aligned import build_aligned_model

    model = build_aligned_model(LLMConfig(name_or_path="tiny:qwen2"), LoraConfig(r=2, alpha=4), "lora", tiny_cache,
                                "causal_lm", "middle", num_labels=3)
    assert model.model_type == "qwen2" and model.align_layers == [2]
