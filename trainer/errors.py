"""The project's error types: refusals a user can fix, printed by every entry point as one message.

`UserError` and its subclasses name the key, file, line, language or value at fault and what
would be valid. The entry points (`python -m trainer.train`, `trainer.tune`, `trainer.merge`,
`data_prep.*`) print them without a traceback and exit with status 2; `--debug` or
`TRAINER_DEBUG=1` shows the traceback too. docs/errors.md lists the cases.

`report` is the one place an entry point turns an exception into that message: a UserError, or an
exception that stands for one (`user_error`: a full disk, wherever the write was, is named as such);
anything else keeps its traceback (a bug).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
import traceback
from pathlib import Path


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


class ResumeError(RunDirError, RuntimeError):
    """A checkpoint this run cannot resume: a `checkpoint.resume` path that is no complete checkpoint, another
    number of ranks without a portable state, another number of micro-batches per step."""


class NonFiniteError(UserError, RuntimeError):
    """A loss or gradient norm that became NaN or infinite: the run stops, nothing is exported."""


class TrackingError(UserError):
    """A tracking store (MLflow) that cannot be reached; the message names the URI."""


class OutputExistsError(UserError, FileExistsError):
    """A destination that holds something this command did not write (or is one of its inputs)."""


class DiskFullError(UserError, OSError):
    """A write that found no space left on its file system: the message names the path and the free space."""


# What a full disk says where the errno is lost on the way: safetensors (Rust), SQLite (MLflow's store)
NO_SPACE_TEXTS = ("No space left on device", "StorageFull", "database or disk is full")
# torch.save's C++ writer on a full disk ("basic_ios::clear", "file write failed"): no errno at all; taken for a
# full disk when the file system of the run has less than LOW_SPACE bytes left
TORCH_WRITE_FAILURES = ("basic_ios::clear", "file write failed", "PytorchStreamWriter failed writing")
LOW_SPACE = 1 << 30


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            break
        n /= 1000
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def _existing(path: str | os.PathLike) -> Path:
    """`path`, or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: str | os.PathLike) -> tuple[str, int, int]:
    """(mount point, free bytes, total bytes) of the file system holding `path` (or its nearest existing ancestor)."""
    here = _existing(path)
    mount = here
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    usage = shutil.disk_usage(here)
    return str(mount), usage.free, usage.total


def disk_full(error: BaseException, where: str | os.PathLike | None = None) -> DiskFullError | None:
    """`error` as a DiskFullError when it (or an exception it was raised from or during) is a full disk: an OSError
    with errno ENOSPC, a library's "No space left on device", or torch's writer failing with under 1 GB left
    where the run writes. `where` (the run's output_dir) is named when the error names no file."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        named = getattr(current, "filename", None) if isinstance(current, OSError) else None
        if (isinstance(current, OSError) and current.errno == errno.ENOSPC) or any(t in text for t in NO_SPACE_TEXTS):
            return _disk_full(named or where, text)
        if where is not None and any(t in text for t in TORCH_WRITE_FAILURES) and free_space(where)[1] < LOW_SPACE:
            return _disk_full(where, text)
        current = current.__cause__ or current.__context__
    return None


def _disk_full(path: str | os.PathLike | None, text: str) -> DiskFullError:
    if path is None:
        return DiskFullError(f"disk full ({text.strip().splitlines()[0]}); make room, or write to another file system")
    mount, free, total = free_space(path)
    return DiskFullError(f"disk full while writing {path} (free space on {mount}: {_size(free)} of {_size(total)}); "
                         f"make room there, or write to another file system")


def user_error(error: BaseException, where: str | os.PathLike | None = None,
               also: tuple[type[BaseException], ...] = ()) -> BaseException | None:
    """What to print for `error`: itself when a UserError (or one of `also`, types an entry point prints as they
    are), the DiskFullError it stands for (`disk_full`), or None: anything else keeps its traceback (a bug)."""
    return error if isinstance(error, (UserError, *also)) else disk_full(error, where)


def on_every_rank(error: UserError) -> UserError:
    """Mark `error` as raised alike on every rank of a run (decided on rank 0 and shared): rank 0 alone prints it."""
    error.on_every_rank = True
    return error


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("TRAINER_DEBUG", "") not in ("", "0")


QUIET_RANK_WAIT = 5.0   # seconds a rank that leaves an error to rank 0 waits before it exits


def report(error: BaseException, debug: bool = False, prefix: str = "error",
           where: str | os.PathLike | None = None, rank: int = 0) -> int:
    """Print `error` as one message (plus its traceback when debugging); returns the exit status 2.

    A full disk is named as such (`disk_full`; `where`: the folder written, named when the error names no file).
    An entry point catches any exception, hands `report` those that `user_error` recognises and raises the rest
    (a bug: its traceback shows). On a rank other than 0, an error that every rank raised alike (`on_every_rank`)
    is left to rank 0 to print (this rank waits `QUIET_RANK_WAIT` seconds first: torchrun stops the other ranks as
    soon as one exits, and rank 0 must not be stopped before it has printed).
    """
    problem = user_error(error, where) or error
    if debug_enabled(debug):
        traceback.print_exception(error)
    if rank != 0 and getattr(problem, "on_every_rank", False):
        time.sleep(QUIET_RANK_WAIT)   # rank 0 prints it first: a launcher stops every rank once one has exited
        return 2
    print(f"{prefix}: {problem}", file=sys.stderr)
    return 2
