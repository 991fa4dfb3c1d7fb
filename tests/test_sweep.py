"""Sweep files validate fully before Ray starts, and errors name the key."""

import pytest
import yaml

from trainer.config import ConfigError, JobConfig, validate
from trainer.sweep import grid_points, load_sweep
from trainer.tune import format_table, param_space, process_group_timeout, trial_job, trial_tags

JOB = {"recipe": "stage1", "data": {"files": ["x.jsonl"]}, "optim": {"max_steps": 10}}


def write_sweep(tmp_path, **sweep):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(JOB))
    body = {"name": "t", "job": "job.yaml", **sweep}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_grid_and_random_axes_become_tune_objects(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, search={"optim.lr": {"grid": [1e-3, 3e-3]},
                                                     "model.lora.r": {"choice": [4, 8]},
                                                     "optim.weight_decay": {"uniform": [0.0, 0.1]}}))
    assert sweep.grid_size() == 2
    assert grid_points(sweep) == [{"optim.lr": 1e-3}, {"optim.lr": 3e-3}]
    space = param_space(sweep)
    assert set(space["settings"]) == {"optim.lr", "model.lora.r", "optim.weight_decay"}
    assert space["settings"]["optim.lr"] == {"grid_search": [1e-3, 3e-3]}


@pytest.mark.parametrize("search, needle", [
    ({"model.lora.rr": {"grid": [4]}}, "search.model.lora.rr"),                     # unknown job key
    ({"model.lora.r": {"grid": [4, 0]}}, "search.model.lora.r = 0"),                # impossible value
    ({"optim.lr": {"loguniform": [0.0, 1.0]}}, "loguniform: bounds must be positive"),
    ({"optim.lr": {"uniform": [1.0, 0.1]}}, "low must be below high"),
    ({"optim.lr": {"grid": [1], "choice": [2]}}, "exactly one of"),
    ({"optim.warmup_steps": {"randint": [0, 50]}}, "warmup_steps"),                 # bound breaks a cross-field check
])
def test_bad_search_fails_naming_the_key(tmp_path, search, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, search=search))
    assert needle in str(err.value)


def test_bad_sweep_keys_and_subsets_fail(tmp_path):
    with pytest.raises(ConfigError, match="max_concurent_trials: unknown key"):
        load_sweep(write_sweep(tmp_path, max_concurent_trials=2))
    with pytest.raises(ConfigError, match="subsets.file: .* not found"):
        load_sweep(write_sweep(tmp_path, subsets={"key": "data.files", "file": "nope.yaml"}))
    (tmp_path / "subsets.yaml").write_text(yaml.safe_dump({"subsets": {"a": {"languages": ["x.jsonl"]}}}))
    with pytest.raises(ConfigError, match=r"\['b'\] not in .*available: a"):
        load_sweep(write_sweep(tmp_path, subsets={"key": "data.files", "file": "subsets.yaml", "names": ["b"]}))


def test_trial_job_applies_settings_subset_and_child_run_tags(tmp_path):
    (tmp_path / "subsets.yaml").write_text(yaml.safe_dump({"subsets": {
        "s1": {"languages": ["a.jsonl", "b.jsonl"], "heuristic": "random", "size": 2, "seed": 17}}}))
    sweep = load_sweep(write_sweep(tmp_path, search={"optim.lr": {"grid": [0.01]}},
                                   subsets={"key": "data.files", "file": "subsets.yaml"}))
    raw = trial_job(sweep, {"settings": {"optim.lr": 0.01}, "subset": "s1"}, tmp_path / "trial0", "PARENT", "trial0")
    job = validate(raw, JobConfig)
    assert job.optim.lr == 0.01 and job.data.files == ["a.jsonl", "b.jsonl"]
    assert job.output_dir == str(tmp_path / "trial0")
    assert job.tracking.parent_run_id == "PARENT"
    assert job.tracking.run_name == "s1 optim.lr=0.01 (trial0)"     # what the trial is, not only its Tune id
    tags = trial_tags(sweep, {"optim.lr": 0.01}, "s1")
    assert tags == {"sweep": "t", "subset": "s1", "languages": "a.jsonl,b.jsonl", "subset_heuristic": "random",
                    "subset_size": "2", "subset_seed": "17", "setting.optim.lr": "0.01"}
    assert job.tracking.tags == tags


def test_a_trial_in_tunes_folder_logs_to_the_drivers_relative_sqlite_store(tmp_path, monkeypatch):
    """The default store `sqlite:///mlflow.db` is relative: a trial runs in Tune's own working folder, so its job must
    name the driver's file (once it named a new mlflow.db in Tune's folder, and the sweep's children went missing)."""
    driver = tmp_path / "checkout"
    driver.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = load_sweep(write_sweep(tmp_path, search={"optim.lr": {"grid": [0.01]}}))
    monkeypatch.chdir(tmp_path)   # Tune's folder, not the driver's
    raw = trial_job(sweep, {"settings": {"optim.lr": 0.01}}, tmp_path / "trial0", "PARENT", "trial0",
                    workdir=str(driver))
    assert raw["tracking"]["uri"] == f"sqlite:///{driver / 'mlflow.db'}"
    # the trial's process group (made by Ray's TorchConfig) waits as long as the job's engine says
    assert process_group_timeout(raw) == 3600
    raw["engine"] = {**raw.get("engine", {}), "timeout_minutes": 90}
    assert process_group_timeout(raw) == 5400


