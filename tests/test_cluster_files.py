"""The multi-machine files (README "Cluster set-up"): compose for several machines, the SLURM script, the KubeRay
RayJob, the runtime env of `ray job submit`, and the sweep's disk estimate. No container, cluster or Ray starts:
the files are checked as text, against each other and against the README."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SWEEP_COMMAND = "python -m trainer.tune jobs/subsets.yaml"


def cluster_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Cluster set-up"):readme.index("## Job configuration")]


def code_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))


def variables(text: str) -> set[str]:
    """The ${VAR}, ${VAR:-default}, ${VAR:?message} a compose file interpolates."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def test_every_file_the_readme_cluster_section_names_exists():
    named = set(re.findall(r"\b((?:docker|jobs)/[\w./-]*\w)", cluster_section()))
    assert {"docker/Dockerfile", "docker/compose.yaml", "docker/compose.multinode.yaml", "docker/cluster.env.example",
            "docker/k8s/rayjob.yaml", "jobs/ray_slurm.sbatch", "jobs/runtime_env.yaml", "jobs/subsets.yaml"} <= named
    made = set(re.findall(r"\bcp \S+ ((?:docker|jobs)/\S+)", cluster_section()))   # written by the commands
    assert made == {"docker/cluster.env"}
    missing = sorted(path for path in named - made if not (ROOT / path).exists())
    for ignore in (".gitignore", ".dockerignore"):   # it holds tokens: never committed, never in the image
        assert "docker/cluster.env" in (ROOT / ignore).read_text().splitlines(), ignore
    assert not missing, f"README's cluster section names files that do not exist: {missing}"


def test_the_readme_gives_commands_for_compose_slurm_and_kubernetes():
    commands = code_blocks(cluster_section())
    for needed in ("docker build -f docker/Dockerfile", "docker compose -f docker/compose.yaml up -d",
                   "-f docker/compose.multinode.yaml --profile head up -d",
                   "-f docker/compose.multinode.yaml --profile worker up -d",
                   "sbatch jobs/ray_slurm.sbatch", "docker/k8s/rayjob.yaml | kubectl apply -f -",
                   "set -a && . docker/cluster.env && set +a"):
        assert needed in commands, needed
    submits = [" ".join(c.split()) for c in commands.replace("\\\n", " ").splitlines() if "ray job submit" in c]
    assert len(submits) == 2   # one machine, several machines
    for submit in submits:   # every submit checks the upload first, uploads code only, runs the README's sweep command
        assert submit.startswith("python -m trainer.tune --check-upload jobs/runtime_env.yaml && ray job submit "), submit
        assert "--runtime-env jobs/runtime_env.yaml" in submit and "--runtime-env-json" not in submit, submit
        assert submit.split(" -- ", 1)[1].strip() == SWEEP_COMMAND, submit


def test_the_cluster_commands_are_valid_bash():
    blocks = re.findall(r"```bash\n(.*?)```", cluster_section(), re.S)
    assert len(blocks) >= 5
    for block in blocks:
        subprocess.run(["bash", "-n"], input=block, text=True, check=True)


def test_the_multinode_commands_fill_in_a_token_and_give_the_submitter_the_cluster_env(tmp_path):
    """The README's lines from `cp` to `set +a`, run in a copy: cluster.env gets a fresh token, and sourcing it
    sets what the submit commands use."""
    block = next(b for b in re.findall(r"```bash\n(.*?)```", cluster_section(), re.S) if "compose.multinode" in b)
    lines = [line for line in block.splitlines() if line.startswith(("cp ", "sed -i ", "set -a"))]
    assert len(lines) == 3, lines
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "cluster.env.example").write_text((DOCKER / "cluster.env.example").read_text())
    script = "\n".join(lines + ['echo "$RAY_HEAD_IP $RAY_AUTH_MODE $RAY_AUTH_TOKEN"'])
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    head_ip, mode, token = out.split()
    assert head_ip == "10.0.0.1" and mode == "token" and re.fullmatch(r"[0-9a-f]{64}", token), out
    assert variables(block.replace("$RAY_HEAD_IP", "${RAY_HEAD_IP}")) <= {"RAY_HEAD_IP"}


