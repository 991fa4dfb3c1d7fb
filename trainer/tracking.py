"""MLflow tracking: the only module that imports mlflow.

Writing: `Tracker` (one run, rank 0), the sweep's parent run (`start_parent_run`,
`finish_parent_run`, `close_child_runs`), buffered runs (`upload_buffer`). Reading, for
`trainer.report`: `read_runs` (an experiment's runs, or a parent run's children) and `read_run`
return runs as plain dicts, `experiment_names` lists a store's experiments, `log_report` attaches
a report to the sweep's parent run.

Default store: $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import mlflow

from trainer.config import TrackingConfig
from trainer.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def system_metrics_on(cfg: TrackingConfig) -> bool:
    """`tracking.system_metrics`: true/false as given; auto = on when CUDA is available."""
    if cfg.system_metrics == "auto":
        import torch

        return torch.cuda.is_available()
    return bool(cfg.system_metrics)


TRACKED_PACKAGES = ("torch", "transformers", "peft", "deepspeed", "ray", "mlflow")


def software_tags() -> dict[str, str]:
    """What code a run ran: `version.<package>` for torch, transformers, peft, deepspeed, ray and mlflow (those
    installed), and `git_commit` (+ `git_dirty`: true when tracked files differ from it) of the trainer's
    checkout, when it runs from one."""
    import subprocess
    from importlib import metadata

    tags = {}
    for package in TRACKED_PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    checkout = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if (checkout / ".git").exists() and (commit := git("rev-parse", "HEAD")):
        tags["git_commit"] = commit
        changes = git("status", "--porcelain", "--untracked-files=no")
        if changes is not None:
            tags["git_dirty"] = str(bool(changes)).lower()
    return tags


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server (http/https URI) must answer within `timeout` seconds; TrackingError names the URI.

    MLflow's own client retries an unreachable server for minutes before failing; this probe
    makes the refusal immediate. File and database stores are not probed.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return   # the server answered (an older server without /health, or one behind an auth proxy)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking.uri: the MLflow server {uri} cannot be reached ({reason}); start it, fix "
                            f"tracking.uri / $MLFLOW_TRACKING_URI, or use a local store such as "
                            f"sqlite:///mlflow.db") from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"model.lora.r": 16, ...} for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


BUFFER_FILE = "mlflow_buffer.jsonl"   # in the run directory: what a run tracked while its server was away


class RunBuffer:
    """What a run would have sent to MLflow, as JSON lines in OUTPUT_DIR/mlflow_buffer.jsonl.

    One event a line: `start` (experiment, run name, tags, params), `metrics` (with step),
    `artifact` (a local path under the run directory and the artifact folder), `end` (status).
    `upload_buffer` replays them into a store later (`python -m trainer.tracking upload RUN_DIR`).
    """

    def __init__(self, path: Path):
        self.path = path

    def add(self, **event: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")


class Tracker:
    """One MLflow run; a no-op when `enabled` is False (ranks other than 0).

    `report(metrics, step)`, when given, is called with every metric row on every rank,
    enabled or not (Ray Train needs `ray.train.report` from all workers). With `buffer`, nothing
    goes to MLflow: every call is recorded in the run directory for a later upload.
    """

    def __init__(self, cfg: TrackingConfig, enabled: bool = True,
                 report: Callable[[dict[str, float], int], None] | None = None, buffer: Path | None = None):
        self.cfg = cfg
        self.enabled = enabled
        self.report = report
        self.run_id: str | None = None
        self.buffer = RunBuffer(buffer) if buffer is not None and enabled else None

    def start(self, config: dict[str, Any], run_id: str | None = None, tags: dict[str, str] | None = None) -> str | None:
        """Start (or with `run_id` continue) a run and log the resolved config as params; its tags: `software_tags()`,
        `tracking.tags`, then `tags`. MLflow system metrics as `tracking.system_metrics` says."""
        if not self.enabled:
            return None
        tags = {**software_tags(), **self.cfg.tags, **(tags or {})}
        if self.buffer is not None:
            self.buffer.add(event="start", experiment=self.cfg.experiment, run_name=self.cfg.run_name,
                            parent_run_id=self.cfg.parent_run_id, tags=tags,
                            params={k: str(v)[:6000] for k, v in flatten(config).items()})
            return None
        mlflow.set_tracking_uri(tracking_uri(self.cfg))
        mlflow.set_experiment(self.cfg.experiment)
        if self.cfg.parent_run_id:
            tags["mlflow.parentRunId"] = self.cfg.parent_run_id
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.cfg.run_name, tags=tags,
                               log_system_metrics=system_metrics_on(self.cfg))
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(config).items()})
        return self.run_id

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags of the run (rank 0), e.g. what it ran on; buffered like everything else when offline."""
        tags = {k: str(v) for k, v in tags.items()}
        if self.buffer is not None:
            self.buffer.add(event="tags", tags=tags)
        elif self.enabled:
            mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log a metric row at `step`. MLflow's asynchronous logging: the row is queued and sent by a background
        thread, so a slow store or server does not hold up training; `flush` (before every checkpoint) and
        `end` wait for the queue."""
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.buffer is not None:
            self.buffer.add(event="metrics", metrics=metrics, step=step)
        elif self.enabled:
            mlflow.log_metrics(metrics, step=step, synchronous=False)
        if self.report is not None:
            self.report(metrics, step)

    def flush(self) -> None:
        """Wait until every metric row logged so far is in the store (a checkpoint's steps are never lost)."""
        if self.enabled and self.buffer is None and self.run_id is not None:
            mlflow.flush_async_logging()

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        if self.buffer is not None:
            self.buffer.add(event="artifact", path=str(Path(local_dir).resolve()), artifact_path=artifact_path)
        elif self.enabled:
            mlflow.log_artifacts(local_dir, artifact_path)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.buffer is not None:
            self.buffer.add(event="artifact", path=str(Path(local_path).resolve()), artifact_path=artifact_path)
        elif self.enabled:
            mlflow.log_artifact(local_path, artifact_path)

    def close_abandoned(self, run_id: str, superseded_by: str | None) -> None:
        """Mark `run_id` KILLED if it is still RUNNING (its process died); store errors are only logged."""
        if not self.enabled:
            return
        client = mlflow.MlflowClient(tracking_uri=tracking_uri(self.cfg))
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "superseded_by", str(superseded_by))
                client.set_terminated(run_id, status="KILLED")
        except Exception as e:  # noqa: BLE001 - bookkeeping must not stop training
            logging.getLogger(__name__).warning("mlflow: cannot close abandoned run %s: %s", run_id, e)

    def end(self, status: str = "FINISHED") -> None:
        if self.buffer is not None:
            self.buffer.add(event="end", status=status)
            return
        if self.enabled and self.run_id is not None:
            self.flush()
            mlflow.end_run(status=status)


