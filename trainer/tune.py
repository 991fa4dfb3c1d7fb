"""Run a sweep: `python -m trainer.tune SWEEP.yaml` or `--resume SWEEP_DIR`.

Ray Tune runs one function trial per point of the search space; each trial
starts its own Ray Train `TorchTrainer` (the Ray 2.60 pattern) whose workers
call `trainer.train.run_job`, the same entry as `python -m trainer.train`, on
a DeepSpeed engine (gloo on CPU, NCCL on GPU). Workers report metrics with
`ray.train.report`; `TuneReportCallback` forwards them to Tune.

MLflow: the driver owns one parent run per sweep; rank 0 of each trial opens a
child run tagged with the parent id, subset, languages and settings. At the
end the parent gets a summary table (CSV) and a plot.

Fault tolerance: each trial writes checkpoints to a fixed directory under the
sweep directory and reports each to Ray Train, which uploads it to the sweep's
Ray storage and deletes the trial folder's copy (kept once); a retried trial
(the sweep's `max_failures`, see `run_trial`; never one whose job raised a
configuration or data error) continues from its last checkpoint in storage; an
interrupted sweep resumes with `--resume`, skipping finished trials
(`Tuner.restore`), and its unfinished trials restore from storage as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, JobConfig, validate
from trainer.errors import UserError, report, user_error
from trainer.fsutil import write_atomic
from trainer.sweep import Sweep, load_sweep, trial_keeps_local_checkpoints

log = logging.getLogger("trainer.tune")
STATE_FILE = "sweep_state.json"
TRIALS_DIR = "trials"
# The trial function only waits on its TorchTrainer, whose workers hold the real resources;
# Tune needs a non-empty request, and a local Ray gets one spare logical CPU for these.
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one sweep shares (passed to Tune with `tune.with_parameters`)."""

    sweep: Sweep
    sweep_dir: str
    parent_run_id: str | None
    workdir: str                      # the driver's working directory: relative job paths resolve here
    crash_at_step: int | None = None  # tests: each trial's workers raise once at this step
    crash_loses_disk: bool = False    # tests: ... and the trial's local checkpoints are gone (another node)
    crash_trials: int | None = None   # tests: only the first N trials (by index) crash; None = every trial
    env: dict[str, str] = field(default_factory=dict)   # set in every worker before its job: the driver's
                                                        # commit (trials run in a copy without .git), the launcher


class ClusterTooSmallError(UserError):
    """The Ray cluster cannot hold one trial's workers: the sweep would wait forever."""


def param_space(sweep: Sweep) -> dict[str, Any]:
    """The sweep's axes as Ray Tune search-space objects."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda b: tune.uniform(*b), "loguniform": lambda b: tune.loguniform(*b),
            "randint": lambda b: tune.randint(*b)}
    space: dict[str, Any] = {"settings": {key: make[axis.kind](getattr(axis, axis.kind))
                                          for key, axis in sweep.config.search.items()}}
    space["subset"] = tune.grid_search(list(sweep.subsets)) if sweep.subsets else None
    return space


def trial_tags(sweep: Sweep, settings: dict[str, Any], subset: str | None) -> dict[str, str]:
    """MLflow tags of a child run: sweep, subset name and metadata (every subset has a heuristic and a size,
    see `trainer.sweep.subset_metadata`), every searched setting."""
    tags = {"sweep": sweep.config.name}
    if subset is not None:
        meta = sweep.subsets[subset]
        tags["subset"] = subset
        tags["languages"] = ",".join(meta["languages"])
        for key in ("heuristic", "size", "seed", "objective"):
            if meta.get(key) is not None:
                tags[f"subset_{key}"] = str(meta[key])
    for key, value in settings.items():
        tags[f"setting.{key}"] = str(value)
    return tags


def trial_run_name(subset: str | None, settings: dict[str, Any], trial_name: str) -> str:
    """An MLflow child run's name that says what the trial is: `featural_max_5 optim.lr=0.001 (00003)`."""
    parts = ([subset] if subset else []) + [f"{key}={value}" for key, value in sorted(settings.items())]
    return " ".join(parts + [f"({trial_name.rsplit('_', 1)[-1]})"]) if parts else trial_name


