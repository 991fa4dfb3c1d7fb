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
    """What code a run ran and how it was started: `version.<package>` for torch, transformers, peft, deepspeed,
    ray and mlflow (those installed), `git_commit` (+ `git_dirty`: true when tracked files differ from it) as
    `code_tags` finds them, and `launcher` (`detect_launcher`)."""
    from importlib import metadata

    tags = {}
    for package in TRACKED_PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags | code_tags() | {"launcher": detect_launcher()}


GIT_COMMIT_ENV, GIT_DIRTY_ENV, LAUNCHER_ENV = "TRAINER_GIT_COMMIT", "TRAINER_GIT_DIRTY", "TRAINER_LAUNCHER"


def code_tags() -> dict[str, str]:
    """`git_commit` and `git_dirty` of the code that runs: from $TRAINER_GIT_COMMIT / $TRAINER_GIT_DIRTY when set
    (a sweep's driver passes its checkout's to the Ray trials, whose working directory is a copy without `.git`;
    `python -m trainer.tune --runtime-env` puts them in a `ray job submit`), else from the trainer's checkout
    when it runs from one; {} when neither is known."""
    if os.environ.get(GIT_COMMIT_ENV):
        tags = {"git_commit": os.environ[GIT_COMMIT_ENV]}
        return tags | ({"git_dirty": os.environ[GIT_DIRTY_ENV]} if os.environ.get(GIT_DIRTY_ENV) else {})
    return checkout_git_tags(Path(__file__).resolve().parents[1])


def checkout_git_tags(checkout: Path) -> dict[str, str]:
    """`git_commit` and `git_dirty` (tracked files changed) of a git checkout; {} when it is none."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    tags: dict[str, str] = {}
    if (checkout / ".git").exists() and (commit := git("rev-parse", "HEAD")):
        tags["git_commit"] = commit
        changes = git("status", "--porcelain", "--untracked-files=no")
        if changes is not None:
            tags["git_dirty"] = str(bool(changes)).lower()
    return tags


def detect_launcher() -> str:
    """What started this process: $TRAINER_LAUNCHER when set (a Ray Train worker: `ray`), else `deepspeed` (its
    launcher's CROSS_RANK), `torchrun` (TORCHELASTIC_RUN_ID), `srun` (a SLURM job step), `ray` (a `ray job submit`
    driver), else `python`."""
    env = os.environ
    if env.get(LAUNCHER_ENV):
        return env[LAUNCHER_ENV]
    if "CROSS_RANK" in env and "LOCAL_SIZE" in env:
        return "deepspeed"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return "srun"
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in env:
        return "ray"
    return "python"


SQLITE_HEADER = b"SQLite format 3\x00"   # the first 16 bytes of every SQLite database file


def sqlite_file(uri: str) -> Path | None:
    """The file of a local SQLite store (`sqlite:///mlflow.db`, `sqlite:////abs/path.db`); None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if name in ("", ":memory:") else Path(name)


def check_store(uri: str, key: str = "tracking.uri") -> None:
    """A local SQLite store must be an SQLite file, or a new name in a folder that exists (MLflow creates the file);
    TrackingError naming the file otherwise (MLflow itself fails with a database traceback that names no path)."""
    path = sqlite_file(uri)
    if path is None:
        return
    where = f"{key}: {uri}: {path.absolute()}"
    if path.is_dir():
        raise TrackingError(f"{where} is a folder, not an SQLite database file; name a file (e.g. sqlite:///mlflow.db)")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise TrackingError(f"{where} is not an SQLite database (it starts with {head!r}); point {key} at an "
                                f"MLflow SQLite store, or at a new file name (MLflow creates it)")
    elif not path.parent.is_dir():
        raise TrackingError(f"{where}: the folder {path.parent} does not exist (MLflow creates the database file, "
                            f"not its folder)")


