"""The DeepSpeed engine end to end on CPU (gloo, ZeRO-3): launch shapes agree, kills resume exactly.

Every run here is stage 1 on tiny models with dropout on, so equal losses also mean equal
dropout masks. The launches are real subprocesses: the deepspeed launcher and torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainer.checkpoint import LATEST, list_checkpoints
from trainer.config import load_job
from trainer.loop import METRICS_FILE
from trainer.tiny.text import english_documents

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 10
# Losses of different launch shapes agree up to the order of float additions
# (gradient all-reduce across ranks versus accumulation on one rank).
LAUNCH_SHAPE_RTOL = 1e-4
# A resumed run recomputes exactly what the uninterrupted run computed.
RESUME_RTOL = 1e-6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_cache):
    tmp = tmp_path_factory.mktemp("engine")
    (tmp / "english").mkdir()
    (tmp / "english" / "docs.jsonl").write_text(
        "".join(json.dumps({"text": doc}) + "\n" for doc in english_documents(96, seed=5)))
    job = {
        "recipe": "stage1", "seed": 3,
        "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "cache_dir": tiny_cache},
        "data": {"files": [str(tmp / "english" / "*.jsonl")], "max_length": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": MAX_STEPS, "micro_batch_size": 4, "grad_accum": 1},
        "engine": {"deepspeed": "zero3"},
        "checkpoint": {"every": 2, "keep_last": 3},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "log_every": 1},
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    return tmp


def launch(workdir: Path, name: str, nproc: int, *overrides: str, launcher: str = "torchrun",
           fault: str | None = None) -> subprocess.CompletedProcess:
    """Run the job under a launcher with `nproc` CPU ranks; output_dir and experiment are `name`."""
    args = [str(workdir / "job.yaml"), f"output_dir={workdir / name}", f"tracking.experiment={name}", *overrides]
    if launcher == "deepspeed":
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(_free_port()),
               "--module", "trainer.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "trainer.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TRAINER_FAULT", None)
    if fault:
        env["TRAINER_FAULT"] = fault
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    from trainer.distributed import _free_port as free
    return free()


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def losses(workdir: Path, name: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / name / METRICS_FILE).read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.fixture(scope="module")
def two_ranks(workdir):
    """The reference: 2 ranks x grad_accum 1, under the deepspeed launcher."""
    ok(launch(workdir, "two_ranks", 2, launcher="deepspeed"))
    return losses(workdir, "two_ranks")


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_the_same_global_batch(workdir, two_ranks):
    ok(launch(workdir, "one_rank", 1, "optim.grad_accum=2"))
    one_rank = losses(workdir, "one_rank")
    assert sorted(two_ranks) == sorted(one_rank) == list(range(1, MAX_STEPS + 1))
    assert two_ranks[MAX_STEPS] < two_ranks[1]  # it trained
    for step in two_ranks:
        assert one_rank[step] == pytest.approx(two_ranks[step], rel=LAUNCH_SHAPE_RTOL), step


@pytest.mark.slow
def test_the_single_process_config_trains_the_same_losses(workdir, two_ranks):
    """ds_configs/single.json (ZeRO stage 0: no partitioning, no gradient hooks) on one process, killed after step 5
    and resumed from its step-4 checkpoint, trains the losses of 2 uninterrupted ZeRO-3 ranks."""
    args = ("optim.grad_accum=2", "engine.deepspeed=single")
    assert launch(workdir, "single", 1, *args, fault="after_step:5").returncode != 0
    assert "resuming from" in ok(launch(workdir, "single", 1, *args)).stderr
    single = losses(workdir, "single")
    assert sorted(single) == list(range(1, MAX_STEPS + 1))
    for step in two_ranks:
        assert single[step] == pytest.approx(two_ranks[step], rel=LAUNCH_SHAPE_RTOL), step


@pytest.mark.slow
def test_killed_twice_and_during_a_checkpoint_write_resumes_to_the_same_losses(workdir, two_ranks):
    """Also two equivalences under 2 ZeRO-3 ranks: these launches read cached teacher targets and checkpoint
    every block's activations; the reference (`two_ranks`) ran the live teacher without checkpointing."""
    from data_prep.teacher_cache import build_teacher_targets

    cache = workdir / "teacher_cache"
    build_teacher_targets(load_job(workdir / "job.yaml", [f"teacher_cache={cache}"]), cache, batch_size=7)
    name = "killed"
    ckpts = workdir / name / "checkpoints"
    # 1. SIGKILL after step 5: the newest checkpoint is step 4.
    variant = (f"teacher_cache={cache}", "model.llm.gradient_checkpointing=true")
    first = launch(workdir, name, 2, *variant, fault="after_step:5")
    assert first.returncode != 0
    assert (ckpts / LATEST).read_text().strip() == "step-00000004"
    # 2. Resume from 4; SIGKILL while writing the step-8 checkpoint (DeepSpeed files written,
    #    no manifest yet): step 6 must stay the newest usable checkpoint.
    second = launch(workdir, name, 2, *variant, fault="in_checkpoint:8")
    assert second.returncode != 0
    assert "resuming from" in second.stderr and "step-00000004" in second.stderr
    assert (ckpts / ".tmp-step-00000008").is_dir()
    assert (ckpts / LATEST).read_text().strip() == "step-00000006"
    # 3. Resume again: the interrupted write is skipped with a warning naming it.
    third = ok(launch(workdir, name, 2, *variant))
    assert "skipping" in third.stderr and ".tmp-step-00000008" in third.stderr
    assert "step-00000006" in third.stderr
    resumed = losses(workdir, name)
    assert sorted(resumed) == list(range(1, MAX_STEPS + 1))
    for step in two_ranks:
        assert resumed[step] == pytest.approx(two_ranks[step], rel=RESUME_RTOL), step
    assert [s for s, _ in list_checkpoints(ckpts)] == [10, 8, 6]  # keep_last=3, nothing half-written left
    assert not list(ckpts.glob(".tmp-*"))
    # The three launches are one MLflow run, with one loss value per step.
    client = mlflow.MlflowClient(tracking_uri=yaml.safe_load((workdir / "job.yaml").read_text())["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    by_step = {m.step: m.value for m in history}  # a re-logged step keeps the latest value
    assert sorted(by_step) == list(range(1, MAX_STEPS + 1))
    assert by_step[MAX_STEPS] == pytest.approx(two_ranks[MAX_STEPS], rel=RESUME_RTOL)


@pytest.mark.slow
def test_export_after_zero3_is_complete_and_equals_the_trained_weights(workdir, two_ranks):
    export = load_file(workdir / "two_ranks" / "export" / "trainable.safetensors")
    assert export and all(t.numel() > 0 for t in export.values())
    lora_b = [t for name, t in export.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it trained
    # The final checkpoint holds the same weights in DeepSpeed's format: consolidate and compare.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = workdir / "two_ranks" / "checkpoints" / f"step-{MAX_STEPS:08d}"
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="ds", exclude_frozen_parameters=True)
    for name, tensor in export.items():
        key = next(k for k in consolidated if k.endswith(name))
        torch.testing.assert_close(tensor, consolidated[key].float(), rtol=0, atol=0, msg=name)
    # the PEFT adapter folder holds the same gathered LoRA weights (PEFT's names drop the adapter's name)
    adapter = load_file(workdir / "two_ranks" / "export" / "adapter" / "adapter_model.safetensors")
    lora = {name for name in export if ".lora_" in name}
    assert len(adapter) == len(lora) > 0
    for name, tensor in adapter.items():
        twin = "llm." + name.replace(".weight", ".default.weight")
        torch.testing.assert_close(tensor, export[twin], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_ranks_that_disagree_on_the_config_fail_cleanly(workdir):
    script = workdir / "per_rank_seed.py"
    script.write_text(
        "import os, sys\nfrom trainer.train import main\n"
        f"sys.exit(main([{str(workdir / 'job.yaml')!r}, 'output_dir={workdir / 'mismatch'}', "
        "'seed=' + os.environ['RANK']]))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0
    assert "ranks disagree on the resolved job config" in result.stderr
    assert not (workdir / "mismatch" / "checkpoints").exists()


def test_zero3_loads_the_checkpoint_weights_not_a_fresh_init(workdir, tiny_path):
    """Frozen weights loaded partitioned under ZeRO-3 equal the files on disk (no silent re-init)."""
    import deepspeed

    from trainer.engine import Engine
    from trainer.models.loading import build_tiny_models_in
    from trainer.models.mt_llm import build_mt_llm

    job = load_job(workdir / "job.yaml", [f"output_dir={workdir / 'load'}"])
    build_tiny_models_in(job.model.model_dump(), job.model.cache_dir)
    engine = Engine(job)
    try:
        assert engine.zero_stage == 3   # parameters live in per-rank partitions
        model = build_mt_llm(job.model)
        # the on-disk prefix of the weights each live module holds
        for kind, module, prefix in (("llama", model.llm, "model."), ("nllb", model.encoder, "model.encoder.")):
            on_disk = load_file(Path(tiny_path(kind)) / "model.safetensors")
            live = dict(module.named_parameters())
            checked = 0
            for disk_name, tensor in [item for item in on_disk.items() if item[0].startswith(prefix)][:6]:
                key = next((k for k in live if k.replace("base_model.model.", "").replace(".base_layer", "")
                            .endswith(disk_name[len(prefix):])), None)
                if key is None:
                    continue
                param = live[key]
                assert param.numel() == 0 or hasattr(param, "ds_id")  # partitioned, not a full copy
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    torch.testing.assert_close(param.detach().float(), tensor.float(), msg=f"{kind}: {disk_name}")
                checked += 1
            assert checked >= 3, (kind, list(on_disk)[:6], list(live)[:6])
    finally:
        engine.close()


def test_torch_adam_unless_deepspeeds_fused_adam_can_run(monkeypatch):
    """`torch_adam: auto`: DeepSpeed's fused Adam only where it is built ahead or can be compiled (nvcc)."""
    import deepspeed.git_version_info as info
    import torch.utils.cpp_extension as cpp

    from trainer import engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not engine.fused_adam_ready()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(info.installed_ops, "fused_adam", True)
    assert engine.fused_adam_ready()                                   # built ahead (docker/Dockerfile)
    monkeypatch.setitem(info.installed_ops, "fused_adam", False)
    monkeypatch.setattr(cpp, "CUDA_HOME", None)
    assert not engine.fused_adam_ready()                               # no compiler: torch's AdamW


def test_the_schedules_follow_their_formulas_and_transformers_inverse_sqrt():
    from transformers import get_inverse_sqrt_schedule

    from trainer.engine import warmup_inverse_sqrt, warmup_linear_decay

    linear = warmup_linear_decay(4, 20)
    assert [linear(s) for s in (0, 2, 4, 12, 20)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    inverse_sqrt = warmup_inverse_sqrt(4, 20)
    assert [inverse_sqrt(s) for s in (0, 2, 4, 16, 64)] == [0.0, 0.5, 1.0, 0.5, 0.25]   # sqrt(4 / step) after 4
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=4)   # M2's reference schedule
    for step in range(4, 40):
        assert reference.lr_lambdas[0](step) == pytest.approx(inverse_sqrt(step)), step


def test_bf16_gradients_accumulate_in_fp32_under_zero1_and_zero2_warns_that_they_do_not(workdir, tiny_cache, caplog):
    """ds_configs/zero1.json sets data_types.grad_accum_dtype fp32: with bf16 weights and grad_accum > 1 the
    step's gradient is summed in fp32; ZeRO-2 sums it in bf16 and says so, naming the way out."""
    from trainer.config import resolve_dtypes
    from trainer.engine import Engine
    from trainer.models.mt_llm import build_mt_llm

    found = {}
    for stage in ("zero1", "zero2"):
        job = load_job(workdir / "job.yaml", [f"engine.deepspeed={stage}", "engine.precision=bf16",
                                              "optim.grad_accum=2"])
        engine = Engine(job)
        caplog.clear()
        engine.prepare(build_mt_llm(resolve_dtypes(job).model))
        found[stage] = (engine.gradient_accumulation_dtype, "accumulate in bfloat16" in caplog.text)
        engine.close()
    assert found == {"zero1": (torch.float32, False), "zero2": (torch.bfloat16, True)}