def trial_job(sweep: Sweep, trial_config: dict[str, Any], trial_dir: Path, parent_run_id: str | None,
              trial_name: str, trial_id: str | None = None, workdir: str | None = None) -> dict[str, Any]:
    """The raw job dict of one trial: settings, subset, output dir, tracking as a child run, resume.

    `trial_id` (Tune's) is tagged on the child run, so that the driver can close it by the trial's outcome.
    `workdir`: the driver's working directory, where a relative SQLite store lies (a trial runs in Tune's folder).
    """
    settings, subset = trial_config.get("settings") or {}, trial_config.get("subset")
    raw = sweep.trial_raw(settings, subset)
    raw["output_dir"] = str(trial_dir)
    tracking = raw.setdefault("tracking", {})
    tracking.update(uri=sweep_tracking_uri(sweep, workdir), experiment=sweep.config.experiment,
                    run_name=trial_run_name(subset, settings, trial_name),
                    parent_run_id=parent_run_id,
                    tags=trial_tags(sweep, settings, subset) | ({"trial_id": trial_id} if trial_id else {}))
    raw.setdefault("checkpoint", {})["resume"] = "auto"
    return raw


def sweep_tracking_uri(sweep: Sweep, workdir: str | None = None) -> str:
    """The sweep's MLflow store; a relative SQLite path pinned to `workdir` (the driver's; default: this cwd)."""
    from trainer.tracking import DEFAULT_URI

    uri = sweep.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # trials run in Tune's own folders: pin a relative SQLite path to the driver's working directory
        uri = "sqlite:///" + str((Path(workdir or ".") / uri[len("sqlite:///"):]).resolve())
    return uri


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: validate the trial's job and run it, reporting metrics and checkpoints to Ray.

    A retried (or resumed) trial restores from the newest checkpoint it reported to Ray's storage
    (`storage_path`: a path, NFS, or an object-store URI), unless its own folder holds a newer one.
    """
    import ray.train

    if os.path.isdir(config["workdir"]):   # the same machine, or a path every node mounts
        os.chdir(config["workdir"])
    # Ray Train logs every report (all metrics) at INFO through the root logger: keep the trainer's
    # own INFO lines from rank 0 and only warnings from everything else.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("trainer").setLevel(logging.INFO if ray.train.get_context().get_world_rank() == 0
                                          else logging.WARNING)
    os.environ.update(config.get("env") or {})   # the driver's git commit and dirty flag, launcher=ray
    raw = config["raw"]
    try:
        stored = ray.train.get_checkpoint()   # the newest checkpoint this trial reported to Ray's storage
        if stored is not None:
            with stored.as_directory() as folder:   # a remote store: downloaded to this node
                return _run_trial_job(config, resume_from(raw, Path(folder)))
        return _run_trial_job(config, raw)
    except Exception as e:  # noqa: BLE001 - a configuration or data error, or a full disk, is one short line
        problem = user_error(e, raw["output_dir"])
        if problem is None:
            raise   # a crash or a bug: its traceback, and a retry (`run_trial`)
        # Ray logs the worker's traceback: only this frame's; `run_trial` does not retry a UserError
        raise problem.with_traceback(None) from None


def resume_from(raw: dict[str, Any], stored: Path) -> dict[str, Any]:
    """The trial job, resuming from `stored` (Ray's copy) unless its own checkpoint folder holds a newer one."""
    from trainer.checkpoint import find_latest_complete, read_trainer_state

    local = find_latest_complete(Path(raw["output_dir"]) / "checkpoints")
    if local is not None and read_trainer_state(local)["step"] >= read_trainer_state(stored)["step"]:
        return raw
    return {**raw, "checkpoint": {**raw.get("checkpoint", {}), "resume": str(stored)}}


def _run_trial_job(config: dict[str, Any], raw: dict[str, Any]) -> None:
    import ray.train

    from trainer.run import run_job

    job = validate(raw, JobConfig, source="trial job")
    rank = ray.train.get_context().get_world_rank()
    crash_at = config.get("crash_at_step")
    marker = Path(job.output_dir) / ".injected_crash_done"
    crash_pending = crash_at is not None and not marker.exists()   # decided once, alike on every rank

    latest: dict[str, float] = {}
    last_step = job.optim.max_steps

    def report(metrics: dict[str, float], step: int) -> None:
        # Carry earlier metrics forward: an evaluation metric (e.g. zero_shot_accuracy) appears in one
        # row only, and the trial's last report is what Tune ranks and the summary table shows.
        latest.update(metrics)
        if step < last_step:
            ray.train.report({**latest, "step": step})
        if crash_pending and step == crash_at:
            if rank == 0:
                marker.touch()
                if config.get("crash_loses_disk"):
                    shutil.rmtree(Path(job.output_dir) / "checkpoints", ignore_errors=True)
            raise RuntimeError(f"injected crash at step {step} (testing fault tolerance)")

    keep_local = trial_keeps_local_checkpoints(job.checkpoint)

    def upload(folder: Path, step: int) -> None:
        # Ray copies rank 0's checkpoint folder to the run's storage (a path or a URI: no shared disk needed), then
        # deletes the folder: Ray's copy is the one that survives a node, and a retry restores from it
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if rank == 0 else None
        ray.train.report({**latest, "step": step}, checkpoint=checkpoint,
                         delete_local_checkpoint_after_upload=not keep_local)

    run_job(job, report=report, on_checkpoint=upload)
    # The last step's rows (training, evaluations, final metrics) go to Tune once the run has ended: a
    # scheduler that stops the trial on its last report (ASHA at max_t, or a rung at the last step) would
    # otherwise kill the workers before the final evaluation, the export and the MLflow run's end.
    ray.train.report({**latest, "step": last_step})


def run_trial(trial_config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial: a TorchTrainer over `resources.workers` DeepSpeed ranks.

    A trial whose workers fail is retried up to the sweep's `max_failures` times, each retry resuming the newest
    checkpoint the trial reported to Ray's storage (a new `fit` of the same Ray Train run name restores it). Not
    a configuration or data error (a `UserError` a worker raised, a full disk): the same job would fail alike on
    every try, so the trial ends at once, reporting its one-line cause to Tune (`trial_error`) for the summary.
    (Ray Train's own `FailureConfig.max_failures` retries every failure alike, so it is 0 here.)
    """
    from ray import tune
    from ray.train import (CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig,
                           TrainingFailedError)
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = tune.get_context()
    trial_name = context.get_trial_name()
    sweep = ctx.sweep
    trial_dir = Path(ctx.sweep_dir) / TRIALS_DIR / trial_name
    raw = trial_job(sweep, trial_config, trial_dir, ctx.parent_run_id, trial_name, context.get_trial_id(),
                    ctx.workdir)
    res = sweep.config.resources
    use_gpu = res.gpus_per_worker > 0
    resources = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})}
    retries = sweep.config.max_failures
    for attempt in range(retries + 1):
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"raw": raw, "workdir": ctx.workdir, "crash_at_step": crash_at_step(ctx, trial_name),
                               "crash_loses_disk": ctx.crash_loses_disk, "env": ctx.env},
            scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=process_group_timeout(raw)),
            run_config=RunConfig(name=f"train-{trial_name}", storage_path=storage_root(sweep, Path(ctx.sweep_dir)),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),   # the newest two in storage
                                 callbacks=[TuneReportCallback()],
                                 logging_config=LoggingConfig(log_level=sweep.config.ray.train_log_level),
                                 failure_config=FailureConfig(max_failures=0)),
        )
        try:
            trainer.fit()
            return
        except TrainingFailedError as e:   # its worker_failures: the exceptions the workers raised
            cause, deterministic = failure_cause(e)
            if deterministic:
                log.error("trial %s failed, not retried (a configuration or data error): %s", trial_name, cause)
                tune.report({TRIAL_ERROR: cause, "attempts": attempt + 1})
                return
            if attempt == retries:
                raise
            log.warning("trial %s failed (%s); retry %d of %d, from its newest checkpoint", trial_name, cause,
                        attempt + 1, retries)


TRIAL_ERROR = "trial_error"   # the metric a trial that failed for good by a UserError reports: its cause


def failure_cause(error: BaseException) -> tuple[str, bool]:
    """(one-line cause, whether it is a configuration or data error) of a failed trial: `error` is Ray Train's
    `TrainingFailedError` (its `worker_failures`: rank -> the exception the worker raised) or anything else.
    A UserError on any rank is the cause (the other ranks' errors are then its consequences)."""
    failures = getattr(error, "worker_failures", None) or {}
    ranked = sorted(failures.items(), key=lambda item: (not isinstance(item[1], UserError), item[0]))
    if not ranked:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return (lines[-1] if lines else type(error).__name__), isinstance(error, UserError)
    rank, first = ranked[0]
    text = "; ".join(line.strip() for line in str(first).splitlines() if line.strip())
    where = f" [rank {rank}]" if rank != 0 else ""
    return f"{type(first).__name__}{where}: {text}", isinstance(first, UserError)


def process_group_timeout(raw: dict) -> int:
    """The trial job's `engine.timeout_minutes` in seconds: Ray's TorchConfig makes the process group, so the
    timeout that lets the slowest rank save a checkpoint must reach it (Ray's own default is 30 minutes)."""
    return round(validate(raw, JobConfig, source="trial job").engine.timeout_minutes * 60)


def crash_at_step(ctx: TrialContext, trial_name: str) -> int | None:
    """Tests: the step at which this trial's workers raise once (`ctx.crash_at_step`, within `ctx.crash_trials`)."""
    index = int(trial_name.rsplit("_", 1)[-1])
    return ctx.crash_at_step if ctx.crash_trials is None or index < ctx.crash_trials else None


def storage_root(sweep: Sweep, sweep_dir: Path) -> str:
    """Where Ray keeps experiment state: `storage_path` (a URI is kept as is), default the sweep dir."""
    path = sweep.config.storage_path
    if path is None:
        return str(sweep_dir)
    if "://" in path:
        return f"{path.rstrip('/')}/{sweep.config.name}"
    return str(Path(path).resolve() / sweep.config.name)


class RayClusterError(UserError):
    """Ray cannot be started or joined as the sweep asks (another Ray on this machine, an address without one)."""


def ray_address(sweep: Sweep) -> str | None:
    """The Ray to join: `ray.address` / $RAY_ADDRESS; None (or `local`): start one of the sweep's own."""
    address = sweep.config.ray.address or os.environ.get("RAY_ADDRESS")
    return None if address in (None, "", "local") else address


def init_ray(sweep: Sweep) -> None:
    """Connect to `ray.address` / $RAY_ADDRESS, or start a local Ray (`local`: even beside another Ray).

    Ray joins the Ray that `ray start` left on this machine when no address is given, and refuses the local
    Ray's settings then: one line (what Ray said, and the ways out), no traceback."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(sweep)
    try:
        if address:
            ray.init(address=address)
        else:
            num_cpus = sweep.config.ray.num_cpus or (os.cpu_count() or 1) + 1
            ray.init(num_cpus=num_cpus, include_dashboard=True,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    except (ValueError, ConnectionError) as e:
        said = " ".join(str(e).split())
        if address:
            raise RayClusterError(f"cannot join the Ray cluster at {address} (ray.address / RAY_ADDRESS; Ray said: "
                                  f"{said}); start it (ray start --head), fix the address, or unset it to start a "
                                  f"local Ray") from None
        if "existing cluster" not in said:
            raise
        try:   # the address `ray start` recorded (Ray's own lookup; private, hence guarded)
            from ray._private.services import find_bootstrap_address

            found = find_bootstrap_address(None) or "an address Ray found"
        except Exception:  # noqa: BLE001 - only for the message
            found = "an address Ray found"
        raise RayClusterError(
            f"another Ray cluster runs on this machine ({found}, started by `ray start`; Ray said: {said}): stop it "
            f"with `ray stop` (it stops every Ray of this user here), join it with RAY_ADDRESS=auto (or "
            f"RAY_ADDRESS={found}; ray.address in the sweep file), or give this sweep a Ray of its own beside it "
            f"with RAY_ADDRESS=local") from None


def trial_needs(sweep: Sweep) -> dict[str, float]:
    """Ray resources one trial holds while it runs: its workers' and its driver function's."""
    res = sweep.config.resources
    return {"CPU": res.workers * res.cpus_per_worker + TRIAL_DRIVER_CPU, "GPU": res.workers * res.gpus_per_worker}


def check_fits(sweep: Sweep, cluster: dict[str, float], node_max: dict[str, float] | None = None,
               where: str = "the Ray cluster") -> None:
    """Refuse a sweep whose trial cannot ever start on `cluster` (`ray.cluster_resources()`): Ray would keep its
    workers pending forever (Ray Train retries `WorkerGroupStartupTimeoutError` every minute). `node_max`: the most
    CPUs / GPUs one node has (a worker cannot span nodes). One message: needed, available, the keys to change."""
    res, need = sweep.config.resources, trial_needs(sweep)
    have = {kind: float(cluster.get(kind, 0)) for kind in ("CPU", "GPU")}
    problems = [kind for kind in ("CPU", "GPU") if need[kind] > have[kind] + 1e-9]
    per_worker = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    if node_max:
        problems += [f"{kind} per node" for kind in ("CPU", "GPU")
                     if kind not in problems and per_worker[kind] > float(node_max.get(kind, 0)) + 1e-9]
    if not problems:
        return
    fit = (have["CPU"] - TRIAL_DRIVER_CPU) / res.workers
    hints = [f"resources.workers (now {res.workers})", f"resources.cpus_per_worker (now {res.cpus_per_worker:g}"
             + (f"; at most {int(fit * 100) / 100:g} with {res.workers} workers here" if fit >= 0.01 else "") + ")"]
    if res.gpus_per_worker:
        hints.append(f"resources.gpus_per_worker (now {res.gpus_per_worker:g})")
    nodes = (f"; the largest node: {node_max.get('CPU', 0):g} CPUs, {node_max.get('GPU', 0):g} GPUs"
             if node_max else "")
    raise ClusterTooSmallError(
        f"sweep {sweep.config.name}: one trial does not fit on {where} ({', '.join(problems)} short), so no trial "
        f"could ever start.\n"
        f"  a trial needs {need['CPU']:g} CPUs (resources.workers {res.workers} x resources.cpus_per_worker "
        f"{res.cpus_per_worker:g}, + {TRIAL_DRIVER_CPU} for the trial's driver) and {need['GPU']:g} GPUs "
        f"(resources.workers x resources.gpus_per_worker {res.gpus_per_worker:g})\n"
        f"  the cluster has {have['CPU']:g} CPUs and {have['GPU']:g} GPUs{nodes}\n"
        f"  change {', '.join(hints)} (in the sweep file, or as overrides: python -m trainer.tune SWEEP.yaml "
        f"resources.cpus_per_worker=...), or give the cluster more (ray start --num-cpus / more nodes; a local "
        f"Ray: ray.num_cpus)")


def check_cluster(sweep: Sweep) -> None:
    """`check_fits` against the connected Ray (`ray.cluster_resources()`, the nodes alive now)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    node_max = {kind: max((float(n.get(kind, 0)) for n in nodes), default=0.0) for kind in ("CPU", "GPU")}
    address = ray_address(sweep)
    if address:
        try:
            address = ray.get_runtime_context().gcs_address   # `auto` under `ray job submit`: say which
        except Exception:  # noqa: BLE001 - only for the message
            pass
    check_fits(sweep, ray.cluster_resources(), node_max,
               f"the Ray cluster at {address}" if address else "the local Ray")


def driver_env() -> dict[str, str]:
    """What the trials' workers get in their environment from the driver: its code's git commit and dirty flag
    (`tracking.code_tags`: from the checkout, or as the submitter passed them) and `TRAINER_LAUNCHER=ray`."""
    from trainer import tracking

    tags = tracking.code_tags()
    env = {tracking.LAUNCHER_ENV: "ray"}
    if "git_commit" in tags:
        env[tracking.GIT_COMMIT_ENV] = tags["git_commit"]
        if "git_dirty" in tags:
            env[tracking.GIT_DIRTY_ENV] = tags["git_dirty"]
    else:
        log.warning("no git commit known for this sweep's code (not a git checkout, and no %s: submit with "
                    "--runtime-env-json \"$(python -m trainer.tune --runtime-env)\"); runs get no git_commit tag",
                    tracking.GIT_COMMIT_ENV)
    return env


def runtime_env_json(base: str | None = None) -> str:
    """`python -m trainer.tune --runtime-env [FILE]`: the `--runtime-env-json` of a `ray job submit` from this
    checkout: FILE's runtime env (e.g. jobs/runtime_env.yaml, its upload excludes; Ray reads one of
    `--runtime-env` and `--runtime-env-json`) with `env_vars` for the checkout's git commit and dirty flag (Ray
    uploads no .git) and $MLFLOW_TRACKING_URI when set."""
    import yaml

    from trainer import tracking

    runtime_env = (yaml.safe_load(Path(base).read_text()) or {}) if base else {}
    tags = tracking.code_tags()
    env = dict(runtime_env.get("env_vars") or {})
    env |= {key: tags[tag] for key, tag in ((tracking.GIT_COMMIT_ENV, "git_commit"),
                                            (tracking.GIT_DIRTY_ENV, "git_dirty")) if tag in tags}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return json.dumps({**runtime_env, "env_vars": env})


def chance_level(sweep: Sweep, metric: str) -> float | None:
    """The metric's chance level when it is known: 1 / task.num_labels for an accuracy of a classification task."""
    if "accuracy" not in metric:
        return None
    try:
        job = validate(sweep.trial_raw({}, next(iter(sweep.subsets), None)), JobConfig, source="trial")
    except ConfigError:
        return None
    task = getattr(job, "task", None)
    if getattr(task, "benchmark", None) is not None:   # a benchmark's task (tagging, QA, multiple choice): unknown
        return None
    labels = getattr(task, "num_labels", None)
    return 1.0 / labels if isinstance(labels, int) and labels > 1 else None


def build_tuner(ctx: TrialContext, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sweep, sweep_dir = ctx.sweep, Path(ctx.sweep_dir)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": TRIAL_DRIVER_CPU})
    if resume:
        return tune.Tuner.restore(storage_root(sweep, sweep_dir) + "/tune", trainable=trainable, resume_errored=True)
    cfg = sweep.config
    scheduler = (ASHAScheduler(time_attr="step", grace_period=cfg.scheduler.grace_period,
                               reduction_factor=cfg.scheduler.reduction_factor, max_t=cfg.scheduler.max_t)
                 if cfg.scheduler.kind == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, scheduler=scheduler,
                                    num_samples=cfg.num_samples, max_concurrent_trials=cfg.max_concurrent_trials),
        run_config=tune.RunConfig(name="tune", storage_path=storage_root(sweep, sweep_dir), verbose=1),
    )


def summary_rows(sweep: Sweep, results) -> list[dict[str, Any]]:
    """One row per trial: name, subset, settings, final metric, status."""
    rows = []
    for result in results:
        config = result.config or {}
        metrics = result.metrics or {}
        trial = result_trial_id(result)
        settings = config.get("settings") or {}
        max_steps = validate(sweep.trial_raw(settings, config.get("subset")), JobConfig).optim.max_steps
        row = {"trial": trial, "subset": config.get("subset") or "", **settings,
               sweep.config.metric: metrics.get(sweep.config.metric), "step": metrics.get("step"),
               "status": trial_status(result, sweep.config.metric, max_steps)}
        if row["status"] == "ERROR":   # its one-line cause (summary.csv's `error` column; printed below the table)
            row["error"] = metrics.get(TRIAL_ERROR) or failure_cause(result.error)[0]
        rows.append(row)
    return rows


def result_trial_id(result) -> str:
    """Tune's trial id of a result (`0b13b_00000`): from its reports, else from its directory's name
    (`run_trial_0b13b_00000_0_subset=...`, for a trial that never reported)."""
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    name = Path(result.path).name if result.path else ""
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", name)
    return match.group(1) if match else (name or "?")


def trial_status(result, metric: str, max_steps: int) -> str:
    """ERROR: it raised after its retries, or failed by a configuration or data error (not retried). STOPPED: the
    scheduler (ASHA) ended it before max_steps. OK: it reported the metric. INCOMPLETE: none of these (interrupted,
    or it never logs the metric)."""
    metrics = result.metrics or {}
    if result.error or metrics.get(TRIAL_ERROR):
        return "ERROR"
    if metrics.get(metric) is None:
        return "INCOMPLETE"
    return "STOPPED" if metrics.get("step", max_steps) < max_steps else "OK"


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[("" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row[c]))
              for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


class SweepStopped(KeyboardInterrupt):
    """The driver got SIGTERM (`ray job stop`, `kill`) outside Tune's loop; `signum` is the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopHandler:
    """SIGTERM while a sweep runs (`ray job stop` sends it, then SIGKILL 3 s later): end the MLflow parent and its
    RUNNING children as KILLED at once, then stop Tune as Ctrl-C does (inside `Tuner.fit`: its own graceful stop)
    or raise `SweepStopped` (elsewhere). `signum` remembers the signal for the exit status."""

    def __init__(self, uri: str, parent_run_id: str):
        self.uri, self.parent_run_id = uri, parent_run_id
        self.signum: int | None = None
        self.in_fit = False
        self.previous = None

    def __enter__(self) -> "_StopHandler":
        if threading_is_main():
            self.previous = signal.signal(signal.SIGTERM, self)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def __call__(self, signum: int, frame) -> None:
        from trainer import tracking

        first = self.signum is None
        self.signum = signum
        if first:
            log.warning("%s: ending the sweep; MLflow parent run %s and its running trials -> KILLED",
                        signal.Signals(signum).name, self.parent_run_id)
            tracking.end_sweep_runs(self.uri, self.parent_run_id, "KILLED", signal.Signals(signum).name)
        tune_stop = signal.getsignal(signal.SIGUSR1)   # Tune's interrupt handler, installed by Tuner.fit
        if first and self.in_fit and callable(tune_stop):
            tune_stop(signum, frame)
            return
        raise SweepStopped(signum)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_sweep(sweep: Sweep, sweep_dir: Path | None = None, resume: bool = False,
              crash_at_step: int | None = None, crash_loses_disk: bool = False,
              crash_trials: int | None = None) -> list[dict[str, Any]]:
    """Run (or resume) a sweep; returns the summary rows (also logged to the parent MLflow run).

    Before anything is written: Ray is joined (or started) and a trial must fit on it (`check_cluster`).
    A sweep that ends abnormally ends its MLflow runs: SIGTERM and Ctrl-C as KILLED, an error as FAILED, a driver
    that dies without a word (SIGKILL) as FAILED through a watchdog process (`tracking.start_watchdog`)."""
    from trainer import tracking

    sweep_dir = Path(sweep_dir or Path(sweep.config.output_dir) / sweep.config.name).resolve()
    # A metric computed at evaluation time is absent from the training rows reported before it;
    # FIFO ignores those rows and ASHA skips them (a metric present in every row suits ASHA best).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    init_ray(sweep)
    check_cluster(sweep)   # before the parent run: a sweep that cannot run leaves nothing behind
    env = driver_env()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state_path = sweep_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {}
    uri = sweep_tracking_uri(sweep)
    parent_run_id = tracking.start_parent_run(uri, sweep.config.experiment, sweep.config.name,
                                              sweep.config.model_dump(mode="json"), state.get("parent_run_id"))
    if os.environ.get("TRAINER_SWEEP_WATCHDOG", "1") != "0":
        tracking.start_watchdog(uri, parent_run_id)
    cfg = sweep.config
    try:   # a saved view of the runs page: the sweep's runs, best first, its settings and metric as columns
        view = tracking.save_runs_view(uri, cfg.experiment, cfg.name, cfg.metric, cfg.mode, list(cfg.search),
                                       parent_run_id)
    except Exception as e:  # noqa: BLE001 - a convenience: the link then carries the filter and the sort only
        log.warning("mlflow: cannot save the sweep's runs view: %s", e)
        view = None
    url = tracking.runs_url(uri, cfg.experiment, cfg.metric, cfg.mode, cfg.name, view=view)
    print(f"MLflow: the sweep's runs at {url}" + ("" if uri.startswith(("http://", "https://"))
                                                  else f"  (serve them: mlflow ui --backend-store-uri {uri})"),
          flush=True)
    state.setdefault("workdir", os.getcwd())   # a resumed sweep keeps resolving paths where it started
    state.update(parent_run_id=parent_run_id, tracking_uri=uri, sweep=sweep.config.model_dump(mode="json"),
                 base_job=sweep.base_raw, subsets=sweep.subsets, base_dir=str(sweep.base_dir))
    write_atomic(state_path, json.dumps(state, indent=1))

    start = time.perf_counter()
    ctx = TrialContext(sweep, str(sweep_dir), parent_run_id, state["workdir"], crash_at_step, crash_loses_disk,
                       crash_trials, env)
    with _StopHandler(uri, parent_run_id) as stop:
        try:
            tuner = build_tuner(ctx, resume)
            stop.in_fit = True
            results = tuner.fit()
            stop.in_fit = False
            rows = summary_rows(sweep, results)
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            closed = tracking.end_sweep_runs(uri, parent_run_id, "KILLED" if interrupted else "FAILED",
                                             type(e).__name__)
            log.warning("sweep %s %s: %d MLflow run(s) ended %s", sweep.config.name,
                        "interrupted" if interrupted else f"failed ({e})", len(closed),
                        "KILLED" if interrupted else "FAILED")
            raise
    elapsed = time.perf_counter() - start
    # Tune returns normally after Ctrl-C too: it marks the running trials TERMINATED, like finished
    # ones, so a trial without its metric is what tells an interrupted sweep (pending trials as well)
    interrupted = (stop.signum is not None or any(r["status"] == "INCOMPLETE" for r in rows)
                   or results.num_terminated + results.num_errors < len(results))
    status = "KILLED" if interrupted else "FAILED" if any(r["status"] == "ERROR" for r in rows) else "FINISHED"
    # A trial stopped by ASHA, interrupted, or failed for good had its workers killed: its child run is
    # still RUNNING. Close each by its trial's outcome.
    closed = tracking.close_child_runs(uri, parent_run_id, {r["trial"]: r["status"] for r in rows})
    if closed:
        log.info("closed %d child run(s) their trials left RUNNING: %s", len(closed),
                 ", ".join(f"{run_id[:8]} {end}" for run_id, end in closed.items()))
    tracking.finish_parent_run(uri, parent_run_id, rows, sweep.config.metric, sweep.config.mode, sweep_dir, status,
                               settings=list(sweep.config.search), chance=chance_level(sweep, sweep.config.metric))
    failed = [row for row in rows if row.get("error")]
    print(f"\nsweep {sweep.config.name}: {len(rows)} trials in {elapsed:.0f}s; "
          f"MLflow parent run {parent_run_id} ({status}); results in {sweep_dir}\n"
          f"{format_table([{k: v for k, v in row.items() if k != 'error'} for row in rows])}\n"
          + "".join(f"trial {row['trial']} failed: {row['error']}\n" for row in failed)
          + f"MLflow: the sweep's runs, best {sweep.config.metric} first: {url}")
    if interrupted:
        print(f"\nsweep incomplete (interrupted, or trials that never report {sweep.config.metric}): "
              f"continue it with  python -m trainer.tune --resume {sweep_dir}")
    if stop.signum is not None:
        raise SweepStopped(stop.signum)
    return rows


def load_resumed_sweep(sweep_dir: Path) -> Sweep:
    """Rebuild the Sweep saved in a sweep directory's state file."""
    from trainer.sweep import SweepConfig

    state_path = sweep_dir / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(f"--resume: {sweep_dir} has no {STATE_FILE}; is it a sweep directory?")
    state = json.loads(state_path.read_text())
    return Sweep(SweepConfig.model_validate(state["sweep"]), state["base_job"], state["subsets"],
                 Path(state["base_dir"]))


def map_with_actors(rows: list[dict], actor: type, actor_kwargs: dict[str, Any], actors: int, gpus_per_actor: float,
                    cpus_per_actor: float = 1, address: str | None = None):
    """Ray Data (the only Ray use outside Tune; `data_prep.translate --ray`): `rows` through a pool of
    `actors` instances of the callable class `actor`, each built once with `actor_kwargs` (e.g. holding a
    model) and called with one row at a time (`batch_size=1`, numpy columns); yields the output rows as
    they finish, in any order. Joins `address` / $RAY_ADDRESS, or starts a local Ray and stops it after."""
    import ray

    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(
            num_cpus=os.cpu_count() or 1, include_dashboard=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        dataset = ray.data.from_items(rows).map_batches(
            actor, fn_constructor_kwargs=actor_kwargs, compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor, num_cpus=cpus_per_actor, batch_size=1, batch_format="numpy")
        yield from dataset.iter_rows()
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", help="sweep YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the sweep file, e.g. max_concurrent_trials=2")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="resume an interrupted sweep from its directory")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the grid, start nothing")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or TRAINER_DEBUG=1)")
    parser.add_argument("--runtime-env", nargs="?", const="", default=None, metavar="FILE", help=(
        "print the --runtime-env-json for `ray job submit` from this checkout (FILE's runtime env, e.g. "
        "jobs/runtime_env.yaml, plus the checkout's git commit and dirty flag and $MLFLOW_TRACKING_URI) and exit; "
        "refused like --check-upload"))
    parser.add_argument("--check-upload", nargs="?", const="", default=None, metavar="FILE", help=(
        "before `ray job submit --working-dir .`: size what Ray would upload from here under FILE's excludes (e.g. "
        "jobs/runtime_env.yaml) and exit; over Ray's 512 MiB package limit, exit 2 naming the biggest folders"))
    args = parser.parse_args(argv)
    if args.runtime_env is not None or args.check_upload is not None:
        from trainer.upload import check_upload, upload_summary

        runtime_env = args.runtime_env if args.runtime_env is not None else args.check_upload
        try:
            upload = check_upload(runtime_env or None)
        except UserError as e:
            return report(e, args.debug)
        print(runtime_env_json(runtime_env or None) if args.runtime_env is not None else upload_summary(upload))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.resume:
            sweep_dir = Path(args.resume)
            sweep = load_resumed_sweep(sweep_dir)
        elif args.sweep:
            sweep, sweep_dir = load_sweep(args.sweep, args.overrides, prepare=not args.dry_run), None
        else:
            parser.error("give a sweep file or --resume SWEEP_DIR")
    except UserError as e:
        return report(e, args.debug)
    if args.dry_run:
        from trainer.sweep import grid_points

        points = grid_points(sweep)
        print(f"sweep {sweep.config.name}: {sweep.grid_size()} trials; grid points:")
        for point in points:
            print("  ", point)
        from trainer.sweep import footprint_report   # disk per trial and per sweep, from the model config

        print(footprint_report(sweep))
        return 0
    where = sweep_dir or Path(sweep.config.output_dir) / sweep.config.name
    try:
        rows = run_sweep(sweep, sweep_dir, resume=bool(args.resume))
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e, where) is None:
            raise
        return report(e, args.debug, where=where)
    except SweepStopped as e:   # SIGTERM: the MLflow runs are KILLED; 128 + signal, as a shell reports it
        print(f"sweep {sweep.config.name} stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:   # a second Ctrl-C: Tune's graceful stop cut short
        print(f"sweep {sweep.config.name} interrupted", file=sys.stderr)
        return 130
    if rows and all(r["status"] == "ERROR" for r in rows):
        print(f"error: every trial of sweep {sweep.config.name} failed (the causes above)", file=sys.stderr)
    return 0 if all(r["status"] in ("OK", "STOPPED") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
