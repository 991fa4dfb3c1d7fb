"""MLflow tracking: the only module that imports mlflow.

Default store: $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working directory.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import mlflow

from trainer.config import TrackingConfig
from trainer.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


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


class Tracker:
    """One MLflow run; a no-op when `enabled` is False (ranks other than 0).

    `report(metrics, step)`, when given, is called with every metric row on every rank,
    enabled or not (Ray Train needs `ray.train.report` from all workers).
    """

    def __init__(self, cfg: TrackingConfig, enabled: bool = True,
                 report: Callable[[dict[str, float], int], None] | None = None):
        self.cfg = cfg
        self.enabled = enabled
        self.report = report
        self.run_id: str | None = None

    def start(self, config: dict[str, Any], run_id: str | None = None, tags: dict[str, str] | None = None) -> str | None:
        """Start (or with `run_id` continue) a run and log the resolved config as params."""
        if not self.enabled:
            return None
        mlflow.set_tracking_uri(tracking_uri(self.cfg))
        mlflow.set_experiment(self.cfg.experiment)
        tags = {**self.cfg.tags, **(tags or {})}
        if self.cfg.parent_run_id:
            tags["mlflow.parentRunId"] = self.cfg.parent_run_id
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.cfg.run_name, tags=tags)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(config).items()})
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.enabled:
            mlflow.log_metrics(metrics, step=step)
        if self.report is not None:
            self.report(metrics, step)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            mlflow.log_artifacts(local_dir, artifact_path)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.enabled:
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
        if self.enabled and self.run_id is not None:
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
