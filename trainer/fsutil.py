"""Writing files and folders so that a kill never leaves them half-written: the one place that does it.

`write_atomic` for a file (a temporary file in the same folder, fsynced, renamed over the target),
`replace_dir` for a folder written completely beside its target (`write_dir` makes, fills and renames it).
Every writer of a file that a resumed run, a sweep or a user reads back uses them: checkpoints and their
pointers, manifests, metrics, configs, exports, tables.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir_beside(target: str | os.PathLike) -> Path:
    """A new empty folder next to `target` (same file system, so it can be renamed onto it), made with the
    permissions the umask gives (`tempfile.mkdtemp` alone makes 0700: colleagues could not read the result)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def write_atomic(path: str | os.PathLike, data: str | bytes, fsync: bool = True) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` through a temporary file and a rename.

    A reader sees the old content or the new one, never a mixture; with `fsync` the data is on
    disk before the rename (what a checkpoint pointer needs to survive a machine crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())   # mkstemp makes 0600: follow the umask like open() does
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_dir(new: Path, target: Path) -> Path:
    """Move the complete directory `new` to `target`, replacing any `target` there.

    An existing `target` is renamed aside first and deleted last, so a kill at any point leaves
    either the old or the new directory under `target` (or, for an instant, the old one aside as
    `.NAME-old`), never a mixture of both.
    """
    if target.exists():
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
    return target


def write_dir(target: str | os.PathLike, write) -> Path:
    """Write a folder atomically: `write(tmp)` fills a temporary sibling, which then replaces `target` (complete or
    absent). A failed write or rename (a full disk) leaves no temporary folder behind."""
    tmp = temp_dir_beside(target)
    try:
        write(tmp)
        return replace_dir(tmp, Path(target))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def check_destination(out: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool = False,
                      written_by: str | None = None, key: str = "--out") -> Path:
    """Refuse an output folder that would destroy something: the current directory or a folder holding it, an
    input of the command, a folder holding an input or inside one, or a non-empty folder that this command did
    not write (unless `overwrite`).

    `written_by`: a file this command leaves in its outputs (e.g. merge.json); a folder holding it
    is a previous output and may be replaced. Raises OutputExistsError naming `key` and the way out.
    """
    from trainer.errors import OutputExistsError

    target = Path(out).resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise OutputExistsError(f"{key} {out} is the current directory{'' if target == here else ' or holds it'} "
                                f"({target}): the output needs a folder of its own; choose a new one (--overwrite "
                                f"does not apply here)")
    for item in inputs:
        source = Path(item).resolve()
        if target == source or target in source.parents or source in target.parents:
            relation = "is" if target == source else "holds" if target in source.parents else "is inside"
            raise OutputExistsError(f"{key} {out} {relation} the input {item}: writing there would destroy it; "
                                    f"choose another {key}")
    if target.is_file() or (target.is_dir() and any(target.iterdir())):
        ours = written_by is not None and (target / written_by).is_file()
        if not (overwrite or ours):
            whose = f" and holds no {written_by} (it is not an output of this command)" if written_by else ""
            raise OutputExistsError(f"{key} {out} exists and is not empty{whose}: choose another {key}, or pass "
                                    f"--overwrite to replace what is there")
    return target


def listed_path(folder: str | os.PathLike, name: object, manifest: str | os.PathLike) -> Path:
    """`folder / name` for a file that the manifest `manifest` lists in its own folder `folder`.

    A manifest is data, not an instruction: its entries are relative names inside their folder. An absolute
    path, a `..` component, an empty or non-string name, or a name that a symbolic link leads out of the
    folder is refused (DataError naming the manifest and the entry), so no writer reads, replaces or
    deletes a path it did not create because a manifest names it.
    """
    from trainer.errors import DataError

    base = Path(folder)
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "not a file name"
    elif os.path.isabs(name) or name.startswith("~"):
        problem = "an absolute path"
    elif ".." in Path(name).parts or "\\" in name:
        problem = "a name that leaves the folder ('..')"
    else:
        real, root = (base / name).resolve(), base.resolve()
        if root not in real.parents:
            problem = f"a name that a symbolic link leads out of the folder (to {real})"
    if problem:
        raise DataError(f"{manifest}: entry {name!r} is {problem}; a manifest lists relative names of files inside "
                        f"its own folder {base}, anything else is refused (nothing was read or deleted)")
    return base / name
