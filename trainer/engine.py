"""The DeepSpeed engine: the only module that imports DeepSpeed.

    engine = Engine(job)                    # joins/creates the process group, builds the DS config;
                                            # under ZeRO-3 transformers now loads models partitioned
    model = build_mt_llm(job.model)         # frozen LLM + encoder partitioned as they load
    engine.prepare(model)                   # deepspeed.initialize over the trainable parameters only
    out = engine(**engine.to_device(batch)) # forward through the DeepSpeed engine
    engine.backward(out.loss)               # scaled by 1/grad_accum, gradients averaged over ranks
    engine.step()                           # optimizer + schedule step at accumulation boundaries
    engine.save_state(dir) / engine.load_state(dir)   # DeepSpeed checkpoint, frozen weights excluded
    state = engine.gather_trainable()       # full fp32 trainable weights on rank 0 (for the export)
    engine.close()

DeepSpeed config: `engine.deepspeed` names a file in `ds_configs/` at the top of the checkout
(zero1, zero2, zero3, zero3_offload; installed with the package as data) or gives a path. Its `"auto"`
values are filled from the job
(micro batch, accumulation, global batch, clipping, precision, AdamW
hyper-parameters, `torch_adam` = no fused Adam here: `fused_adam_ready`); an explicit value that contradicts the
job is an error. Without a `"scheduler"` block the schedule is warm-up then
linear decay (M1), passed to DeepSpeed as a torch LambdaLR.

ZeRO-3: the `HfDeepSpeedConfig` made in `__init__` stays referenced until
`close()`, so `from_pretrained` builds the LLM and the encoder inside
`deepspeed.zero.Init` and loads the checkpoint into the partitions: no rank ever
holds a full copy. The projection and LoRA are created afterwards as ordinary
tensors (peft's own initialisation, e.g. LoRA B = 0, then runs on full
tensors); `deepspeed.initialize` broadcasts them from rank 0 and partitions them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # say it, instead of DeepSpeed warning that it guessed

import deepspeed  # noqa: E402
from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_optimizer_state,  # noqa: E402
                             safe_set_full_fp32_param, safe_set_full_optimizer_state)
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402
from transformers.integrations.deepspeed import unset_hf_deepspeed_config  # noqa: E402

from trainer import distributed  # noqa: E402
from trainer.config import ConfigError, JobBase, resolve_precision  # noqa: E402

log = logging.getLogger(__name__)

DS_CONFIGS = "ds_configs"
ADAM_STATE = ("exp_avg", "exp_avg_sq")   # the folder at the top of the checkout, installed with the package

# DeepSpeed (0.19) calls a torch collective that torch now reports as deprecated, once per step.
warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def shipped_ds_configs() -> dict[str, Any]:
    """{name: file} of the DeepSpeed configs shipped in `ds_configs/` (found through importlib.resources,
    so a checkout, an editable install and an installed wheel all work)."""
    folder = resources.files(DS_CONFIGS)
    return {Path(f.name).stem: f for f in folder.iterdir() if f.name.endswith(".json")}


def ds_config_path(name_or_path: str) -> Any:
    """`zero3` -> the shipped ds_configs/zero3.json; a path (with / or .json) is taken as given."""
    if name_or_path.endswith(".json") or os.sep in name_or_path or "/" in name_or_path:
        path = Path(name_or_path)
        if path.is_file():
            return path
    else:
        shipped = shipped_ds_configs()
        if name_or_path in shipped:
            return shipped[name_or_path]
    raise ConfigError(f"engine.deepspeed: {name_or_path!r} is neither a shipped config "
                      f"({', '.join(sorted(shipped_ds_configs()))}) nor a JSON file")


def fused_adam_ready() -> bool:
    """DeepSpeed's fused CUDA Adam can run here: CUDA, and the op built ahead (DS_BUILD_FUSED_ADAM=1, as
    docker/Dockerfile does) or nvcc and ninja to compile it on first use. Otherwise `torch_adam` ("auto")
    is true: torch's AdamW, which is as fast for LoRA's few parameters, instead of a failed compile."""
    if not torch.cuda.is_available():
        return False
    from deepspeed.git_version_info import installed_ops
    if installed_ops.get("fused_adam"):
        return True
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available
    return CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists() and is_ninja_available()


def eight_bit_adamw(params: list[torch.nn.Parameter], optim) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit with the job's lr, betas and weight decay (the MT-LLM study's optimizer), handed
    to DeepSpeed as a client optimizer. `trainer.config.check_gpu_options` has checked CUDA and bitsandbytes."""
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def check_zero_stage(job: JobBase, zero_stage: int) -> None:
    """4-bit weights (model.llm.quantization=nf4) cannot be partitioned: ZeRO-3 refuses them (ConfigError)."""
    if zero_stage == 3 and job.model.llm.quantization == "nf4":
        raise ConfigError(f"model.llm.quantization=nf4 with engine.deepspeed={job.engine.deepspeed!r} (ZeRO-3): "
                          f"4-bit weights cannot be partitioned; use zero2 (a 4-bit 8B LLM fits every GPU whole)")


