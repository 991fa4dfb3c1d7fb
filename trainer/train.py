"""Run one training job: `python -m trainer.train JOB.yaml [key.path=value ...]`.

The same entry under every launcher (see docs/engine.md):

    python -m trainer.train JOB.yaml                              # one process
    python -m trainer.train JOB.yaml --overwrite                  # replace another configuration's run
    torchrun --nproc_per_node 2 -m trainer.train JOB.yaml         # N processes
    deepspeed --num_gpus 2 --module trainer.train JOB.yaml        # DeepSpeed launcher
    trainer.run.run_job(job)                                      # in a process group made by the
                                                                  # caller (a Ray Train worker)

The job file is validated before torch, DeepSpeed or anything heavy is imported, so a bad key
is reported at once (`trainer.run` does the run).
"""

from __future__ import annotations

import argparse
import os
import sys

from trainer.config import load_job
from trainer.errors import UserError, on_every_rank, report


def launch_rank() -> int:
    """This process's rank as its launcher set it (torchrun, deepspeed: RANK; srun: SLURM_PROCID), before any
    process group exists; 0 for a single process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="job YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.lora.r=8 optim.lr=1e-4")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of another configuration in output_dir (its checkpoints, export, metrics); "
                             "without it such a start is refused, naming what would be lost")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or TRAINER_DEBUG=1)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; LOCAL_RANK is read instead
    args = parser.parse_args(argv)
    try:
        job = load_job(args.job, args.overrides)
    except UserError as e:   # the same file on every rank of a launch: rank 0 alone prints it
        return report(on_every_rank(e), args.debug, rank=launch_rank())
    from trainer.run import run_from_cli   # torch, DeepSpeed and the models load only for a valid job

    return run_from_cli(job, args.debug, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