def check_reachable(uri: str, timeout: float = 5.0, key: str = "tracking.uri") -> None:
    """A tracking server (http/https URI) must answer within `timeout` seconds; TrackingError names the URI.

    MLflow's own client retries an unreachable server for minutes before failing; this probe
    makes the refusal immediate. A local SQLite store is checked to be one (`check_store`); other file
    and database stores are not probed.
    """
    check_store(uri, key)
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
        raise TrackingError(f"{key}: the MLflow server {uri} cannot be reached ({reason}); start it, fix "
                            f"{key} / $MLFLOW_TRACKING_URI, or use a local store such as "
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


def run_params(config: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """A run's MLflow params: the flattened config, where a sweep trial's subset (tags `subset`, `languages`) fills
    every `*.subset` key the config leaves empty (`parallel.subset: featural_max_3 (amh_Ethi,swh_Latn,zho_Hans)`):
    the trial's languages came as a list, but its params should name the subset too."""
    params = flatten(config)
    if tags.get("subset"):
        named = f"{tags['subset']} ({tags.get('languages', '')})"
        params |= {key: named for key, value in params.items() if key.rsplit(".", 1)[-1] == "subset" and value is None}
    return params


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
                            params={k: str(v)[:6000] for k, v in run_params(config, tags).items()})
            return None
        set_experiment(tracking_uri(self.cfg), self.cfg.experiment)
        if self.cfg.parent_run_id:
            tags["mlflow.parentRunId"] = self.cfg.parent_run_id
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.cfg.run_name, tags=tags,
                               log_system_metrics=system_metrics_on(self.cfg))
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in run_params(config, tags).items()})
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

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"   # MLflow 3's UI opens an experiment by its kind
TRAINING_KIND = "custom_model_development"       # its runs view (the GenAI kinds open on traces)


def set_experiment(uri: str, experiment: str) -> str:
    """Make (or find) the experiment, marked as one of training runs (`mlflow.experimentKind`
    custom_model_development, unless a kind is set already): MLflow 3.18's UI then opens it on its runs, not on
    the GenAI "send your first trace" page. Returns its id."""
    mlflow.set_tracking_uri(uri)
    found = mlflow.set_experiment(experiment)
    if EXPERIMENT_KIND_TAG not in (found.tags or {}):
        mlflow.MlflowClient(tracking_uri=uri).set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return found.experiment_id


def start_parent_run(uri: str, experiment: str, name: str, sweep_config: dict[str, Any],
                     run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create (or with `run_id` reopen) the sweep's parent run and return its id; it stays open.

    Its tags: `sweep`, `role: sweep-parent`, the versions, commit and launcher (`software_tags`), then `tags`."""
    experiment_id = set_experiment(uri, experiment)
    client = mlflow.MlflowClient(tracking_uri=uri)
    if run_id is None:
        run = client.create_run(experiment_id, run_name=name,
                                tags={**software_tags(), **(tags or {}), "sweep": name, "role": "sweep-parent"})
        run_id = run.info.run_id
        for key, value in flatten(sweep_config).items():
            client.log_param(run_id, key, str(value)[:6000])
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


VIEW_TAG_PREFIX = "mlflow.sharedViewState."   # MLflow 3's saved (shared) views of an experiment's runs page


def save_runs_view(uri: str, experiment: str, sweep: str, metric: str, mode: str, settings: list[str],
                   parent_run_id: str | None = None) -> str:
    """Save a view of the experiment's runs page for the sweep (an experiment tag `mlflow.sharedViewState.<key>`,
    what the UI's share button writes): its runs only (`tags.sweep`), best `metric` first, and as columns the
    subset, its languages, every searched setting (`settings`, job keys: params), the metric and the trial's
    status; the parent run expanded. Returns the key for `runs_url(view=...)`."""
    import time

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    state = {"searchFilter": f"tags.sweep = '{sweep}'", "orderByKey": f"metrics.`{metric}`",
             "orderByAsc": mode == "min",
             "selectedColumns": ["tags.`subset`", *(f"params.`{key}`" for key in settings), f"metrics.`{metric}`",
                                 "tags.`languages`", "tags.`trial_status`"],
             "runsExpanded": {parent_run_id: True} if parent_run_id else {}}
    key = f"sweep-{sweep}"
    now = int(time.time() * 1000)
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(
        {"name": f"sweep {sweep}", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))
    return key


def runs_url(uri: str, experiment: str, metric: str | None = None, mode: str = "max",
             sweep: str | None = None, view: str | None = None) -> str:
    """The MLflow UI's runs view of `experiment`: with `view`, a saved view (`save_runs_view`: filter, sort and
    columns); else sorted by `metric` (best first) and filtered to the sweep's runs (`tags.sweep`), which is all
    of the state the UI takes from its URL (`searchFilter`, `orderByKey`, `orderByAsc`; no columns).

    An http(s) store is its own UI; any other store's runs are served by `mlflow ui --backend-store-uri URI`,
    at http://127.0.0.1:5000 by default."""
    from urllib.parse import urlencode

    found = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    query: dict[str, str] = {}
    if view:   # the UI ignores a shared view when the URL holds search state of its own
        query["viewStateShareKey"] = view
    else:
        if sweep:
            query["searchFilter"] = f"tags.sweep = '{sweep}'"
        if metric:
            query |= {"orderByKey": f"metrics.`{metric}`", "orderByAsc": str(mode == "min").lower()}
    path = f"/#/experiments/{found.experiment_id if found else ''}/runs"
    return base + path + ("?" + urlencode(query) if query else "")


