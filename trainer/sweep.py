"""Sweep files: a base job plus a search space over any job key, validated before Ray starts.

    name: demo
    job: jobs/demo_realign.yaml          # base job (path, relative to this file) ...
    overrides: [optim.max_steps=20]      # ... with dotted overrides
    search:
      optim.lr: {grid: [1.0e-3, 3.0e-3]}
      model.lora.r: {choice: [4, 8]}
      optim.warmup_steps: {randint: [0, 10]}
      optim.weight_decay: {uniform: [0.0, 0.1]}
      seed: {grid: [17, 23]}
    subsets:                             # language subsets: a grid axis with tags per trial
      key: parallel.languages            #   job key that receives the subset's languages
      file: subsets.yaml                 #   written by python -m data_prep.select_languages
      names: [featural_most_5, random_5_seed17]
      # or inline: {inline: {mine: [deu_Latn, ell_Grek]}}
    metric: loss
    mode: min

Every value a search axis can take is checked against the job schema (grid
and choice values one by one, the bounds of ranges), so a typo in a key or an
impossible value fails here, naming the key, not in trial 7 after an hour.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from trainer.config import ConfigError, JobConfig, Section, apply_override, load_raw, safe_load_unique, validate
from trainer.prepare import run_prepare

log = logging.getLogger(__name__)


class Axis(Section):
    """One searched key: exactly one of grid / choice / uniform / loguniform / randint."""

    grid: list[Any] | None = Field(None, description="Every listed value, one trial each (grid axes and subsets "
                                                     "multiply)")
    choice: list[Any] | None = Field(None, description="One listed value drawn at random per sample")
    uniform: tuple[float, float] | None = Field(None, description="[low, high]: a float drawn uniformly per sample")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], low > 0: a float drawn uniformly "
                                                                     "in log space per sample")
    randint: tuple[int, int] | None = Field(None, description="integers in [low, high)")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Axis":
        given = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {given or 'none'})")
        values = self.grid if self.grid is not None else self.choice
        if values is not None and not values:
            raise ValueError(f"{given[0]} needs at least one value")
        for name in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name}: low must be below high (got {list(bounds)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: bounds must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values to validate against the job schema: every listed value, or the range bounds."""
        if self.kind in ("grid", "choice"):
            return list(getattr(self, self.kind))
        low, high = getattr(self, self.kind)
        return [low, high - 1] if self.kind == "randint" else [low, high]


class SubsetAxis(Section):
    """Language subsets as a grid axis; each trial is tagged with the subset's name and metadata."""

    key: str = Field("parallel.languages", description="Job key that receives the subset's language list")
    file: str | None = Field(None, description="subsets.yaml written by data_prep.select_languages")
    names: list[str] | None = Field(None, description="Subset names to take from `file` (default: all)")
    inline: dict[str, list[str]] | None = Field(None, description="name -> languages, instead of a file")
    select: dict[str, Any] | None = Field(None, description=(
        "Compute the subsets when the sweep starts, with the keys of trainer.languages.subsets.SelectionConfig "
        "(heuristics, sizes, seeds, pool: a list of codes, default the 65-language pool, ...); "
        "the same as writing them with data_prep.select_languages first"))

    @model_validator(mode="after")
    def _one_source(self) -> "SubsetAxis":
        given = [k for k in ("file", "inline", "select") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of file (with optional names), inline or select (got {given or 'none'})")
        if self.names is not None and self.inline is not None:
            raise ValueError("names: picks subsets from a file or a selection, not from inline subsets")
        empty = sorted(name for name, langs in (self.inline or {}).items() if not langs)
        if empty:
            raise ValueError(f"subsets.inline.{empty[0]}: an empty language list (it would train on every language under "
                             f"that name); list the subset's languages")
        return self


class SchedulerConfig(Section):
    kind: Literal["fifo", "asha"] = Field("fifo", description=(
        "fifo: every trial runs to the end; asha: ASHA stops poor trials early on `metric`, compared at the "
        "same optimizer step (rungs at grace_period x reduction_factor^k steps); rows without the metric "
        "are skipped, so pick a metric logged during training"))
    grace_period: int = Field(1, gt=0, description="ASHA: optimizer steps before a trial can be stopped")
    reduction_factor: int = Field(2, gt=1, description="ASHA: keep 1/reduction_factor per rung")
    max_t: int = Field(100, gt=0, description="ASHA: optimizer steps after which a trial is done (the job's optim.max_steps)")


class ResourcesConfig(Section):
    workers: int = Field(1, gt=0, description="Ray Train workers (DeepSpeed ranks) per trial")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs Ray reserves per worker; > 0: CUDA workers on NCCL, "
                                                        "0: CPU workers on gloo")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves per worker")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster; default $RAY_ADDRESS, else start a local Ray")
    train_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description=(
        "Ray Train's own console logs in each trial (INFO prints every metric report); its log files "
        "keep everything either way"))
    num_cpus: int | None = Field(None, gt=0, description="Local Ray only: logical CPUs (may exceed cores); null = the cores + 1, the spare one for the trials' driver functions")


