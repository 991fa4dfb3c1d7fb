"""Local data files named by paths or globs."""

from __future__ import annotations

import glob
from pathlib import Path

from trainer.errors import MissingDataError


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
            raise MissingDataError(f"{what}: {pattern!r} matches no file (make the demo data with {hint})")
        files += matches
    return files


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (blank lines skipped); a bad line is a DataError naming file and line."""
    import json

    from trainer.errors import DataError

    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{n}: a record must be a JSON object, got {type(record).__name__}")
            records.append(record)
    return records
