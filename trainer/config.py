"""One typed job schema: YAML in, validated, dotted command-line overrides.

    job = load_job("jobs/demo_stage1.yaml", ["model.lora.r=8", "optim.lr=1e-4"])

Every section forbids unknown keys, so a typo fails before any model loads,
with the key path and what is allowed (`ConfigError`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LLMConfig(Section):
    name_or_path: str = Field("tiny:llama", description="Hub name, local directory, or tiny:{llama,qwen2,gpt2,gemma2}")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype of the frozen LLM")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto = flash_attention_2 if flash_attn imports and CUDA is present, else sdpa, else eager")
    bidirectional: bool = Field(False, description="LLM2Vec-style: every token attends to every non-pad token")
    padding_side: Literal["left", "right"] = "right"


class EncoderConfig(Section):
    name_or_path: str = Field("tiny:nllb", description="NLLB/M2M100 hub name, local directory, or tiny:nllb")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    source_lang: str = Field("eng_Latn", description="FLORES-200 code of the training text (stage 1: English)")


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank (paper M1: 16)")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (paper M1: 32)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear")


class ProjectionConfig(Section):
    kind: Literal["linear", "mlp"] = Field("linear", description="U: d_ENC -> d_LLM; paper: one nn.Linear")
    hidden_multiplier: int = Field(2, gt=0, description="MLP hidden width as a multiple of d_LLM")


class ModelConfig(Section):
    llm: LLMConfig = LLMConfig()
    encoder: EncoderConfig = EncoderConfig()
    lora: LoraConfig = LoraConfig()
    projection: ProjectionConfig = ProjectionConfig()
    pooling: Literal["mean", "bos", "eos"] = Field("mean", description="phi over last hidden states")
    cache_dir: str = Field(".cache/tiny-models", description="Where tiny:* models are built")


class TextDataConfig(Section):
    files: list[str] = Field(default_factory=list, description="Local parquet/jsonl files or globs with a text column")
    text_column: str = "text"
    max_length: int = Field(128, gt=0, description="Tokens per example in each view (LLM and NLLB)")
    shuffle: bool = True

    @model_validator(mode="after")
    def _files_given(self) -> "TextDataConfig":
        if not self.files:
            raise ValueError("data.files: give at least one parquet/jsonl file or glob")
        return self


class OptimConfig(Section):
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(100, gt=0, description="Optimizer steps")
    micro_batch_size: int = Field(8, gt=0, description="Examples per forward pass per process")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null turns it off")

    @model_validator(mode="after")
    def _warmup_within_run(self) -> "OptimConfig":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"optim.warmup_steps ({self.warmup_steps}) exceeds optim.max_steps ({self.max_steps})")
        return self


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str = "trainer"
    run_name: str | None = None
    log_every: int = Field(1, gt=0, description="Log metrics every N optimizer steps")
    parent_run_id: str | None = Field(None, description="Open the run as a child of this MLflow run (set by sweeps)")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow tags of the run")


class EngineConfig(Section):
    """The DeepSpeed engine: which ZeRO config, precision, process group."""

    deepspeed: str = Field(
        "zero2", description="A config in ds_configs/ by name (zero2, zero3, zero3_offload) or a path to a "
                             "DeepSpeed JSON; its \"auto\" values are filled from this job")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training precision; auto = the LLM's dtype (model.llm.dtype)")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend when this job creates the group; auto = nccl with CUDA, else gloo")
    timeout_minutes: float = Field(
        60.0, gt=0, description="Process-group timeout: long enough for the slowest rank to save a checkpoint")


class CheckpointConfig(Section):
    """Resume state: when to write it, how many to keep, where to resume from."""

    every: int = Field(500, ge=0, description="Write resume state every N optimizer steps; 0 = never")
    save_final: bool = Field(False, description="Also write resume state after the last step")
    keep_last: int = Field(2, gt=0, description="Keep the newest K checkpoints")
    best_metric: str | None = Field(
        None, description="Also keep the checkpoint with the best value of this logged metric (e.g. loss)")
    best_mode: Literal["min", "max"] = "min"
    resume: str = Field(
        "auto", description="auto = the newest complete checkpoint in dir (none: start fresh); "
                            "none = always start fresh; or a checkpoint directory")
    dir: str | None = Field(None, description="Checkpoint directory; default OUTPUT_DIR/checkpoints")


class JobConfig(Section):
    recipe: Literal["stage1"] = "stage1"
    seed: int = 0
    output_dir: str = "outputs/run"
    model: ModelConfig = ModelConfig()
    data: TextDataConfig
    optim: OptimConfig = OptimConfig()
    tracking: TrackingConfig = TrackingConfig()
    engine: EngineConfig = EngineConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A job file or override that does not validate; the message names each key path."""


def _describe(err: dict[str, Any], model: type[BaseModel], raw: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"{path}: unknown key.{hint} Allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {msg}{shown}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for key in loc:
        field = model.model_fields.get(str(key))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def validate(raw: dict[str, Any], schema: type[BaseModel] = JobConfig, source: str = "job") -> Any:
    """Validate a raw dict into `schema`, turning pydantic's errors into one ConfigError."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        lines = [_describe(err, schema, raw) for err in e.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 8 is an int)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key.path=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def load_raw(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML file into a dict and apply dotted overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    for override in overrides or []:
        apply_override(raw, override)
    return raw


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Load, override and validate a job file."""
    return validate(load_raw(path, overrides), JobConfig, source=f"job {path}")