def test_the_kubernetes_commands_put_the_registry_and_mlflow_into_the_manifest():
    """The README's `sed ... | kubectl apply -f -`, run on the manifest: every pod's image is the registry's, and
    the job's MLflow URI is the exported one."""
    block = next(b for b in re.findall(r"```bash\n(.*?)```", cluster_section(), re.S) if "kubectl" in b)
    joined = block.replace("\\\n", " ")
    [pipeline] = [line for line in joined.splitlines() if line.startswith("sed ")]
    sed = pipeline.split(" | kubectl apply -f -")[0]
    env = {"REGISTRY": "reg.example/team", "MLFLOW_TRACKING_URI": "http://mlflow.example:5000", "PATH": "/usr/bin:/bin"}
    text = subprocess.run(["bash", "-c", sed], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    job = yaml.safe_load(text)
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    assert {c["image"] for pod in pods for c in pod["containers"]} == {"reg.example/team/trainer-gpu:latest"}
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert "docker push \"$REGISTRY/trainer-gpu:latest\"" in block and "kubectl get pvc trainer-shared" in block


def test_every_file_the_cluster_section_names_is_checked_by_a_test():
    named = set(re.findall(r"\b((?:docker|jobs)/[\w./-]*\w)", cluster_section())) - {"docker/cluster.env"}
    tests = (Path(__file__).read_text() + (ROOT / "tests" / "test_docker.py").read_text())
    unchecked = sorted(path for path in named if f'"{Path(path).name}"' not in tests and path not in tests)
    assert not unchecked, f"files the README's cluster section names that no test reads: {unchecked}"


@pytest.fixture(scope="module")
def multinode() -> dict:
    return yaml.safe_load((DOCKER / "compose.multinode.yaml").read_text())


def test_multinode_compose_puts_ray_nodes_on_host_networking_and_mlflow_on_a_bridge(multinode):
    services = multinode["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
    for name in ("ray-head", "ray-worker"):
        node = services[name]
        assert node["network_mode"] == "host", name
        assert "ports" not in node, f"{name}: host networking publishes nothing"
        env = node["environment"]
        for key in ("MLFLOW_TRACKING_URI", "HF_TOKEN", "HF_HOME", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                    "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA"):
            assert key in env, (name, key)
        assert "${RAY_HEAD_IP" in env["MLFLOW_TRACKING_URI"], "host-networked nodes reach MLflow on the head's address"
        assert env["HF_HOME"].endswith("/shared/hf-cache}") or env["HF_HOME"].startswith("/shared")
        assert any(v.endswith(":/shared") and v.startswith("${SHARED_DIR") for v in node["volumes"]), name
        assert node["ulimits"]["memlock"] == -1 and "IPC_LOCK" in node["cap_add"]
        assert "/dev/infiniband:/dev/infiniband" in node["devices"]
        gpus = node["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in gpus)
    assert "ray start --head" in services["ray-head"]["command"] and "--node-ip-address=${RAY_HEAD_IP" in services["ray-head"]["command"]
    assert "ray start --address=${RAY_HEAD_IP" in services["ray-worker"]["command"]
    assert services["ray-head"]["profiles"] == ["head"] and services["ray-worker"]["profiles"] == ["worker"]
    mlflow = services["mlflow"]
    assert mlflow.get("network_mode") != "host" and "5000:5000" in mlflow["ports"]
    assert "--backend-store-uri postgresql://mlflow:mlflow@postgres:5432" in mlflow["command"]
    assert "--artifacts-destination ${MLFLOW_ARTIFACTS_DESTINATION" in mlflow["command"]


def test_every_variable_the_compose_files_use_is_documented():
    documented = {line.split("=", 1)[0] for line in (DOCKER / "cluster.env.example").read_text().splitlines()
                  if re.match(r"[A-Z_][A-Z0-9_]*=", line)}
    used = variables((DOCKER / "compose.multinode.yaml").read_text())
    assert used - documented == set(), f"compose.multinode.yaml uses variables cluster.env.example lacks: {used - documented}"
    assert documented - used == set(), f"cluster.env.example sets variables nothing uses: {documented - used}"
    assert variables((DOCKER / "compose.yaml").read_text()) <= {"TRAINER_IMAGE", "HF_TOKEN"}


def test_the_slurm_script_starts_ray_on_every_node_and_runs_the_readme_command():
    path = ROOT / "jobs" / "ray_slurm.sbatch"
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=" in text
    assert re.search(r"srun [^\n]*-w \"\$head_node\" \\\n\s*ray start --head", text)
    assert re.search(r"srun [^\n]*-w \"\$node\" \\\n\s*ray start --address=\"\$RAY_ADDRESS\"", text)
    assert 'ray.nodes()' in text and "Alive" in text, "waits until every node has joined"
    assert SWEEP_COMMAND in text and "set -- jobs/subsets.yaml" in text
    assert text.index("ray.nodes()") < text.rindex("python -m trainer.tune")
    for var in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN", "HF_HOME", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA",
                "MLFLOW_TRACKING_URI"):
        assert var in text, var


def test_the_rayjob_manifest_runs_the_readme_command_on_gpu_workers():
    job = yaml.safe_load((DOCKER / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"] == SWEEP_COMMAND
    assert SWEEP_COMMAND in code_blocks((ROOT / "README.md").read_text()), "the README's sweep command"
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "MLFLOW_TRACKING_URI" in runtime_env["env_vars"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]
    workers = cluster["workerGroupSpecs"]
    for pod in [head] + [group["template"]["spec"] for group in workers]:
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        assert claims["shared"] == "trainer-shared"
        for container in pod["containers"]:
            assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
            assert container["workingDir"] == "/workspace/trainer"   # the image's checkout (docker/Dockerfile)
    assert all(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) > 0
               for g in workers)
    assert "WORKDIR /workspace/trainer" in (DOCKER / "Dockerfile").read_text()


def test_the_runtime_env_uploads_code_only():
    from ray._private.thirdparty.pathspec import PathSpec   # what Ray matches `excludes` with

    env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    excluded = PathSpec.from_lines("gitwildmatch", env["excludes"]).match_file
    for path in ("data", "data/fineweb-2B/shard-00000.parquet", "outputs", "outputs/sweeps/demo/x", ".cache",
                 "mlruns", "mlflow.db", "export/model.safetensors", "trainer/__pycache__"):
        assert excluded(path), path
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    dropped = [p for p in tracked if excluded(p)]
    assert not dropped, f"the upload would leave out tracked files: {dropped[:5]}"
    assert not excluded("trainer/data/stream.py") and not excluded("trainer/data")


def test_the_dry_run_prints_the_disk_footprint_of_the_paper_sweep_without_ray(capsys):
    import ray

    from trainer.tune import main

    assert main(["--dry-run", "jobs/subsets.yaml"]) == 0
    after = capsys.readouterr().out
    assert main(["--dry-run", "jobs/subsets.yaml", "overrides=[]"]) == 0   # the sweep before its storage overrides
    before = capsys.readouterr().out
    assert not ray.is_initialized()
    assert "125 trials" in after and "FacebookAI/xlm-roberta-large: 560M parameters" in after
    docs = (ROOT / "docs" / "sweeps.md").read_text()
    for out, per_trial, sweep in ((before, "31.4 GB", "3.92 TB"), (after, "15.7 GB", "1.96 TB")):
        assert re.search(rf"per trial\s+{per_trial}", out), out
        assert re.search(rf"whole sweep \(125 trials\)\s+{sweep}", out), out
        assert f"**{per_trial}**" in docs and f"**{sweep}**" in docs, "docs/sweeps.md shows the dry run's numbers"
    assert re.search(r"uploaded to MLflow artifacts\s+0.0 GB", after)
    for out in (before, after):   # each checkpoint kept once: Ray storage, not the trial folder
        assert re.search(r"trial folder checkpoints\s+0.0 GB", out), out


def test_a_trial_with_best_metric_keeps_its_checkpoints_in_its_folder_too():
    """Ray keeps only the newest checkpoints, so `checkpoint.best_metric` keeps the trial folder's (and its best)."""
    from trainer.sweep import footprint_report, load_sweep

    sweep = load_sweep(ROOT / "jobs" / "subsets.yaml", ["overrides=[checkpoint.best_metric=loss]"], prepare=False)
    out = footprint_report(sweep)
    assert re.search(r"trial folder checkpoints\s+26.9 GB\s+\(keep_last x checkpoint", out), out
    assert re.search(r"per trial\s+58.2 GB", out), out


def test_the_footprint_counts_lora_and_full_fine_tuning_from_the_config():
    from trainer.config import LoraConfig
    from trainer.sweep import parameter_counts

    total, trained = parameter_counts("FacebookAI/xlm-roberta-large", None)
    assert total == trained and 559e6 < total < 561e6
    total, trained = parameter_counts("meta-llama/Meta-Llama-3-8B", LoraConfig(r=64, target_modules=["q_proj", "v_proj"]))
    assert 7.4e9 < total < 7.6e9   # AutoModel: no LM head
    assert trained == 32 * 64 * ((4096 + 4096) + (4096 + 1024))
    assert parameter_counts("tiny:xlmr", None) is None