# --- sweeps: one parent run per sweep, children opened by the trials' rank 0 ----------------------

def start_parent_run(uri: str, experiment: str, name: str, sweep_config: dict[str, Any],
                     run_id: str | None = None) -> str:
    """Create (or with `run_id` reopen) the sweep's parent run and return its id; it stays open."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    client = mlflow.MlflowClient(tracking_uri=uri)
    if run_id is None:
        run = client.create_run(mlflow.get_experiment_by_name(experiment).experiment_id, run_name=name,
                                tags={"sweep": name, "role": "sweep-parent"})
        run_id = run.info.run_id
        for key, value in flatten(sweep_config).items():
            client.log_param(run_id, key, str(value)[:6000])
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


def finish_parent_run(uri: str, run_id: str, rows: list[dict[str, Any]], metric: str, mode: str, out_dir,
                      status: str = "FINISHED") -> None:
    """Attach the summary table (CSV) and a plot of `metric` per trial to the parent run, then close it."""
    import csv
    import io
    from pathlib import Path

    from trainer.fsutil import write_atomic

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    cols = list(dict.fromkeys(k for row in rows for k in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "summary.csv", table.getvalue())
    labels = [f"{r.get('trial', '?')}\n{r.get('subset', '')}" for r in rows]
    values = [float(r[metric]) if r.get(metric) is not None else float("nan") for r in rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    ax.bar(range(len(rows)), values)
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title("final " + metric + " per trial")
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=100)
    plt.close(fig)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.log_artifact(run_id, str(out / "summary.csv"))
    client.log_artifact(run_id, str(out / "summary.png"))
    finite = [v for v in values if v == v]
    if finite:
        client.log_metric(run_id, f"best_{metric}", min(finite) if mode == "min" else max(finite))
    client.set_terminated(run_id, status=status)   # FINISHED, FAILED, or KILLED (reopened by --resume)


TRIAL_STATUS_TO_RUN = {"OK": "FINISHED", "ERROR": "FAILED", "STOPPED": "KILLED", "INCOMPLETE": "KILLED"}


def close_child_runs(uri: str, parent_run_id: str, trial_status: dict[str, str]) -> dict[str, str]:
    """End every child run of the sweep still RUNNING, by its trial's outcome; returns {run id: status set}.

    `trial_status`: Tune trial id (the child's `trial_id` tag) -> the summary's status (OK, ERROR,
    STOPPED, INCOMPLETE). A trial that raised after its retries ends FAILED, one the scheduler (ASHA)
    stopped or that was interrupted ends KILLED (its workers were killed before they could end the run),
    an unknown trial KILLED. Every child with a known trial also gets the tag `trial_status`.
    Superseded attempts (tag `superseded_by`) are already closed and left alone.
    """
    client = mlflow.MlflowClient(tracking_uri=uri)
    closed: dict[str, str] = {}
    for run in _children(client, parent_run_id):
        tags, run_id = run.data.tags, run.info.run_id
        status = trial_status.get(tags.get("trial_id", ""))
        if status is not None and "superseded_by" not in tags:
            client.set_tag(run_id, "trial_status", status)
        if run.info.status == "RUNNING":
            closed[run_id] = TRIAL_STATUS_TO_RUN.get(status, "KILLED")
            client.set_terminated(run_id, status=closed[run_id])
    return closed


# --- reading runs back (trainer.report) ----------------------------------------------------------

def _children(client, parent_run_id: str) -> list:
    """The child runs of `parent_run_id` (a sweep's trials live in its parent's experiment)."""
    experiment = client.get_run(parent_run_id).info.experiment_id
    return _search_all(client, [experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def _search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run matching `filter_string` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _as_record(run) -> dict[str, Any]:
    return {"run_id": run.info.run_id, "name": run.info.run_name or run.info.run_id[:8],
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "experiment_id": run.info.experiment_id, "params": dict(run.data.params),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or k == "mlflow.parentRunId"},
            "metrics": dict(run.data.metrics)}


def read_runs(uri: str, experiment: str | None = None, parent_run_id: str | None = None) -> list[dict[str, Any]]:
    """The runs of an experiment, or the children of a sweep's parent run, as plain dicts.

    Each: run_id, name, status (RUNNING, FINISHED, FAILED, KILLED), start_time, end_time (ms),
    experiment_id, params (the flattened config), tags (MLflow's own `mlflow.*` tags left out but the
    parent id), metrics (each metric's latest value). With `parent_run_id`: its children (in its
    experiment); with `experiment` only: every run of it except sweep parents (tag `role`). Oldest first.
    """
    client = mlflow.MlflowClient(tracking_uri=uri)
    if parent_run_id is not None:
        runs = _children(client, parent_run_id)
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise TrackingError(f"no MLflow experiment {experiment!r} in {uri}; "
                                f"its experiments: {', '.join(experiment_names(uri)) or 'none'}")
        runs = [r for r in _search_all(client, [found.experiment_id]) if r.data.tags.get("role") != "sweep-parent"]
    return sorted((_as_record(r) for r in runs), key=lambda r: (r["start_time"] or 0, r["name"]))


def read_run(uri: str, run_id: str) -> dict[str, Any]:
    """One run as `read_runs` returns it; TrackingError when the store does not know it."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        return _as_record(client.get_run(run_id))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"MLflow run {run_id} not found in {uri} ({e.message.splitlines()[0]})") from None


def experiment_names(uri: str) -> list[str]:
    """The names of the store's experiments that hold at least one run."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    return sorted(e.name for e in client.search_experiments()
                  if client.search_runs([e.experiment_id], max_results=1))


def log_report(uri: str, run_id: str, folder: str | Path, artifact_path: str = "report") -> None:
    """Attach every file of `folder` (a report) to the run `run_id` under `artifact_path`; its status is kept."""
    mlflow.MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(folder), artifact_path)


def upload_buffer(run_dir: str | Path, uri: str | None = None) -> list[str]:
    """Replay OUTPUT_DIR/mlflow_buffer.jsonl into a tracking store -> the ids of the runs made (one per `start`).

    The file is renamed to `mlflow_buffer.uploaded.jsonl` afterwards, so a second upload finds
    nothing. `uri`: the store (default: `tracking.uri` of the run's config.yaml, else
    $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
    """
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / BUFFER_FILE
    if not path.is_file():
        raise TrackingError(f"{path}: no buffered tracking (the run reached its server, or was uploaded already)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    uri = uri or (config or {}).get("tracking", {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    run_ids: list[str] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind = event.pop("event")
        if kind == "start":
            if mlflow.active_run() is not None:
                mlflow.end_run("KILLED")   # an attempt that never ended (it was killed)
            mlflow.set_experiment(event["experiment"])
            tags = dict(event["tags"])
            if event.get("parent_run_id"):
                tags["mlflow.parentRunId"] = event["parent_run_id"]
            run = mlflow.start_run(run_name=event.get("run_name"), tags={**tags, "uploaded_from": str(run_dir)})
            mlflow.log_params(event["params"])
            run_ids.append(run.info.run_id)
        elif kind == "metrics":
            mlflow.log_metrics(event["metrics"], step=event["step"])
        elif kind == "tags":
            mlflow.set_tags(event["tags"])
        elif kind == "artifact" and Path(event["path"]).exists():
            target = Path(event["path"])
            (mlflow.log_artifacts if target.is_dir() else mlflow.log_artifact)(str(target), event["artifact_path"])
        elif kind == "end":
            mlflow.end_run(event["status"])
    if mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    path.rename(path.with_name("mlflow_buffer.uploaded.jsonl"))
    return run_ids


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.tracking upload RUN_DIR [--uri URI]`: send a buffered run to a tracking store."""
    import argparse

    from trainer.errors import UserError, report

    parser = argparse.ArgumentParser(prog="python -m trainer.tracking", description=main.__doc__)
    parser.add_argument("command", choices=["upload"])
    parser.add_argument("run_dir", help="the run's output_dir (it holds mlflow_buffer.jsonl)")
    parser.add_argument("--uri", default=None, help="tracking store (default: the run's tracking.uri)")
    args = parser.parse_args(argv)
    try:
        run_ids = upload_buffer(args.run_dir, args.uri)
    except UserError as e:
        return report(e)
    print(f"uploaded {len(run_ids)} run(s): {', '.join(run_ids)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
