"""The job schemas: shared sections, one schema per recipe, YAML in, dotted command-line overrides.

    job = load_job("jobs/demo_stage1.yaml", ["model.lora.r=8", "optim.lr=1e-4"])

A job is one of `Stage1Job`, `AlignJob`, `RealignJob`, chosen by its `recipe` key (a pydantic
discriminated union, `JobConfig`). Every recipe shares `seed`, `output_dir`, `optim`, `tracking`,
`engine` and `checkpoint`; each has its own `model`, data and objective sections with the
method's defaults written once, here. Every section forbids unknown keys, so a typo fails
before any model loads, with the key path and what is allowed (`ConfigError`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (BaseModel, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator,
                      model_validator)

from trainer.data.parallel_config import ParallelDataConfig
from trainer.data.text_config import TextDataConfig
from trainer.errors import UserError
from trainer.schema_base import Section, flores_code, flores_codes


# --- models -------------------------------------------------------------------------------------

class LLMConfig(Section):
    name_or_path: str = Field("tiny:llama", description="Hub name, local directory, or tiny:{llama,qwen2,gpt2,gemma2,xlmr}")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "Weights dtype of the LLM (frozen unless model.finetune: full); auto = the dtype of engine.precision when "
        "that is set, else bfloat16 where CUDA supports it and float32 elsewhere (CPU). A bf16/fp16 job with "
        "float32 weights fails at start-up"))
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto = flash_attention_2 if flash_attn imports and CUDA is present, else sdpa, else eager")
    quantization: Literal["none", "nf4"] = Field("none", description=(
        "nf4 = QLoRA, as the MT-LLM study trained: the frozen LLM loads in 4-bit NormalFloat with double "
        "quantization through bitsandbytes, computing in `dtype`; LoRA stays in 16 bits. Needs a CUDA GPU and "
        "bitsandbytes (the gpu extra) and ZeRO-2 or no ZeRO (4-bit weights cannot be partitioned); not yet "
        "measured on a GPU (docs/benchmarks.md)"))
    bidirectional: bool = Field(False, description="LLM2Vec-style: every token attends to every non-pad token")
    padding_side: Literal["left", "right"] = Field(
        "right", description="Side the LLM tokenizer pads batches on; position ids are counted over real tokens "
                             "either way")
    gradient_checkpointing: bool = Field(False, description=(
        "Activation checkpointing: keep only each block's input and recompute the block in the backward pass "
        "(transformers' non-reentrant checkpointing; dropout masks are replayed, so losses are unchanged). "
        "Memory for compute: what lets an 8B model train at 32 x 512 tokens per micro-batch"))
    checkpoint_every_n_layers: int = Field(1, gt=0, description=(
        "With gradient_checkpointing: checkpoint every n-th block only (transformers' every_n_layers); the "
        "others keep their activations. 1 = every block (least memory); 2 = half the recomputation for about "
        "half the saved memory back"))


class EncoderConfig(Section):
    name_or_path: str = Field("tiny:nllb", description=(
        "NLLB/M2M100 hub name, local directory, tiny:nllb (random) or tiny:nllb-aligned (words shared across the "
        "demo languages: a stand-in for NLLB's cross-lingual encoder)"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype of the frozen encoder; auto = the dtype of engine.precision when that "
                            "is set, else the LLM's (model.llm.dtype)")
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


class ModelCore(Section):
    """What every recipe's model section shares: the LLM, LoRA, pooling, where tiny models are built."""

    llm: LLMConfig = Field(LLMConfig(), description="The LLM")
    lora: LoraConfig = Field(LoraConfig(), description="peft LoRA adapters on the LLM")
    pooling: Literal["mean", "bos", "eos"] = Field("mean", description=(
        "phi over last hidden states: mean (over real tokens, special tokens included), bos (first real token), "
        "eos (last real token)"))
    cache_dir: str = Field(".cache/tiny-models", description="Where tiny:* models are built")


class MTLLMConfig(ModelCore):
    """Stage 1 (M1): the frozen NLLB encoder, a trained projection, the frozen LLM with LoRA."""

    llm: LLMConfig = Field(LLMConfig(), description="The LLM that is distilled (teacher with adapters off, "
                                                    "student with them on)")
    encoder: EncoderConfig = Field(EncoderConfig(), description="The frozen NLLB encoder whose output is projected "
                                                                "into the LLM's input space")
    projection: ProjectionConfig = Field(ProjectionConfig(), description="The trained projection from encoder to "
                                                                         "LLM space")


class BackboneConfig(ModelCore):
    """align / realign (M2, M3): one backbone, trained through LoRA or fully."""

    llm: LLMConfig = Field(LLMConfig(), description="The backbone: a decoder LLM or an XLM-R-like encoder")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="Train LoRA adapters on the backbone (lora) or every backbone weight (full, e.g. an "
                            "XLM-R-like encoder); heads are always trained")


class TaskModelConfig(ModelCore):
    """finetune (M1): the LLM with LoRA and a task head (FT), or a stage-1 MT-LLM fine-tuned through NLLB (S1+FT)."""

    llm: LLMConfig = Field(LLMConfig(), description="The LLM (FT), or the LLM of the stage-1 MT-LLM (S1+FT)")
    stage1_export: str | None = Field(None, description=(
        "A stage-1 export directory (OUTPUT_DIR/export of a stage1 run): S1+FT, the input goes through the NLLB "
        "encoder with each text's language code; null: FT, the LLM reads the text itself"))
    encoder: EncoderConfig = Field(EncoderConfig(), description="S1+FT: the stage-1 run's NLLB encoder")
    projection: ProjectionConfig = Field(ProjectionConfig(), description="S1+FT: the stage-1 run's projection")


class Stage2ModelConfig(MTLLMConfig):
    """stage2 (M1): the stage-1 MT-LLM, distilled towards the fine-tuned LLM; the fine-tuned head predicts."""

    stage1_export: str = Field(description="The stage-1 export (projection + LoRA) the MT-LLM starts from (required)")
    task_export: str = Field(description=(
        "The finetune (FT) run's export (OUTPUT_DIR/export) or its run directory: its LLM with LoRA is the "
        "teacher, its head predicts from the MT-LLM (required; its config.yaml gives the teacher's LoRA and "
        "pooling). Which of the run's snapshots: model.teacher_snapshot"))
    teacher_snapshot: Literal["sdev", "final"] = Field("sdev", description=(
        "sdev (default): the finetune run's S-DEV snapshot (export_sdev/ beside its export/: the step with the "
        "best source-language dev score), as the MT-LLM study starts stage 2 'from model snapshots that "
        "performed best on source-language validation'; final: the run's final export. The run logs the folder "
        "it used (log line, MLflow tags teacher_snapshot and teacher_export, the export's config)"))
    train_projection: bool = Field(True, description=(
        "Train the projection U with the stage-1 LoRA (M1 leaves the choice open: both adapt to the task "
        "representation); false trains the LoRA only"))


