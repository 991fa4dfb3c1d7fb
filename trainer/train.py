"""Run one training job: `python -m trainer.train JOB.yaml [key.path=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from trainer.config import ConfigError, JobConfig, load_job
from trainer.recipes import stage1
from trainer.tracking import Tracker

RECIPES = {"stage1": stage1.run}


def run_job(job: JobConfig) -> dict:
    """Save the resolved config, start an MLflow run, run the recipe, close the run."""
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(job.to_yaml())
    tracker = Tracker(job.tracking)
    tracker.start(job.model_dump(mode="json"), tags={"recipe": job.recipe})
    tracker.log_artifact(str(out / "config.yaml"))
    try:
        summary = RECIPES[job.recipe](job, tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    summary["run_id"] = tracker.run_id
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__)
    parser.add_argument("job", help="job YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.lora.r=8 optim.lr=1e-4")
    args = parser.parse_args(argv)
    try:
        job = load_job(args.job, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    summary = run_job(job)
    losses = summary.get("losses") or [float("nan")]
    print(f"done in {time.perf_counter() - start:.1f}s: first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}; "
          f"export {summary.get('export_dir')}; mlflow run {summary.get('run_id')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