def end_sweep_runs(uri: str, parent_run_id: str, status: str, reason: str) -> list[str]:
    """A sweep that stops abnormally (a signal, an error, its driver gone): every child run still RUNNING and the
    parent, if RUNNING, end with `status` (KILLED or FAILED); each gets the tag `ended_by: reason`.
    Returns the ids closed. Store errors are logged, not raised (this runs while the process is going down)."""
    closed: list[str] = []
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        for run in _children(client, parent_run_id):
            if run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "ended_by", reason)
                client.set_terminated(run.info.run_id, status=status)
                closed.append(run.info.run_id)
        if client.get_run(parent_run_id).info.status == "RUNNING":
            client.set_tag(parent_run_id, "ended_by", reason)
            client.set_terminated(parent_run_id, status=status)
            closed.append(parent_run_id)
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).warning("mlflow: cannot end the sweep's runs (%s): %s", parent_run_id, e)
    return closed


def watch_driver(pid: int, uri: str, parent_run_id: str, poll_s: float = 2.0, store_every_s: float = 60.0) -> None:
    """Wait until process `pid` (a sweep's driver) is gone; if it left the parent run RUNNING (killed with SIGKILL,
    out of memory, its node lost), end it and its RUNNING children as FAILED (`ended_by: driver-gone`).
    Returns early once the parent is closed (checked every `store_every_s`)."""
    import time

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    last_check = time.monotonic()
    client = mlflow.MlflowClient(tracking_uri=uri)
    while alive():
        time.sleep(poll_s)
        if time.monotonic() - last_check > store_every_s:
            last_check = time.monotonic()
            try:
                if client.get_run(parent_run_id).info.status != "RUNNING":
                    return
            except Exception:  # noqa: BLE001 - a store away for a moment: keep watching
                pass
    time.sleep(poll_s)   # the driver's own last writes
    end_sweep_runs(uri, parent_run_id, "FAILED", "driver-gone")


