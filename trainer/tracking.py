"""MLflow tracking: the only module that imports mlflow.

Default store: $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working directory.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow

from trainer.config import TrackingConfig

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


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
    """One MLflow run; a no-op when `enabled` is False (ranks other than 0)."""

    def __init__(self, cfg: TrackingConfig, enabled: bool = True):
        self.cfg = cfg
        self.enabled = enabled
        self.run_id: str | None = None

    def start(self, config: dict[str, Any], run_id: str | None = None, tags: dict[str, str] | None = None) -> str | None:
        """Start (or with `run_id` continue) a run and log the resolved config as params."""
        if not self.enabled:
            return None
        mlflow.set_tracking_uri(tracking_uri(self.cfg))
        mlflow.set_experiment(self.cfg.experiment)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.cfg.run_name, tags=tags)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(config).items()})
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            mlflow.log_artifacts(local_dir, artifact_path)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            mlflow.log_artifact(local_path, artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            mlflow.end_run(status=status)
