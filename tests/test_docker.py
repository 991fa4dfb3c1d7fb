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
    section = readme[readme.index("## Cluster set-up"):readme.index("## Job configuration")]
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))
    steps = ["docker build -f docker/Dockerfile", "docker compose -f docker/compose.yaml up", "ray job submit"]
    positions = [commands.index(step) for step in steps]
    assert positions == sorted(positions)


def test_the_image_builds_deepspeed_ops_for_cuda_and_checks_them():
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    install = next(line for line in text.splitlines() if "--no-build-isolation deepspeed" in line)
    assert "DS_ACCELERATOR=cuda" in install and "DS_BUILD_FUSED_ADAM=1" in install
    # the check after it: the recorded accelerator, the op list, and the prebuilt fused Adam imported (no JIT)
    for check in ("accelerator_name == 'cuda'", "get_accelerator()._name == 'cuda'", "ops['fused_adam']",
                  "importlib.import_module(FusedAdamBuilder().absolute_name())"):
        assert check in install, check


def test_the_image_names_one_cuda_torch_flash_attn_combination_and_bounds_the_build():
    text = (DOCKER / "Dockerfile").read_text()
    joined = text.replace("\\\n", " ")
    cuda = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-", text)
    index = re.search(r"ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cu(\d+)", text)
    assert cuda and index and index[1] == cuda[1] + cuda[2], "torch's wheel index matches the base image's CUDA"
    assert cuda[1] == "12", "CUDA 12.x: flash-attn 2.8 does not build on CUDA 13"
    assert re.search(r"pip install -c constraints\.txt torch --extra-index-url \$\{TORCH_INDEX\}", joined)
    archs = re.search(r'ARG FLASH_ATTN_CUDA_ARCHS="([\d;]+)"', text)
    assert archs and set(archs[1].split(";")) <= {"80", "90", "100"}
    flash = next(line for line in joined.splitlines() if "--no-build-isolation flash-attn" in line)
    assert 'FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS}"' in flash and "NVCC_THREADS" in flash
    assert re.search(r"ARG MAX_JOBS=\d+", text) and "MAX_JOBS=${MAX_JOBS}" in text
    section = (ROOT / "README.md").read_text().split("## Cluster set-up")[1]
    torch = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)[1]
    flash_attn = re.search(r"^flash-attn==(\d+\.\d+\.\d+)", (ROOT / "constraints.txt").read_text(), re.M)[1]
    assert f"CUDA {cuda[1]}.{cuda[2]}" in section and f"torch {torch}" in section and f"flash-attn {flash_attn}" in section