def start_watchdog(uri: str, parent_run_id: str) -> None:
    """A detached process (`python -m trainer.tracking watch`) that ends the sweep's runs if this driver dies
    without doing it. Detached twice (its own session, its starter gone), so `ray job stop`, which signals the
    driver's process tree, does not take it down with the driver."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "trainer.tracking", "watch", str(os.getpid()), uri, parent_run_id]
    try:
        starter = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True, "
                                   "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)",
             *command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        starter.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        logging.getLogger(__name__).warning("no watchdog for the sweep's MLflow runs: %s", e)


def summary_label(row: dict[str, Any], settings: list[str]) -> str:
    """A summary bar's label: the subset and every searched setting (`lr=0.003`), then the trial number."""
    def short(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    parts = [str(row["subset"])] if row.get("subset") else []
    parts += [f"{key.rsplit('.', 1)[-1]}={short(row[key])}" for key in settings if key in row]
    trial = str(row.get("trial", "?")).rsplit("_", 1)[-1]
    return "\n".join(parts + [f"({trial})"])


def draw_summary(rows: list[dict[str, Any]], metric: str, path: Path, settings: list[str] | None = None,
                 chance: float | None = None, title: str | None = None) -> None:
    """The parent run's `summary.png`: the final `metric` per trial, each bar labelled with its subset and every
    searched setting; the y axis spans the scores (not from 0: 0.343 against 0.370 must not look flat), and a
    dashed line marks `chance` when it is known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = settings if settings is not None else []
    labels = [summary_label(r, settings) for r in rows]
    values = [float(r[metric]) if r.get(metric) is not None else float("nan") for r in rows]
    finite = [v for v in values if v == v]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(rows)), 4))
    bars = ax.bar(range(len(rows)), [v if v == v else 0 for v in values], color="tab:blue")
    shown = finite + ([chance] if chance is not None else [])
    if shown:
        low, high = min(shown), max(shown)
        pad = max((high - low) * 0.25, abs(high) * 0.02, 1e-3)
        bottom = low - pad if low - pad > 0 or low < 0 else 0
        ax.set_ylim(bottom, high + pad)
    for bar, value in zip(bars, values):
        ax.annotate("n/a" if value != value else f"{value:.4g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    if chance is not None:
        ax.axhline(chance, color="tab:red", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
        ax.legend(fontsize=7, loc="best")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(title or f"final {metric} per trial", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finish_parent_run(uri: str, run_id: str, rows: list[dict[str, Any]], metric: str, mode: str, out_dir,
                      status: str = "FINISHED", settings: list[str] | None = None,
                      chance: float | None = None) -> None:
    """Attach the summary table (CSV) and a plot of `metric` per trial (`draw_summary`: `settings` are the
    searched keys, `chance` the metric's chance level when known) to the parent run, then close it."""
    import csv
    import io

    from trainer.fsutil import write_atomic

    out = Path(out_dir)
    cols = list(dict.fromkeys(k for row in rows for k in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "summary.csv", table.getvalue())
    draw_summary(rows, metric, out / "summary.png", settings, chance)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.log_artifact(run_id, str(out / "summary.csv"))
    client.log_artifact(run_id, str(out / "summary.png"))
    finite = [float(r[metric]) for r in rows if r.get(metric) is not None]
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
    given = uri is not None
    uri = uri or (config or {}).get("tracking", {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    check_reachable(uri, key="--uri" if given else "tracking.uri")
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
    import sys

    from trainer.errors import report, user_error

    parser = argparse.ArgumentParser(prog="python -m trainer.tracking", description=main.__doc__)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["watch"]:   # internal: the sweep driver's watchdog (start_watchdog)
        pid, uri, parent_run_id = argv[1:4]
        watch_driver(int(pid), uri, parent_run_id)
        return 0
    parser.add_argument("command", choices=["upload"])
    parser.add_argument("run_dir", help="the run's output_dir (it holds mlflow_buffer.jsonl)")
    parser.add_argument("--uri", default=None, help="tracking store (default: the run's tracking.uri)")
    args = parser.parse_args(argv)
    try:
        run_ids = upload_buffer(args.run_dir, args.uri)
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e, args.run_dir) is None:
            raise
        return report(e, where=args.run_dir)
    print(f"uploaded {len(run_ids)} run(s): {', '.join(run_ids)}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
