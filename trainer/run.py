"""One run of a job in the current process group: what `python -m trainer.train` does once the job validates.

    summary = run_job(job)              # 1 process, a launcher's rank, or a Ray Train worker

Every rank: refuse a bf16/fp16 job with float32 weights; check the ranks agree on the config and on
the checkpoint to resume from; refuse an output directory whose checkpoints were trained under another
configuration (before anything is written there); make the job's data (`prepare`); seed torch; make the
engine (before the model: under ZeRO-3 the frozen weights load partitioned) with `dtype: auto` resolved
(`trainer.config.resolve_dtypes`); run the recipe. Rank 0 only: write the
resolved config, and track the run in MLflow, continuing the checkpoint's MLflow run when resuming.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from trainer import distributed
from trainer.checkpoint import Checkpointer
from trainer.config import JobBase, check_gpu_options, check_precision, resolve_dtypes
from trainer.engine import Engine
from trainer.errors import RunDirError, UserError
from trainer.errors import report as report_error
from trainer.fsutil import write_atomic
from trainer.loop import Run
from trainer.models.loading import build_tiny_models_in, check_model_paths
from trainer.prepare import run_prepare
from trainer.recipes import align, finetune, flare, realign, stage1, stage2
from trainer.tracking import BUFFER_FILE, Tracker, check_reachable, tracking_uri

RECIPES = {"stage1": stage1.run, "align": align.run, "realign": realign.run, "finetune": finetune.run,
           "stage2": stage2.run, "flare": flare.run}

log = logging.getLogger("trainer.run")

CONFIG_FILE = "config.yaml"
# Keys that may change when a run resumes: where and how often it logs and checkpoints, how long it
# waits, where its data comes from when it is the same data (prepare). Any other difference changes
# what is trained and refuses to resume (`optim.max_steps` may grow).
HARMLESS_KEYS = ("tracking.", "checkpoint.every", "checkpoint.keep_last", "checkpoint.save_final",
                 "checkpoint.best_metric", "checkpoint.best_mode", "checkpoint.resume", "checkpoint.dir",
                 "engine.timeout_minutes", "prepare", "output_dir",
                 "optim.grad_accum")   # may follow the number of ranks; the checkpoint checks ranks x grad_accum


def run_job(job: JobBase, report: Callable[[dict[str, float], int], None] | None = None,
            on_checkpoint: Callable[[Path, int], None] | None = None) -> dict:
    """Run `job` in the current process group (joined, or created for a single process).

    `report(metrics, step)`, when given, receives every logged metric row on every rank
    (a Ray Train worker passes `ray.train.report` through it); `on_checkpoint(folder, step)` is
    called on every rank after each complete checkpoint (a Ray Train worker reports it to Ray's storage).

    Every rank: check the ranks agree on the config, agree on a checkpoint to resume from;
    before anything is written, refuse another job's run directory, a missing local model path
    and an unreachable tracking server (or buffer, `tracking.if_unreachable`); make the data
    (`prepare`), seed torch, make the engine (before the model: under ZeRO-3 the frozen weights
    load partitioned), run the recipe. Rank 0 only: write the resolved config, and track the run
    in MLflow, continuing the checkpoint's MLflow run when resuming.
    """
    check_precision(job)   # a bf16 job with float32 weights, before anything starts (every rank alike)
    check_gpu_options(job)   # QLoRA / 8-bit AdamW where there is no GPU or no bitsandbytes
    distributed.setup(job.engine.backend, job.engine.timeout_minutes)
    config_yaml = job.to_yaml()
    config_hash = distributed.check_same_config(config_yaml)
    out = Path(job.output_dir)
    checkpoints = Checkpointer(job.checkpoint, out, config_hash, on_save=on_checkpoint)
    if checkpoints.resume_target() is not None:
        check_run_dir(job, out)   # before anything is written into the directory
    _agree(lambda: check_model_paths(job.model_dump()))   # a missing local path, not a hub error minutes later
    buffer = _tracking_buffer(job, out)
    _agree(lambda: claim_run_dir(out))   # one writer per run directory, from here to the end of the run
    try:
        return _run(job, out, config_yaml, checkpoints, buffer, report)
    finally:
        release_run_dir(out)


def _run(job: JobBase, out: Path, config_yaml: str, checkpoints: Checkpointer, buffer: Path | None,
         report: Callable[[dict[str, float], int], None] | None) -> dict:
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / CONFIG_FILE, config_yaml)
    with distributed.main_first():
        if main:
            run_prepare(job.prepare)   # the job's data, made or found before anything reads it
        build_tiny_models_in(job.model_dump(), job.model.cache_dir)
    tracker = Tracker(job.tracking, enabled=main, report=report, buffer=buffer)
    _start_tracker(tracker, job, checkpoints.run_id())
    if main:
        if buffer is None:   # a buffered run has no MLflow run yet
            _record_run_id(out, tracker)
        tracker.log_artifact(str(out / CONFIG_FILE))
    try:
        torch.manual_seed(job.seed)
        job = resolve_dtypes(job)   # what loads: dtype auto made concrete (config.yaml and MLflow keep auto)
        engine = Engine(job)
        try:
            summary = RECIPES[job.recipe](Run(job, engine, tracker, checkpoints))
        finally:
            engine.close()
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    # every rank leaves together: a rank that tears its process group down while rank 0 still exports and
    # closes the MLflow run can abort at exit (gloo: "terminate called without an active exception")
    distributed.barrier()
    summary["run_id"] = tracker.run_id
    summary["resumed_from"] = str(checkpoints.resume_from) if checkpoints.resume_from else None
    return summary


LOCK_FILE = ".lock"
_claimed: dict[Path, object] = {}   # run directory -> its open, locked file


def claim_run_dir(out: Path) -> None:
    """Rank 0 takes an exclusive lock on OUTPUT_DIR/.lock for the run; a second process writing to the same
    directory is refused (two runs started without a launcher, or a run still going). The OS drops the
    lock if the process dies."""
    import fcntl

    key = out.resolve()
    if key in _claimed:
        return
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(f"{out} is being written by {holder}: one run per output_dir. Several processes of one "
                          f"run are started by a launcher (torchrun, deepspeed, srun, Ray); otherwise give each "
                          f"run its own output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _claimed[key] = handle


def release_run_dir(out: Path) -> None:
    handle = _claimed.pop(out.resolve(), None)
    if handle is not None:
        handle.close()


def _tracking_buffer(job: JobBase, out: Path) -> Path | None:
    """None when the tracking store answers; with `tracking.if_unreachable: buffer`, the buffer file instead of
    a failure. Seconds, not MLflow's minutes of retries."""
    unreachable = _on_main(lambda: check_reachable(tracking_uri(job.tracking)))
    if unreachable is None:
        return None
    if job.tracking.if_unreachable == "fail":
        raise unreachable
    log.warning("%s; buffering to %s (upload later: python -m trainer.tracking upload %s)", unreachable,
                out / BUFFER_FILE, out)
    return out / BUFFER_FILE


def _on_main(check: Callable[[], None]) -> UserError | None:
    """Run `check` on rank 0 -> the UserError it raised (or None), on every rank alike."""
    problem = None
    if distributed.is_main():
        try:
            check()
        except UserError as e:
            problem = e
    return distributed.broadcast_object(problem)


def _agree(check: Callable[[], None]) -> None:
    """Run `check` on rank 0; a UserError it raises is raised on every rank (no rank waits at a barrier)."""
    problem = _on_main(check)
    if problem is not None:
        raise problem


def config_differences(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (old value, new value) for every leaf that differs between two resolved configs."""
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b, dotted = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out |= config_differences(a, b, dotted + ".")
        elif a != b:
            out[dotted] = (a, b)
    return out


def check_run_dir(job: JobBase, out: Path) -> None:
    """Refuse to resume in `out` when its config differs in what is trained (collective: rank 0 decides).

    Differences in `HARMLESS_KEYS`, and a larger `optim.max_steps`, resume and are logged.
    """
    _agree(lambda: _compare_run_dir(job, out))


def _compare_run_dir(job: JobBase, out: Path) -> None:
    if (out / CONFIG_FILE).is_file():
        stored = yaml.safe_load((out / CONFIG_FILE).read_text()) or {}
        differences = config_differences(stored, job.model_dump(mode="json"))
        harmful = {key: values for key, values in differences.items()
                   if not key.startswith(HARMLESS_KEYS)
                   and not (key == "optim.max_steps" and values[1] > (values[0] or 0))}
        for key, (old, new) in differences.items():
            if key not in harmful:
                log.info("resuming with %s changed: %r -> %r", key, old, new)
        if harmful:
            listed = "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in harmful.items())
            raise RunDirError(f"{out} holds checkpoints of another configuration; resuming would train the old one. "
                              f"Differences:\n{listed}\nUse a new output_dir, or start over in this one with "
                              f"checkpoint.resume=none")


def _start_tracker(tracker: Tracker, job: JobBase, run_id: str | None) -> None:
    """Continue the checkpoint's MLflow run; a run the store does not know starts afresh, with a warning."""
    config, tags = job.model_dump(mode="json"), {"recipe": job.recipe}
    if run_id is None:
        tracker.start(config, tags=tags)
        return
    try:
        tracker.start(config, run_id=run_id, tags=tags)
        log.info("mlflow: continuing run %s", run_id)
    except Exception as e:  # noqa: BLE001 - any store error: the training itself must go on
        log.warning("mlflow: cannot continue run %s (%s); starting a new run", run_id, e)
        tracker.start(config, tags=tags)


RUN_ID_FILE = ".mlflow_run_id"


def _record_run_id(out: Path, tracker: Tracker) -> None:
    """Remember this output dir's MLflow run; mark the previous one KILLED if it died still RUNNING.

    An attempt killed before its first checkpoint leaves its run open, and the next attempt
    (a retried sweep trial, a re-run command) cannot continue it: it starts a new run.
    """
    path = out / RUN_ID_FILE
    previous = path.read_text().strip() if path.is_file() else None
    if previous and previous != tracker.run_id:
        tracker.close_abandoned(previous, superseded_by=tracker.run_id)
    write_atomic(path, f"{tracker.run_id}\n")


def _configure_logging() -> None:
    """INFO from rank 0, warnings and errors only from the other ranks."""
    level = logging.INFO if distributed.is_main() else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [rank {distributed.rank()}] "
                                            f"%(name)s: %(message)s", force=True)


def run_from_cli(job: JobBase, debug: bool = False) -> int:
    """`python -m trainer.train`'s run: logging per rank, one line at the end; a UserError is one message."""
    start = time.perf_counter()
    distributed.setup(job.engine.backend, job.engine.timeout_minutes)
    try:
        _configure_logging()
        is_main = distributed.is_main()
        summary = run_job(job)
    except UserError as e:
        return report_error(e, debug, prefix=f"error [rank {distributed.rank()}]")
    if is_main:
        losses = summary.get("losses") or []
        trained = (f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}" if losses
                   else "no steps left to train")
        resumed = f" (resumed from {summary['resumed_from']})" if summary.get("resumed_from") else ""
        print(f"done in {time.perf_counter() - start:.1f}s: {trained}{resumed}; "
              f"export {summary.get('export_dir')}; mlflow run {summary.get('run_id')}")
    return 0
