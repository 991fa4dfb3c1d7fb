"""`python -m trainer.tune --check-upload [FILE]` (and `--runtime-env FILE`): before `ray job submit --working-dir .`,
the working dir's package is sized as Ray builds it and refused over Ray's limit, naming the biggest folders. Fast: no
Ray starts; the limit is lowered through Ray's own variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.tune import main
from trainer.upload import UploadTooLargeError, check_upload, plan_upload

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A working dir: models/ (big), trainer/ (small), a top-level file, a git-ignored and an excluded folder."""
    for rel, size in {"models/a/weights.bin": 6000, "models/b.bin": 1000, "trainer/x.py": 300, "README.md": 100,
                      "ignored/huge.bin": 50_000, "data/huge.parquet": 50_000, "empty/": 0}.items():
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    (tmp_path / ".gitignore").write_text("/ignored\n")
    (tmp_path / "env.yaml").write_text("excludes: [/data]\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_size_is_the_zip_ray_builds_to_the_byte(workdir):
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _zip_files

    _zip_files(str(workdir), ray_constants.get_runtime_env_default_excludes() + ["/data"], str(workdir.parent / "p.zip"),
               include_gitignore=True)
    upload = plan_upload(workdir, ["/data"])
    assert upload.size == os.path.getsize(workdir.parent / "p.zip")
    assert set(upload.by_entry) == {"models/", "trainer/", "README.md", "empty/", ".gitignore", "env.yaml"}


def test_over_the_limit_the_error_names_the_biggest_folders(workdir, monkeypatch):
    monkeypatch.setenv("RAY_max_grpc_message_size", "4096")
    with pytest.raises(UploadTooLargeError) as caught:
        check_upload("env.yaml")
    message = str(caught.value)
    assert "over Ray's limit of 0 MiB" in message and "the biggest: models/ 0 MiB" in message
    biggest = message.split("the biggest: ")[1].splitlines()[0]
    assert biggest.index("models/") < biggest.index("trainer/") and "ignored" not in biggest and "data" not in biggest
    assert "excludes of env.yaml" in message
    monkeypatch.setenv("RAY_max_grpc_message_size", str(64 * 1024))
    assert check_upload("env.yaml").size < 64 * 1024


def test_the_cli_refuses_before_printing_the_runtime_env(workdir, monkeypatch, capsys):
    monkeypatch.setenv("RAY_max_grpc_message_size", "4096")
    for flag in ("--check-upload", "--runtime-env"):
        assert main([flag, "env.yaml"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "error: ray job submit --working-dir" in err and "models/" in err, flag
    monkeypatch.delenv("RAY_max_grpc_message_size")
    assert main(["--check-upload", "env.yaml"]) == 0
    assert "(Ray's limit: 512 MiB)" in capsys.readouterr().out


def test_this_checkout_uploads_a_few_mib():
    upload = check_upload(str(ROOT / "jobs" / "runtime_env.yaml"), ROOT)
    assert upload.size < 64 * 1024 * 1024, upload.biggest()
