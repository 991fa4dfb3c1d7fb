"""The lock (constraints.txt) is complete and consistent, and every installer uses it: the README's set-up, .ci/run
and docker/Dockerfile. Nothing here asks a registry or compares against what happens to be installed (.ci/run
checks that, right after its install): a newer upstream release cannot turn these red."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def pyproject_requirements() -> dict[str, list[Requirement]]:
    """{"dependencies" or the extra's name: its requirements}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def pins() -> dict[str, str]:
    """{canonical name: version} of constraints.txt; every line that is not a comment must be an exact pin."""
    found = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;+]+)", line)
            assert match, f"constraints.txt:{number}: {line!r} is not NAME==VERSION (no local label such as +cpu)"
            name = canonicalize_name(match[1])
            assert name not in found, f"constraints.txt:{number}: {match[1]} pinned twice"
            found[name] = match[2]
    return found


def test_the_lock_pins_every_dependency_pyproject_names_within_its_range():
    locked = pins()
    for group, requirements in pyproject_requirements().items():
        for req in requirements:
            name = canonicalize_name(req.name)
            assert name in locked, f"pyproject {group}: {req.name} is not pinned in constraints.txt"
            assert req.specifier.contains(locked[name], prereleases=True), (group, str(req), locked[name])


def test_the_lock_is_a_whole_environment_not_just_the_direct_dependencies():
    """Transitive dependencies are pinned too (transformers' huggingface-hub, mlflow's sqlalchemy, ray's grpcio):
    a new release of one of them changes behaviour as much as a new transformers does."""
    locked = pins()
    assert {"huggingface-hub", "sqlalchemy", "grpcio", "numpy", "packaging", "accelerate"} <= set(locked)
    assert len(locked) > 3 * sum(len(reqs) for reqs in pyproject_requirements().values())


def test_the_gpu_extra_has_what_gpu_nodes_need():
    gpu = {canonicalize_name(r.name) for r in pyproject_requirements()["gpu"]}
    assert {"flash-attn", "bitsandbytes", "liger-kernel", "nvidia-ml-py"} <= gpu
    assert not gpu & {canonicalize_name(r.name) for r in pyproject_requirements()["dependencies"]}


def installs(text: str) -> list[str]:
    """The `pip install` commands of a shell script, a Dockerfile or a README's code blocks, continuation lines
    joined and `&&` chains split."""
    joined = text.replace("\\\n", " ")
    return [part.strip() for line in joined.splitlines() for part in line.split("&&")
            if "pip install" in part and "--upgrade pip" not in part]


def readme_set_up() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Set-up"):readme.index("## Tests")]
    return re.search(r"```bash\n(.*?)```", section, re.S)[1]


def test_the_readme_ci_and_the_image_install_from_the_same_lock():
    ci = (ROOT / ".ci" / "run").read_text()
    docker = (ROOT / "docker" / "Dockerfile").read_text()
    set_up = readme_set_up().strip()
    assert set_up in ci, ".ci/run runs exactly the README's set-up"
    for where, text in {"README set-up": set_up, ".ci/run": ci, "docker/Dockerfile": docker}.items():
        commands = installs(text)
        assert commands, where
        for command in commands:
            assert re.search(r"(^|\s)-c constraints\.txt(\s|$)", command), f"{where}: {command!r} ignores the lock"
    assert "COPY constraints.txt" in docker
    assert "python .ci/installed_vs_lock.py" in ci, "CI proves the installed versions are the locked ones"
    # torch first, from the lock, everywhere: on CPU machines the pinned version is the local CPU build
    for where, text in {"README set-up": set_up, "docker/Dockerfile": docker}.items():
        assert re.search(r"pip install -c constraints\.txt torch(\s|$)", installs(text)[0]), where


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    tests = readme[readme.index("## Tests"):]
    command = re.search(r"```bash\n(.*?)\n```", tests, re.S)[1].strip()
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_upgrade_script_reresolves_in_a_fresh_venv_and_keeps_the_hand_pinned_tail():
    script = (ROOT / ".ci" / "lock").read_text()
    assert "python -m venv" in script and "bin/pip\" freeze --exclude-editable" in script
    assert '-e ".[dev]"' in script
    tail = "# -- not installable on a CPU machine"
    assert tail in script and tail in LOCK.read_text()
    assert "bash .ci/lock" in (ROOT / "README.md").read_text()


EXPECTED_TOP_LEVEL = {
    ".ci", ".dockerignore", ".gitignore", "README.md", "pyproject.toml", "constraints.txt",
    "benchmarks", "data_prep", "docker", "docs", "ds_configs", "jobs", "tests", "trainer",
}


def test_the_repository_root_holds_only_the_expected_entries():
    """A stray file at the top (once `ords shared across languages#`, an editor's leftover) fails here: add a new
    top-level entry to EXPECTED_TOP_LEVEL deliberately, or delete it."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    top = {path.split("/", 1)[0] for path in tracked.decode().split("\0") if path}
    assert top - EXPECTED_TOP_LEVEL == set(), f"unexpected top-level entries: {sorted(top - EXPECTED_TOP_LEVEL)}"
    assert {"trainer", "tests", "pyproject.toml", "constraints.txt"} <= top