def test_summary_table_formats_every_column():
    text = format_table([{"trial": "t0", "subset": "a", "loss": 0.51234}, {"trial": "t1", "subset": "b", "loss": None}])
    lines = text.splitlines()
    assert lines[0].split() == ["trial", "subset", "loss"] and "0.5123" in lines[2] and lines[3].split() == ["t1", "b"]


def test_trial_status_tells_errors_results_early_stops_and_unfinished_trials_apart():
    from types import SimpleNamespace

    from trainer.tune import trial_status

    def status(error=None, metrics=None):
        return trial_status(SimpleNamespace(error=error, metrics=metrics), "acc", max_steps=10)

    assert status(RuntimeError("x"), {"acc": 0.5, "step": 10}) == "ERROR"
    assert status(None, {"acc": 0.5, "step": 10}) == "OK"
    assert status(None, {"acc": 0.5, "step": 4}) == "STOPPED"          # ASHA ended it at step 4
    assert status(None, {"loss": 1.0, "step": 3}) == "INCOMPLETE"      # interrupted before the metric
    assert status(None, None) == "INCOMPLETE"


def test_a_sweep_whose_trials_cannot_resume_warns(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="trainer.sweep"):
        load_sweep(write_sweep(tmp_path))                      # checkpoint.every 500 > max_steps 10
    assert "retried from step 0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer.sweep"):
        load_sweep(write_sweep(tmp_path, overrides=["checkpoint.every=5"]))
    assert "retried from step 0" not in caplog.text


def test_subset_names_give_heuristic_and_size_when_the_metadata_does_not(tmp_path):
    from trainer.sweep import subset_metadata

    def meta(name: str, n: int) -> dict:
        return {k: v for k, v in subset_metadata(name, {"languages": ["x"] * n}).items() if k != "languages"}

    assert meta("featural_max_3", 3) == {"heuristic": "featural_max", "size": 3}
    assert meta("random_5_s17", 5) == {"heuristic": "random", "size": 5, "seed": 17}
    assert meta("mine", 2) == {"heuristic": "inline", "size": 2}
    assert meta("featural_max_3", 2) == {"heuristic": "inline", "size": 2}   # the number is not its size
    assert subset_metadata("a_2", {"languages": ["x", "y"], "heuristic": "featural_min", "seed": None}) == {
        "languages": ["x", "y"], "heuristic": "featural_min", "size": 2}      # the metadata wins; no null seed
    sweep = load_sweep(write_sweep(tmp_path, subsets={"key": "data.files", "inline": {
        "syntactic_min_2": ["deu_Latn", "ell_Grek"], "mine": ["deu_Latn"]}}))
    tags = trial_tags(sweep, {}, "syntactic_min_2")
    assert tags["subset_heuristic"] == "syntactic_min" and tags["subset_size"] == "2"
    assert trial_tags(sweep, {}, "mine")["subset_heuristic"] == "inline"
    raw = trial_job(sweep, {"settings": {}, "subset": "mine"}, tmp_path / "t", "PARENT", "run_trial_ab12c_00001",
                    "ab12c_00001")
    assert validate(raw, JobConfig).tracking.tags["trial_id"] == "ab12c_00001"   # how the driver finds its run


def test_trial_ids_come_from_reports_or_the_trial_directory():
    from types import SimpleNamespace

    from trainer.tune import result_trial_id

    assert result_trial_id(SimpleNamespace(metrics={"trial_id": "0b13b_00003"}, path=None)) == "0b13b_00003"
    never_reported = SimpleNamespace(metrics={}, path="/s/tune/run_trial_0b13b_00002_2_subset=x,2026-11-27_10-00-00")
    assert result_trial_id(never_reported) == "0b13b_00002"


def test_child_runs_left_running_are_closed_by_their_trials_outcome(tmp_path):
    """ASHA-stopped and interrupted trials -> KILLED, failed for good -> FAILED; finished and superseded runs kept."""
    import mlflow

    from trainer import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_parent_run(uri, "hygiene", "s", {"name": "s"})
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("hygiene").experiment_id

    def child(trial: str, status: str = "RUNNING", **tags) -> str:
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "trial_id": trial, **tags}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run, status)
        return run

    runs = {"stopped": child("t_00000"), "failed": child("t_00001"), "done": child("t_00002", "FINISHED"),
            "unknown": child("t_00009"), "superseded": child("t_00003", "KILLED", superseded_by="x"),
            "retried": child("t_00003", "FINISHED")}
    other = client.create_run(experiment).info.run_id   # not a child of this sweep
    closed = tracking.close_child_runs(uri, parent, {"t_00000": "STOPPED", "t_00001": "ERROR", "t_00002": "OK",
                                                     "t_00003": "OK"})
    assert closed == {runs["stopped"]: "KILLED", runs["failed"]: "FAILED", runs["unknown"]: "KILLED"}
    status = {name: client.get_run(run) for name, run in runs.items()}
    assert {name: r.info.status for name, r in status.items()} == {
        "stopped": "KILLED", "failed": "FAILED", "done": "FINISHED", "unknown": "KILLED", "superseded": "KILLED",
        "retried": "FINISHED"}
    assert status["stopped"].data.tags["trial_status"] == "STOPPED" and "trial_status" not in status["superseded"].data.tags
    assert client.get_run(other).info.status == "RUNNING"
