"""Run one training job: `python -m trainer.train JOB.yaml [key.path=value ...]`.

The same entry under every launcher (see docs/engine.md):

    python -m trainer.train JOB.yaml                              # one process
    torchrun --nproc_per_node 2 -m trainer.train JOB.yaml         # N processes
    deepspeed --num_gpus 2 --module trainer.train JOB.yaml        # DeepSpeed launcher
    run_job(job)                                                  # in a process group made by the
                                                                  # caller (a Ray Train worker)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from trainer import distributed
from trainer.checkpoint import Checkpointer
from trainer.config import ConfigError, JobBase, load_job
from trainer.engine import Engine
from trainer.fsutil import write_atomic
from trainer.loop import Run
from trainer.models.loading import build_tiny_models_in
from trainer.prepare import run_prepare
from trainer.recipes import align, realign, stage1
from trainer.tracking import Tracker

RECIPES = {"stage1": stage1.run, "align": align.run, "realign": realign.run}

log = logging.getLogger("trainer.train")


def run_job(job: JobBase, report: Callable[[dict[str, float], int], None] | None = None) -> dict:
    """Run `job` in the current process group (joined, or created for a single process).

    `report(metrics, step)`, when given, receives every logged metric row on every rank
    (a Ray Train worker passes `ray.train.report` through it).

    Every rank: check the ranks agree on the config, agree on a checkpoint to resume
    from, seed torch, make the engine (before the model: under ZeRO-3 the frozen weights load
    partitioned), run the recipe. Rank 0 only: write the resolved config, and track the run in
    MLflow, continuing the checkpoint's MLflow run when resuming.
    """
    distributed.setup(job.engine.backend, job.engine.timeout_minutes)
    config_yaml = job.to_yaml()
    config_hash = distributed.check_same_config(config_yaml)
    main = distributed.is_main()
    out = Path(job.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.yaml", config_yaml)
    with distributed.main_first():
        if main:
            run_prepare(job.prepare)   # the job's data, made or found before anything reads it
        build_tiny_models_in(job.model_dump(), job.model.cache_dir)
    checkpoints = Checkpointer(job.checkpoint, out, config_hash)
    checkpoints.resume_target()
    tracker = Tracker(job.tracking, enabled=main, report=report)
    _start_tracker(tracker, job, checkpoints.run_id())
    if main:
        _record_run_id(out, tracker)
        tracker.log_artifact(str(out / "config.yaml"))
    try:
        torch.manual_seed(job.seed)
        engine = Engine(job)
        try:
            summary = RECIPES[job.recipe](Run(job, engine, tracker, checkpoints))
        finally:
            engine.close()
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    summary["run_id"] = tracker.run_id
    summary["resumed_from"] = str(checkpoints.resume_from) if checkpoints.resume_from else None
    return summary


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="job YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.lora.r=8 optim.lr=1e-4")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; LOCAL_RANK is read instead
    args = parser.parse_args(argv)
    try:
        job = load_job(args.job, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    distributed.setup(job.engine.backend, job.engine.timeout_minutes)
    try:
        _configure_logging()
        is_main = distributed.is_main()
        summary = run_job(job)
    except (ConfigError, distributed.ConfigMismatchError) as e:
        print(f"error [rank {distributed.rank()}]: {e}", file=sys.stderr)
        return 2
    if is_main:
        losses = summary.get("losses") or []
        trained = (f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}" if losses
                   else "no steps left to train")
        resumed = f" (resumed from {summary['resumed_from']})" if summary.get("resumed_from") else ""
        print(f"done in {time.perf_counter() - start:.1f}s: {trained}{resumed}; "
              f"export {summary.get('export_dir')}; mlflow run {summary.get('run_id')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
