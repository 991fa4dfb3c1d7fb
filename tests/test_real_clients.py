"""The main job through its real clients, as a user runs it on a cluster (README, "Cluster set-up").

A Ray head started with `ray start --head` and an `mlflow server` (SQLite store, served artifacts, as
docker/compose.yaml runs it), both on loopback with ports of their own and state in a temp dir; Ray token
authentication on (`RAY_AUTH_MODE=token`, Ray 2.60's default once a token exists) with a token of the test's own.
A one-trial tiny sweep goes in with `ray job submit --working-dir` and the `--runtime-env-json` that
`python -m trainer.tune --runtime-env` prints: the server must hold one FINISHED parent with its FINISHED child,
the submitting checkout's commit and the launcher tags. Then a sweep whose trial cannot fit on the cluster must
fail at once, with its one message, leaving no run RUNNING. Last, a long sweep stopped with `ray job stop` once
its trial runs must leave its parent and child KILLED. Ray and the server are stopped at the end (only the
processes this test started: `ray stop` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from alignment_helpers import data, job_dict  # noqa: F401 - `data` is a fixture

ROOT = Path(__file__).resolve().parents[1]
RAY_CPUS = 2   # one trial of 1 worker x 1 CPU (+ 0.01 for its driver) fits; 3 workers do not


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=15).close()   # a loaded machine answers slowly
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f}s")


def stop_tree(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL, each process and its descendants (only the processes this test started)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def ray_processes(temp_dir: str) -> list[int]:
    """The pids of the Ray head this test started: every process that names its temp dir (GCS, raylet,
    dashboard, monitors); their descendants (workers, agents) go with them in `stop_tree`."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(env for the clients, the dashboard address, the MLflow URI): a Ray head and an MLflow server on loopback."""
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("real-clients")
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")   # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_port, dash_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"),
         "--workers", "1"],
        env=env, stdout=open(tmp / "mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker_base = 20000 + secrets.randbelow(200) * 100
    ports = {"--port": free_port(), "--dashboard-port": dash_port, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--min-worker-port": worker_base, "--max-worker-port": worker_base + 99}
    try:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address",
                        "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                        "--num-cpus", str(RAY_CPUS), "--num-gpus", "0", "--temp-dir", temp_dir,
                        "--disable-usage-stats", *(str(x) for kv in ports.items() for x in kv)],
                       env=env, check=True, capture_output=True, text=True, timeout=120)
        uri = f"http://127.0.0.1:{mlflow_port}"
        wait_for(uri + "/health", 180, "mlflow server")   # slow to start on a loaded machine
        yield env, f"http://127.0.0.1:{dash_port}", uri, tmp
    finally:
        stop_tree(ray_processes(temp_dir))
        stop_tree([server.pid])
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(cluster, workdir: Path, *args: str, timeout: float, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir WORKDIR --runtime-env-json "$(python -m trainer.tune --runtime-env)"
    -- python -m trainer.tune ...`, with the job's MLflow server in the runtime env, as the README says."""
    env, address, uri, _ = cluster
    runtime_env = subprocess.run([sys.executable, "-m", "trainer.tune", "--runtime-env"], cwd=ROOT, check=True,
                                 env={**env, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True).stdout
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", address,
               "--working-dir", str(workdir), "--runtime-env-json", runtime_env.strip(), *extra, "--",
               "python", "-m", "trainer.tune", *args]
    deadline = time.monotonic() + 60
    while True:   # the head's job agent needs a few seconds after `ray start` to take jobs (more under load)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        refused = any(sign in done.stdout + done.stderr for sign in (
            "No available agent", "Request failed with status code 500"))   # the job was not submitted
        if not refused or time.monotonic() > deadline:
            return done
        time.sleep(2)


def write_sweep(folder: Path, data: Path, tiny_cache: str, name: str, workers: int,  # noqa: F811
                max_steps: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = job_dict("realign", data, Path("unused"), tiny_cache, model="tiny:xlmr", finetune="full",
                   max_steps=max_steps, steps=2, objective="two_b", layers=-1)
    job["task"]["num_labels"] = 3
    job["eval"]["retrieval_sentences"] = 20
    job["optim"]["warmup_steps"] = 0
    job["tracking"] = {"log_every": 1, "export": "none"}
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "name": name, "job": "job.yaml", "experiment": "real-clients", "metric": "zero_shot_accuracy",
        "mode": "max", "search": {"optim.lr": {"grid": [3e-3]}},
        "resources": {"workers": workers, "cpus_per_worker": 1}, "max_failures": 0,
        "output_dir": str(folder.parent / "sweeps")}))
    return folder


def ray_job(cluster, *args: str) -> subprocess.CompletedProcess:
    env, address, _, _ = cluster
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", *args, "--address", address],
                          env=env, capture_output=True, text=True, timeout=60)


def runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("real-clients")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.mark.slow
def test_ray_job_submit_to_a_real_cluster_and_mlflow_server(cluster, data, tiny_cache):  # noqa: F811
    import mlflow

    env, _, uri, tmp = cluster
    workdir = write_sweep(tmp / "one-trial", data, tiny_cache, "one-trial", workers=1)
    done = submit(cluster, workdir, "sweep.yaml", timeout=240)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in out, out[-4000:]
    assert f"{uri}/#/experiments/" in out and "/runs?" in out, out[-3000:]   # the printed link: the runs view

    found = runs(uri)
    parents = [r for r in found if r.data.tags.get("role") == "sweep-parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in found]
    parent = parents[0]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 2 and len(children) == 1 and children[0].info.status == "FINISHED"
    child = children[0]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for run in (parent, child):   # the submitting checkout's commit, though Ray uploads no .git
        assert run.data.tags["git_commit"] == head and run.data.tags["git_dirty"] in ("true", "false")
        assert run.data.tags["launcher"] == "ray"   # a `ray job submit` driver; Ray Train workers
    assert child.data.params["parallel.subset"] is not None
    assert "zero_shot_accuracy" in child.data.metrics and "best_zero_shot_accuracy" in parent.data.metrics
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.png"} <= artifacts   # uploaded through the server (served artifacts)


@pytest.mark.slow
def test_a_sweep_that_cannot_fit_fails_at_once_and_leaves_no_run(cluster, data, tiny_cache):  # noqa: F811
    env, _, uri, tmp = cluster
    before = {r.info.run_id for r in runs(uri)}
    workdir = write_sweep(tmp / "too-big", data, tiny_cache, "too-big", workers=RAY_CPUS + 1)
    start = time.monotonic()
    done = submit(cluster, workdir, "sweep.yaml", timeout=120)
    elapsed = time.monotonic() - start
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "failed" in out, out[-4000:]
    assert "does not fit" in out and "a trial needs 3.01 CPUs" in out and f"has {RAY_CPUS} CPUs" in out, out[-4000:]
    assert "resources.cpus_per_worker" in out and "resources.workers" in out
    assert elapsed < 60, elapsed   # not Ray Train's endless minute-long waits for workers
    after = runs(uri)
    assert {r.info.run_id for r in after} == before                   # nothing started
    assert not [r for r in after if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_ray_job_stop_ends_the_parent_and_its_child_killed(cluster, data, tiny_cache):  # noqa: F811
    """`ray job stop` sends the driver SIGTERM (SIGKILL 3 s later): the parent and its running child end KILLED."""
    env, _, uri, tmp = cluster
    before = {r.info.run_id for r in runs(uri)}
    workdir = write_sweep(tmp / "stopped", data, tiny_cache, "stopped", workers=1, max_steps=2000)
    done = submit(cluster, workdir, "sweep.yaml", timeout=60, extra=("--no-wait", "--submission-id", "stop-me"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    deadline = time.monotonic() + 150
    while not [r for r in runs(uri) if r.info.run_id not in before and "mlflow.parentRunId" in r.data.tags]:
        assert time.monotonic() < deadline, ray_job(cluster, "logs", "stop-me").stdout[-3000:]
        time.sleep(1)
    stopped = ray_job(cluster, "stop", "stop-me")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 30
    while [r for r in runs(uri) if r.info.run_id not in before and r.info.status == "RUNNING"]:
        assert time.monotonic() < deadline, ray_job(cluster, "logs", "stop-me").stdout[-3000:]
        time.sleep(1)
    new = [r for r in runs(uri) if r.info.run_id not in before]
    assert len(new) == 2 and {r.info.status for r in new} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in new]
    assert {r.data.tags.get("ended_by") for r in new} == {"SIGTERM"}
    assert "was stopped" in ray_job(cluster, "status", "stop-me").stdout   # Ray's STOPPED
