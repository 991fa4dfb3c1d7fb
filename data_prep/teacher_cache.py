"""Build MT-LLM stage 2's teacher cache ahead of the run: `python -m data_prep.teacher_cache JOB.yaml [key=value ...]`.

JOB.yaml is a `stage2` job: its `model.task_export` (the fine-tuned teacher), `task` (the training
examples) and `teacher_cache` (the folder; default OUTPUT_DIR/teacher_cache). The cache holds the
teacher's pooled vector of every training example with its id; a stage2 run reuses it when it
matches the teacher and the data (needed under ZeRO-3, where the run cannot load the teacher itself).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainer.config import ConfigError, load_job
from trainer.errors import UserError, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.teacher_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="a stage2 job YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    args = parser.parse_args(argv)
    try:
        job = load_job(args.job, args.overrides)
        if job.recipe != "stage2":
            raise ConfigError(f"{args.job}: recipe {job.recipe}; the teacher cache belongs to a stage2 job")
        from trainer.recipes import tasks   # torch and the models load only for a valid job

        start = time.perf_counter()
        train = tasks.examples(job, job.task.train_benchmark or job.task.benchmark, job.task.source_language, "train")
        folder = Path(job.teacher_cache) if job.teacher_cache else Path(job.output_dir) / "teacher_cache"
        cache = tasks.build_teacher_cache(job, train, args.device)
        cache.save(folder)
    except UserError as e:
        return report(e)
    print(f"teacher cache: {len(cache.ids)} vectors of dimension {cache.vectors.shape[1]} in {folder} "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