def auto_values(job: JobBase, world_size: int, precision: str) -> dict[str, Any]:
    """Dotted DeepSpeed key -> the value the job implies (`precision`: resolved, `trainer.config.check_precision`)."""
    o = job.optim
    return {
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.micro_batch_size * o.grad_accum * world_size,
        "gradient_clipping": o.max_grad_norm if o.max_grad_norm is not None else 0.0,
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        "optimizer.params.lr": o.lr,
        "optimizer.params.betas": list(o.betas),
        "optimizer.params.weight_decay": o.weight_decay,
        "optimizer.params.torch_adam": not fused_adam_ready(),
        "scheduler.params.warmup_min_lr": 0.0,
        "scheduler.params.warmup_max_lr": o.lr,
        "scheduler.params.warmup_num_steps": o.warmup_steps,
        "scheduler.params.total_num_steps": o.max_steps,
    }


# Keys a user may set to something other than what the job implies.
_FREE_KEYS = {"optimizer.params.torch_adam", "scheduler.params.warmup_min_lr"}


def fill_auto(raw: dict[str, Any], values: dict[str, Any], source: str = "ds config") -> dict[str, Any]:
    """Replace every "auto" in `raw` by `values[dotted.key]`; explicit values must agree with the job."""
    out = copy.deepcopy(raw)

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            elif value == "auto":
                if dotted not in values:
                    raise ConfigError(f"{source}: {dotted} is \"auto\" but the job has no value for it")
                node[key] = values[dotted]
            elif dotted in values and dotted not in _FREE_KEYS and not _same(value, values[dotted]):
                raise ConfigError(f"{source}: {dotted} = {value!r} contradicts the job ({values[dotted]!r}); "
                                  f"set it to \"auto\" or change the job")

    walk(out, "")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def build_ds_config(job: JobBase, world_size: int, precision: str) -> dict[str, Any]:
    """The job's DeepSpeed config with every "auto" filled (`precision`: resolved, never auto)."""
    path = ds_config_path(job.engine.deepspeed)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"engine.deepspeed: {path} is not valid JSON: {e}") from None
    return fill_auto(raw, auto_values(job, world_size, precision), source=str(path))


def warmup_linear_decay(warmup_steps: int, max_steps: int):
    """lr factor: 0 -> 1 over `warmup_steps`, then linearly to 0 at `max_steps` (M1's schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))
    return factor


def warmup_inverse_sqrt(warmup_steps: int, max_steps: int):
    """lr factor: 0 -> 1 over `warmup_steps`, then sqrt(warmup_steps / step) (M2's schedule: the inverse square
    root of fairseq and transformers' `get_inverse_sqrt_schedule`, with its timescale = the warm-up)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return (max(1, warmup_steps) / max(1, step)) ** 0.5
    return factor


SCHEDULES = {"linear": warmup_linear_decay, "inverse_sqrt": warmup_inverse_sqrt}


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (`.optimizer` chains)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"cannot find the torch optimizer inside {type(optimizer).__name__}")
    return optimizer


