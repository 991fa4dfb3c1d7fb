"""The project's error types: refusals a user can fix, printed by every entry point as one message.

`UserError` and its subclasses name the key, file, line, language or value at fault and what
would be valid. The entry points (`python -m trainer.train`, `trainer.tune`, `trainer.merge`,
`data_prep.*`) print them without a traceback and exit with status 2; `--debug` or
`TRAINER_DEBUG=1` shows the traceback too. docs/errors.md lists the cases.
"""

from __future__ import annotations

import os
import sys
import traceback


class UserError(Exception):
    """A refusal the user can fix: the message says what is wrong and what would be valid."""


class DataError(UserError, ValueError):
    """A data file that is missing, empty, malformed or holds a bad value (named with file and line)."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder that does not exist; the message names the command that makes it."""


class ModelPathError(UserError, FileNotFoundError):
    """A model path that looks local and does not exist."""


class RunDirError(UserError):
    """An output directory that belongs to another job (its checkpoints were trained under another config)."""


class NonFiniteError(UserError, RuntimeError):
    """A loss or gradient norm that became NaN or infinite: the run stops, nothing is exported."""


class TrackingError(UserError):
    """A tracking store (MLflow) that cannot be reached; the message names the URI."""


class OutputExistsError(UserError, FileExistsError):
    """A destination that holds something this command did not write (or is one of its inputs)."""


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("TRAINER_DEBUG", "") not in ("", "0")


def report(error: BaseException, debug: bool = False, prefix: str = "error") -> int:
    """Print `error` as one message (plus its traceback when debugging); returns the exit status 2."""
    if debug_enabled(debug):
        traceback.print_exception(error)
    print(f"{prefix}: {error}", file=sys.stderr)
    return 2
