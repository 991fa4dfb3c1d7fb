"""Local data files named by paths or globs."""

from __future__ import annotations

import glob
from pathlib import Path


DEMO_DATA = "python -m data_prep.demo_data"   # writes every demo job's data under data/demo/


def expand_files(patterns: list[str], what: str = "data.files", hint: str = DEMO_DATA) -> list[str]:
    """Globs -> sorted existing files; a pattern that matches nothing is an error naming the key `what`.

    `hint` is the command that makes such files (the demo data by default).
    """
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise FileNotFoundError(f"{what}: {pattern!r} matches no file (make the demo data with {hint})")
        files += matches
    return files
