"""One run of a job in the current process group: what `python -m trainer.train` does once the job validates.

    summary = run_job(job)              # 1 process, a launcher's rank, or a Ray Train worker

Every rank: refuse a bf16/fp16 job with float32 weights; check the ranks agree on the config; refuse what can
be refused before `prepare` and before anything is written (`check_before_writing`: output_dir, input folders,
engine.deepspeed, the tracking store, the exports a job starts from); agree on the checkpoint to resume from;
refuse an output directory whose checkpoints were trained under another configuration (compared with the
checkpoint's own recorded config and hash) and a start from step 0 that would replace another configuration's
export or checkpoints, unless `overwrite` (before anything is written there); make the job's data (`prepare`)
and check the exports it may have made; seed torch; make the
engine (before the model: under ZeRO-3 the frozen weights load partitioned) from the job as it loads (`dtype: auto`
made concrete) and its precision, both resolved once at the start (`trainer.config.check_precision`); run the
recipe. Rank 0 only: write the
resolved config, and track the run in MLflow, continuing the checkpoint's MLflow run when resuming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from trainer import distributed
from trainer.checkpoint import LATEST, Checkpointer, list_checkpoints, read_trainer_state
from trainer.config import ConfigError, JobBase, check_gpu_options, check_precision
from trainer.engine import Engine, build_ds_config
from trainer.errors import RunDirError, UserError, on_every_rank, user_error
from trainer.errors import report as report_error
from trainer.fsutil import write_atomic
from trainer.loop import FINAL_METRICS_FILE, METRICS_FILE, Run
from trainer.models.loading import build_tiny_models_in, check_model_paths
from trainer.prepare import run_prepare
from trainer.recipes import align, finetune, flare, realign, stage1, stage2, tasks
from trainer.tracking import BUFFER_FILE, Tracker, check_reachable, check_store, tracking_uri

RECIPES = {"stage1": stage1.run, "align": align.run, "realign": realign.run, "finetune": finetune.run,
           "stage2": stage2.run, "flare": flare.run}

log = logging.getLogger("trainer.run")

CONFIG_FILE = "config.yaml"
# Keys that do not change what is trained: where and how often a run logs and checkpoints, how long it
# waits, where its data comes from when it is the same data (prepare), where it writes. They are left out
# of the training configuration's hash (`training_hash`) and may change when a run resumes.
UNTRAINED_KEYS = ("tracking.", "checkpoint.every", "checkpoint.keep_last", "checkpoint.save_final",
                  "checkpoint.best_metric", "checkpoint.best_mode", "checkpoint.resume", "checkpoint.dir",
                  "checkpoint.portable", "engine.timeout_minutes", "prepare", "output_dir")
# Keys in the hash that may still change on resume: `optim.grad_accum` may follow the number of ranks (the
# checkpoint checks ranks x grad_accum) and `optim.max_steps` may grow (extending a run). Any other
# difference changes what is trained and refuses to resume.
HARMLESS_KEYS = (*UNTRAINED_KEYS, "optim.grad_accum")
EXPORT_DIR = "export"


def run_job(job: JobBase, report: Callable[[dict[str, float], int], None] | None = None,
            on_checkpoint: Callable[[Path, int], None] | None = None, overwrite: bool = False,
            log_per_rank: bool = False) -> dict:
    """Run `job` in the current process group (joined, or created for a single process: the run's one
    `distributed.setup`, before anything else, so that every refusal below knows its rank).

    `report(metrics, step)`, when given, receives every logged metric row on every rank
    (a Ray Train worker passes `ray.train.report` through it); `on_checkpoint(folder, step)` is
    called on every rank after each complete checkpoint (a Ray Train worker reports it to Ray's storage).

    Every rank: check the ranks agree on the config, refuse what `check_before_writing` can, agree on a
    checkpoint to resume from; before anything is written, refuse another job's run directory, a missing local
    model path and an unreachable tracking server (or buffer, `tracking.if_unreachable`); make the data
    (`prepare`) and check the exports it may have made (`check_exports`), seed torch, make the engine (before
    the model: under ZeRO-3 the frozen weights load partitioned), run the recipe. Rank 0 only: write the
    resolved config, and track the run in MLflow, continuing the checkpoint's MLflow run when resuming.

    `overwrite`: a start that would replace another configuration's run in `output_dir` (its checkpoints,
    its export) goes ahead and removes them first; without it such a start is refused, naming what would
    be lost (`check_resume`, `check_fresh_start`). `log_per_rank` (the CLI): INFO logs from rank 0 only, set
    once the ranks are known.
    """
    distributed.setup(job.engine.backend, job.engine.timeout_minutes)
    if log_per_rank:
        _configure_logging()
    # a bf16 job with float32 weights, refused before anything starts (every rank alike); what loads (dtype auto
    # made concrete: config.yaml and MLflow keep auto) and the training precision, resolved here once
    loaded, precision = check_precision(job)
    check_gpu_options(job)   # QLoRA / 8-bit AdamW where there is no GPU or no bitsandbytes
    config_yaml = job.to_yaml()
    distributed.check_same_config(config_yaml)
    _agree(lambda: check_before_writing(job, precision))   # what can be refused before `prepare` and before anything is written
    config = job.model_dump(mode="json")
    out = Path(job.output_dir)
    checkpoints = Checkpointer(job.checkpoint, out, training_hash(config), config=config, on_save=on_checkpoint)
    # before anything is written into the directory: resume only what this configuration trained, replace
    # another configuration's run only when asked
    if checkpoints.resume_target() is not None and not check_resume(job, out, checkpoints.resume_from, overwrite):
        checkpoints.resume_from = None   # --overwrite: start over in place of another configuration's run
    replaced = check_fresh_start(job, out, checkpoints.root, overwrite) if checkpoints.resume_from is None else []
    _agree(lambda: check_model_paths(job.model_dump()))   # a missing local path, not a hub error minutes later
    buffer = _tracking_buffer(job, out)
    _agree(lambda: claim_run_dir(out))   # one writer per run directory, from here to the end of the run
    try:
        return _run(job, loaded, precision, out, config_yaml, checkpoints, buffer, report, replaced)
    finally:
        release_run_dir(out)


def _run(job: JobBase, loaded: JobBase, precision: str, out: Path, config_yaml: str, checkpoints: Checkpointer,
         buffer: Path | None, report: Callable[[dict[str, float], int], None] | None,
         replaced: list[Path] = ()) -> dict:
    """The run past the refusals: `job` as written (config.yaml, MLflow, checkpoints), `loaded` (dtype auto made
    concrete) and `precision` as `check_precision` resolved them, for the engine and the recipe."""
    main = distributed.is_main()
    with distributed.main_first():
        if main:
            run_prepare(job.prepare)   # the job's data, made or found before anything reads it
        build_tiny_models_in(job.model_dump(), job.model.cache_dir)
    if job.prepare:
        _agree(lambda: check_exports(job))   # what `prepare` was to make: before config.yaml and an MLflow run
    if main:
        for path in replaced:   # the previous run's results, asked to be replaced (--overwrite)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / CONFIG_FILE, config_yaml)
    tracker = Tracker(job.tracking, enabled=main, report=report, buffer=buffer)
    _start_tracker(tracker, job, checkpoints.run_id(), checkpoints.config_hash)
    if main:
        if buffer is None:   # a buffered run has no MLflow run yet
            _record_run_id(out, tracker)
        tracker.log_artifact(str(out / CONFIG_FILE))
    try:
        torch.manual_seed(job.seed)
        engine = Engine(loaded, precision)
        try:
            summary = RECIPES[job.recipe](Run(loaded, engine, tracker, checkpoints))
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


# Keys whose values are not inputs the run reads: where it writes, how it tracks, its commands, the tiny-model cache,
# a teacher cache (stage 2 builds its own, by default in OUTPUT_DIR/teacher_cache; files beside its parts are harmless)
NOT_INPUTS = ("output_dir", "checkpoint.", "tracking.", "prepare", "model.cache_dir", "teacher_cache")
PATTERN = re.compile(r"[*?\[{]")   # a glob or a `{language}` template: the folder before it is read
WRITTEN = (EXPORT_DIR, "export_sdev", "checkpoints")   # what a run replaces inside its output_dir


def check_before_writing(job: JobBase, precision: str) -> None:
    """What can be refused before `prepare` runs and before anything is written (rank 0): an output_dir or
    checkpoint.dir that is a file (or lies under one) or cannot be written, an output_dir that is one of the job's
    input folders (or holds an input where the run writes its export or checkpoints), an engine.deepspeed that is
    neither a shipped name nor valid JSON, a local tracking store that is no SQLite file; and, for a job without
    `prepare` (its commands may make them), the exports it starts from (`check_exports`)."""
    for key, value in (("output_dir", job.output_dir), ("checkpoint.dir", job.checkpoint.dir)):
        if value is None:
            continue
        path = Path(value)
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            where = "" if blocking == path else f": {blocking}"
            raise RunDirError(f"{key}: {value}{where} is a file, not a folder; choose another {key}")
        existing = next(p for p in (path, *path.parents, Path(".")) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunDirError(f"{key}: {value}: {existing.absolute()} cannot be written by this user; choose another "
                              f"{key}")
    out = Path(job.output_dir).resolve()
    for key, value, folder in input_folders(job.model_dump(mode="json")):
        folder = folder.resolve()
        inside = next((out / name for name in WRITTEN if folder == out / name or out / name in folder.parents), None)
        if folder == out or inside is not None:
            where = "is the folder of" if folder == out else f"holds, in {inside}, which the run replaces,"
            raise RunDirError(f"output_dir {job.output_dir} {where} the input {key} ({value}): the run writes "
                              f"config.yaml, metrics.jsonl, export/ and checkpoints/ there; choose another output_dir "
                              f"(e.g. outputs/NAME)")
    build_ds_config(job, distributed.world_size(), precision)   # engine.deepspeed: a shipped name or a JSON file, auto values fit
    check_store(tracking_uri(job.tracking))
    if not job.prepare:
        check_exports(job)


def input_folders(config: dict, prefix: str = "") -> list[tuple[str, str, Path]]:
    """(dotted key, value, folder) of every path in a resolved job's inputs (every key but `NOT_INPUTS`): a folder,
    a file's folder, the folder a glob or `{language}` template reads in; a name without a slash counts only when it
    is a folder here. Hub names (org/name) come out as folders that do not exist, which no output_dir equals."""
    found = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted.startswith(NOT_INPUTS):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                found += input_folders(item, dotted + ".")
            elif isinstance(item, str) and not item.startswith("tiny:") and ("/" in item or Path(item).is_dir()):
                found.append((dotted, item, _folder_of(item)))
    return found


def _folder_of(value: str) -> Path:
    pattern = PATTERN.search(value)
    if pattern:
        before = value[:pattern.start()]
        return Path(before) if before.endswith("/") else Path(before).parent
    path = Path(value)
    return path.parent if path.is_file() or (not path.exists() and path.suffix) else path


def check_exports(job: JobBase) -> None:
    """The exports a job starts from are there: `model.stage1_export` (S1+FT, stage 2) an export folder, and
    `model.task_export` (stage 2, FLARE) a finetune (FT) export (`tasks.teacher_config`); ConfigError naming the key."""
    stage1_export = getattr(job.model, "stage1_export", None)
    if stage1_export and not (Path(stage1_export) / CONFIG_FILE).is_file():
        missing = "does not exist" if not Path(stage1_export).exists() else f"holds no {CONFIG_FILE}"
        raise ConfigError(f"model.stage1_export: {stage1_export} {missing}: give the export folder of a stage1 run "
                          f"(its OUTPUT_DIR/export)")
    if getattr(job.model, "task_export", None):
        tasks.teacher_config(job)


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
    problem = _on_main_value(check)
    return problem if isinstance(problem, UserError) else None


def _on_main_value(decide: Callable[[], object]) -> object:
    """Run `decide` on rank 0 -> its value, or the UserError it raised, on every rank alike (rank 0 alone prints
    that error: `on_every_rank`)."""
    value = None
    if distributed.is_main():
        try:
            value = decide()
        except UserError as e:
            value = e
    value = distributed.broadcast_object(value)
    return on_every_rank(value) if isinstance(value, UserError) else value


def _agree(check: Callable[[], None]) -> None:
    """Run `check` on rank 0; a UserError it raises is raised on every rank (no rank waits at a barrier)."""
    problem = _on_main(check)
    if problem is not None:
        raise problem


def training_config(config: dict, prefix: str = "") -> dict:
    """The resolved job (as dumped to config.yaml) without the keys that do not change what is trained
    (`UNTRAINED_KEYS`)."""
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted.startswith(UNTRAINED_KEYS):
            continue
        out[key] = training_config(value, dotted + ".") if isinstance(value, dict) else value
    return out


def training_hash(config: dict) -> str:
    """SHA-256 of the training configuration (`training_config` of the job as written, `dtype: auto` unresolved):
    what every checkpoint (`trainer_state.json` config_sha256), every export (the first line of its
    config.yaml) and the MLflow run (tag config_sha256) record about what trained them."""
    text = json.dumps(training_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


EXPORT_HASH_PREFIX = "# config_sha256: "   # the first line of an export's config.yaml (written by trainer.loop.finish)


def export_hash(export: Path) -> str | None:
    """The training hash an export records (None for an export written before exports recorded it)."""
    try:
        first = (export / CONFIG_FILE).read_text().split("\n", 1)[0]
    except OSError:
        return None
    return first[len(EXPORT_HASH_PREFIX):].split()[0] if first.startswith(EXPORT_HASH_PREFIX) else None


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


def check_resume(job: JobBase, out: Path, target: Path, overwrite: bool = False) -> bool:
    """Whether to resume `target` (collective: rank 0 decides).

    The checkpoint's own configuration decides (its `trainer_state.json`, whatever config.yaml says now):
    differences in `HARMLESS_KEYS` and a larger `optim.max_steps` resume and are logged; any other
    difference is refused (RunDirError) or, with `overwrite`, starts over (False).
    """
    decision = _on_main_value(lambda: _compare_checkpoint(job, out, target, overwrite))
    if isinstance(decision, UserError):
        raise decision
    return decision


def _compare_checkpoint(job: JobBase, out: Path, target: Path, overwrite: bool) -> bool:
    new = job.model_dump(mode="json")
    state = read_trainer_state(target)
    if "config" in state:
        stored, source = state["config"], f"checkpoint {target}"
    elif (out / CONFIG_FILE).is_file():   # a checkpoint written before checkpoints recorded their config
        stored, source = yaml.safe_load((out / CONFIG_FILE).read_text()) or {}, str(out / CONFIG_FILE)
    else:
        return True
    differences = config_differences(stored, new)
    harmful = {key: values for key, values in differences.items()
               if not key.startswith(HARMLESS_KEYS)
               and not (key == "optim.max_steps" and values[1] > (values[0] or 0))}
    if not harmful:
        for key, (old, new_value) in differences.items():
            log.info("resuming with %s changed: %r -> %r", key, old, new_value)
        return True
    listed = "\n".join(f"  {key}: {old!r} -> {new_value!r}" for key, (old, new_value) in harmful.items())
    if overwrite:
        log.warning("%s was trained under another configuration (%s); --overwrite: starting over in %s",
                    target, ", ".join(harmful), out)
        return False
    lost = ", ".join(_previous_results(out, target.parent)) or "its checkpoints"
    raise RunDirError(f"{out} holds checkpoints of another configuration ({source}, config_sha256 "
                      f"{str(state.get('config_sha256'))[:12]}; this job {training_hash(new)[:12]}); resuming would "
                      f"train the old one. Differences:\n{listed}\nUse a new output_dir, or start over in this one "
                      f"with --overwrite (python -m trainer.train) or checkpoint.resume=none --overwrite, which "
                      f"replaces {lost}")


def _previous_results(out: Path, root: Path) -> list[str]:
    """What a start over in `out` would replace, in words: checkpoints, export, metrics, the MLflow run id."""
    lost = []
    steps = [p.name for _, p in list_checkpoints(root)]
    if steps:
        lost.append(f"the checkpoints {', '.join(reversed(steps))} in {root}")
    if (out / EXPORT_DIR).exists():
        lost.append(f"the export folder {out / EXPORT_DIR}")
    for name in (FINAL_METRICS_FILE, METRICS_FILE):
        if (out / name).is_file():
            rows = sum(1 for line in (out / name).read_text().splitlines() if line.strip())
            lost.append(f"{out / name}" + (f" ({rows} steps)" if name == METRICS_FILE else ""))
    if (out / RUN_ID_FILE).is_file():
        lost.append(f"the MLflow run id {(out / RUN_ID_FILE).read_text().strip()} in {out / RUN_ID_FILE} "
                    f"(the run stays in the store; this start opens a new one)")
    return lost


def check_fresh_start(job: JobBase, out: Path, root: Path, overwrite: bool = False) -> list[Path]:
    """A start from step 0 in `out`: refuse to replace another configuration's finished export or checkpoints
    (RunDirError naming what would be lost) unless `overwrite`; returns the paths to remove first (rank 0's
    list; empty on the other ranks). Collective.

    The same configuration again (a demo re-run, a retried trial killed before its first checkpoint) goes
    ahead: it trains the same thing.
    """
    decision = _on_main_value(lambda: _compare_fresh_start(job, out, root, overwrite))
    if isinstance(decision, UserError):
        raise decision
    return decision if distributed.is_main() else []


def _compare_fresh_start(job: JobBase, out: Path, root: Path, overwrite: bool) -> list[Path]:
    new = job.model_dump(mode="json")
    mine = training_hash(new)
    recorded = None
    if (out / CONFIG_FILE).is_file():
        try:
            recorded = training_hash(yaml.safe_load((out / CONFIG_FILE).read_text()) or {})
        except (yaml.YAMLError, AttributeError):
            recorded = None
    others: list[str] = []
    export = out / EXPORT_DIR
    if export.exists():
        trained = export_hash(export) or recorded   # an export written before exports recorded their hash
        if trained != mine:
            others.append(str(export))
    checkpoints = list_checkpoints(root)
    for _, path in checkpoints:
        try:
            state = read_trainer_state(path)
        except (OSError, ValueError):
            state = {}
        trained = state.get("config_sha256") if "config" in state else recorded
        if trained != mine:
            others.append(str(path))
    replaced = [*[p for _, p in checkpoints], *[root / name for name in (LATEST, "best") if (root / name).is_file()],
                *[p for p in (export, out / FINAL_METRICS_FILE) if p.exists()]]
    if overwrite:
        if replaced:
            log.warning("--overwrite: replacing the earlier run in %s: %s", out, "; ".join(_previous_results(out, root)))
        return replaced
    if others:
        raise RunDirError(f"{out} holds a run of another configuration ({', '.join(others)}) and this start (from "
                          f"step 0) would replace {'; '.join(_previous_results(out, root))}. Use a new output_dir, "
                          f"or pass --overwrite (python -m trainer.train JOB.yaml --overwrite) to replace it")
    if export.exists():
        log.warning("%s: retraining the same configuration from step 0 (no checkpoint to resume); its export will "
                    "be replaced", out)
    return []


def _start_tracker(tracker: Tracker, job: JobBase, run_id: str | None, config_hash: str = "") -> None:
    """Continue the checkpoint's MLflow run; a run the store does not know starts afresh, with a warning."""
    config, tags = job.model_dump(mode="json"), {"recipe": job.recipe}
    if config_hash:
        tags["config_sha256"] = config_hash
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


def run_from_cli(job: JobBase, debug: bool = False, overwrite: bool = False) -> int:
    """`python -m trainer.train`'s run: logging per rank, one line at the end; a UserError is one message."""
    start = time.perf_counter()
    try:
        summary = run_job(job, overwrite=overwrite, log_per_rank=True)   # joins the process group first
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e, job.output_dir) is None:
            raise
        rank = distributed.rank()
        return report_error(e, debug, prefix=f"error [rank {rank}]", where=job.output_dir, rank=rank)
    if distributed.is_main():   # the group lives until the process exits
        losses = summary.get("losses") or []
        trained = (f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}" if losses
                   else "no steps left to train")
        resumed = f" (resumed from {summary['resumed_from']})" if summary.get("resumed_from") else ""
        print(f"done in {time.perf_counter() - start:.1f}s: {trained}{resumed}; "
              f"export {summary.get('export_dir')}; mlflow run {summary.get('run_id')}")
    return 0