class SweepConfig(Section):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Sweep name: the sweep directory output_dir/NAME, the MLflow parent run's name, the sweep tag of each trial"))
    job: str = Field(..., description="Base job YAML, relative to the sweep file")
    prepare: list[str] = Field(default_factory=list, description=(
        "Commands the driver runs once, in the working directory, before validating trials and starting Ray "
        "(e.g. data preparation); each must be safe to re-run, and a failing one stops the sweep"))
    overrides: list[str] = Field(default_factory=list, description=(
        "Dotted key.path=value overrides of the base job (value parsed as YAML), applied before the search"))
    search: dict[str, Axis] = Field(default_factory=dict, description=(
        "Job key (dotted path) -> its axis; every value an axis can take is validated against the job schema "
        "before Ray starts"))
    subsets: SubsetAxis | None = Field(None, description="Language subsets as one more grid axis; null = none")
    num_samples: int = Field(1, gt=0, description="Repeats of the grid; random axes are re-drawn per sample")
    metric: str = Field("loss", description=(
        "Reported metric that ranks the trials (and that ASHA stops on), e.g. loss or zero_shot_accuracy"))
    mode: Literal["min", "max"] = Field("min", description="min: a lower metric is better; max: a higher one")
    scheduler: SchedulerConfig = Field(SchedulerConfig(), description="Ray Tune trial scheduler")
    resources: ResourcesConfig = Field(ResourcesConfig(), description="Ray resources of each trial")
    max_concurrent_trials: int = Field(1, gt=0, description="Trials running at the same time")
    max_failures: int = Field(1, ge=0, description="Retries of a crashed trial, each resuming its checkpoint")
    output_dir: str = Field("outputs/sweeps", description=(
        "output_dir/NAME holds the sweep state, every trial's output_dir (checkpoints, export, metrics) and the "
        "summary; on a cluster a path every node mounts (NFS), since a retried trial may resume on another node"))
    storage_path: str | None = Field(None, description=(
        "Ray Tune and Ray Train experiment storage: a local dir, NFS path, or a pyarrow URI (s3://bucket/prefix, "
        "gs://...); every trial checkpoint is copied there and a retried trial restores from it, so trials need "
        "no shared disk; null = output_dir/NAME"))
    tracking_uri: str | None = Field(None, description="MLflow; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str = Field("sweeps", description="MLflow experiment of the parent run and of every trial's run")
    ray: RayConfig = Field(RayConfig(), description="Which Ray the sweep runs on")


def subset_axis_entries(axis: SubsetAxis, base_dir: Path) -> dict[str, dict[str, Any]]:
    """The sweep's language subsets: name -> {"languages": [...], plus heuristic/size/seed/objective when known}."""
    from trainer.languages.table import language_table

    if axis.inline is not None:
        table = language_table()
        try:
            return {name: subset_metadata(name, {"languages": table.resolve(langs, f"subsets.inline.{name}")})
                    for name, langs in axis.inline.items()}
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if axis.select is not None:
        where, table = "subsets.select", selected_subsets(axis.select)
    else:
        path = (base_dir / axis.file) if not Path(axis.file).is_absolute() else Path(axis.file)
        if not path.is_file():
            raise ConfigError(f"subsets.file: {path} not found (write it with python -m data_prep.select_languages)")
        try:
            data = safe_load_unique(path.read_text(), f"subsets.file {path}") or {}   # a subset named twice: refused
        except yaml.YAMLError as e:
            raise ConfigError(f"subsets.file {path}: not valid YAML: {e}") from None
        where, table = str(path), data.get("subsets", data)
        if isinstance(table, list):
            table = {entry["name"]: entry for entry in table}
    if not table:
        raise ConfigError(f"subsets: {where} yields no subset (check its heuristics, sizes and pool)")
    names = axis.names or sorted(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"subsets.names: {unknown} not in {where}; available: {', '.join(sorted(table))}")
    return {name: subset_metadata(name, dict(table[name])) for name in names}


def subset_metadata(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A subset's entry with `heuristic` and `size` always set (what the trials are tagged and reported by).

    Missing ones come from a name like data_prep.select_languages writes, `featural_max_5` (featural_max, 5)
    or `random_5_s17` (random, 5, seed 17), when its number is the subset's size; otherwise the heuristic
    is `inline` (subsets written out by hand) and the size the number of languages.
    """
    size = len(entry["languages"])
    match = re.fullmatch(r"(?P<heuristic>[A-Za-z][A-Za-z0-9_]*?)_(?P<size>\d+)(?:_s(?P<seed>\d+))?", name)
    guessed: dict[str, Any] = {"heuristic": "inline", "size": size}
    if match and int(match["size"]) == size:
        guessed = {"heuristic": match["heuristic"], "size": size} | ({"seed": int(match["seed"])} if match["seed"] else {})
    return guessed | {k: v for k, v in entry.items() if v is not None}


def selected_subsets(select: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the subset selection of `data_prep.select_languages` in memory -> name -> subset entry."""
    from trainer.languages.table import language_table
    from trainer.languages.subsets import SelectionConfig, select_subsets

    options = dict(select)
    if "pool" not in options:
        options["pool"] = [lang.flores for lang in language_table().pool("pool65")]
    cfg = validate(options, SelectionConfig, source="subsets.select")
    return dict(select_subsets(cfg)["subsets"])


class Sweep:
    """A validated sweep: its config, base job dict, subsets, and the directory it came from."""

    def __init__(self, config: SweepConfig, base_raw: dict[str, Any], subsets: dict[str, dict], base_dir: Path):
        self.config = config
        self.base_raw = base_raw
        self.subsets = subsets
        self.base_dir = base_dir

    def trial_raw(self, settings: dict[str, Any], subset: str | None) -> dict[str, Any]:
        """The base job with one trial's settings (and subset languages) applied."""
        raw = copy.deepcopy(self.base_raw)
        for key, value in settings.items():
            apply_override(raw, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        if subset is not None:
            langs = self.subsets[subset]["languages"]
            apply_override(raw, f"{self.config.subsets.key}={yaml.safe_dump(langs, default_flow_style=True).strip()}")
        return raw

    def grid_size(self) -> int:
        n = len(self.subsets) if self.subsets else 1
        for axis in self.config.search.values():
            if axis.kind == "grid":
                n *= len(axis.grid)
        return n * self.config.num_samples


def load_sweep(path: str | Path, overrides: list[str] | None = None, prepare: bool = True) -> Sweep:
    """Read, validate and probe a sweep file; raises ConfigError naming the key on any problem.

    `prepare`: run the file's `prepare` commands once the sweep file itself is valid (before the
    base job is validated, since the commands may write the files it names).
    """
    path = Path(path)
    raw = load_raw(path, overrides)
    config = validate(raw, SweepConfig, source=f"sweep {path}")
    if prepare:
        run_prepare(config.prepare)
    base_dir = path.resolve().parent
    job_path = Path(config.job) if Path(config.job).is_absolute() else base_dir / config.job
    if not job_path.is_file():
        job_path = Path(config.job)  # also accept paths relative to the working directory
    base_raw = load_raw(job_path, config.overrides)
    validate(base_raw, JobConfig, source=f"base job {job_path}")
    subsets = subset_axis_entries(config.subsets, base_dir) if config.subsets else {}
    sweep = Sweep(config, base_raw, subsets, base_dir)
    _probe(sweep)
    _warn_if_retries_restart(sweep)
    return sweep


def _warn_if_retries_restart(sweep: Sweep) -> None:
    """A retried trial resumes from its last checkpoint: without one it redoes every step."""
    job = validate(sweep.trial_raw({}, next(iter(sweep.subsets), None)), JobConfig, source="trial")
    every = job.checkpoint.every
    if sweep.config.max_failures > 0 and not 0 < every < job.optim.max_steps:
        log.warning("checkpoint.every=%d with optim.max_steps=%d: a crashed trial has no checkpoint to resume "
                    "and is retried from step 0 (add overrides: [checkpoint.every=N] to the sweep)",
                    every, job.optim.max_steps)


def _probe(sweep: Sweep) -> None:
    """Validate the job for every probe value of every axis and every subset."""
    for key, axis in sweep.config.search.items():
        for value in axis.probe_values():
            try:
                validate(sweep.trial_raw({key: value}, None), JobConfig, source="trial")
            except ConfigError as e:
                raise ConfigError(f"search.{key} = {value!r} gives an invalid job:\n{e}") from None
    for name in sweep.subsets:
        try:
            validate(sweep.trial_raw({}, name), JobConfig, source="trial")
        except ConfigError as e:
            raise ConfigError(f"subsets: subset {name!r} gives an invalid job:\n{e}") from None


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """All grid combinations (grid axes and subsets) as {key: value}, for dry runs and docs."""
    axes = {k: a.grid for k, a in sweep.config.search.items() if a.kind == "grid"}
    if sweep.subsets:
        axes["subset"] = list(sweep.subsets)
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


# --- disk footprint (python -m trainer.tune SWEEP.yaml --dry-run) ------------------------------------------------

# config.json fields of the hub models the shipped jobs name, so the dry run can size them without the hub (the
# model is built on the meta device from its config: no weight is downloaded or allocated). A model in the local
# Hugging Face cache or a local directory is sized from its own config.json instead.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "FacebookAI/xlm-roberta-large": {"model_type": "xlm-roberta", "vocab_size": 250002, "hidden_size": 1024,
                                     "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                                     "max_position_embeddings": 514, "type_vocab_size": 1},
    "FacebookAI/xlm-roberta-base": {"model_type": "xlm-roberta", "vocab_size": 250002, "hidden_size": 768,
                                    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                                    "max_position_embeddings": 514, "type_vocab_size": 1},
    "meta-llama/Meta-Llama-3-8B": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                   "intermediate_size": 14336, "max_position_embeddings": 8192},
}
for _alias, _name in {"xlm-roberta-large": "FacebookAI/xlm-roberta-large", "xlm-roberta-base": "FacebookAI/xlm-roberta-base",
                      "meta-llama/Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B",
                      "meta-llama/Meta-Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B"}.items():
    KNOWN_CONFIGS[_alias] = KNOWN_CONFIGS[_name]

RAY_CHECKPOINTS_KEPT = 2   # trainer.tune.run_trial: CheckpointConfig(num_to_keep=2) in the sweep's Ray storage
ADAM_BYTES = 12            # per trainable parameter: DeepSpeed's fp32 master copy + AdamW's two fp32 moments
GB = 1e9


def trial_keeps_local_checkpoints(checkpoint: Any) -> bool:
    """Whether a sweep trial's folder keeps its checkpoints (`checkpoint`: the job's CheckpointConfig). No by
    default: Ray storage is the copy that survives a node, so each checkpoint is deleted from the trial folder once
    Ray has uploaded it (trainer.tune). Yes with `checkpoint.best_metric`: Ray keeps only the newest
    RAY_CHECKPOINTS_KEPT, so the trial folder keeps its best (and `keep_last`) as a plain job does."""
    return checkpoint.best_metric is not None


def model_config(name_or_path: str):
    """The transformers config of a model without its weights: a local directory's or the HF cache's config.json,
    else KNOWN_CONFIGS; None when neither (a hub model never downloaded here, a tiny:* model)."""
    from transformers import AutoConfig, CONFIG_MAPPING

    if name_or_path.startswith("tiny:"):
        return None
    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except Exception:   # not a local folder, not in the cache
        known = KNOWN_CONFIGS.get(name_or_path)
        if known is None:
            return None
        fields = dict(known)
        return CONFIG_MAPPING[fields.pop("model_type")](**fields)


def parameter_counts(name_or_path: str, lora: Any | None) -> tuple[int, int] | None:
    """(all parameters, trained parameters) of the backbone `AutoModel` built on the meta device (no memory, no
    download); trained = all, or with `lora` (a LoraConfig) r x (in + out) per adapted nn.Linear. None: unknown."""
    import torch
    from transformers import AutoModel

    config = model_config(name_or_path)
    if config is None:
        return None
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if lora is None:
        return total, total
    targets = lora.target_modules
    trained = sum(lora.r * (m.in_features + m.out_features) for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear)
                  and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets))
    return total, trained


