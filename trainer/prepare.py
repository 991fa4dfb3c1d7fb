"""The `prepare` commands of a job or a sweep: what makes (or finds) its data before anything loads.

    prepare: ["python -m data_prep.demo_data"]     # every demo job and the demo sweep

A command must be safe to repeat (the demo data generator keeps what exists): a job runs its
commands on every start, a sweep once before Ray starts.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from trainer.config import ConfigError


def run_prepare(commands: list[str], key: str = "prepare") -> None:
    """Run each command (a shell-style line, no shell) in order; the first failure raises ConfigError naming it.

    `python` at the start of a command is the interpreter running the trainer, not whatever is on PATH.
    """
    for i, command in enumerate(commands):
        argv = shlex.split(command)
        if argv and argv[0] == "python":
            argv[0] = sys.executable   # the interpreter running the sweep, not whatever is on PATH
        print(f"{key}[{i}]: {command}", flush=True)
        try:
            code = subprocess.run(argv, env=_without_process_group()).returncode
        except OSError as e:
            raise ConfigError(f"{key}[{i}]: {command!r} could not start: {e}") from None
        if code != 0:
            raise ConfigError(f"{key}[{i}]: {command!r} failed with exit status {code}")


# The variables a launcher (or this job's own single-process group) sets: a command that trains
# (e.g. a demo's prerequisite run) must start a process group of its own, not join this one.
PROCESS_GROUP_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                           "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _without_process_group() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARIABLES}
