"""docker/ agrees with pyproject.toml and the README: no container runs here, so the files are checked as text."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def pyproject_requirements() -> dict[str, list[Requirement]]:
    """{"dependencies" or the extra's name: its requirements}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def constraints() -> dict[str, str]:
    """{canonical name: pinned version} of docker/constraints.txt; every line must be an exact pin."""
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert match, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_the_constraints_pin_every_dependency_pyproject_names_within_its_range():
    pins = constraints()
    for group, requirements in pyproject_requirements().items():
        for req in requirements:
            name = canonicalize_name(req.name)
            assert name in pins, f"pyproject {group}: {req.name} is not pinned in docker/constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (group, str(req), pins[name])


def test_the_gpu_extra_has_what_gpu_nodes_need():
    gpu = {canonicalize_name(r.name) for r in pyproject_requirements()["gpu"]}
    assert {"flash-attn", "bitsandbytes", "liger-kernel", "nvidia-ml-py"} <= gpu
    assert not gpu & {canonicalize_name(r.name) for r in pyproject_requirements()["dependencies"]}


def test_the_pins_are_the_versions_installed_here():
    """What is installed on this machine is what the constraints say was tested (torch: its CPU build here)."""
    checked = 0
    for name, version in constraints().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue          # the gpu extra and the image-only driver: not installable on a CPU machine
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, constraints.txt {version}"
        checked += 1
    assert checked >= 15


def test_the_dockerfile_builds_a_gpu_image_of_the_pinned_project():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-\S*devel", text)
    assert base, "a CUDA devel base image (nvcc builds DeepSpeed's ops and flash-attn)"
    installs = [line for line in text.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert all("-c docker/constraints.txt" in line for line in installs if "upgrade pip" not in line), installs
    assert any('-e ".[gpu]"' in line for line in installs)
    assert any("DS_BUILD_FUSED_ADAM=1" in line and "deepspeed" in line for line in installs)
    assert any("flash-attn" in line and "--no-build-isolation" in line for line in installs)
    order = [text.index(marker) for marker in ("pip install -c docker/constraints.txt torch",
                                               "--no-build-isolation deepspeed", "--no-build-isolation flash-attn",
                                               '-e ".[gpu]"')]
    assert order == sorted(order), "torch before the extensions that compile against it, the project last"


def test_compose_starts_mlflow_with_a_sql_store_and_a_ray_head_with_a_gpu_worker():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    mlflow = services["mlflow"]["command"]
    assert "mlflow server" in mlflow and "--backend-store-uri postgresql://" in mlflow
    assert "--artifacts-destination" in mlflow and "postgres" in services
    assert "ray start --head" in services["ray-head"]["command"]
    worker = services["ray-worker"]
    assert "ray start --address=ray-head:6379" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    for name in ("ray-head", "ray-worker"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_readme_gives_the_cluster_set_up_in_order():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Cluster set-up"):]
    steps = ["docker build -f docker/Dockerfile", "docker compose -f docker/compose.yaml up", "ray job submit"]
    positions = [section.index(step) for step in steps]
    assert positions == sorted(positions)
