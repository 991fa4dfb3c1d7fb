"""One typed job schema: YAML in, validated, dotted command-line overrides.

    job = load_job("jobs/demo_stage1.yaml", ["model.lora.r=8", "optim.lr=1e-4"])

Every section forbids unknown keys, so a typo fails before any model loads,
with the key path and what is allowed (`ConfigError`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.data.languages import language_table
from trainer.data.parallel import ParallelDataConfig


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LLMConfig(Section):
    name_or_path: str = Field("tiny:llama", description="Hub name, local directory, or tiny:{llama,qwen2,gpt2,gemma2,xlmr}")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype of the LLM (frozen unless model.finetune: full)")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto = flash_attention_2 if flash_attn imports and CUDA is present, else sdpa, else eager")
    bidirectional: bool = Field(False, description="LLM2Vec-style: every token attends to every non-pad token")
    padding_side: Literal["left", "right"] = Field(
        "right", description="Side the LLM tokenizer pads batches on; position ids are counted over real tokens "
                             "either way")


class EncoderConfig(Section):
    name_or_path: str = Field("tiny:nllb", description="NLLB/M2M100 hub name, local directory, or tiny:nllb")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype of the frozen encoder")
    source_lang: str = Field("eng_Latn", description="FLORES-200 code of the training text (stage 1: English)")


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank (paper M1: 16)")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (paper M1: 32)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout probability on the LoRA branch's input "
                                                              "(peft lora_dropout); 0 = off")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear")


class ProjectionConfig(Section):
    kind: Literal["linear", "mlp"] = Field("linear", description="U: d_ENC -> d_LLM; paper: one nn.Linear")
    hidden_multiplier: int = Field(2, gt=0, description="MLP hidden width as a multiple of d_LLM")


class ModelConfig(Section):
    llm: LLMConfig = Field(LLMConfig(), description="stage1: the LLM that is distilled; align/realign: the backbone "
                                                    "(a decoder LLM or an XLM-R-like encoder)")
    encoder: EncoderConfig = Field(EncoderConfig(), description="stage1: the frozen NLLB encoder whose pooled output "
                                                                "is projected into the LLM; unused by align/realign")
    lora: LoraConfig = Field(LoraConfig(), description="peft LoRA adapters on the LLM (stage1, and align/realign "
                                                       "with model.finetune: lora)")
    projection: ProjectionConfig = Field(ProjectionConfig(), description="stage1: the trained projection from "
                                                                         "encoder to LLM space")
    pooling: Literal["mean", "bos", "eos"] = Field("mean", description=(
        "phi over last hidden states: mean (over real tokens, special tokens included), bos (first real token), "
        "eos (last real token). stage1: both views; realign: the classification head's input. The alignment "
        "loss and retrieval always take the mean"))
    finetune: Literal["lora", "full"] = Field(
        "lora", description="align/realign: train LoRA adapters on the backbone (lora) or every backbone weight "
                            "(full, e.g. an XLM-R-like encoder); heads are always trained. stage1: lora only")
    cache_dir: str = Field(".cache/tiny-models", description="Where tiny:* models are built")


class TextDataConfig(Section):
    """Stage-1 English text, from exactly one source: `files` (read into memory) or `manifest` (streamed shards).

    The streaming options (shuffle_window and below) apply to `manifest` only; docs/streaming.md has the details.
    """

    files: list[str] = Field(default_factory=list, description="Local parquet/jsonl files or globs with a text column, "
                                                               "read into memory (small corpora, tests)")
    manifest: str | None = Field(None, description="Shard manifest (manifest.json or its folder) written by "
                                                   "python -m data_prep.fineweb_shards, streamed (FineWeb scale)")
    text_column: str = Field("text", description="Column to read from files (a manifest names its own)")
    max_length: int = Field(128, gt=0, description="Tokens per example in each view (LLM and NLLB), special tokens "
                                                   "included. files: each view truncated; manifest: documents cut "
                                                   "into spans that fit both views, nothing truncated")
    shuffle: bool = Field(True, description="Seeded reshuffle every epoch (manifest: shard order, documents in "
                                            "windows, chunks in pools)")
    shuffle_window: int = Field(10_000, ge=1, description="manifest: documents are permuted in windows of this many")
    pool_batches: int = Field(8, ge=1, description="manifest: chunks are shuffled or bucketed in pools of "
                                                   "pool_batches x micro_batch_size")
    length_bucketing: bool = Field(False, description="manifest: batch chunks of similar length (less padding)")
    consumers: int | None = Field(
        None, ge=1, description="manifest: slices of the document order; global micro-batch k comes from slice "
                                "k % consumers. A multiple of world_size x max(1, num_workers); null = that product. "
                                "Fix it to get the same batches per step under every launch shape")
    num_workers: int = Field(0, ge=0, description="manifest: DataLoader worker processes per rank (0: in-process)")
    prefetch_factor: int = Field(4, gt=0, description="manifest: micro-batches each worker prepares ahead")
    verify_checksums: bool = Field(True, description="manifest: check each shard's sha256 when it is read")

    def stream_options(self) -> dict[str, Any]:
        """The settings of the streaming reader (`trainer.data.stream.StreamConfig` keys)."""
        return self.model_dump(include={"manifest", "max_length", "shuffle", "shuffle_window", "pool_batches",
                                        "length_bucketing", "consumers", "num_workers", "prefetch_factor",
                                        "verify_checksums"})

    @model_validator(mode="after")
    def _one_source(self) -> "TextDataConfig":
        if "files" in self.model_fields_set and not self.files and self.manifest is None:
            raise ValueError("data.files: empty; give at least one parquet/jsonl file or glob (or data.manifest)")
        if self.files and self.manifest is not None:
            raise ValueError("data.files and data.manifest: give one of them, not both")
        if self.manifest is None and not self.files:
            raise ValueError("data.files or data.manifest: give parquet/jsonl files or a shard manifest")
        if self.manifest is None:
            # a dumped-and-reloaded config sets every field, so only a non-default value is a mistake
            streaming = sorted(name for name in set(self.stream_options()) - {"manifest", "max_length", "shuffle"}
                               if getattr(self, name) != type(self).model_fields[name].get_default())
            if streaming:
                raise ValueError(f"data.{streaming[0]}: a streaming option, used with data.manifest only "
                                 f"(data.files is read into memory)")
        elif self.text_column != "text":
            raise ValueError("data.text_column: used with data.files only (a shard manifest names its text column)")
        return self


class OptimConfig(Section):
    lr: float = Field(2e-4, gt=0, description="Peak AdamW learning rate: linear warm-up to it, then linear decay "
                                              "to 0 at max_steps (unless the DeepSpeed JSON has its own scheduler)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW (decoupled) weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW [beta1, beta2]")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up from 0 to lr (0 = none); "
                                                   "at most max_steps")
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
    experiment: str = Field("trainer", description="MLflow experiment name (created when missing)")
    run_name: str | None = Field(None, description="MLflow run name; null = MLflow picks one. A resumed run keeps "
                                                   "its run (and name)")
    log_every: int = Field(1, gt=0, description="Log metrics every N optimizer steps")
    parent_run_id: str | None = Field(None, description="Open the run as a child of this MLflow run (set by sweeps)")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow tags of the run")


class EngineConfig(Section):
    """The DeepSpeed engine: which ZeRO config, precision, process group."""

    deepspeed: str = Field(
        "zero2", description="A config in trainer/ds_configs/ by name (zero2, zero3, zero3_offload) or a path to a "
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
    best_mode: Literal["min", "max"] = Field("min", description="Whether the lowest (min) or highest (max) "
                                                                "best_metric is best")
    resume: str = Field(
        "auto", description="auto = the newest complete checkpoint in dir (none: start fresh); "
                            "none = always start fresh; or a checkpoint directory")
    dir: str | None = Field(None, description="Checkpoint directory; default OUTPUT_DIR/checkpoints")


class TaskDataConfig(Section):
    """Labelled task data (align, realign): train on the source language, evaluate zero-shot per language.

    Files are JSONL or parquet with a text and an integer label column (`python -m data_prep.make_task_data`
    writes the generated demo task).
    """

    train_files: list[str] = Field(default_factory=list, description=(
        "Source-language (English) training files or globs, jsonl/parquet with text and label columns"))
    eval_dir: str | None = Field(None, description=(
        "Directory of evaluation files named <language>.jsonl or <language>.parquet (FLORES-200 code)"))
    eval_languages: list[str] = Field(default_factory=list, description=(
        "Languages evaluated after training; the source language is reported as source_accuracy, the others "
        "are averaged into zero_shot_accuracy. Keep this list fixed across a sweep so trials compare"))
    source_language: str = Field("eng_Latn", description="Language of train_files (excluded from the zero-shot mean)")
    text_column: str = Field("text", description="Column with the input text")
    label_column: str = Field("label", description="Column with the integer class label (0 .. num_labels-1)")
    num_labels: int = Field(3, ge=2, description="Number of classes")
    max_length: int = Field(64, gt=0, description="Tokens per example (prompt and answer together for align)")
    eval_examples: int | None = Field(None, gt=0, description="Evaluate at most the first N examples per language")
    prompt_template: str = Field("{text} Topic:", description=(
        "align (causal LM task): the prompt; {text} is replaced by the example's text"))
    label_words: list[str] | None = Field(None, description=(
        "align: the answer for each label (index = label); the loss covers the answer tokens only, and "
        "evaluation picks the answer with the highest summed log-likelihood. Default: the label numbers"))

    @field_validator("eval_languages")
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        return language_table().resolve(v, "eval_languages")

    @field_validator("source_language")
    @classmethod
    def _source(cls, v: str) -> str:
        return language_table().flores(v, "source_language")

    @model_validator(mode="after")
    def _labels(self) -> "TaskDataConfig":
        if self.label_words is not None and len(self.label_words) != self.num_labels:
            raise ValueError(f"task.label_words: {len(self.label_words)} words for task.num_labels={self.num_labels}")
        if "{text}" not in self.prompt_template:
            raise ValueError("task.prompt_template: must contain {text}")
        return self


class AlignmentConfig(Section):
    """The contrastive objective of align (M2) and realign (M3), and which objectives train."""

    enabled: bool = Field(True, description=(
        "Train the contrastive alignment objective; false = task-only baseline (no parallel data needed)"))
    task: bool = Field(True, description=(
        "Train the task objective; false = alignment only (align: the export is an alignment adapter; "
        "realign: the realigned model, no task evaluation)"))
    objective: Literal["info_nce", "two_b"] | None = Field(None, description=(
        "info_nce: each source picks its translation among the batch's targets (M2); two_b: each of the 2B "
        "sentences picks its translation among the other 2B-1 (M3); null = the recipe's method "
        "(align: info_nce, realign: two_b)"))
    symmetric: bool = Field(False, description="info_nce only: average with the target -> source direction")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature on cosine similarities")
    layers: int | list[int] | None = Field(None, description=(
        "hidden_states index (or indices, pooled then averaged) to align: 0 = embeddings, i = output of "
        "block i, -1 = last (final-normed); null = the recipe's default (align: the middle block L//2, "
        "realign: -1)"))
    batch_size: int | None = Field(None, ge=2, description=(
        "Translation pairs per alignment micro-batch (in-batch negatives); default optim.micro_batch_size"))
    max_length: int = Field(64, gt=0, description="Tokens per sentence of a pair (and of the retrieval set)")
    steps: int | None = Field(None, ge=0, description=(
        "realign only: optimizer steps of the realignment phase; the remaining optim.max_steps - steps "
        "fine-tune the task. Default: half of optim.max_steps"))

    @model_validator(mode="after")
    def _something_trains(self) -> "AlignmentConfig":
        if not (self.enabled or self.task):
            raise ValueError("alignment.enabled and alignment.task are both false: nothing to train")
        return self


class EvalConfig(Section):
    """Evaluation of align/realign: translation retrieval per layer, task accuracy per language."""

    retrieval: ParallelDataConfig | None = Field(None, description=(
        "Multi-way parallel set for translation retrieval (English plus its languages, the same English "
        "sentences in the same order for every language), e.g. files written by data_prep.make_parallel_data "
        "or hub: [flores-200] with split: dev; null = no retrieval diagnostic"))
    retrieval_sentences: int | None = Field(200, gt=0, description="Use the first N sentences of the set (null: all)")
    layers: list[int] | None = Field(None, description="hidden_states indices to evaluate; null = every layer")
    k: int = Field(4, gt=0, description="Neighbourhood size of the ratio-margin score")
    batch_size: int = Field(32, gt=0, description="Sentences per forward pass in evaluation")


class JobConfig(Section):
    recipe: Literal["stage1", "align", "realign"] = Field("stage1", description=(
        "stage1: MT-LLM self-distillation (M1); align: task + middle-layer alignment (M2); realign: "
        "realignment then task fine-tuning (M3)"))
    seed: int = Field(0, description="Seeds torch (initialisation, dropout) and the order of the text and task "
                                     "data; parallel data has its own parallel.seed")
    output_dir: str = Field("outputs/run", description=(
        "Run directory: the resolved config.yaml, metrics.jsonl (one row per step), export/ (the trained "
        "weights), checkpoints/ (unless checkpoint.dir); align/realign also final_metrics.json and eval/ tables"))
    model: ModelConfig = Field(ModelConfig(), description="The models: LLM or backbone, encoder, LoRA, projection")
    data: TextDataConfig | None = Field(None, description="stage1: the English text (required there)")
    parallel: ParallelDataConfig | None = Field(None, description=(
        "align/realign: translation pairs for the alignment objective; parallel.languages is the language "
        "subset (the key sweeps set)"))
    task: TaskDataConfig = Field(default_factory=TaskDataConfig, description="align/realign: the labelled task")
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig, description="align/realign: objectives")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="align/realign: retrieval and task evaluation")
    optim: OptimConfig = Field(OptimConfig(), description="AdamW, the learning-rate schedule and the batch shape")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow: store, experiment, run")
    engine: EngineConfig = Field(EngineConfig(), description="DeepSpeed config, precision and process group")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="Resume state: when, how many, from where")

    @model_validator(mode="after")
    def _recipe_sections(self) -> "JobConfig":
        """Each recipe's required sections, named by key (checked before anything loads)."""
        if self.recipe == "stage1":
            if self.data is None:
                raise ValueError("data: required key is missing (recipe stage1 trains on data.files)")
            if self.model.finetune != "lora":
                raise ValueError("model.finetune: stage1 trains LoRA and the projection only; use lora")
            return self
        a = self.alignment
        if a.symmetric and (a.objective or {"align": "info_nce", "realign": "two_b"}[self.recipe]) == "two_b":
            raise ValueError("alignment.symmetric: two_b is symmetric by construction; it applies to info_nce only")
        if a.enabled and self.parallel is None:
            raise ValueError(f"parallel: required key is missing (recipe {self.recipe} with alignment.enabled "
                             f"trains on translation pairs: give parallel.files or parallel.hub)")
        if a.task and not self.task.train_files:
            raise ValueError(f"task.train_files: recipe {self.recipe} with alignment.task needs labelled "
                             f"source-language data")
        if a.task and self.task.eval_languages and self.task.eval_dir is None:
            raise ValueError("task.eval_dir: task.eval_languages are listed but no directory holds their files")
        if self.recipe == "realign":
            if a.steps is not None and a.steps > self.optim.max_steps:
                raise ValueError(f"alignment.steps ({a.steps}) exceeds optim.max_steps ({self.optim.max_steps})")
            if a.steps == self.optim.max_steps and a.task and a.enabled:
                raise ValueError(f"alignment.steps ({a.steps}) leaves no task fine-tuning steps of optim.max_steps; "
                                 f"for realignment only set alignment.task: false")
        elif a.steps is not None:
            raise ValueError("alignment.steps: only the realign recipe has a separate realignment phase")
        return self

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
    if not path:  # a check across sections (JobConfig's validator): its message names the key
        return msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {msg}{shown}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for key in loc:
        field = model.model_fields.get(str(key))
        # a section may be optional (`ParallelDataConfig | None`): look inside the union
        candidates = get_args(field.annotation) or (field.annotation,) if field else ()
        sections = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return []
        model = sections[0]
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
