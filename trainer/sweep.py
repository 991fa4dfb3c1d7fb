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