class FlareModelConfig(ModelCore):
    """flare (M4): the English fine-tuned model (its task LoRA merged into the LLM), with a new LoRA on top."""

    llm: LLMConfig = Field(LLMConfig(), description=(
        "The LLM the task export was trained on (the same name_or_path; dtype, attention and gradient "
        "checkpointing may differ)"))
    task_export: str = Field(description=(
        "The finetune (FT) run's export the model starts from: its LoRA is merged into the LLM's weights, its "
        "head classifies (required; its config.yaml gives the LoRA shape and pooling)"))
    lora: LoraConfig = Field(LoraConfig(r=64, alpha=128.0, dropout=0.05, target_modules=["q_proj", "v_proj"]),
                             description="The new (fusion) LoRA; FLARE's paper setup: r=64, alpha=128 on the "
                                         "query and value projections")
    encoder: EncoderConfig = Field(EncoderConfig(), description=(
        "FLARE-MT (flare.method: fusion_mt): the NLLB encoder that reads the target text; its output, projected "
        "to the LLM's width, is the source representation of every block"))
    train_head: bool = Field(True, description="Train the task head with the LoRA (false: keep the English head)")


class OptimConfig(Section):
    lr: float = Field(2e-4, gt=0, description="Peak AdamW learning rate: linear warm-up to it, then linear decay "
                                              "to 0 at max_steps (unless the DeepSpeed JSON has its own scheduler)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW (decoupled) weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW [beta1, beta2]")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up from 0 to lr (0 = none); "
                                                   "at most max_steps")
    max_steps: int = Field(100, gt=0, description="Optimizer steps")
    schedule: Literal["linear", "inverse_sqrt"] = Field("linear", description=(
        "After the warm-up: linear = decay to 0 at max_steps (M1, M3, M4); inverse_sqrt = lr x sqrt(warmup_steps "
        "/ step) (M2's schedule). Ignored when the DeepSpeed JSON has its own scheduler"))
    micro_batch_size: int = Field(8, gt=0, description="Examples per forward pass per process")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null turns it off")
    optimizer: Literal["adamw", "adamw_8bit"] = Field("adamw", description=(
        "adamw = DeepSpeed's AdamW (fused on CUDA when built); adamw_8bit = bitsandbytes' 8-bit AdamW, as the "
        "MT-LLM study trained (moments in 8 bits: needs a CUDA GPU, bitsandbytes and checkpoint.portable: "
        "false, since portable checkpoints store fp32 Adam moments)"))

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
    export: Literal["none", "adapter", "all"] = Field("adapter", description=(
        "What of OUTPUT_DIR/export goes to the run's artifacts: none (it stays on disk only), adapter (the "
        "trainable weights only: LoRA as a PEFT adapter folder, projection, heads; no frozen weight), all (also "
        "every frozen weight, export/model.safetensors: the whole model, e.g. a 7B LLM, per run). Full "
        "fine-tuning trains the whole backbone, so its adapter export is the whole backbone too (XLM-R large: "
        "about 2 GB per trial; none for large sweeps). The older log_export: true/false means adapter/none"))
    system_metrics: bool | Literal["auto"] = Field("auto", description=(
        "MLflow system metrics of the run (rank 0's machine: CPU, memory, disk, network; GPU utilisation and "
        "memory through nvidia-ml-py when it is installed), sampled every 10 s "
        "($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL); auto = on when CUDA is available"))
    if_unreachable: Literal["fail", "buffer"] = Field("fail", description=(
        "A tracking server (http URI) that does not answer within seconds: fail (the job stops at once, naming "
        "the URI), or buffer (train anyway; rank 0 records params, metrics and artifacts in "
        "OUTPUT_DIR/mlflow_buffer.jsonl; send them later with python -m trainer.tracking upload OUTPUT_DIR)"))

    @model_validator(mode="before")
    @classmethod
    def _log_export_is_export(cls, data: Any) -> Any:
        """Job files written before `export` existed: log_export true/false -> export adapter/none."""
        if isinstance(data, dict) and "log_export" in data:
            data = dict(data)
            old = data.pop("log_export")
            if "export" in data:
                raise ValueError("give tracking.export only (log_export is its older spelling)")
            if not isinstance(old, bool):
                raise ValueError(f"tracking.log_export: true or false (got {old!r}); it is now tracking.export: "
                                 f"none | adapter | all")
            data["export"] = "adapter" if old else "none"
        return data


class EngineConfig(Section):
    """The DeepSpeed engine: which ZeRO config, precision, process group."""

    deepspeed: str = Field(
        "zero2", description="A config in ds_configs/ by name (zero1: fp32 gradient accumulation; zero2; zero3; "
                             "zero3_offload; single: one process, ZeRO stage 0, no per-parameter gradient hooks, the "
                             "fastest on one CPU or GPU) or a path to a DeepSpeed JSON; its \"auto\" values are "
                             "filled from this job")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training precision; auto = the LLM's dtype (model.llm.dtype; both auto: bf16 where "
                            "CUDA supports it, else fp32)")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend when this job creates the group; auto = nccl with CUDA, else gloo")
    timeout_minutes: float = Field(
        60.0, gt=0, description="Process-group timeout: long enough for the slowest rank to save a checkpoint")


class CheckpointConfig(Section):
    """Resume state: when to write it, how many to keep, where to resume from."""

    every: int = Field(500, ge=0, description="Write resume state every N optimizer steps; 0 = never")
    save_final: bool = Field(False, description="Also write resume state after the last step")
    keep_last: int = Field(2, gt=0, description=(
        "Keep the newest K checkpoints (a sweep's trial keeps none in its folder unless checkpoint.best_metric is "
        "set: Ray storage keeps its newest two)"))
    best_metric: str | None = Field(
        None, description="Also keep the checkpoint with the best value of this logged metric (e.g. loss)")
    best_mode: Literal["min", "max"] = Field("min", description="Whether the lowest (min) or highest (max) "
                                                                "best_metric is best")
    resume: str = Field(
        "auto", description="auto = the newest complete checkpoint in dir (none: start fresh); "
                            "none = always start fresh; or a checkpoint directory")
    dir: str | None = Field(None, description="Checkpoint directory; default OUTPUT_DIR/checkpoints")
    portable: bool = Field(True, description=(
        "Also write the trainable weights and Adam moments as full tensors (portable.pt), so that the run can "
        "resume on another number of ranks (finetune, stage2, flare; set optim.grad_accum so that ranks x "
        "grad_accum stays the same). Small for LoRA; three fp32 copies of the model under full fine-tuning"))