def zero_stage(deepspeed: str) -> int:
    """The ZeRO stage of a job's `engine.deepspeed` (a shipped name such as zero3, or a JSON path); 0 if unreadable."""
    import json

    path = Path(deepspeed) if deepspeed.endswith(".json") else Path(__file__).resolve().parents[1] / "ds_configs" / f"{deepspeed}.json"
    try:
        return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError):
        return 0


def trial_footprint(job: Any) -> dict[str, Any] | None:
    """Disk bytes one trial of `job` (a validated job) writes, from its model config, or None when the model's size
    is unknown. Keys: params, trained, checkpoint (one step-N folder), local_checkpoints (what the trial folder
    keeps: none, each is deleted once Ray has it, or checkpoint.keep_last with checkpoint.best_metric:
    `trial_keeps_local_checkpoints`), ray_checkpoints (Ray storage keeps RAY_CHECKPOINTS_KEPT), export (the trial's
    export/ folder), uploaded (what tracking.export sends to MLflow), total.

    One checkpoint = DeepSpeed's state (ADAM_BYTES per trained parameter, plus the 16-bit module weights under
    ZeRO-1/2, which ZeRO-3 keeps in the partitions) + portable.pt (ADAM_BYTES per trained parameter, when
    checkpoint.portable). The export holds the trained weights in fp32 (LoRA: twice, also as a PEFT folder);
    tracking.export: all adds every weight. Heads and projections are left out (small beside the backbone)."""
    model = getattr(job, "model", None)
    llm = getattr(model, "llm", None)
    if llm is None:
        return None
    full = getattr(model, "finetune", "lora") == "full"
    counts = parameter_counts(llm.name_or_path, None if full else model.lora)
    if counts is None:
        return None
    total, trained = counts
    weight_bytes = 4 if llm.dtype == "float32" else 2
    ds = trained * (ADAM_BYTES + (weight_bytes if zero_stage(job.engine.deepspeed) < 3 else 0))
    checkpoint = ds + (trained * ADAM_BYTES if job.checkpoint.portable else 0)
    export = trained * 4 * (1 if full else 2)
    if job.tracking.export == "all":
        export += (total - trained) * weight_bytes + trained * 4
    uploaded = 0 if job.tracking.export == "none" else export
    every = job.checkpoint.every
    saves = 0 if every <= 0 else job.optim.max_steps // every + (1 if job.checkpoint.save_final else 0)
    local = checkpoint * min(job.checkpoint.keep_last, saves) if trial_keeps_local_checkpoints(job.checkpoint) else 0
    ray = checkpoint * min(RAY_CHECKPOINTS_KEPT, saves)
    return {"params": total, "trained": trained, "checkpoint": checkpoint, "local_checkpoints": local,
            "ray_checkpoints": ray, "export": export, "uploaded": uploaded, "total": local + ray + export + uploaded}