def reset_optimizer_moments(optimizer: Any) -> None:
    """Zero every state tensor (and int step count) of the torch optimizer inside `optimizer`.

    DeepSpeed wraps the torch optimizer (`.optimizer` chains); under ZeRO its state holds this
    rank's partitions, zeroed in place on every rank.
    """
    for state in torch_optimizer(optimizer).state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            elif key == "step" and isinstance(value, int):   # optimizers that count steps in ints
                state[key] = 0


class Engine:
    """One DeepSpeed engine for one job, in the current process group."""

    def __init__(self, job: JobBase, precision: str | None = None):
        """`precision`: the job's training precision as the run resolved it (`trainer.config.check_precision`);
        None resolves it here (an engine built outside `trainer.run`: tests, benchmarks)."""
        self.job = job
        distributed.setup(job.engine.backend, job.engine.timeout_minutes)
        from datetime import timedelta
        deepspeed.init_distributed(dist_backend=distributed.resolve_backend(job.engine.backend),
                                   timeout=timedelta(minutes=job.engine.timeout_minutes), verbose=False)
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self.precision = precision or resolve_precision(job)
        self.config = build_ds_config(job, self.world_size, self.precision)
        self.zero_stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        check_zero_stage(job, self.zero_stage)
        # Kept referenced until close(): transformers holds only a weak reference to it.
        self._hf_ds_config = HfDeepSpeedConfig(copy.deepcopy(self.config)) if self.zero_stage == 3 else None
        self.ds = None
        self.module: torch.nn.Module | None = None

    # ---- set-up -------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: torch.nn.Module) -> "Engine":
        """Wrap `model` in DeepSpeed; the optimizer sees only parameters with requires_grad."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("engine: the model has no trainable parameters")
        kwargs, config = {}, copy.deepcopy(self.config)
        if "scheduler" not in self.config:
            factor = SCHEDULES[self.job.optim.schedule](self.job.optim.warmup_steps, self.job.optim.max_steps)
            kwargs["lr_scheduler"] = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)
        if self.job.optim.optimizer == "adamw_8bit":
            kwargs["optimizer"] = eight_bit_adamw(params, self.job.optim)
            config.pop("optimizer", None)                       # the client optimizer replaces the JSON's
            config["zero_allow_untested_optimizer"] = True      # DeepSpeed's name for "not one of ours"
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=config, **kwargs)
        self.module = model
        if self.job.optim.grad_accum > 1 and self.gradient_accumulation_dtype in (torch.bfloat16, torch.float16):
            log.warning("engine: gradients accumulate in %s over optim.grad_accum=%d micro-batches (ZeRO-%d); "
                        "engine.deepspeed: zero1 accumulates them in fp32 (its data_types.grad_accum_dtype)",
                        str(self.gradient_accumulation_dtype).removeprefix("torch."), self.job.optim.grad_accum,
                        self.zero_stage)
        return self

    @property
    def gradient_accumulation_dtype(self) -> torch.dtype:
        """The dtype gradients accumulate in over a step's micro-batches: the weights' dtype, unless the DeepSpeed
        JSON sets `data_types.grad_accum_dtype` (ds_configs/zero1.json: fp32; DeepSpeed honours it with bf16
        under ZeRO-1)."""
        return self.ds.get_data_types()[1]

    def modifying(self, params: list[torch.nn.Parameter]):
        """A context in which `params` are whole and changes to them persist (before `prepare`).

        Under ZeRO-3 a parameter built by `from_pretrained` is a partition: this gathers it, and rank 0's
        version is partitioned again on exit (every rank computes the same change). Elsewhere a no-op.
        """
        partitioned = [p for p in params if hasattr(p, "ds_id")]
        if not partitioned:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)

    @property
    def device(self) -> torch.device:
        return self.ds.device if self.ds is not None else distributed.device()

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ---- training -----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.ds(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> bool:
        """Optimizer and schedule step at an accumulation boundary; returns whether one happened."""
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.step()
        return boundary

    @property
    def global_step(self) -> int:
        return int(self.ds.global_steps)

    @property
    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    @property
    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def reduce_sum(self, values: list[float | torch.Tensor]) -> list[float]:
        """Sum a few floats or 0-dim device tensors over ranks (global losses, token counts); one host read."""
        return distributed.all_reduce_sum(values)

    def reset_optimizer(self) -> None:
        """Zero the optimizer's moments and step counts: the next phase starts as with a fresh AdamW.

        Used between realignment and task fine-tuning (M3): Adam's second moments from the
        contrastive phase would otherwise shrink the task phase's updates for hundreds of steps.
        The learning-rate schedule and the global step are kept.
        """
        reset_optimizer_moments(self.optimizer)

    # ---- state --------------------------------------------------------------------------------
    def save_state(self, path: str | Path) -> None:
        """DeepSpeed checkpoint of the trainable state (frozen weights excluded) into `path`. Collective."""
        path = Path(path)
        self.ds.save_checkpoint(str(path.parent), tag=path.name, client_state={}, save_latest=False,
                                exclude_frozen_parameters=True)

    def load_state(self, path: str | Path) -> None:
        """Restore weights, optimizer, schedule and step counters from `save_state`'s directory. Collective."""
        path = Path(path)
        loaded, _ = self.ds.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False,
                                            load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")

    def portable_state(self) -> dict[str, Any]:
        """The trainable state independent of the number of ranks, full tensors on rank 0 ({} elsewhere). Collective.

        Every trainable parameter's fp32 weights and AdamW moments (`exp_avg`, `exp_avg_sq`) assembled
        from the ZeRO partitions (DeepSpeed's `safe_get_full_*`), the optimizer's step count, the schedule
        and the global step. DeepSpeed's own checkpoint is laid out per rank; this is what a run resumed on
        another number of ranks loads (`load_portable_state`). Small for LoRA; for full fine-tuning it is
        three fp32 copies of the model.
        """
        params, moments = {}, {}
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            full = self._full_state(p)
            if any(t is None for t in full):
                raise RuntimeError(f"engine: DeepSpeed keeps no fp32 master or Adam state for {name}; a portable "
                                   f"checkpoint needs ZeRO stage 1, 2 or 3, or stage 0 in fp32")
            if self.is_main:
                params[name] = full[0].detach().to("cpu", torch.float32, copy=True)
                moments[name] = {key: t.detach().to("cpu", torch.float32, copy=True)
                                 for key, t in zip(ADAM_STATE, full[1:])}
        if not self.is_main:
            return {}
        steps = {float(s["step"]) for s in torch_optimizer(self.optimizer).state.values() if "step" in s}
        return {"params": params, "moments": moments, "optimizer_step": max(steps, default=0.0),
                "lrs": [group["lr"] for group in torch_optimizer(self.optimizer).param_groups],
                "scheduler": self.scheduler.state_dict(), "global_step": self.global_step,
                "global_samples": int(self.ds.global_samples)}

    def load_portable_state(self, state: dict[str, Any]) -> None:
        """Load `portable_state()`'s dict (written under any number of ranks) into this engine. Every rank."""
        names = [name for name, p in self.module.named_parameters() if p.requires_grad]
        if sorted(names) != sorted(state["params"]):
            missing, extra = sorted(set(names) - set(state["params"])), sorted(set(state["params"]) - set(names))
            raise RuntimeError(f"portable checkpoint does not match the model: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}")
        self._create_optimizer_state()
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                full = state["params"][name].to(self.device)
                if self._unwrapped_fp32():                 # stage 0 in fp32: the parameter is the master
                    p.data.copy_(full)
                    for key in ADAM_STATE:
                        torch_optimizer(self.optimizer).state[p][key].copy_(state["moments"][name][key])
                    continue
                safe_set_full_fp32_param(p, full)          # the optimizer's fp32 master partition
                with self.modifying([p]):                  # and the weights the forward reads
                    p.data.copy_(full.to(p.dtype))
                for key in ADAM_STATE:
                    safe_set_full_optimizer_state(p, state["moments"][name][key].to(self.device), key)
        for s in torch_optimizer(self.optimizer).state.values():
            if "step" in s:
                s["step"] = (torch.tensor(state["optimizer_step"], dtype=s["step"].dtype, device=s["step"].device)
                             if torch.is_tensor(s["step"]) else type(s["step"])(state["optimizer_step"]))
        self.scheduler.load_state_dict(state["scheduler"])   # its counters; the current lr lives in the groups
        for group, lr in zip(torch_optimizer(self.optimizer).param_groups, state["lrs"], strict=True):
            group["lr"] = lr
        self.ds.global_steps = int(state["global_step"])
        self.ds.global_samples = int(state["global_samples"])

    def _unwrapped_fp32(self) -> bool:
        """ZeRO stage 0 in fp32 (ds_configs/single.json): DeepSpeed keeps no master copy, the torch optimizer steps
        the parameters themselves, and `safe_get_full_*` return None."""
        return self.zero_stage == 0 and self.precision == "fp32"

    def _full_param(self, p: torch.nn.Parameter) -> torch.Tensor | None:
        """One trainable parameter's full fp32 weights (gathered from the ZeRO partitions); None where DeepSpeed keeps
        no fp32 copy of it."""
        return p.data if self._unwrapped_fp32() else safe_get_full_fp32_param(p)

    def _full_state(self, p: torch.nn.Parameter) -> list[torch.Tensor | None]:
        """[fp32 weights, exp_avg, exp_avg_sq] of one trainable parameter, full (gathered from the ZeRO partitions)."""
        if self._unwrapped_fp32():
            moments = torch_optimizer(self.optimizer).state.get(p, {})
            adam = [moments.get(key) for key in ADAM_STATE]
        else:
            adam = [safe_get_full_optimizer_state(p, key) for key in ADAM_STATE]
        return [self._full_param(p), *adam]

    def _create_optimizer_state(self) -> None:
        """Make AdamW's state exist before the first step, so that it can be overwritten.

        DeepSpeed creates it lazily at the first step (ZeRO-1/2 then links each parameter to its
        fragment of it); its universal-checkpoint loader initialises it the same way. One AdamW step on
        zero gradients creates it; every value it touches is overwritten by the loaded state afterwards.
        """
        opt = torch_optimizer(self.optimizer)
        fresh = [p for group in opt.param_groups for p in group["params"] if not opt.state.get(p)]
        if fresh:
            for p in fresh:
                p.grad = torch.zeros_like(p)
            opt.step()
            for p in fresh:
                p.grad = None
        link = getattr(self.ds.optimizer, "_lazy_init_hp_params_optimizer_state", None)   # ZeRO-1/2
        if link is not None:
            link()

    def gather_trainable(self) -> dict[str, torch.Tensor]:
        """Full fp32 copies of every trainable parameter on rank 0 ({} elsewhere). Collective.

        Under ZeRO-3 a parameter's `.data` is an empty placeholder outside a gather; reading
        it directly is how empty adapter files get written. Here each tensor comes from
        the optimizer's fp32 master partitions (`safe_get_full_fp32_param`), or from a
        `GatheredParameters` gather where DeepSpeed keeps no fp32 copy.
        """
        return self._gather(trainable=True)

    def gather_frozen(self) -> dict[str, torch.Tensor]:
        """Full copies of every frozen parameter on rank 0 ({} elsewhere), in their own dtype. Collective.

        For `tracking.export: all` (the whole model in the export); one parameter gathered at a time.
        """
        return self._gather(trainable=False)

    def _gather(self, trainable: bool) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, p in self.module.named_parameters():
            if p.requires_grad != trainable:
                continue
            full = self._full_param(p) if trainable else None
            if full is None:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    full = p.data.detach().clone()
            if self.is_main:
                dtype = torch.float32 if trainable else full.dtype
                out[name] = full.detach().to("cpu", dtype=dtype, copy=True).contiguous()
        return out

    # ---- teardown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release DeepSpeed's hooks and transformers' ZeRO-3 switch (the process group lives until exit)."""
        if self.ds is not None:
            self.ds.destroy()
            self.ds = None
        if self._hf_ds_config is not None:
            self._hf_ds_config = None
            unset_hf_deepspeed_config()