class TaskDataConfig(Section):
    """Labelled task data: train on the source language, evaluate zero-shot per language.

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
    max_length: int = Field(64, gt=0, description="Tokens per example (align: prompt and answer together)")
    eval_examples: int | None = Field(None, gt=0, description="Evaluate at most the first N examples per language")

    _languages = field_validator("eval_languages")(flores_codes)
    _source = field_validator("source_language")(flores_code)


class PromptTaskConfig(TaskDataConfig):
    """The task as causal language modelling on the answer given the prompt (M2)."""

    prompt_template: str = Field("{text} Topic:", description=(
        "The prompt; {text} is replaced by the example's text"))
    label_words: list[str] | None = Field(None, description=(
        "The answer for each label (index = label); the loss covers the answer tokens only, and "
        "evaluation picks the answer with the highest summed log-likelihood. Default: the label numbers"))

    @model_validator(mode="after")
    def _labels(self) -> "PromptTaskConfig":
        if self.label_words is not None and len(self.label_words) != self.num_labels:
            raise ValueError(f"task.label_words: {len(self.label_words)} words for task.num_labels={self.num_labels}")
        if "{text}" not in self.prompt_template:
            raise ValueError("task.prompt_template: must contain {text}")
        return self


def known_benchmark(name: str | None) -> str | None:
    """`name` when it is a benchmark of `trainer.data.benchmarks` (or None); else a ValueError with the closest one."""
    from trainer.data.benchmarks import BENCHMARKS

    if name is not None and name not in BENCHMARKS:
        close = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
        raise ValueError(f"unknown benchmark {name!r}{f' (did you mean {close[0]}?)' if close else ''}; "
                         f"choose one of {', '.join(BENCHMARKS)}")
    return name


class BenchmarkTaskConfig(Section):
    """A benchmark of `trainer.data.benchmarks`: English training data, dev and test sets per language."""

    benchmark: str = Field("topic", description=(
        "NLI: mnli, xnli, americasnli, kardes_nli, indonli, myanmar_xnli, afrixnli; sentiment: nusax_senti; "
        "multiple choice: belebele; POS: udpos, masakhapos; NER: wikiann, masakhaner; extractive QA: tydiqa; "
        "generated demo tasks: topic (classification), topic_tags (tagging). The training data may come from "
        "another benchmark than the evaluation (MNLI -> XNLI, WikiANN -> MasakhaNER) with train_benchmark"))
    train_benchmark: str | None = Field(None, description=(
        "Benchmark of the training data; null = benchmark. Same kind of task, and its labels (tags) the first "
        "ones of benchmark's: wikiann's 7 NER tags are masakhaner's first 7"))
    source_language: str = Field("eng_Latn", description="Language of the training data and of the S-DEV dev set")
    target_languages: list[str] = Field(default_factory=list, description=(
        "Languages evaluated zero-shot (dev and test sets each); FLORES codes or the benchmark's own codes"))
    files: dict[Literal["train", "validation", "test", "translate_test"], str] = Field(
        default_factory=dict, description=(
            "Per split, a local file template with {language} (the FLORES code), e.g. data/demo/task/eval/"
            "{language}.jsonl; a split without one loads from the hub. translate_test: each target language's test "
            "set machine-translated to English (data_prep.translate writes them), scored with the English model"))
    max_length: int = Field(128, gt=0, description=(
        "Tokens per example (per choice for multiple choice; tagging: words past it are not predicted; QA: per "
        "window of question + context, XTREME: 384)"))
    doc_stride: int | None = Field(None, gt=0, description=(
        "QA: tokens consecutive windows of a long context share (the tokenizer's stride); null = a third of "
        "max_length (XTREME and transformers' run_qa.py: 128 with max_length 384); must be below max_length "
        "minus the question"))
    max_answer_length: int = Field(30, gt=0, description=(
        "QA: the longest predicted answer, in tokens (XTREME, SQuAD: 30)"))
    entity_types_as_o: list[str] = Field(default_factory=list, description=(
        "NER: entity types whose tags are read as O in every set, gold and predicted (e.g. [DATE] for "
        "WikiANN -> MasakhaNER: WikiANN has no DATE)"))
    eval_every: float = Field(0.1, ge=0, le=1, description=(
        "Evaluate dev and test sets every this fraction of optim.max_steps (the study: 10%); 0 = at the end only"))
    max_eval_examples: int | None = Field(None, gt=0, description="Evaluate at most the first N examples per set")
    eval_batch_size: int = Field(32, gt=0, description="Examples per forward pass in evaluation")
    metric: Literal["auto", "accuracy", "macro_f1", "entity_f1", "squad_f1"] = Field("auto", description=(
        "auto = the study's metric for the benchmark: macro_f1 for nusax_senti, accuracy for other "
        "classification and for POS (word level), entity_f1 for NER (seqeval's exact-span micro F1), squad_f1 "
        "for QA (SQuAD F1, exact match reported beside it); tagging may also use accuracy"))

    @field_validator("benchmark", "train_benchmark")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return known_benchmark(v)

    @model_validator(mode="after")
    def _fits_the_task(self) -> "BenchmarkTaskConfig":
        from trainer.data.benchmarks import BENCHMARKS, GENERATIVE, QA, TAGGING

        task, labels = BENCHMARKS[self.benchmark].task, BENCHMARKS[self.benchmark].labels
        if task in GENERATIVE:
            raise ValueError(f"task.benchmark: {self.benchmark!r} is generative ({task}); the align recipe trains it "
                             f"(recipe: align with task.benchmark)")
        kind = "tagging" if task in TAGGING else "qa" if task in QA else "classification"
        allowed = {"classification": ("accuracy", "macro_f1"), "qa": ("squad_f1",),
                   "tagging": ("accuracy", "entity_f1") if task == "ner" else ("accuracy",)}[kind]
        if self.resolved_metric not in allowed:
            raise ValueError(f"task.metric: {self.metric!r} does not score {self.benchmark} ({task}); choose auto or "
                             f"one of {', '.join(allowed)}")
        if self.train_benchmark:
            train = BENCHMARKS[self.train_benchmark]
            if train.task != task:
                raise ValueError(f"task.train_benchmark: {self.train_benchmark} is {train.task}, {self.benchmark} "
                                 f"is {task}")
            if kind != "qa" and train.labels != labels[:len(train.labels)]:
                raise ValueError(f"task.train_benchmark: {self.train_benchmark}'s labels {list(train.labels)} are "
                                 f"not the first of {self.benchmark}'s {list(labels)}")
        types = {name.partition("-")[2] for scored in self.scored_benchmarks for name in BENCHMARKS[scored].labels
                 if name != "O"}
        unknown = sorted(set(self.entity_types_as_o) - types) if task == "ner" else self.entity_types_as_o
        if unknown:
            raise ValueError(f"task.entity_types_as_o: {unknown} are not entity types of "
                             f"{', '.join(self.scored_benchmarks)}"
                             f"{f' ({sorted(types)})' if task == 'ner' else ' (not an NER benchmark)'}")
        if kind == "qa" and self.resolved_doc_stride >= self.max_length:
            raise ValueError(f"task.doc_stride: {self.doc_stride} must be below task.max_length {self.max_length}")
        return self

    @property
    def scored_benchmarks(self) -> list[str]:
        """The benchmarks whose dev and test sets are scored (realign adds `task.also_evaluate`'s)."""
        return [self.benchmark]

    @property
    def resolved_doc_stride(self) -> int:
        return self.doc_stride if self.doc_stride is not None else max(1, self.max_length // 3)

    @property
    def resolved_metric(self) -> str:
        if self.metric != "auto":
            return self.metric
        from trainer.data.benchmarks import BENCHMARKS

        if self.benchmark == "nusax_senti":
            return "macro_f1"
        return {"ner": "entity_f1", "qa": "squad_f1"}.get(BENCHMARKS[self.benchmark].task, "accuracy")


class EvalBenchmarkConfig(Section):
    """Another benchmark of the trained task, scored with the same model (realign): its dev and test sets per language,
    reported as `<benchmark>_<language>` (e.g. `test_sdev_masakhapos_yor`)."""

    benchmark: str = Field(description=(
        "A benchmark of the same task as task.benchmark whose labels start with task.benchmark's (or whose extra "
        "entity types are in task.entity_types_as_o), e.g. masakhapos beside udpos, masakhaner beside wikiann, "
        "indonli, myanmar_xnli, afrixnli or americasnli beside xnli"))
    target_languages: list[str] = Field(min_length=1, description=(
        "Its languages evaluated zero-shot; FLORES codes or the benchmark's own codes"))
    files: dict[Literal["validation", "test"], str] = Field(default_factory=dict, description=(
        "Per split, a local file template with {language}; a split without one loads from the hub"))

    @field_validator("benchmark")
    @classmethod
    def _known(cls, v: str) -> str:
        return known_benchmark(v)


REALIGN_TASKS = ("nli", "sentiment", "classification", "pos", "ner")   # what realign's heads train


class RealignTaskConfig(BenchmarkTaskConfig):
    """realign (M3) on a benchmark (`task.benchmark` given): a classification head (NLI, sentiment) or a
    token-classification head (POS, NER) trained on the source language after realignment; dev and test sets of
    every target language (and of `task.also_evaluate`) scored at the end. Without `task.benchmark` the task
    section is `TaskDataConfig`'s (generated task files)."""

    eval_every: float = Field(0.0, ge=0, le=1, description=(
        "Evaluate dev and test sets every this fraction of optim.max_steps; 0 = the final model only (the "
        "realignment study reports the final model's test scores)"))
    also_evaluate: list[EvalBenchmarkConfig] = Field(default_factory=list, description=(
        "More benchmarks of the same task scored with the same model, e.g. MasakhaPOS beside UDPOS, or IndoNLI, "
        "Myanmar-XNLI, AfriXNLI and AmericasNLI (out of distribution) beside XNLI"))

    @property
    def scored_benchmarks(self) -> list[str]:
        return [self.benchmark, *(extra.benchmark for extra in self.also_evaluate)]

    @model_validator(mode="after")
    def _realign_trains_it(self) -> "RealignTaskConfig":
        from trainer.data.benchmarks import BENCHMARKS

        task, labels = BENCHMARKS[self.benchmark].task, BENCHMARKS[self.benchmark].labels
        if task not in REALIGN_TASKS:
            raise ValueError(f"task.benchmark: {self.benchmark!r} is {task}; realign trains classification (NLI, "
                             f"sentiment, topic) and tagging (POS, NER) heads")
        read_as_o = set(self.entity_types_as_o)
        for i, extra in enumerate(self.also_evaluate):
            other = BENCHMARKS[extra.benchmark]
            beyond = [name for name in other.labels[len(labels):] if name.partition("-")[2] not in read_as_o]
            where = f"task.also_evaluate.{i}.benchmark: {extra.benchmark}"
            if other.task != task:
                raise ValueError(f"{where} is {other.task}, {self.benchmark} (the trained head) is {task}")
            if other.labels[:len(labels)] != labels:
                raise ValueError(f"{where}'s labels {list(other.labels)} do not start with {self.benchmark}'s "
                                 f"{list(labels)} (the trained head's)")
            if beyond:
                raise ValueError(f"{where}'s tags {beyond} are not in {self.benchmark}'s head: list their entity "
                                 f"types in task.entity_types_as_o (read as O)")
        return self


SECTION_TAGS: dict[str, type[BaseModel]] = {}   # union tag -> section, for sections chosen by a key (`section_by_key`)


def section_by_key(key: str, given: type[Section], absent: type[Section]) -> Any:
    """A section whose schema is `given` when the mapping has `key`, else `absent` (e.g. realign's task: a benchmark
    when `task.benchmark` is given, else task files). A pydantic union with a callable discriminator, tagged by class
    name; `_describe` drops the tag from error paths, so errors name the keys as written."""
    SECTION_TAGS.update({given.__name__: given, absent.__name__: absent})

    def which(value: Any) -> str:
        present = key in value if isinstance(value, dict) else isinstance(value, given)
        return given.__name__ if present else absent.__name__

    return Annotated[Union[Annotated[given, Tag(given.__name__)], Annotated[absent, Tag(absent.__name__)]],
                     Discriminator(which)]


class FlareTaskConfig(BenchmarkTaskConfig):
    """flare (M4): translate-train pairs (English example, its translation) and test inputs with their English."""

    files: dict[Literal["train", "validation", "test", "translate_test", "translate_train", "translate_validation"],
                str] = Field(
        default_factory=dict, description=(
            "Per split, a local file template with {language}; a split without one loads from the hub. "
            "translate_train: the English training data machine-translated into each target language (default: "
            "the train split in that language, e.g. the generated task); translate_test: each target test set "
            "translated to English, the English side of the test inputs (default: the source language's test set "
            "with the same ids, as in multi-way parallel benchmarks such as XNLI); translate_validation: the same "
            "for the dev sets. TyDiQA-GoldP is not parallel across languages: flare.method fusion needs all three "
            "(its test split is its validation split, so translate_validation may name the translate_test files)"))


class FlareConfig(Section):
    """FLARE and its baselines, one recipe family over the same data and evaluation (M4)."""

    method: Literal["fusion", "fusion_mt", "translate_train", "input_fusion", "zero_shot"] = Field(
        "fusion", description=(
            "fusion: FLARE, the English pass of the same model fused into the target's LoRA; fusion_mt: FLARE-MT, "
            "the NLLB encoder output of the target text fused instead; translate_train: plain LoRA on the "
            "translated data; input_fusion: plain LoRA on the target and English texts concatenated in the input; "
            "zero_shot: no update (the English model on the target text; each step only measures the loss)"))
    fusion: Literal["add", "mul", "add_relu", "cross_attention"] = Field("add_relu", description=(
        "f(S, T) in the bottleneck: add, mul, add_relu (the paper's default: relu(S) + relu(T)), or "
        "cross_attention (single-head, r-dim, padding masked)"))
    query: Literal["source", "target"] = Field("source", description=(
        "cross_attention: the side the queries come from, keys and values from the other. source (default): "
        "queries from the English side, as the paper's cross-attention formula (M4) and the FLARE reference code; "
        "target: queries from the target side (this trainer's earlier default)"))
    source_state: Literal["output", "reference_hidden", "input"] = Field("output", description=(
        "fusion: which English state block i fuses. output (default, the paper's formulation, M4: the source state "
        "after block i): block i's own output, taken before any final norm (the last block too); "
        "reference_hidden (the FLARE reference code): the un-normalised hidden state hidden_states[i], i.e. block "
        "i's input (the embeddings for block 0); input (neither source: this trainer's earlier default): what the "
        "fused projection itself received in the English pass, block i's input after its attention norm"))
    languages: list[str] | None = Field(None, description=(
        "Target languages whose translated training data is used; null = every task.target_languages"))


# --- objectives ---------------------------------------------------------------------------------

class AlignmentConfig(Section):
    """The contrastive objective shared by align (M2) and realign (M3), and which objectives train."""

    enabled: bool = Field(True, description=(
        "Train the contrastive alignment objective; false = task-only baseline (no parallel data needed)"))
    task: bool = Field(True, description=(
        "Train the task objective; false = alignment only (align: the export is an alignment adapter; "
        "realign: the realigned model, no task evaluation)"))
    query: Literal["target", "source", "both"] = Field("target", description=(
        "info_nce only: which side queries. target (the middle-layer alignment study's reference implementation): "
        "the non-English sentence retrieves its translation among the English ones; source: the English "
        "sentence queries; both: the mean of the two directions"))
    temperature: float | Literal["auto"] = Field("auto", description=(
        "Softmax temperature on cosine similarities (> 0). auto = the study's value for the model family: align "
        "(M2) 1.5 for Qwen2, 0.1 for Llama and the others; realign (M3) 0.1. The resolved value is logged as the "
        "metric alignment_temperature"))
    batch_size: int | None = Field(None, ge=2, description=(
        "Translation pairs per alignment micro-batch (in-batch negatives); null = optim.micro_batch_size"))
    max_length: int = Field(64, gt=0, description="Tokens per sentence of a pair (and of the retrieval set)")
    pooling: Literal["mean", "mean_skip_first"] = Field("mean", description=(
        "Which tokens a sentence vector averages, in training and in the retrieval evaluation. mean (both studies): "
        "every real token; mean_skip_first: every real token but the first, for decoder LLMs whose first token "
        "holds an attention sink of huge norm that makes every mean the same vector (SmolLM2: docs/real.md)"))

    @model_validator(mode="after")
    def _consistent(self) -> "AlignmentConfig":
        if not (self.enabled or self.task):
            raise ValueError("alignment.enabled and alignment.task are both false: nothing to train")
        if self.query != "target" and self.objective == "two_b":
            raise ValueError("alignment.query: two_b is symmetric by construction; query applies to info_nce only")
        if isinstance(self.temperature, float) and not self.temperature > 0:
            raise ValueError(f"alignment.temperature: must be > 0 or auto (got {self.temperature})")
        return self


class AlignObjectiveConfig(AlignmentConfig):
    """M2: InfoNCE from the non-English sentence to the English candidates, at the middle layer."""

    objective: Literal["info_nce", "two_b"] = Field("info_nce", description=(
        "info_nce: each source picks its translation among the batch's targets (M2, the reference's one "
        "direction); two_b: each of the 2B sentences picks its translation among the other 2B-1 (M3)"))
    layers: int | list[int] | Literal["middle"] = Field("middle", description=(
        "hidden_states index (or indices, pooled then averaged) to align: 0 = embeddings, i = output of block i, "
        "-1 = last (final-normed); middle = block L // 2 of L (M2: layer 16 of 32)"))


class RealignObjectiveConfig(AlignmentConfig):
    """M3: the symmetric 2B-candidate loss at the last layer, as a phase before task fine-tuning."""

    objective: Literal["info_nce", "two_b"] = Field("two_b", description=(
        "two_b: each of the 2B sentences picks its translation among the other 2B-1 (M3); info_nce: each "
        "source picks its translation among the batch's targets (M2)"))
    layers: int | list[int] = Field(-1, description=(
        "hidden_states index (or indices, pooled then averaged) to align: 0 = embeddings, i = output of block i, "
        "-1 = last (final-normed; M3's default)"))
    steps: int | None = Field(None, ge=0, description=(
        "Optimizer steps of the realignment phase; the remaining optim.max_steps - steps fine-tune the task. "
        "null = half of optim.max_steps"))


class EvalConfig(Section):
    """Translation retrieval per layer and task accuracy per language."""

    retrieval: ParallelDataConfig | None = Field(None, description=(
        "Multi-way parallel set for translation retrieval (English plus its languages, the same English "
        "sentences in the same order for every language), e.g. files written by data_prep.make_parallel_data "
        "or hub: [flores-200] with split: dev; null = no retrieval diagnostic"))
    retrieval_sentences: int | None = Field(200, gt=0, description="Use the first N sentences of the set (null: all)")
    layers: list[int] | None = Field(None, description="hidden_states indices to evaluate; null = every layer")
    k: int = Field(4, gt=0, description="Neighbourhood size of the ratio-margin score (LASER's xsim: 4)")
    candidates: Literal["knn", "all"] = Field("knn", description=(
        "Which targets a sentence may retrieve: knn (LASER's xsim, as the studies): the best margin among its k "
        "cosine-nearest targets; all: the best margin among every target"))
    batch_size: int = Field(32, gt=0, description="Sentences per forward pass in evaluation")


class GenerativeTaskConfig(Section):
    """align (M2) on a generative benchmark (`task.benchmark` given): causal LM on the study's prompt and answer,
    greedy decoding at the end, scored per language (slot filling: MASSIVE's slot F1; translation: BLEU, chrF and
    optionally COMET per direction). Without `task.benchmark` the task section is `PromptTaskConfig`'s."""

    benchmark: str = Field(description=(
        "Slot filling: massive (AmazonScience/massive), topic_slots (generated demo); translation: flores "
        "(openlanguagedata/flores_plus: train and validation = dev, test = devtest), topic_mt (generated demo)"))
    train_languages: list[str] = Field(min_length=1, description=(
        "Languages of the training data (the study's MASSIVE setup: ar, en, es, ru, zh); translation: each is "
        "paired with translation_pivot in translation_directions. Excluded from the zero-shot mean"))
    eval_languages: list[str] = Field(default_factory=list, description=(
        "Languages scored after training (training languages reported as source_<metric>, the others averaged "
        "into zero_shot_<metric>); translation: every direction of each with translation_pivot"))
    files: dict[Literal["train", "validation", "test"], str] = Field(default_factory=dict, description=(
        "Per split, a local file template with {language} (the FLORES code), e.g. data/demo/slots/train/"
        "{language}.jsonl, in the benchmark's format; a split without one loads from the hub"))
    eval_split: Literal["validation", "test"] = Field("test", description="The split scored at the end")
    max_length: int = Field(256, gt=0, description=(
        "Tokens per training example, prompt and answer together (the prompt loses its beginning past it); "
        "generation: prompt tokens"))
    max_new_tokens: int = Field(128, gt=0, description=(
        "Longest generated answer in tokens (the study: 128 for MASSIVE, 512 for translation)"))
    eval_examples: int | None = Field(None, gt=0, description=(
        "Score at most the first N examples per language (translation: N sentences per direction)"))
    train_examples: int | None = Field(None, gt=0, description=(
        "Train on at most the first N examples per training language (null: all)"))
    system_prompt: str | None = Field(None, description=(
        "Replaces the study's system prompt (translation: may use {source} and {target}, the language names); "
        "null = the study's"))
    chat_template: Literal["auto", "plain"] = Field("auto", description=(
        "auto: the tokenizer's chat template when it has one (Llama 3 Instruct, the study's model), else the "
        "plain format of trainer/data/prompts.py; plain: always the plain format"))
    translation_pivot: str = Field("eng_Latn", description=(
        "Translation: the language every other one is paired with (English in the study)"))
    translation_directions: list[Literal["to_pivot", "from_pivot"]] = Field(
        ["to_pivot", "from_pivot"], min_length=1, description=(
            "Translation: X -> pivot (to_pivot) and/or pivot -> X (from_pivot), for training and scoring"))
    comet_model: str | None = Field(None, description=(
        "Translation: also score COMET with this model (e.g. Unbabel/wmt22-comet-da); needs unbabel-comet "
        "installed (pip install unbabel-comet): the run stops before training without it. null = BLEU and chrF"))

    @field_validator("benchmark")
    @classmethod
    def _generative(cls, v: str) -> str:
        from trainer.data.benchmarks import BENCHMARKS, GENERATIVE

        known_benchmark(v)
        if BENCHMARKS[v].task not in GENERATIVE:
            generative = [name for name, b in BENCHMARKS.items() if b.task in GENERATIVE]
            raise ValueError(f"{v!r} is {BENCHMARKS[v].task}: align trains generative benchmarks "
                             f"({', '.join(generative)}); for a classification task give task.train_files instead")
        return v

    @field_validator("train_languages", "eval_languages")
    @classmethod
    def _languages(cls, v: list[str], info) -> list[str]:
        from trainer.data.benchmarks import BENCHMARKS

        own = BENCHMARKS[info.data["benchmark"]].languages if "benchmark" in info.data else {}
        own_codes = [code for code in v if code in own and "_" not in code]   # MASSIVE's locales (en-US)
        return [own[code] if code in own_codes else flores_code(code, info) for code in v]

    _pivot = field_validator("translation_pivot")(flores_code)

    @model_validator(mode="after")
    def _languages_of_the_benchmark(self) -> "GenerativeTaskConfig":
        from trainer.data.benchmarks import BENCHMARKS, has_language

        for key in ("train_languages", "eval_languages"):
            missing = [lang for lang in getattr(self, key) if not has_language(self.benchmark, lang)]
            if missing:
                raise ValueError(f"task.{key}: {missing} are not languages of {self.benchmark} "
                                 f"({', '.join(sorted(BENCHMARKS[self.benchmark].languages.values()))})")
        if self.is_translation and self.translation_pivot in self.train_languages:
            raise ValueError(f"task.train_languages: {self.translation_pivot} is task.translation_pivot; list the "
                             f"languages paired with it")
        if not self.is_translation and self.comet_model:
            raise ValueError(f"task.comet_model: COMET scores translation; {self.benchmark} is slot filling")
        return self

    @property
    def is_translation(self) -> bool:
        from trainer.data.benchmarks import BENCHMARKS

        return BENCHMARKS[self.benchmark].task == "translation"


# --- jobs ---------------------------------------------------------------------------------------

class JobBase(Section):
    """What every recipe's job shares: seed, run directory, optimizer, tracking, engine, checkpoints."""

    recipe: Literal["stage1", "align", "realign", "finetune", "stage2", "flare"] = Field(description=(
        "stage1: MT-LLM self-distillation (M1); align: task + middle-layer alignment (M2); realign: realignment "
        "then task fine-tuning (M3); finetune: a task head on English data, zero-shot evaluation (M1 FT, S1+FT); "
        "stage2: task distillation into the MT-LLM (M1); flare: fusion of English into the target's LoRA and its "
        "baselines (M4). It chooses the schema of the other keys"))
    seed: int = Field(0, description="Seeds torch (initialisation, dropout) and the order of the text and task "
                                     "data; parallel data has its own parallel.seed")
    output_dir: str = Field("outputs/run", description=(
        "Run directory: the resolved config.yaml, metrics.jsonl (one row per step), final_metrics.json, export/ "
        "(the trained weights), checkpoints/ (unless checkpoint.dir); align/realign also eval/ tables"))
    prepare: list[str] = Field(default_factory=list, description=(
        "Commands run in order by rank 0 before anything loads, to make or find the job's data (each must be "
        "safe to repeat), e.g. python -m data_prep.demo_data; a failing command stops the job naming it"))
    optim: OptimConfig = Field(OptimConfig(), description="AdamW, the learning-rate schedule and the batch shape")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow: store, experiment, run")
    engine: EngineConfig = Field(EngineConfig(), description="DeepSpeed config, precision and process group")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="Resume state: when, how many, from where")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @model_validator(mode="after")
    def _eight_bit_moments_are_not_portable(self) -> "JobBase":
        if self.optim.optimizer == "adamw_8bit" and self.checkpoint.portable:
            raise ValueError("optim.optimizer=adamw_8bit keeps 8-bit Adam moments, which checkpoint.portable (fp32 "
                             "moments for resuming on another number of ranks) cannot hold: set "
                             "checkpoint.portable: false")
        return self


class Stage1Job(JobBase):
    """M1 stage 1: distil the LLM's pooled representation of English text into the MT-LLM."""

    recipe: Literal["stage1"] = Field(description="stage1: MT-LLM self-distillation (M1)")
    model: MTLLMConfig = Field(MTLLMConfig(), description="Encoder, projection, LLM and LoRA")
    data: TextDataConfig = Field(description="The English text (required)")
    teacher_cache: str | None = Field(None, description=(
        "Folder of precomputed teacher targets (python -m data_prep.teacher_cache JOB.yaml builds it): the "
        "teacher forward is skipped and each chunk's pooled vector is read instead (METHODS M1: the frozen "
        "teacher's targets are constant). It must match the LLM, its dtype, the pooling, the tokenizers, "
        "max_length and the text, else the run fails naming the difference. null = the live teacher"))


class AlignmentJob(JobBase):
    """What align and realign share: parallel data, evaluation, a backbone; checks across sections."""

    model: BackboneConfig = Field(BackboneConfig(), description="The backbone and how it is trained")
    parallel: ParallelDataConfig | None = Field(None, description=(
        "Translation pairs for the alignment objective; parallel.languages is the language subset (the key "
        "sweeps set)"))
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Retrieval and task evaluation")

    @property
    def alignment_batch_size(self) -> int:
        return self.alignment.batch_size or self.optim.micro_batch_size

    @model_validator(mode="after")
    def _sections_agree(self) -> "AlignmentJob":
        a = self.alignment
        if a.enabled and self.parallel is None:
            raise ValueError(f"parallel: required key is missing (recipe {self.recipe} with alignment.enabled "
                             f"trains on translation pairs: give parallel.files or parallel.hub)")
        if not isinstance(self.task, TaskDataConfig):   # a benchmark names its own data
            return self
        if a.task and not self.task.train_files:
            raise ValueError(f"task.train_files: recipe {self.recipe} with alignment.task needs labelled "
                             f"source-language data")
        if a.task and self.task.eval_languages and self.task.eval_dir is None:
            raise ValueError("task.eval_dir: task.eval_languages are listed but no directory holds their files")
        return self


class AlignJob(AlignmentJob):
    """M2: task and alignment micro-batches alternate; the export is a task or an alignment adapter."""

    recipe: Literal["align"] = Field(description="align: task + middle-layer alignment (M2)")
    task: section_by_key("benchmark", GenerativeTaskConfig, PromptTaskConfig) = Field(
        default_factory=PromptTaskConfig, description=(
            "The task as a prompt and an answer: a generative benchmark (task.benchmark given: GenerativeTaskConfig, "
            "slot filling or translation, greedy decoding, per-language scores) or labelled task files "
            "(PromptTaskConfig: classification, evaluated by answer likelihood)"))
    alignment: AlignObjectiveConfig = Field(default_factory=AlignObjectiveConfig, description="The objectives")


class RealignJob(AlignmentJob):
    """M3: a realignment phase on a language subset, then task fine-tuning on English."""

    recipe: Literal["realign"] = Field(description="realign: realignment then task fine-tuning (M3)")
    task: section_by_key("benchmark", RealignTaskConfig, TaskDataConfig) = Field(
        default_factory=TaskDataConfig, description=(
            "The labelled task: a benchmark (task.benchmark given: RealignTaskConfig, classification or tagging "
            "head, per-language dev/test scores) or generated task files (TaskDataConfig: classification head, "
            "accuracy per language)"))
    alignment: RealignObjectiveConfig = Field(default_factory=RealignObjectiveConfig, description="The objectives "
                                                                                                  "and the phases")

    @property
    def realignment_steps(self) -> int:
        """Optimizer steps of the realignment phase (0 when alignment is off, all of them when the task is)."""
        a = self.alignment
        if not a.enabled:
            return 0
        if not a.task:
            return self.optim.max_steps
        return self.optim.max_steps // 2 if a.steps is None else a.steps

    @model_validator(mode="after")
    def _phases(self) -> "RealignJob":
        a = self.alignment
        if a.steps is not None and a.steps > self.optim.max_steps:
            raise ValueError(f"alignment.steps ({a.steps}) exceeds optim.max_steps ({self.optim.max_steps})")
        if a.steps == self.optim.max_steps and a.task and a.enabled:
            raise ValueError(f"alignment.steps ({a.steps}) leaves no task fine-tuning steps of optim.max_steps; "
                             f"for realignment only set alignment.task: false")
        return self


class FinetuneJob(JobBase):
    """M1's fine-tuned models: a task head on English data (FT, or S1+FT through NLLB), evaluated zero-shot."""

    recipe: Literal["finetune"] = Field(description="finetune: task fine-tuning with dev/test evaluation (M1 FT, S1+FT)")
    model: TaskModelConfig = Field(TaskModelConfig(), description="The LLM with LoRA, or a stage-1 MT-LLM")
    task: BenchmarkTaskConfig = Field(default_factory=BenchmarkTaskConfig, description="Benchmark, languages, files")

    @model_validator(mode="after")
    def _s1_ft_is_sentence_level(self) -> "FinetuneJob":
        if self.model.stage1_export is not None:
            _sentence_level(self.task.benchmark, "S1+FT (model.stage1_export)")
            _export_agrees(self, self.model.stage1_export, "model.stage1_export")
        return self


def _sentence_level(benchmark: str, what: str) -> None:
    """Refuse tagging and QA benchmarks where only the MT-LLM study's sentence-level heads exist."""
    from trainer.data.benchmarks import BENCHMARKS, QA, TAGGING

    if BENCHMARKS[benchmark].task in TAGGING + QA:
        raise ValueError(f"task.benchmark: {benchmark!r} is {BENCHMARKS[benchmark].task}; {what} trains the MT-LLM "
                         f"study's sentence-level tasks (classification, multiple choice)")


class Stage2Job(JobBase):
    """M1 stage 2: distil the fine-tuned LLM's pooled vector of each training example into the MT-LLM."""

    recipe: Literal["stage2"] = Field(description="stage2: task distillation into the stage-1 MT-LLM (M1)")
    model: Stage2ModelConfig = Field(description="The stage-1 MT-LLM, the fine-tuned teacher and head (required)")
    task: BenchmarkTaskConfig = Field(default_factory=BenchmarkTaskConfig, description="Benchmark, languages, files")
    teacher_cache: str | None = Field(None, description=(
        "Folder of the teacher vectors (one per training example, by id; multiple choice: one per (example, "
        "choice)): reused when it matches the teacher and the data, else built (python -m data_prep.teacher_cache "
        "JOB.yaml builds it ahead; needed under ZeRO-3). null = OUTPUT_DIR/teacher_cache"))

    @model_validator(mode="after")
    def _sentence_level_task(self) -> "Stage2Job":
        _sentence_level(self.task.benchmark, "stage2 (pooled task distillation)")
        from trainer.models.meaning import teacher_export

        _export_agrees(self, self.model.stage1_export, "model.stage1_export")
        _export_agrees(self, teacher_export(self.model.task_export, self.model.teacher_snapshot), "model.task_export",
                       ("llm", "bidirectional", "pooling"))
        return self


def _export_agrees(job: "JobBase", export_dir: str | Path, key: str,
                   keys: tuple[str, ...] = ("llm", "bidirectional", "pooling", "encoder")) -> None:
    """Refuse an export trained under another LLM, attention direction, pooling or encoder than this job (one line
    naming the key and both values; `trainer.models.meaning`). An export not written yet is checked when it loads."""
    from trainer.models.meaning import meaning_of, mismatch

    problem = mismatch(meaning_of(job.model_dump(mode="json")), export_dir, key, keys)
    if problem:
        raise ValueError(problem)


FLARE_NOT_PARALLEL = ("tydiqa",)   # benchmarks whose languages hold different examples (no English by shared id)


class FlareJob(JobBase):
    """M4: translate-train from the English fine-tuned model, English fused into the target's LoRA bottleneck."""

    recipe: Literal["flare"] = Field(description="flare: FLARE, FLARE-MT and their baselines (M4)")
    model: FlareModelConfig = Field(description="The English fine-tuned model and the new LoRA (required)")
    task: FlareTaskConfig = Field(default_factory=FlareTaskConfig, description="Benchmark, languages, files")
    flare: FlareConfig = Field(default_factory=FlareConfig, description="Method, fusion function, fused state")
    optim: OptimConfig = Field(OptimConfig(lr=2e-4, micro_batch_size=64), description=(
        "AdamW and the batch shape; FLARE's paper setup: lr 2e-4 (2e-5 for NLI), batch 64, 3 epochs"))

    @model_validator(mode="after")
    def _flare_fits(self) -> "FlareJob":
        from trainer.data.benchmarks import BENCHMARKS

        kind, method = BENCHMARKS[self.task.benchmark].task, self.flare.method
        if kind not in ("nli", "sentiment", "classification", "qa"):
            raise ValueError(f"task.benchmark: {self.task.benchmark!r} is a {kind} benchmark; flare trains "
                             f"sequence classification (NLI, sentiment, topic) and extractive QA (tydiqa, topic_qa)")
        if kind == "qa" and method == "input_fusion":
            raise ValueError(f"flare.method: input_fusion is not defined for extractive QA ({self.task.benchmark}): "
                             f"the English question and context would share the target's window and its answer "
                             f"positions; use fusion, fusion_mt, translate_train or zero_shot")
        missing = [f"task.files.{split}" for split in ("translate_train", "translate_validation", "translate_test")
                   if split not in self.task.files]
        if self.task.benchmark in FLARE_NOT_PARALLEL and method == "fusion" and missing:
            raise ValueError(f"{missing[0]}: flare.method fusion on {self.task.benchmark} needs {', '.join(missing)} "
                             f"(its languages do not share example ids: each target example's English side is its "
                             f"translation)")
        if not self.task.target_languages:
            raise ValueError("task.target_languages: flare needs at least one target language")
        unknown = sorted(set(self.flare.languages or []) - set(self.task.target_languages))
        if unknown:
            raise ValueError(f"flare.languages: {unknown} are not in task.target_languages "
                             f"{self.task.target_languages}")
        _export_agrees(self, self.model.task_export, "model.task_export", ("llm", "bidirectional", "pooling"))
        return self


RECIPE_SCHEMAS: dict[str, type[JobBase]] = {"stage1": Stage1Job, "align": AlignJob, "realign": RealignJob,
                                            "finetune": FinetuneJob, "stage2": Stage2Job, "flare": FlareJob}
JobConfig = Annotated[Union[Stage1Job, AlignJob, RealignJob, FinetuneJob, Stage2Job, FlareJob],
                      Field(discriminator="recipe")]
"""A job file: the schema of its `recipe` (validate with `validate(raw, JobConfig)` or `load_job`)."""


_JOB_ADAPTER = TypeAdapter(JobConfig)


class ConfigError(UserError, ValueError):
    """A job file or override that does not validate; the message names each key path."""


PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_OF_PRECISION = {precision: dtype for dtype, precision in PRECISION_OF_DTYPE.items()}


def default_dtype() -> str:
    """What `dtype: auto` means with nothing to follow: bfloat16 where CUDA supports it, else float32."""
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def resolve_dtypes(job: JobBase) -> JobBase:
    """A copy of `job` whose `model.llm.dtype` and `model.encoder.dtype` are concrete (no `auto`).

    LLM: engine.precision's dtype when the precision is set, else `default_dtype()`; encoder: engine.precision's
    dtype when set, else the LLM's. On a CPU machine every `auto` is float32, as the defaults were before.
    The job as written (with `auto`) is what run directories and MLflow record; this copy is what loads.
    """
    model, precision = job.model, job.engine.precision
    following = DTYPE_OF_PRECISION.get(precision)
    llm = model.llm.dtype if model.llm.dtype != "auto" else following or default_dtype()
    update: dict[str, Any] = {"llm": model.llm.model_copy(update={"dtype": llm})}
    encoder = getattr(model, "encoder", None)
    if encoder is not None and encoder.dtype == "auto":
        update["encoder"] = encoder.model_copy(update={"dtype": following or llm})
    return job.model_copy(update={"model": model.model_copy(update=update)})


def resolve_precision(job: JobBase, resolved: JobBase | None = None) -> str:
    """engine.precision, with auto = the LLM's (resolved) weights dtype (`resolved`: `resolve_dtypes(job)`, when
    the caller has it)."""
    if job.engine.precision != "auto":
        return job.engine.precision
    return PRECISION_OF_DTYPE[(resolved or resolve_dtypes(job)).model.llm.dtype]


def check_precision(job: JobBase) -> tuple[JobBase, str]:
    """Refuse a bf16/fp16 job whose LLM (or the NLLB encoder it uses) would load in float32 (`ConfigError`).

    DeepSpeed casts a ZeRO-2 model to the training dtype but leaves ZeRO-3's partitioned weights as
    loaded, so such a job would silently run (part of) the model in float32, at twice the memory.

    Returns what the run resolves once, before the engine is built: the job as it loads (`resolve_dtypes`) and
    its training precision (`resolve_precision`), handed on to the engine.
    """
    resolved = resolve_dtypes(job)
    precision = resolve_precision(job, resolved)
    if precision == "fp32":
        return resolved, precision
    said = f"engine.precision={job.engine.precision}" + (
        f" (resolved to {precision} from model.llm.dtype)" if job.engine.precision == "auto" else "")
    sections = [("model.llm.dtype", resolved.model.llm)]
    if _uses_encoder(job):
        sections.append(("model.encoder.dtype", resolved.model.encoder))
    for key, section in sections:
        if section.dtype == "float32":
            raise ConfigError(
                f"{said} but {key}=float32: the weights would load and stay float32 (ZeRO-3 does not cast "
                f"partitioned weights), training part of the model in another precision than asked. Set {key}: "
                f"{DTYPE_OF_PRECISION[precision]} (or auto, which follows engine.precision), or "
                f"engine.precision: fp32")
    return resolved, precision


def check_gpu_options(job: JobBase, cuda: bool | None = None) -> None:
    """Refuse GPU-only options where they cannot run (`ConfigError` naming the key): QLoRA's 4-bit LLM and 8-bit
    AdamW need CUDA and bitsandbytes. `cuda`: whether CUDA is present (default: ask torch)."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    asked = [key for key, on in (("model.llm.quantization=nf4", job.model.llm.quantization == "nf4"),
                                 ("optim.optimizer=adamw_8bit", job.optim.optimizer == "adamw_8bit")) if on]
    for key in asked:
        if not cuda:
            raise ConfigError(f"{key} needs a CUDA GPU (bitsandbytes' kernels); this machine has none. Leave it "
                              f"out on CPU (model.llm.quantization: none, optim.optimizer: adamw)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"{key} needs bitsandbytes: pip install -e '.[gpu]'")


def _uses_encoder(job: JobBase) -> bool:
    """Whether the job loads `model.encoder`: stage 1 and 2 always, S1+FT and FLARE-MT too."""
    model = job.model
    if isinstance(model, MTLLMConfig) or getattr(model, "stage1_export", None):
        return True
    flare = getattr(job, "flare", None)
    return flare is not None and flare.method == "fusion_mt"


def _describe(err: dict[str, Any], model: type[BaseModel], raw: dict[str, Any]) -> str:
    if err["type"] == "union_tag_not_found":
        return f"recipe: required key is missing (one of {', '.join(RECIPE_SCHEMAS)})"
    if err["type"] == "union_tag_invalid":
        return f"recipe: {raw.get('recipe')!r} is not a recipe; choose one of {', '.join(RECIPE_SCHEMAS)}"
    if model is JobConfig and err["loc"] and err["loc"][0] in RECIPE_SCHEMAS:
        model = RECIPE_SCHEMAS[err["loc"][0]]       # errors inside a recipe's schema start with its tag
        err = {**err, "loc": err["loc"][1:]}
    path = ".".join(str(p) for p in err["loc"] if p not in SECTION_TAGS)   # a section_by_key tag is no key
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"{path}: unknown key.{hint} Allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    msg = msg.removeprefix("Value error, ")
    if not path or msg.startswith(path):  # a check inside a section or across sections: its message names the key
        return msg
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {msg}{shown}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for key in loc:
        if key in SECTION_TAGS:   # a section_by_key union: its tag names the section that applied
            model = SECTION_TAGS[key]
            continue
        if isinstance(key, int):  # an entry of a list of sections
            continue
        field = model.model_fields.get(str(key)) if model else None
        # a section may be optional (`ParallelDataConfig | None`): look inside the union
        candidates = get_args(field.annotation) or (field.annotation,) if field else ()
        sections = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        model = sections[0] if sections else None
    return sorted(model.model_fields) if model else []


def validate(raw: dict[str, Any], schema: Any = JobConfig, source: str = "job") -> Any:
    """Validate a raw dict into `schema` (a model, or `JobConfig`), turning pydantic's errors into one ConfigError."""
    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(raw)
        # JobConfig, a discriminated union (also a copy of it: Ray pickles `python -m trainer.tune`'s globals by value)
        return (_JOB_ADAPTER if schema is JobConfig else TypeAdapter(schema)).validate_python(raw)
    except ValidationError as e:
        lines = [_describe(err, schema, raw) for err in e.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def _duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, path: str = "",
                    visited: set[int] | None = None) -> list[str]:
    """Every mapping key given twice in one mapping under `node`: 'KEY' (dotted from the top), with both lines."""
    found: list[str] = []
    visited = set() if visited is None else visited
    if id(node) in visited:                                     # an alias of a node already walked
        return found
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":      # `<<: *base`: merged keys may be overridden
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            dotted = f"{path}.{key}" if path else str(key)
            try:
                first = seen.get(key) if key is not None else None
            except TypeError:                                   # an unhashable key: the constructor reports it
                first = None
            if first is not None:
                found.append(f"duplicate key '{dotted}' at line {line} (first at line {first})")
            elif key is not None:
                seen[key] = line
            found += _duplicate_keys(loader, value_node, dotted, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(loader, item, f"{path}[{i}]", visited)
    return found


def safe_load_unique(text: str, source: str) -> Any:
    """`yaml.safe_load`, refusing a mapping key given twice (two `optim:` sections, `lr` twice in one), which
    YAML loaders otherwise resolve silently by keeping the last. A ConfigError names each key and both lines;
    malformed YAML raises yaml.YAMLError as safe_load does."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(loader, node)
        if duplicates:
            raise ConfigError(f"{source}: " + "; ".join(duplicates) + ": YAML would silently keep the last one; "
                              "keep one of them")
        loader.constructed_objects, loader.recursive_objects = {}, {}
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
    node[parts[-1]] = safe_load_unique(value, f"override {override!r}")


def load_raw(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML file into a dict and apply dotted overrides."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a job file: give a YAML file (e.g. jobs/demo_stage1.yaml)")
    if not path.is_file():
        raise ConfigError(f"job file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8); "
                          f"a job file is YAML text (e.g. jobs/demo_stage1.yaml)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        raw = safe_load_unique(text, str(path)) or {}      # a key given twice: ConfigError
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    for override in overrides or []:
        apply_override(raw, override)
    return raw


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobBase:
    """Load, override and validate a job file."""
    return validate(load_raw(path, overrides), JobConfig, source=f"job {path}")
