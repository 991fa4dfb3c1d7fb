"""docker/ agrees with pyproject.toml and the README: no container runs here, so the files are checked as text."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def test_the_dockerfile_builds_a_gpu_image_of_the_pinned_project():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-\S*devel", text)
    assert base, "a CUDA devel base image (nvcc builds DeepSpeed's ops and flash-attn)"
    installs = [line for line in text.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert all("-c constraints.txt" in line for line in installs if "upgrade pip" not in line), installs
    assert "COPY constraints.txt constraints.txt" in text
    assert any('-e ".[gpu]"' in line for line in installs)
    assert any("DS_BUILD_FUSED_ADAM=1" in line and "deepspeed" in line for line in installs)
    assert any("flash-attn" in line and "--no-build-isolation" in line for line in installs)
    order = [text.index(marker) for marker in ("pip install -c constraints.txt torch",
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
