"""Fault injection for the kill-and-resume tests: `TRAINER_FAULT=<point>:<step>`.

    TRAINER_FAULT=after_step:5       rank 0 kills itself (SIGKILL) right after optimizer step 5
    TRAINER_FAULT=in_checkpoint:6    rank 0 kills itself while writing the step-6 checkpoint,
                                     after DeepSpeed wrote its files, before the manifest
    TRAINER_FAULT=after_batch:3      data_prep.translate kills itself right after its 3rd batch is on disk
    TRAINER_FAULT=in_batch:3         ... while appending its 3rd batch, half of the line written

SIGKILL is the point: no handler, no flush, no cleanup runs, as when a node dies or
the scheduler kills a job. Unset (the normal case), `maybe_kill` does nothing.
"""

from __future__ import annotations

import os
import signal

from trainer import distributed

ENV = "TRAINER_FAULT"
POINTS = ("after_step", "in_checkpoint", "after_batch", "in_batch")


def _planned() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, step = spec.partition(":")
    if point not in POINTS or not step.isdigit():
        raise ValueError(f"{ENV}={spec!r}: expected one of {', '.join(p + ':STEP' for p in POINTS)}")
    return point, int(step)


def maybe_kill(point: str, step: int) -> None:
    """SIGKILL this process if `TRAINER_FAULT` names this point and step and this is rank 0."""
    if _planned() == (point, step) and distributed.is_main():
        os.kill(os.getpid(), signal.SIGKILL)
