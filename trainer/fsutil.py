"""Filesystem steps shared by checkpoints and exports."""

from __future__ import annotations

import shutil
from pathlib import Path


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