def footprint_report(sweep: Sweep) -> str:
    """The dry run's disk estimate: per trial (its first grid point's job) and for the whole sweep."""
    raw = sweep.trial_raw({}, next(iter(sweep.subsets), None))
    job = validate(raw, JobConfig, source="trial")
    llm = getattr(getattr(job, "model", None), "llm", None)
    where = getattr(llm, "name_or_path", "?")
    est = trial_footprint(job)
    if est is None:
        return (f"disk per trial: unknown ({where}: no config.json here, not in trainer.sweep.KNOWN_CONFIGS; "
                f"a tiny model's footprint is negligible)")
    trials = sweep.grid_size()
    gb = lambda n: f"{n / GB:.1f} GB"   # noqa: E731
    storage = sweep.config.storage_path or f"{sweep.config.output_dir}/{sweep.config.name} (the sweep dir)"
    keep_local = trial_keeps_local_checkpoints(job.checkpoint)
    lines = [
        f"disk per trial ({where}: {est['params'] / 1e6:.0f}M parameters, {est['trained'] / 1e6:.1f}M trained; "
        f"checkpoint.portable={job.checkpoint.portable}, "
        + (f"checkpoint.keep_last={job.checkpoint.keep_last}, " if keep_local else "")
        + f"tracking.export={job.tracking.export}):",
        f"  one checkpoint                  {gb(est['checkpoint'])}",
        f"  trial folder checkpoints        {gb(est['local_checkpoints'])}   ("
        + ("keep_last x checkpoint, for checkpoint.best_metric" if keep_local
           else "each deleted once Ray has uploaded it") + f"; {sweep.config.output_dir})",
        f"  Ray storage checkpoints         {gb(est['ray_checkpoints'])}   (newest {RAY_CHECKPOINTS_KEPT}; {storage})",
        f"  export/ in the trial folder     {gb(est['export'])}",
        f"  uploaded to MLflow artifacts    {gb(est['uploaded'])}",
        f"  per trial                       {gb(est['total'])}",
        f"  whole sweep ({trials} trials)      {est['total'] * trials / 1e12:.2f} TB",
        f"  (while a checkpoint is written and uploaded, one more in the trial folder and one more in Ray storage: "
        f"+{gb(2 * est['checkpoint'])} per running trial)",
    ]
    return "\n".join(lines)
