"""Before `ray job submit --working-dir .`: what Ray would upload, refused by name when over Ray's limit.

Ray 2.60 zips the working dir without what its default excludes (`.git`, `.venv`, `venv`, `__pycache__`), the
runtime env's `excludes` and the `.gitignore` / `.rayignore` files leave out, storing the files uncompressed
(`ray._private.runtime_env.packaging._zip_files`), and refuses a package of `RAY_max_grpc_message_size` (512 MiB)
or more only once the zip is built, naming no folder. `python -m trainer.tune --check-upload [FILE]` (and
`--runtime-env FILE` before it prints) runs on the submitting machine, walks the working dir with Ray's own walker
and matchers, and refuses such an upload naming the biggest folders. The driver (`python -m trainer.tune` inside
the job) cannot check: it runs only once the upload has gone through.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError

log = logging.getLogger(__name__)
MIB = 1024 * 1024
ZIP_ENTRY_BYTES = 30 + 46   # a stored zip entry's local header and central directory record, besides its name twice
ZIP_END_BYTES = 22          # the zip's end-of-central-directory record
SHOWN = 5                   # the biggest entries an error names


class UploadTooLargeError(UserError):
    """`ray job submit --working-dir` would build a package over Ray's limit."""


@dataclass(frozen=True)
class Upload:
    root: Path
    size: int                  # bytes of the zip Ray would build (its files stored, plus the zip's headers)
    files: int
    by_entry: dict[str, int]   # each top-level folder (`models/`) or file of the working dir -> its bytes in the zip
    limit: int                 # Ray's package limit

    def biggest(self, count: int = SHOWN) -> str:
        ranked = sorted(self.by_entry.items(), key=lambda kv: -kv[1])[:count]
        return ", ".join(f"{name} {mib(size)}" for name, size in ranked)


def mib(size: int) -> str:
    return f"{size / MIB:.1f}".removesuffix(".0") + " MiB"


def package_limit() -> int:
    """Ray's limit on a runtime-env package: its gRPC message size, `RAY_max_grpc_message_size` (512 MiB)."""
    from ray._private.ray_constants import GRPC_CPP_MAX_MESSAGE_SIZE

    return int(os.environ.get("RAY_max_grpc_message_size", GRPC_CPP_MAX_MESSAGE_SIZE))


def plan_upload(root: str | Path = ".", excludes: list[str] | None = None) -> Upload:
    """What `ray job submit --working-dir ROOT` with the runtime env's `excludes` would zip, found as Ray finds it."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(root).absolute()
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    by_entry: dict[str, int] = {}
    files = 0

    def count(path: Path) -> None:   # Ray's handler packs files and empty folders
        nonlocal files
        if not (path.is_file() or (path.is_dir() and next(path.iterdir(), None) is None)):
            return
        rel = path.relative_to(root)
        files += 1
        entry = rel.parts[0] + ("/" if len(rel.parts) > 1 or path.is_dir() else "")
        name = str(rel) + ("" if path.is_file() else "/")   # the name in the zip: a folder's ends with /
        size = (path.stat().st_size if path.is_file() else 0) + ZIP_ENTRY_BYTES + 2 * len(name.encode())
        by_entry[entry] = by_entry.get(entry, 0) + size

    matchers = [_get_excludes(root, ray_constants.get_runtime_env_default_excludes() + list(excludes or []))]
    _dir_travel(root, matchers, count, include_gitignore=include_gitignore, logger=log)
    return Upload(root, sum(by_entry.values()) + ZIP_END_BYTES, files, by_entry, package_limit())


def runtime_env_excludes(runtime_env_file: str | None) -> list[str]:
    import yaml

    if not runtime_env_file:
        return []
    return list((yaml.safe_load(Path(runtime_env_file).read_text()) or {}).get("excludes") or [])


def check_upload(runtime_env_file: str | None = None, root: str | Path = ".") -> Upload:
    """The working dir's upload under `runtime_env_file`'s excludes; UploadTooLargeError when Ray would refuse it."""
    upload = plan_upload(root, runtime_env_excludes(runtime_env_file))
    if upload.size < upload.limit:
        return upload
    where = runtime_env_file or "a runtime env file (e.g. jobs/runtime_env.yaml, passed with --runtime-env)"
    raise UploadTooLargeError(
        f"ray job submit --working-dir {upload.root} would upload {mib(upload.size)} ({upload.files} "
        f"files), over Ray's limit of {mib(upload.limit)} for a package (Ray refuses it only after zipping, "
        f"naming no folder).\n"
        f"  the biggest: {upload.biggest()}\n"
        f"  leave them out: add them to the excludes of {where} (gitignore patterns: /models leaves out the top "
        f"folder models), to .rayignore or to .gitignore; keep data, outputs and weights on the shared filesystem "
        f"(output_dir, HF_HOME)")


def upload_summary(upload: Upload) -> str:
    return (f"ray job submit --working-dir {upload.root}: {mib(upload.size)} in {upload.files} files "
            f"(Ray's limit: {mib(upload.limit)}); the biggest: {upload.biggest()}")
