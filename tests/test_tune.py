"""`python -m trainer.tune` end to end on a local Ray: 2 trials x 2 gloo workers on ZeRO-3.

Each trial is the `realign` recipe on tiny models and generated data; the first crashes once
(an exception in its workers at step CRASH_AT, its own checkpoint folder deleted as if the retry ran
on another node): Ray Train restarts the workers, which resume from the last checkpoint the trial
reported to Ray's storage (a file:// URI outside the trial's folder). MLflow must then hold the sweep's parent run and one child
run per trial with their tags, params and metrics, and `trainer.report` draws its figures from
that store. A second sweep (ASHA, 2 trials of 1 worker through LoRA) stops its poor trial: no child
run may be left RUNNING, and the uploaded export holds no frozen weight.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from alignment_helpers import SUBSET, data, job_dict  # noqa: F401 - `data` is a fixture
from trainer.sweep import load_sweep
from trainer.tune import TRIALS_DIR, main, run_sweep

MAX_STEPS, ALIGN_STEPS, CHECKPOINT_EVERY, CRASH_AT = 8, 4, 2, 5
SUBSETS = {"greek_chinese": ["ell_Grek", "zho_Hans"], "german_greek": ["deu_Latn", "ell_Grek"]}


@pytest.fixture(scope="module")
def sweep_run(data, tmp_path_factory, tiny_cache):  # noqa: F811 - pytest fixture injection
    """Run the sweep once for the module; returns (summary rows, sweep dir, tracking URI)."""
    tmp = tmp_path_factory.mktemp("tune")
    job = realign_job(data, tiny_cache, "full", checkpoint={"every": CHECKPOINT_EVERY, "keep_last": 2})
    sweep = {"name": "e2e", "subsets": {"inline": SUBSETS}, "metric": "zero_shot_accuracy", "mode": "max",
             "resources": {"workers": 2, "cpus_per_worker": 1}, "max_failures": 1,
             "storage_path": f"file://{tmp / 'ray-store'}"}     # a URI outside the trials' folders
    # each crash also deletes the trial's own checkpoints (a retry on a node without its disk):
    # the retried trial must restore from what it reported to Ray's storage
    rows, uri = run_test_sweep(tmp, job, sweep, crash_at_step=CRASH_AT, crash_loses_disk=True, crash_trials=1)
    return rows, tmp / "sweeps" / "e2e", uri


def realign_job(data: Path, tiny_cache: str, finetune: str, **sections) -> dict:
    """The trials' base job: realign on tiny XLM-R, MAX_STEPS steps (ALIGN_STEPS realigning), ZeRO-3."""
    job = job_dict("realign", data, Path("unused"), tiny_cache, model="tiny:xlmr", finetune=finetune,
                   max_steps=MAX_STEPS, steps=ALIGN_STEPS, objective="two_b", layers=-1)
    job["task"]["num_labels"] = 3
    job["eval"]["retrieval_sentences"] = 30
    job["tracking"]["log_every"] = 1
    job.update(engine={"deepspeed": "zero3"}, **sections)
    return job


def run_test_sweep(tmp: Path, job: dict, sweep: dict, **kwargs) -> tuple[list[dict], str]:
    """Write the job and the sweep (one trial at a time, its own SQLite store) into `tmp`, run it on a local Ray
    -> (summary rows, tracking URI)."""
    ray = pytest.importorskip("ray")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    job["tracking"]["uri"] = uri
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp / "sweep.yaml").write_text(yaml.safe_dump({
        "job": "job.yaml", "max_concurrent_trials": 1, "output_dir": str(tmp / "sweeps"), "tracking_uri": uri,
        "experiment": sweep["name"], **sweep}))
    try:
        return run_sweep(load_sweep(tmp / "sweep.yaml"), **kwargs), uri
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_both_trials_finish_with_the_metric(sweep_run):
    rows, sweep_dir, _ = sweep_run
    assert sorted(r["subset"] for r in rows) == sorted(SUBSETS)
    for row in rows:
        assert row["status"] == "OK", row
        assert 0.0 <= row["zero_shot_accuracy"] <= 1.0
    assert (sweep_dir / "summary.csv").read_text().splitlines()[0].startswith("trial,subset")


