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
    job = load_job(DEMO, [f"data.manifest={manifest}", f"output_dir={tmp}/out", "optim.max_steps=60",
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
    for metric in ("loss", "fvu", "lr", "tokens_per_second", "llm_tokens_per_second"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert len(history) >= job.optim.max_steps // job.tracking.log_every, metric
    last = {m: client.get_metric_history(run.info.run_id, m)[-1].value
            for m in ("tokens_per_second", "llm_tokens_per_second")}
    assert 0 < last["llm_tokens_per_second"] < last["tokens_per_second"]   # LLM tokens only vs both views
    loss_by_step = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert loss_by_step[job.optim.max_steps] == pytest.approx(summary["losses"][-1])
    assert run.data.tags["world_size"] == "1" and run.data.tags["precision"] == "fp32"
    assert run.data.tags["attn_implementation"] in ("sdpa", "eager") and run.data.tags["devices"] == "1 x cpu"
    assert run.data.tags["grad_accum_dtype"] == "float32"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "export")}
    assert {"export/trainable.safetensors", "export/config.yaml", "export/adapter"} <= artifacts
    assert {"version.torch", "version.transformers", "version.peft", "version.deepspeed", "version.mlflow",
            "version.ray"} <= set(run.data.tags)
    if (Path(__file__).resolve().parents[1] / ".git").exists():      # runs from a checkout
        assert len(run.data.tags["git_commit"]) == 40 and run.data.tags["git_dirty"] in ("true", "false")
    saved = yaml.safe_load((Path(job.output_dir) / "config.yaml").read_text())
    assert saved == job.model_dump(mode="json")


def artifact_bytes(client, run_id: str, path: str) -> dict[str, int]:
    """Every uploaded file under `path` -> its size."""
    sizes = {}
    for entry in client.list_artifacts(run_id, path):
        sizes |= artifact_bytes(client, run_id, entry.path) if entry.is_dir else {entry.path: entry.file_size}
    return sizes


def test_export_adapter_uploads_the_trained_weights_and_no_frozen_one(demo_run):
    """tracking.export: adapter (the default): the upload is the trainable weights (twice: trainable.safetensors
    and the PEFT folder) plus small text files, far below the frozen LLM and encoder."""
    from safetensors.torch import load_file

    from trainer.models.mt_llm import build_mt_llm

    job, summary, uri = demo_run
    assert job.tracking.export == "adapter"
    uploaded = artifact_bytes(mlflow.MlflowClient(tracking_uri=uri), summary["run_id"], "export")
    trainable = sum(t.numel() * t.element_size()
                    for t in load_file(str(Path(summary["export_dir"]) / "trainable.safetensors")).values())
    frozen = sum(p.numel() * p.element_size() for p in build_mt_llm(job.model).parameters() if not p.requires_grad)
    assert "export/model.safetensors" not in uploaded
    assert sum(uploaded.values()) < 2 * trainable + 64 * 1024 < frozen, (uploaded, trainable, frozen)


def test_the_lora_export_is_a_peft_adapter_with_the_trained_models_outputs(demo_run):
    """export/adapter loads with PeftModel.from_pretrained on the base LLM and gives the trained LLM's outputs;
    the projection stays beside it in trainable.safetensors."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from trainer.models.loading import load_llm
    from trainer.models.mt_llm import build_mt_llm
    from trainer.models.weights import load_trainable

    job, summary, _ = demo_run
    export = Path(summary["export_dir"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (export / "adapter").iterdir()}
    assert any(name.startswith("projection.") for name in load_file(str(export / "trainable.safetensors")))
    trained = build_mt_llm(job.model)
    load_trainable(trained, export)
    loaded = PeftModel.from_pretrained(load_llm(job.model.llm, job.model.cache_dir), str(export / "adapter"))
    torch.manual_seed(0)
    ids = torch.randint(5, trained.llm.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = trained.llm.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = loaded.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        with loaded.disable_adapter():
            base = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, want, atol=1e-4)                 # the adapter trained: it changes the outputs


def test_system_metrics_are_logged_when_asked(tmp_path, monkeypatch):
    """tracking.system_metrics: true -> MLflow's system/* metrics (CPU, memory) in the run; auto is off without CUDA."""
    from trainer.config import TrackingConfig
    from trainer.tracking import Tracker, system_metrics_on

    assert system_metrics_on(TrackingConfig(system_metrics="auto")) == torch.cuda.is_available()
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(TrackingConfig(uri=uri, experiment="system", system_metrics=True))
    tracker.start({"recipe": "stage1"})
    import time

    time.sleep(2.0)
    tracker.end()
    metrics = mlflow.MlflowClient(tracking_uri=uri).get_run(tracker.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics), metrics


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
    """Checkpointing off, on every block, on every 2nd block, dropout on: the recomputed blocks replay the same
    masks, so every step's loss and the exported weights agree."""
    import json

    from safetensors.torch import load_file

    from trainer.tiny.text import english_documents

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(48, seed=4)))
    runs = {}
    for flag, every in ((False, 1), (True, 1), ("every_2", 2)):
        raw = {"recipe": "stage1", "seed": 1, "output_dir": str(tmp_path / f"ckpt_{flag}"),
               "model": {"llm": {"name_or_path": "tiny:llama", "gradient_checkpointing": bool(flag),
                                 "checkpoint_every_n_layers": every},
                         "encoder": {"name_or_path": "tiny:nllb"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
                         "cache_dir": tiny_cache},
               "data": {"files": [str(docs)], "max_length": 32},
               "optim": {"lr": 3e-3, "max_steps": 4, "micro_batch_size": 4, "grad_accum": 2},
               "checkpoint": {"every": 0},
               "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}",   # no upload, in the older spelling
                            **({"log_export": False} if flag else {"export": "all"})}}
        path = tmp_path / f"job_{flag}.yaml"
        path.write_text(yaml.safe_dump(raw))
        runs[flag] = run_job(load_job(path))
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], rel=1e-6)
    assert runs["every_2"]["losses"] == pytest.approx(runs[False]["losses"], rel=1e-6)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")   # tracking.log_export: false
    assert not client.list_artifacts(runs[True]["run_id"], "export")
    assert (Path(runs[True]["export_dir"]) / "trainable.safetensors").is_file()
    # export: all uploads every weight, frozen ones included, as model.safetensors
    full = load_file(str(Path(runs[False]["export_dir"]) / "model.safetensors"))
    uploaded = artifact_bytes(client, runs[False]["run_id"], "export")
    from trainer.models.mt_llm import build_mt_llm

    model = build_mt_llm(load_job(tmp_path / "job_False.yaml").model)
    assert full.keys() == {name for name, _ in model.named_parameters()}
    assert uploaded["export/model.safetensors"] >= sum(p.numel() * p.element_size() for p in model.parameters())
    from trainer.config import LLMConfig
    from trainer.models.loading import load_llm

    def checkpointed_blocks(**llm) -> list[bool]:
        model = load_llm(LLMConfig(name_or_path="tiny:llama", **llm), tiny_cache)
        return [block.gradient_checkpointing for block in model.layers]

    assert checkpointed_blocks() == [False] * 4                        # tiny:llama has 4 blocks
    assert checkpointed_blocks(gradient_checkpointing=True) == [True] * 4
    assert checkpointed_blocks(gradient_checkpointing=True, checkpoint_every_n_layers=2) == [True, False] * 2
    on, off = (load_file(str(Path(runs[f]["export_dir"]) / "trainable.safetensors")) for f in (True, False))
    assert on.keys() == off.keys() and all(torch.allclose(on[k], off[k], rtol=1e-5, atol=1e-7) for k in on)
