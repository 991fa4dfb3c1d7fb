"""Stage-1 demo end to end: loss falls, MLflow holds one complete run, the export reloads."""

from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from data_prep.demo_text import write_demo_shards
from trainer.config import ConfigError, load_job
from trainer.run import run_job
from trainer.train import main

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo_stage1.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_cache):
    tmp = tmp_path_factory.mktemp("stage1")
    manifest = write_demo_shards(tmp / "demo")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    job = load_job(DEMO, [f"data.manifest={manifest}", f"output_dir={tmp}/out",
                          f"tracking.uri={uri}", f"model.cache_dir={tiny_cache}"])
    summary = run_job(job)
    return job, summary, uri


def test_demo_loss_falls_below_half_of_its_first_value(demo_run):
    job, summary, _ = demo_run
    losses = summary["losses"]
    assert len(losses) == job.optim.max_steps
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_mlflow_holds_one_run_with_config_metrics_and_export(demo_run):
    job, summary, uri = demo_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(job.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == summary["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.lora.r"] == str(job.model.lora.r)
    assert run.data.params["optim.lr"] == str(job.optim.lr)
    for metric in ("loss", "fvu", "lr", "tokens_per_second"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert len(history) >= job.optim.max_steps // job.tracking.log_every, metric
    loss_by_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert loss_by_step[job.optim.max_steps] == pytest.approx(summary["losses"][-1])
    assert run.data.tags["world_size"] == "1" and run.data.tags["precision"] == "fp32"
    assert run.data.tags["attn_implementation"] in ("sdpa", "eager") and run.data.tags["devices"] == "1 x cpu"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "export")}
    assert {"export/trainable.safetensors", "export/config.yaml"} <= artifacts
    saved = yaml.safe_load((Path(job.output_dir) / "config.yaml").read_text())
    assert saved == job.model_dump(mode="json")


def test_bad_job_fails_before_loading_with_the_key(tmp_path, capsys):
    assert main([str(DEMO), "model.lora.r=0"]) == 2
    assert "model.lora.r" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.files or data.manifest"):
        load_job(DEMO, ["data.manifest=null"])


def test_a_run_abandoned_before_its_first_checkpoint_is_closed_by_the_next_attempt(demo_run, tmp_path):
    """An attempt killed before any checkpoint leaves its MLflow run RUNNING; the next attempt in the
    same output dir starts a new run (nothing to resume) and marks the abandoned one KILLED."""
    job, _, uri = demo_run
    out = tmp_path / "out"
    out.mkdir()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("abandoned")   # apart from the demo run's experiment
    abandoned = client.create_run(experiment).info.run_id           # RUNNING, as a SIGKILL leaves it
    (out / ".mlflow_run_id").write_text(abandoned + "\n")
    finished = client.create_run(experiment).info.run_id
    client.set_terminated(finished, "FINISHED")
    again = job.model_copy(update={"output_dir": str(out), "optim": job.optim.model_copy(update={"max_steps": 2}),
                                   "tracking": job.tracking.model_copy(update={"experiment": "abandoned"})})
    summary = run_job(again)
    assert summary["run_id"] != abandoned
    old = client.get_run(abandoned)
    assert old.info.status == "KILLED" and old.data.tags["superseded_by"] == summary["run_id"]
    # a finished earlier run is left alone
    (out / ".mlflow_run_id").write_text(finished + "\n")
    run_job(again)
    assert client.get_run(finished).info.status == "FINISHED"


def test_activation_checkpointing_leaves_the_losses_unchanged(tmp_path, tiny_cache):
    """Checkpointing on vs off, dropout on: the recomputed blocks replay the same masks, so every step's
    loss and the exported weights agree."""
    import json

    from safetensors.torch import load_file

    from trainer.tiny.text import english_documents

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(48, seed=4)))
    runs = {}
    for flag in (False, True):
        raw = {"recipe": "stage1", "seed": 1, "output_dir": str(tmp_path / f"ckpt_{flag}"),
               "model": {"llm": {"name_or_path": "tiny:llama", "gradient_checkpointing": flag},
                         "encoder": {"name_or_path": "tiny:nllb"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
                         "cache_dir": tiny_cache},
               "data": {"files": [str(docs)], "max_length": 32},
               "optim": {"lr": 3e-3, "max_steps": 4, "micro_batch_size": 4, "grad_accum": 2},
               "checkpoint": {"every": 0},
               "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "log_export": False}}
        path = tmp_path / f"job_{flag}.yaml"
        path.write_text(yaml.safe_dump(raw))
        runs[flag] = run_job(load_job(path))
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], rel=1e-6)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")   # tracking.log_export: false
    assert not client.list_artifacts(runs[True]["run_id"], "export")
    assert (Path(runs[True]["export_dir"]) / "trainable.safetensors").is_file()
    from trainer.config import LLMConfig
    from trainer.models.loading import load_llm

    assert load_llm(LLMConfig(name_or_path="tiny:llama", gradient_checkpointing=True), tiny_cache).is_gradient_checkpointing
    assert not load_llm(LLMConfig(name_or_path="tiny:llama"), tiny_cache).is_gradient_checkpointing
    on, off = (load_file(str(Path(runs[f]["export_dir"]) / "trainable.safetensors")) for f in (True, False))
    assert on.keys() == off.keys() and all(torch.allclose(on[k], off[k], rtol=1e-5, atol=1e-7) for k in on)