@pytest.mark.slow
def test_the_crashed_trial_resumed_from_its_checkpoint_not_step_zero(sweep_run):
    """Tune saw every report: steps 1..CRASH_AT, the crash, then the restart resumes at the step after
    the last checkpoint (a restart from scratch would report step 1 again). Only the first trial crashes
    (`crash_trials=1`); the second runs through."""
    _, sweep_dir, _ = sweep_run
    trials = sorted((sweep_dir / TRIALS_DIR).iterdir(), key=lambda t: t.name.rsplit("_", 1)[-1])
    assert len(trials) == 2
    last_checkpoint = CRASH_AT - CRASH_AT % CHECKPOINT_EVERY
    store = sweep_dir.parent.parent / "ray-store" / "e2e"           # storage_path/<sweep name>
    for trial, crashed in zip(trials, (True, False)):
        assert (trial / ".injected_crash_done").exists() == crashed, trial.name
        [result_file] = (store / "tune").glob(f"{trial.name}_*/result.json")   # Tune's log of every report
        reports = [json.loads(line) for line in result_file.read_text().splitlines()]
        steps = [r["step"] for r in reports]   # a step can report twice (training row, then an evaluation)
        if not crashed:
            assert sorted(set(steps)) == list(range(0, MAX_STEPS + 1)) and steps == sorted(steps), steps
            continue
        crash = steps.index(CRASH_AT)          # the workers raised right after their first step-5 report
        assert sorted(set(steps[:crash + 1])) == list(range(0, CRASH_AT + 1)), steps   # 0: before training
        after = steps[crash + 1:]              # the restarted workers' reports
        # From scratch this would be step 1. Resuming at the checkpoint gives last_checkpoint + 1; once (2026-12-07, a
        # quiet machine) Tune's result log held the restarted run's reports from CRASH_AT + 1 on, the repeated step
        # missing: accepted, but never an earlier step than the checkpoint's (open question, see the closing note).
        assert last_checkpoint + 1 <= after[0] <= CRASH_AT + 1, steps
        assert after == sorted(after) and after[-1] == MAX_STEPS, steps
    stored = list(store.glob("train-*/checkpoint_*/trainer_state.json"))
    assert len(stored) == 2 * 2, stored                          # the newest two of each trial, in Ray's storage
    assert {json.loads(p.read_text())["step"] for p in stored} == {MAX_STEPS - CHECKPOINT_EVERY, MAX_STEPS}
    for trial in trials:   # each checkpoint is kept once: Ray deleted the trial folder's copy after the upload
        assert not list((trial / "checkpoints").glob("*step-*")), trial.name


@pytest.mark.slow
def test_mlflow_has_one_parent_and_a_tagged_child_per_trial(sweep_run):
    rows, _, uri = sweep_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "sweep-parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2   # a retried trial continues its own child run
    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        subset = tags["subset"]
        assert tags["languages"] == ",".join(SUBSETS[subset]) and tags["subset_heuristic"] == "inline"
        assert tags["sweep"] == "e2e" and child.info.status == "FINISHED"
        assert yaml.safe_load(params["parallel.languages"]) == SUBSETS[subset]   # the resolved config
        assert params["engine.deepspeed"] == "zero3" and params["recipe"] == "realign"
        assert {"loss", "zero_shot_accuracy"} <= set(metrics)
        assert tags["trial_status"] == "OK" and tags["trial_id"] in {r["trial"] for r in rows}
        assert tags["subset_size"] == "2"
        losses = client.get_metric_history(child.info.run_id, "loss")
        assert sorted({m.step for m in losses}) == list(range(1, MAX_STEPS + 1))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.png"} <= artifacts
    best = max(r["zero_shot_accuracy"] for r in rows)
    assert parent.data.metrics["best_zero_shot_accuracy"] == pytest.approx(best)


@pytest.mark.slow
def test_the_report_reads_the_sweeps_store(sweep_run, tmp_path):
    """python -m trainer.report on the sweep's directory: every figure its metrics allow, the page, and the
    report attached to the parent run."""
    from trainer.report import build_report, find_source

    rows, sweep_dir, uri = sweep_run
    report = build_report(find_source(sweep_dir), tmp_path / "report")
    assert set(report.figures) == {"language_scores", "score_by_size", "retrieval_by_layer"}, report.skipped
    assert "fusion" in report.skipped and not report.partial
    scores = report.tables["language_scores"].read_text()
    assert all(f",{lang}," in scores for lang in ["eng_Latn", *SUBSET]) and "inline" in scores
    layers = {line.split(",")[1] for line in report.tables["retrieval_by_layer"].read_text().splitlines()[1:]}
    assert layers == {"before", "after", "final"}
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == 3 and all(subset in page for subset in SUBSETS)
    assert page.count("<tr>") == 1 + len(rows)                       # header + a row per trial
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert "report/report.html" in {a.path for a in client.list_artifacts(report.logged_to, "report")}


@pytest.fixture(scope="module")
def asha_run(data, tmp_path_factory, tiny_cache):  # noqa: F811 - pytest fixture injection
    """An ASHA sweep of realign through LoRA (export: adapter) on ZeRO-2, 1 worker per trial: a good learning
    rate, then a useless one that ASHA stops at its first rung."""
    job = realign_job(data, tiny_cache, "lora", checkpoint={"every": 0})
    job["engine"] = {"deepspeed": "zero2"}   # the crash sweep covers ZeRO-3 under Ray; this one is about ASHA
    job["optim"]["warmup_steps"] = 0
    job["tracking"]["export"] = "adapter"
    return run_test_sweep(tmp_path_factory.mktemp("asha"), job, {
        "name": "asha", "search": {"optim.lr": {"grid": [1e-2, 1e-9]}}, "metric": "loss", "mode": "min",
        "scheduler": {"kind": "asha", "grace_period": 3, "reduction_factor": 2, "max_t": MAX_STEPS},
        "resources": {"workers": 1, "cpus_per_worker": 1}, "max_failures": 0})


@pytest.mark.slow
def test_asha_stops_a_trial_and_no_child_run_is_left_running(asha_run):
    rows, uri = asha_run
    assert sorted(r["status"] for r in rows) == ["OK", "STOPPED"], rows
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id])
    children = {r.data.tags["trial_status"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert {status: r.info.status for status, r in children.items()} == {"OK": "FINISHED", "STOPPED": "KILLED"}
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_export_adapter_uploads_no_frozen_weight(asha_run, tiny_cache):
    """The finished LoRA trial uploaded its trainable weights (LoRA + head, and the PEFT folder), not the backbone."""
    from safetensors.torch import load_file

    from trainer.config import LLMConfig, LoraConfig
    from trainer.models.aligned import build_aligned_model

    rows, uri = asha_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    [finished] = [r for r in client.search_runs([client.get_experiment_by_name("asha").experiment_id])
                  if r.data.tags.get("trial_status") == "OK"]

    def sizes(path: str) -> dict[str, int]:
        out = {}
        for a in client.list_artifacts(finished.info.run_id, path):
            out |= sizes(a.path) if a.is_dir else {a.path: a.file_size}
        return out

    uploaded = sizes("export")
    assert {"export/trainable.safetensors", "export/adapter/adapter_model.safetensors"} <= set(uploaded)
    model = build_aligned_model(LLMConfig(name_or_path="tiny:xlmr"), LoraConfig(r=8, alpha=16, dropout=0.0), "lora",
                                tiny_cache, "classify", -1, 3)
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    assert sum(uploaded.values()) <= 2 * trainable + 64 * 1024 < frozen, (uploaded, trainable, frozen)
    local = Path(finished.data.params["output_dir"]) / "export"
    adapter = load_file(str(local / "adapter" / "adapter_model.safetensors"))   # gathered from the ZeRO partitions
    exported = load_file(str(local / "trainable.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    for name, tensor in adapter.items():   # PEFT drops the adapter's name: lora_A.weight is lora_A.default.weight
        twin = "backbone." + re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", name)
        torch.testing.assert_close(tensor, exported[twin], rtol=0, atol=0)


def test_a_bad_sweep_fails_before_ray_starts_naming_the_key(tmp_path, capsys):
    import ray

    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"recipe": "stage1", "data": {"files": ["x.jsonl"]}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "bad", "job": "job.yaml", "search": {"optim.lrr": {"grid": [1e-3]}}}))
    assert main([str(tmp_path / "sweep.yaml")]) == 2
    assert "search.optim.lrr" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (Path(os.getcwd()) / "outputs" / "sweeps" / "bad").exists()


# --- issue 30: a sweep that cannot fit, stopped sweeps, what ran, the MLflow views (fast: no Ray) ------------

def demo_sweep(*overrides: str):
    return load_sweep(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml", list(overrides), prepare=False)


def test_a_trial_that_cannot_fit_is_refused_with_needed_available_and_the_keys():
    from trainer.tune import ClusterTooSmallError, check_fits

    sweep = demo_sweep()   # 2 workers x 1 CPU
    check_fits(sweep, {"CPU": 3.0}, {"CPU": 3.0})                  # 2.01 CPUs fit
    with pytest.raises(ClusterTooSmallError) as e:
        check_fits(sweep, {"CPU": 2.0, "GPU": 0.0}, {"CPU": 2.0}, "the Ray cluster at 127.0.0.1:6379")
    message = str(e.value)
    assert "a trial needs 2.01 CPUs" in message and "the cluster has 2 CPUs and 0 GPUs" in message
    assert "resources.workers (now 2)" in message and "resources.cpus_per_worker (now 1; at most 0.99" in message
    with pytest.raises(ClusterTooSmallError, match="GPU short"):
        check_fits(demo_sweep("resources.gpus_per_worker=1"), {"CPU": 64.0}, {"CPU": 64.0})
    with pytest.raises(ClusterTooSmallError, match="CPU per node short"):   # a worker cannot span two nodes
        check_fits(demo_sweep("resources.workers=1", "resources.cpus_per_worker=8"), {"CPU": 16.0}, {"CPU": 4.0})


@pytest.mark.parametrize("env, launcher", [
    ({}, "python"), ({"CROSS_RANK": "0", "LOCAL_SIZE": "2", "RANK": "0"}, "deepspeed"),
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0"}, "torchrun"), ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}, "srun"),
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, "ray"), ({"TRAINER_LAUNCHER": "ray", "TORCHELASTIC_RUN_ID": "x"}, "ray")])
def test_the_launcher_tag_names_what_started_the_run(monkeypatch, env, launcher):
    from trainer.tracking import detect_launcher

    for key in ("CROSS_RANK", "LOCAL_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_STEP_ID",
                "RAY_JOB_CONFIG_JSON_ENV_VAR", "TRAINER_LAUNCHER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert detect_launcher() == launcher


def test_the_driver_passes_its_commit_to_trials_and_the_submit_command(monkeypatch):
    """Trials run in a copy without .git: the driver's commit goes to them through the workers' environment, and
    `--runtime-env` gives a `ray job submit` the submitting checkout's."""
    from trainer import tracking
    from trainer.tune import driver_env, runtime_env_json

    monkeypatch.delenv("TRAINER_GIT_COMMIT", raising=False)
    here = tracking.checkout_git_tags(Path(__file__).resolve().parents[1])
    env = driver_env()
    assert env["TRAINER_LAUNCHER"] == "ray" and env.get("TRAINER_GIT_COMMIT") == here.get("git_commit")
    submitted = json.loads(runtime_env_json())["env_vars"]
    assert submitted.get("TRAINER_GIT_COMMIT") == here.get("git_commit")
    monkeypatch.setenv("TRAINER_GIT_COMMIT", "abc123")
    monkeypatch.setenv("TRAINER_GIT_DIRTY", "false")
    assert tracking.code_tags() == {"git_commit": "abc123", "git_dirty": "false"}


def test_a_trials_subset_param_names_the_subset_and_its_languages():
    from trainer.tracking import run_params

    config = {"parallel": {"languages": ["deu_Latn", "ell_Grek"], "subset": None}}
    tags = {"subset": "featural_max_2", "languages": "deu_Latn,ell_Grek"}
    assert run_params(config, tags)["parallel.subset"] == "featural_max_2 (deu_Latn,ell_Grek)"
    assert run_params(config, {})["parallel.subset"] is None          # not a sweep trial: as configured


def sweep_runs(tmp: Path) -> tuple[str, str, str]:
    """A store with a RUNNING sweep parent and a RUNNING child -> (uri, parent id, child id)."""
    from trainer import tracking

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    parent = tracking.start_parent_run(uri, "stopped", "s", {"name": "s"})
    client = mlflow.MlflowClient(tracking_uri=uri)
    child = client.create_run(client.get_run(parent).info.experiment_id, tags={"mlflow.parentRunId": parent})
    return uri, parent, child.info.run_id


def test_sigterm_ends_the_parent_and_its_children_killed(tmp_path):
    """`ray job stop` sends SIGTERM, then SIGKILL 3 s later: the runs are ended at once, in the handler."""
    import signal

    from trainer.tune import SweepStopped, _StopHandler

    uri, parent, child = sweep_runs(tmp_path)
    with pytest.raises(SweepStopped):
        _StopHandler(uri, parent)(signal.SIGTERM, None)   # outside Tune's loop: it raises
    client = mlflow.MlflowClient(tracking_uri=uri)
    for run_id in (parent, child):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["ended_by"] == "SIGTERM"
    experiment = client.get_experiment(client.get_run(parent).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"   # the UI opens on runs


def test_a_driver_that_dies_has_its_runs_ended_failed_by_the_watchdog(tmp_path):
    import subprocess
    import sys

    from trainer.tracking import watch_driver

    uri, parent, child = sweep_runs(tmp_path)
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    driver.kill()
    driver.wait()
    watch_driver(driver.pid, uri, parent, poll_s=0.1)
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert {client.get_run(r).info.status for r in (parent, child)} == {"FAILED"}
    assert client.get_run(parent).data.tags["ended_by"] == "driver-gone"


def test_the_printed_link_opens_the_runs_view_sorted_and_filtered(tmp_path):
    from urllib.parse import parse_qs, urlsplit

    from trainer.tracking import runs_url, save_runs_view

    uri, parent, _ = sweep_runs(tmp_path)
    url = runs_url(uri, "stopped", "zero_shot_accuracy", "max", "s")
    fragment = urlsplit(url).fragment
    path, query = fragment.split("?")
    experiment_id = mlflow.MlflowClient(tracking_uri=uri).get_run(parent).info.experiment_id
    assert path == f"/experiments/{experiment_id}/runs"
    assert parse_qs(query) == {"searchFilter": ["tags.sweep = 's'"], "orderByKey": ["metrics.`zero_shot_accuracy`"],
                               "orderByAsc": ["false"]}
    view = save_runs_view(uri, "stopped", "s", "zero_shot_accuracy", "max", ["optim.lr"], parent)
    assert runs_url(uri, "stopped", view=view).endswith(f"/experiments/{experiment_id}/runs?viewStateShareKey={view}")
    saved = json.loads(mlflow.MlflowClient(tracking_uri=uri).get_experiment(experiment_id).tags[
        f"mlflow.sharedViewState.{view}"])
    state = json.loads(saved["state"])   # the envelope and state MLflow 3.18's UI reads
    assert saved["name"] == "sweep s" and isinstance(saved["createdAt"], int)
    assert state["orderByKey"] == "metrics.`zero_shot_accuracy`" and state["orderByAsc"] is False
    assert {"params.`optim.lr`", "metrics.`zero_shot_accuracy`", "tags.`subset`"} <= set(state["selectedColumns"])


def test_the_summary_names_every_setting_and_draws_chance(tmp_path):
    from trainer.tracking import draw_summary, summary_label
    from trainer.tune import chance_level

    row = {"trial": "0b13b_00001", "subset": "featural_max_3", "optim.lr": 0.003, "seed": 17,
           "zero_shot_accuracy": 0.3672}
    assert summary_label(row, ["optim.lr", "seed"]) == "featural_max_3\nlr=0.003\nseed=17\n(00001)"
    assert chance_level(demo_sweep(), "zero_shot_accuracy") == pytest.approx(1 / 3)
    assert chance_level(demo_sweep(), "loss") is None
    draw_summary([row, {**row, "trial": "x_00002", "zero_shot_accuracy": 0.3433}], "zero_shot_accuracy",
                 tmp_path / "summary.png", ["optim.lr", "seed"], 1 / 3)
    assert (tmp_path / "summary.png").stat().st_size > 0


# --- issue 32: a trial's configuration or data error is not retried, its cause in the summary; another Ray ----

@pytest.mark.slow
def test_a_trial_with_a_data_error_is_not_retried_and_the_summary_names_its_cause(data, tiny_cache, tmp_path,  # noqa: F811
                                                                                   capsys):
    """2 tiny trials (1 worker, 2 steps): one trains on pairs with a malformed line, the other on good pairs. The data
    error ends its trial at the first try (of 3), the summary names the file and line, the sweep's parent run fails;
    the good trial finishes. (That a crash is retried from its checkpoint: test_the_crashed_trial_resumed_...)"""
    bad = tmp_path / "bad-pairs"
    bad.mkdir()
    for path in (data / "pairs").iterdir():
        (bad / path.name).write_text(path.read_text())
    broken = bad / "eng_Latn-ell_Grek.jsonl"
    broken.write_text(broken.read_text().replace("\n", "\nnot json\n", 1))
    job = realign_job(data, tiny_cache, "full", checkpoint={"every": 0})
    job["optim"].update(max_steps=2, warmup_steps=0)
    job["alignment"]["steps"] = 1
    job["eval"]["retrieval_sentences"] = 10
    job["tracking"]["export"] = "none"
    rows, uri = run_test_sweep(tmp_path, job, {
        "name": "bad-data", "search": {"parallel.files": {"grid": [[str(data / "pairs")], [str(bad)]]}},
        "metric": "loss", "mode": "min", "resources": {"workers": 1, "cpus_per_worker": 1}, "max_failures": 2})
    out = capsys.readouterr().out
    good, failed = sorted(rows, key=lambda r: r["trial"])
    assert good["status"] == "OK" and "error" not in good, good
    assert failed["status"] == "ERROR", failed
    assert failed["error"].startswith("DataError: ") and f"{broken}:2: not valid JSON" in failed["error"]
    assert f"trial {failed['trial']} failed: DataError: {broken}:2: not valid JSON" in out
    store = tmp_path / "sweeps" / "bad-data"
    [result_file] = (store / "tune").glob(f"*{failed['trial']}*/result.json")
    reports = [json.loads(line) for line in result_file.read_text().splitlines()]
    assert reports[-1]["attempts"] == 1                            # max_failures 2: not retried
    assert "error" in (store / "summary.csv").read_text().splitlines()[0].split(",")
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = [r for r in client.search_runs([client.get_experiment_by_name("bad-data").experiment_id])
              if r.data.tags.get("role") == "sweep-parent"][0]
    assert parent.info.status == "FAILED"


def test_a_sweep_beside_another_ray_cluster_is_one_line_naming_ray_stop_and_ray_address(tmp_path, monkeypatch,
                                                                                        capsys):
    """`ray start` left a cluster on this machine (its address in RAY_TMPDIR/ray/ray_current_cluster): Ray joins
    it and refuses the local Ray's num_cpus. One line, what Ray said and the ways out, exit 2, nothing written."""
    import ray

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"recipe": "stage1", "data": {"files": ["x.jsonl"]}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "beside", "job": "job.yaml", "search": {"optim.lr": {"grid": [1e-3]}},
        "output_dir": str(tmp_path / "sweeps")}))
    assert main([str(tmp_path / "sweep.yaml")]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "another Ray cluster runs on this machine (127.0.0.1:1" in line and "num_cpus" in line
    assert "`ray stop`" in line and "RAY_ADDRESS=auto" in line and "RAY_ADDRESS=local" in line
    # no traceback of Ray's ValueError (not "Traceback" itself: a logging handler an earlier test bound to its
    # captured stream may print a "Logging error" one)
    assert err.count("When connecting to an existing cluster") == 1 and not ray.is_initialized()
    assert not (tmp_path / "sweeps").exists()


def test_a_full_disk_in_a_sweep_is_named_by_report(tmp_path, monkeypatch, capsys):
    """A write of the driver (sweep_state.json, summary.csv, the MLflow store) on a full disk: trainer.errors'
    disk-full message, with the path and the free space; exit 2, no traceback."""
    import errno

    import trainer.tune as tune_module

    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"recipe": "stage1", "data": {"files": ["x.jsonl"]}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "full", "job": "job.yaml", "search": {"optim.lr": {"grid": [1e-3]}},
        "overrides": ["checkpoint.every=50"],   # no warning logged: an earlier test's log handler may hold a closed stderr
        "output_dir": str(tmp_path / "sweeps")}))
    state = tmp_path / "sweeps" / "full" / "sweep_state.json"

    def no_space(sweep, sweep_dir=None, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(state))

    monkeypatch.setattr(tune_module, "run_sweep", no_space)
    assert main([str(tmp_path / "sweep.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"error: disk full while writing {state} (free space on " in err and "tune.py" not in err
