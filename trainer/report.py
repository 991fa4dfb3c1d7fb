"""Compare runs: `python -m trainer.report SWEEP_DIR_OR_EXPERIMENT [--out DIR]`.

    python -m trainer.report outputs/sweeps/demo          # a sweep: its parent run's children
    python -m trainer.report demo --uri sqlite:///mlflow.db   # an MLflow experiment of single runs

Reads the runs through `trainer.tracking` (the only MLflow importer) and writes into `--out`
(default SWEEP_DIR/report, or outputs/reports/EXPERIMENT) the studies' figures as PNG with their
data as CSV, the trial table, and `report.html`, one self-contained page (figures inlined, a table
sortable by any column). A sweep's report is then attached to its parent run (artifacts `report/`).

- `language_scores.png`: per-language score heatmap; rows are the runs grouped by subset heuristic,
  columns the languages grouped by resource level (Joshi class: high 5, mid 3-4, low 0-2; the
  source language first); a framed cell is a language of the run's subset (seen in realignment).
- `score_by_size.png`: the mean target-language score against the subset size, one line per
  heuristic (and per other setting); error bars are the standard deviation over repeats (seeds,
  random subsets of one size).
- `retrieval_by_layer.png`: translation retrieval accuracy by layer, before and after training
  (`retrieval_<tag>_layer<i>`), per run and averaged.
- `fusion.png`: when the runs vary a key named `*.fusion` (FLARE's `flare.fusion`), the score per
  language and the mean per fusion function.
- `trials.csv` and the HTML table: every run with its status, subset, settings and summary metrics.

Scores are the recipes' per-language metrics: `accuracy_<lang>` with `zero_shot_accuracy` (align,
realign), or `test_sdev_<lang>` with `target_mean_sdev` (finetune, stage2, flare). A sweep still
running gives a partial report: its RUNNING runs are flagged in the figures and the table.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - the Agg canvas, no display
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from trainer import tracking
from trainer.errors import TrackingError, UserError, report as report_error, user_error
from trainer.eval.plots import plot_language_bars, save_figure
from trainer.fsutil import write_atomic

STATE_FILE = "sweep_state.json"   # the sweep state trainer.tune writes (the report does not import the Ray module)
RESOURCE_ORDER = ("source", "high", "mid", "low", "unknown")
RESOURCE_LABEL = {"source": "source", "high": "high (Joshi 5)", "mid": "mid (Joshi 3-4)", "low": "low (Joshi 0-2)",
                  "unknown": "class unknown"}
LANGUAGE = re.compile(r"^[a-z]{2,3}_[A-Z][a-z]{3}$")
RETRIEVAL = re.compile(r"^retrieval_(?P<tag>[a-z]+)_layer(?P<layer>\d+)$")
TAG_ORDER = ("before", "after", "final")
SEED_KEYS = re.compile(r"(^|\.)seed$")
# Keys that differ between single runs without being a setting: where they wrote and logged.
NOT_SETTINGS = ("output_dir", "tracking.", "checkpoint.", "prepare", "model.cache_dir", "engine.timeout_minutes")


class ReportError(UserError):
    """The sweep directory or experiment cannot be reported on; the message names it and what would do."""


@dataclass(frozen=True)
class ScoreFamily:
    """A recipe's per-language metric names: `<prefix><lang>`, the mean over the targets, the source score."""

    prefix: str
    mean: str
    source: str
    label: str


FAMILIES = (
    ScoreFamily("accuracy_", "zero_shot_accuracy", "source_accuracy", "task accuracy"),          # align, realign
    ScoreFamily("test_sdev_", "target_mean_sdev", "source_test", "test score (S-DEV)"),           # finetune, stage2, flare
)


@dataclass
class Trial:
    """One run as the report sees it."""

    run_id: str
    name: str
    status: str
    trial_status: str | None
    subset: str | None
    heuristic: str | None
    size: int | None
    languages: list[str]
    source_language: str
    settings: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"

    @property
    def label(self) -> str:
        """The run's name, flagged when it did not finish: `[running]`, `[failed]`, `[killed]`."""
        return self.name + ("" if self.status == "FINISHED" else f" [{self.status.lower()}]")


@dataclass
class Source:
    """Where the runs come from: the store, a title, the runs, and the sweep's parent run (None for an experiment)."""

    uri: str
    title: str
    runs: list[dict[str, Any]]
    parent: dict[str, Any] | None = None
    default_out: Path = Path("outputs/reports")


@dataclass
class Report:
    """What `build_report` wrote: figure and table paths by name, figures skipped (name -> why), the page."""

    out: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    partial: bool = False
    logged_to: str | None = None


# --- finding the runs ----------------------------------------------------------------------------

def find_source(target: str | Path, uri: str | None = None) -> Source:
    """A sweep directory (it holds sweep_state.json) or an MLflow experiment name -> its runs.

    A sweep's store is the one it ran with (recorded in its state), unless `uri` is given; an
    experiment is looked up in `uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
    ReportError names the target and lists what would be valid.
    """
    path = Path(target)
    if path.is_dir():
        return sweep_source(path, uri)
    sweeps = ", ".join(sorted(str(p.parent) for p in Path("outputs/sweeps").glob(f"*/{STATE_FILE}"))) or "none"
    if os.sep in str(target):
        raise ReportError(f"{target}: no such sweep directory (sweep directories here: {sweeps})")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.DEFAULT_URI
    tracking.check_reachable(uri, key="--uri")   # a store that is no SQLite file, a server away: named in seconds
    try:
        runs = tracking.read_runs(uri, experiment=str(target))
    except TrackingError:
        raise ReportError(
            f"{target}: neither a sweep directory nor an MLflow experiment in {uri}. Experiments there: "
            f"{', '.join(tracking.experiment_names(uri)) or 'none'}; sweep directories here: {sweeps} "
            f"(a sweep directory is output_dir/NAME of a sweep, holding {STATE_FILE}; another store: --uri)") from None
    if not runs:
        raise ReportError(f"MLflow experiment {target!r} in {uri} has no runs to report on")
    return Source(uri, f"Experiment {target}", runs, None, Path("outputs/reports") / _slug(str(target)))


def sweep_source(sweep_dir: Path, uri: str | None = None) -> Source:
    """The children of a sweep's parent run (superseded attempts left out), from its sweep directory."""
    state_path = sweep_dir / STATE_FILE
    if not state_path.is_file():
        found = sorted(str(p.parent) for p in sweep_dir.glob(f"*/{STATE_FILE}"))
        hint = f"; sweep directories inside it: {', '.join(found)}" if found else ""
        raise ReportError(f"{sweep_dir}: not a sweep directory (no {STATE_FILE}; a sweep writes it to "
                          f"output_dir/NAME when it starts){hint}")
    state = json.loads(state_path.read_text())
    uri = uri or state.get("tracking_uri") or _state_uri(state)
    tracking.check_reachable(uri, key="--uri")
    parent = tracking.read_run(uri, state["parent_run_id"])
    runs = [r for r in tracking.read_runs(uri, parent_run_id=state["parent_run_id"])
            if "superseded_by" not in r["tags"]]
    name = state.get("sweep", {}).get("name") or sweep_dir.name
    return Source(uri, f"Sweep {name}", runs, parent, sweep_dir / "report")


def _state_uri(state: dict[str, Any]) -> str:
    """The store of a sweep whose state predates `tracking_uri` in it: as `trainer.tune` resolved it."""
    uri = state.get("sweep", {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or tracking.DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(state.get("workdir", ".")) / uri[len("sqlite:///"):])
    return uri


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "report"


# --- runs -> trials ------------------------------------------------------------------------------

def _parse_list(value: str | None) -> list[str]:
    if not value:
        return []
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return []
    return [str(v) for v in parsed] if isinstance(parsed, list) else []


def trials_of(runs: list[dict[str, Any]]) -> list[Trial]:
    """The report's view of each run: subset (tags, else `parallel.languages`), heuristic, size, settings.

    Settings are the sweep's searched keys (`setting.*` tags); for runs outside a sweep, the config
    keys whose values differ between the runs (where they wrote and logged left out).
    """
    swept = any(k.startswith("setting.") for r in runs for k in r["tags"])
    varied = [] if swept else _varied_params(runs)
    trials = []
    for r in runs:
        tags, params = r["tags"], r["params"]
        languages = tags["languages"].split(",") if tags.get("languages") else _parse_list(params.get("parallel.languages"))
        size = tags.get("subset_size")
        settings = ({k[len("setting."):]: v for k, v in tags.items() if k.startswith("setting.")} if swept
                    else {k: params.get(k, "") for k in varied})
        trials.append(Trial(
            run_id=r["run_id"], name=r["name"], status=r["status"], trial_status=tags.get("trial_status"),
            subset=tags.get("subset"), heuristic=tags.get("subset_heuristic"),
            size=int(size) if size and size.isdigit() else (len(languages) or None),
            languages=languages,
            source_language=params.get("task.source_language") or "eng_Latn",
            settings=settings, params=params,
            metrics={k: v for k, v in r["metrics"].items() if not k.startswith("system/")}))
    return sorted(trials, key=lambda t: (t.heuristic or "~", t.size or 0, t.subset or "", _settings_text(t), t.name))


def _varied_params(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys every run has (runs of several recipes share the common sections) with more than one value."""
    keys = set.intersection(*(set(r["params"]) for r in runs)) if runs else set()
    return [k for k in sorted(keys) if not k.startswith(NOT_SETTINGS) and k != "parallel.languages"
            and len({r["params"][k] for r in runs}) > 1]


def _settings_text(trial: Trial, skip: tuple[str, ...] = ()) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(trial.settings.items()) if k not in skip)


def score_family(trials: list[Trial]) -> ScoreFamily | None:
    """The per-language metric family most runs logged (None: no run logged per-language scores)."""
    counts = [(sum(1 for t in trials if scores_of(t, f)), -i, f) for i, f in enumerate(FAMILIES)]
    best = max(counts, key=lambda c: c[:2]) if counts else None
    return best[2] if best and best[0] else None


def scores_of(trial: Trial, family: ScoreFamily) -> dict[str, float]:
    """{language: score} of one run under `family`."""
    return {k[len(family.prefix):]: v for k, v in trial.metrics.items()
            if k.startswith(family.prefix) and LANGUAGE.match(k[len(family.prefix):])}


def resource_group(language: str, source: str) -> str:
    """source, high, mid, low or unknown (Joshi class from the language table)."""
    if language == source:
        return "source"
    from trainer.languages.table import language_table

    try:
        return language_table().get(language).resource_group or "unknown"
    except Exception:  # noqa: BLE001 - a code the table does not know
        return "unknown"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- figures -------------------------------------------------------------------------------------

def language_heatmap(trials: list[Trial], family: ScoreFamily, out: Path) -> tuple[Path, Path]:
    """Per-language score heatmap (rows: runs by heuristic; columns: languages by resource level) + its CSV."""
    # a run of the sweep without scores (still running, failed, stopped early) is a row of blank cells
    rows = [t for t in trials if scores_of(t, family) or t.status != "FINISHED"]
    source = next(t.source_language for t in trials if scores_of(t, family))
    languages = sorted({lang for t in rows for lang in scores_of(t, family)},
                       key=lambda lang: (RESOURCE_ORDER.index(resource_group(lang, source)), lang))
    groups = [resource_group(lang, source) for lang in languages]
    matrix = [[scores_of(t, family).get(lang, math.nan) for lang in languages] for t in rows]
    lines = [["run", "status", "heuristic", "size", "language", "resource", "seen", "score"]]
    lines += [[t.name, t.status, t.heuristic or "", t.size or "", lang, group, int(lang in t.languages), value]
              for t, values in zip(rows, matrix) for lang, group, value in zip(languages, groups, values)]
    table = _write_csv(out / "language_scores.csv", lines)

    fig = Figure(figsize=(max(6.0, 0.5 * len(languages) + 4.5), max(3.0, 0.32 * len(rows) + 2.2)))
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["viridis"].with_extremes(bad="#e8e8e8")
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap=colors, aspect="auto")
    ax.set_xticks(range(len(languages)), languages, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), [t.label for t in rows], fontsize=8)
    for i, t in enumerate(rows):
        for j, lang in enumerate(languages):
            if lang in t.languages:   # seen: realigned on this language
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.6))
            if len(rows) * len(languages) <= 300 and _finite(matrix[i][j]):
                ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if matrix[i][j] < 0.6 else "black")
    for j in range(1, len(languages)):
        if groups[j] != groups[j - 1]:
            ax.axvline(j - 0.5, color="black", linewidth=1.5)
    for group in dict.fromkeys(groups):
        at = [j for j, g in enumerate(groups) if g == group]
        ax.text(sum(at) / len(at), 1.01, RESOURCE_LABEL[group], ha="center", va="bottom", fontsize=8,
                transform=ax.get_xaxis_transform())   # x in columns, y just above the axes
    heuristics = [t.heuristic or "-" for t in rows] if any(t.heuristic for t in rows) else []
    for i in range(1, len(heuristics)):
        if heuristics[i] != heuristics[i - 1]:
            ax.axhline(i - 0.5, color="white", linewidth=2.5)
    for heuristic in dict.fromkeys(heuristics):
        at = [i for i, h in enumerate(heuristics) if h == heuristic]
        ax.text(len(languages) - 0.4, sum(at) / len(at), f" {heuristic}", ha="left", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.14 if heuristics else 0.04, label=family.label)
    running = sum(t.running for t in rows)
    ax.set_title(f"{family.label} per language; framed: in the run's subset"
                 + (f"; {running} run(s) still running" if running else ""), fontsize=9, pad=16)
    return save_figure(fig, out / "language_scores.png"), table


def score_by_size(trials: list[Trial], family: ScoreFamily, out: Path) -> tuple[Path, Path] | str:
    """Mean target score against subset size, a line per heuristic (and other settings), std over repeats."""
    usable = [t for t in trials if t.size and _finite(t.metrics.get(family.mean))]
    if not usable:
        return f"no run has both a subset size and {family.mean}"
    skip = tuple(k for t in usable for k in t.settings if SEED_KEYS.search(k))
    points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in usable:
        line = " ".join(filter(None, [t.heuristic or "(no heuristic)", _settings_text(t, skip)]))
        points[line][t.size].append(t.metrics[family.mean])
    rows = [["line", "size", "mean", "std", "n"]]
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for line, by_size in sorted(points.items()):
        sizes = sorted(by_size)
        stats = [_mean_std(by_size[s]) for s in sizes]
        ax.errorbar(sizes, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=line)
        rows += [[line, s, m, sd, len(by_size[s])] for s, (m, sd) in zip(sizes, stats)]
    ax.set_xticks(sorted({t.size for t in usable}))
    ax.set_xlabel("languages in the subset")
    ax.set_ylabel(f"{family.mean} (mean over target languages)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    partial = sum(t.running for t in usable)
    ax.set_title("Target score by subset size; bars: std over repeats"
                 + (f" ({partial} running)" if partial else ""), fontsize=9)
    return save_figure(fig, out / "score_by_size.png"), _write_csv(out / "score_by_size.csv", rows)


def retrieval_curves(trial: Trial) -> dict[str, dict[int, float]]:
    """{tag: {layer: accuracy}} from `retrieval_<tag>_layer<i>` metrics."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for key, value in trial.metrics.items():
        match = RETRIEVAL.match(key)
        if match:
            curves[match["tag"]][int(match["layer"])] = value
    return dict(curves)


def retrieval_by_layer(trials: list[Trial], out: Path) -> tuple[Path, Path] | str:
    """Retrieval accuracy by layer per tag (before / after / final): each run thin, the mean thick."""
    curves = {t.run_id: retrieval_curves(t) for t in trials}
    tags = sorted({tag for c in curves.values() for tag in c},
                  key=lambda tag: (TAG_ORDER.index(tag) if tag in TAG_ORDER else len(TAG_ORDER), tag))
    if not tags:
        return "no run logged retrieval_<tag>_layer<i> metrics (the align and realign recipes' eval.retrieval)"
    rows = [["run", "tag", "layer", "accuracy"]]
    fig = Figure(figsize=(10.0, 4.0))
    per_run, mean = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, sharey=None)
    colors = {tag: f"C{i}" for i, tag in enumerate(tags)}
    for t in trials:
        for tag, by_layer in curves[t.run_id].items():
            layers = sorted(by_layer)
            per_run.plot(layers, [by_layer[i] for i in layers], color=colors[tag], alpha=0.35, linewidth=1,
                         linestyle=":" if t.running else "-")
            rows += [[t.name, tag, i, by_layer[i]] for i in layers]
    for tag in tags:
        by_layer: dict[int, list[float]] = defaultdict(list)
        for c in curves.values():
            for layer, value in c.get(tag, {}).items():
                by_layer[layer].append(value)
        layers = sorted(by_layer)
        stats = [_mean_std(by_layer[i]) for i in layers]
        means = [m for m, _ in stats]
        mean.plot(layers, means, color=colors[tag], marker="o", linewidth=2,
                  label=f"{tag} (n={max(len(v) for v in by_layer.values())})")
        mean.fill_between(layers, [m - s for m, s in stats], [m + s for m, s in stats], color=colors[tag], alpha=0.15)
        per_run.plot([], [], color=colors[tag], label=tag)
    for ax, title in ((per_run, "per run (dotted: still running)"), (mean, "mean over runs, band: std")):
        ax.set_xticks(sorted({layer for c in curves.values() for by_layer in c.values() for layer in by_layer}))
        ax.set_xlabel("layer (hidden_states index)")
        ax.set_ylabel("mean retrieval accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
    return save_figure(fig, out / "retrieval_by_layer.png"), _write_csv(out / "retrieval_by_layer.csv", rows)


def fusion_keys(trials: list[Trial]) -> list[str]:
    """Config keys named `*.fusion` (or `fusion`) whose value differs between runs."""
    keys = {k for t in trials for k in t.params if k == "fusion" or k.endswith(".fusion")}
    return sorted(k for k in keys if len({t.params.get(k) for t in trials if t.params.get(k)}) > 1)


def fusion_comparison(trials: list[Trial], family: ScoreFamily | None, out: Path) -> tuple[Path, Path] | str:
    """Score per language and the target mean, per fusion function (mean over runs, std as error bars)."""
    keys = fusion_keys(trials)
    if not keys:
        return "the runs do not vary a *.fusion key (FLARE's flare.fusion)"
    if family is None:
        return "no run logged per-language scores"
    key = keys[0]
    by_value: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        value = t.params.get(key)
        if not value:
            continue
        for lang, score in scores_of(t, family).items():
            if lang != t.source_language:
                by_value[value][lang].append(score)
        if _finite(t.metrics.get(family.mean)):
            by_value[value]["mean"].append(t.metrics[family.mean])
    means = {v: {lang: _mean_std(s)[0] for lang, s in sorted(langs.items(), key=lambda x: (x[0] == "mean", x[0]))}
             for v, langs in sorted(by_value.items())}
    stds = {v: {lang: _mean_std(s)[1] for lang, s in langs.items()} for v, langs in by_value.items()}
    rows = [[key, "language", "mean", "std", "n"]]
    rows += [[v, lang, means[v][lang], stds[v][lang], len(by_value[v][lang])] for v in means for lang in means[v]]
    figure = plot_language_bars(means, out / "fusion.png", family.label, errors=stds,
                                title=f"{family.label} by {key} (mean over runs; bars: std)")
    return figure, _write_csv(out / "fusion.csv", rows)


# --- the table and the page ----------------------------------------------------------------------

def trial_table(trials: list[Trial], family: ScoreFamily | None, sweep_metric: str | None) -> list[dict[str, Any]]:
    """One row per run: name, status, subset, heuristic, size, settings, summary metrics."""
    metric_keys = [k for k in ((family.mean, family.source) if family else ())]
    metric_keys += [k for k in (sweep_metric, "retrieval_before", "retrieval_after", "retrieval_final", "loss")
                    if k and k not in metric_keys]
    metric_keys = [k for k in metric_keys if any(k in t.metrics for t in trials)]
    setting_keys = sorted({k for t in trials for k in t.settings})
    rows = []
    for t in trials:
        status = t.status + (f" ({t.trial_status})" if t.trial_status and t.trial_status != "OK" else "")
        row: dict[str, Any] = {"run": t.name, "status": status, "subset": t.subset or "",
                               "heuristic": t.heuristic or "", "size": t.size or ""}
        row |= {k: t.settings.get(k, "") for k in setting_keys}
        row |= {k: t.metrics.get(k) for k in metric_keys}
        row["run_id"] = t.run_id
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[list[Any]]) -> Path:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return write_atomic(path, text.getvalue())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return '<td data-v=""></td>'
    if isinstance(value, float):
        return f'<td data-v="{value!r}" class="num">{value:.4g}</td>'
    if isinstance(value, int):
        return f'<td data-v="{value}" class="num">{value}</td>'
    return f'<td data-v="{html.escape(str(value))}">{html.escape(str(value))}</td>'


SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], up = th.dataset.dir !== "asc";
    th.closest("tr").querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = up ? "asc" : "desc";
    var key = function (row) { var v = row.cells[col].dataset.v, n = parseFloat(v);
                               return v === "" ? null : isNaN(n) ? v : n; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return (x === null) - (y === null); }
      return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .meta { color: #555; font-size: 0.9em; }
.partial { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; } th { background: #f0f0f0; cursor: pointer; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.running td { background: #fff3cd; }
.skipped { color: #777; }
"""

CAPTIONS = {
    "language_scores": ("Per-language scores", "Rows: runs grouped by subset heuristic; columns: languages grouped "
                        "by resource level (Joshi class); a framed cell is a language of the run's subset."),
    "score_by_size": ("Target score by subset size", "Mean score over the target languages against the number of "
                      "languages in the subset, a line per heuristic; error bars: std over repeats (seeds)."),
    "retrieval_by_layer": ("Retrieval accuracy by layer", "Translation retrieval accuracy at every layer before "
                           "and after training: each run (left) and the mean over runs (right)."),
    "fusion": ("Fusion functions", "Score per target language and the mean, per fusion function."),
}


def render_html(source: Source, report: Report, rows: list[dict[str, Any]], trials: list[Trial]) -> str:
    """The self-contained page: figures as base64 PNG, the sortable trial table, a few lines of JS."""
    running = [t for t in trials if t.running]
    parent = source.parent
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(source.title)}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(source.title)}</h1>",
             f"<p class=\"meta\">{len(trials)} run(s) from {html.escape(source.uri)}"
             + (f"; parent run {html.escape(parent['run_id'])} ({html.escape(parent['status'])})" if parent else "")
             + f"; written {time.strftime('%Y-%m-%d %H:%M')}.</p>"]
    if report.partial:
        still = f"{len(running)} run(s) still RUNNING (marked)" if running else "no run is RUNNING"
        sweep = "the sweep is still running (its parent run is RUNNING); " if parent and parent["status"] == "RUNNING" else ""
        parts.append(f"<p class=\"partial\" id=\"partial\">Partial results: {sweep}{still}. "
                     f"Write the report again when it ends.</p>")
    parts.append("<nav>" + " · ".join(f"<a href=\"#{name}\">{CAPTIONS[name][0]}</a>"
                                       for name in CAPTIONS if name in report.figures)
                 + " · <a href=\"#trials\">Trials</a></nav>")
    for name, (heading, caption) in CAPTIONS.items():
        parts.append(f"<h2 id=\"{name}\">{heading}</h2>")
        if name in report.figures:
            data = base64.b64encode(report.figures[name].read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{heading}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{caption} Data: {report.tables[name].name}.</figcaption></figure>")
        else:
            parts.append(f"<p class=\"skipped\">Not drawn: {html.escape(report.skipped.get(name, ''))}.</p>")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    parts.append("<h2 id=\"trials\">Trials</h2><p class=\"meta\">Click a column to sort. Data: trials.csv.</p>")
    parts.append("<div style=\"overflow-x: auto\"><table class=\"sortable\" id=\"trial-table\"><thead><tr>"
                 + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>")
    for row, trial in zip(rows, trials):
        parts.append(("<tr class=\"running\">" if trial.running else "<tr>")
                     + "".join(_cell(row.get(c)) for c in columns) + "</tr>")
    parts.append(f"</tbody></table></div><script>{SORT_JS}</script></body></html>\n")
    return "\n".join(parts)


def build_report(source: Source, out: str | Path | None = None, log: bool = True) -> Report:
    """Write every figure (PNG + CSV), trials.csv and report.html into `out`; attach them to the sweep's parent
    run when there is one and `log`. A figure without data is skipped (the page says why)."""
    out = Path(out) if out is not None else source.default_out
    out.mkdir(parents=True, exist_ok=True)
    trials = trials_of(source.runs)
    if not trials:
        raise ReportError(f"{source.title}: no runs yet (a sweep's trials appear once they start)")
    family = score_family(trials)
    report = Report(out=out, html=out / "report.html")
    report.partial = any(t.running for t in trials) or bool(source.parent and source.parent["status"] == "RUNNING")
    drawn = {
        "language_scores": language_heatmap(trials, family, out) if family else
        "no run logged per-language scores (accuracy_<lang> or test_sdev_<lang>)",
        "score_by_size": score_by_size(trials, family, out) if family else "no run logged per-language scores",
        "retrieval_by_layer": retrieval_by_layer(trials, out),
        "fusion": fusion_comparison(trials, family, out),
    }
    for name, result in drawn.items():
        if isinstance(result, str):
            report.skipped[name] = result
        else:
            report.figures[name], report.tables[name] = result
    sweep_metric = (source.parent or {}).get("params", {}).get("metric")
    rows = trial_table(trials, family, sweep_metric)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    report.tables["trials"] = _write_csv(out / "trials.csv", [columns] + [[row.get(c) for c in columns] for row in rows])
    write_atomic(report.html, render_html(source, report, rows, trials))
    if log and source.parent is not None:
        tracking.log_report(source.uri, source.parent["run_id"], out)
        report.logged_to = source.parent["run_id"]
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.report SWEEP_DIR_OR_EXPERIMENT [--out DIR] [--uri URI] [--no-log]`."""
    parser = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a sweep directory (output_dir/NAME, with sweep_state.json) or an MLflow "
                                       "experiment name")
    parser.add_argument("--out", default=None, help="output folder (default SWEEP_DIR/report, or "
                                                    "outputs/reports/EXPERIMENT)")
    parser.add_argument("--uri", default=None, help="MLflow store (default: the sweep's, else $MLFLOW_TRACKING_URI, "
                                                    "else sqlite:///mlflow.db)")
    parser.add_argument("--no-log", action="store_true", help="do not attach the report to the sweep's parent run")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        source = find_source(args.target, args.uri)
        result = build_report(source, args.out, log=not args.no_log)
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e, args.out) is None:
            raise
        return report_error(e, args.debug, where=args.out)
    drawn = ", ".join(p.name for p in result.figures.values()) or "no figure"
    skipped = "".join(f"\n  not drawn: {name}: {why}" for name, why in result.skipped.items())
    partial = "\n  partial: runs still RUNNING (marked in the report)" if result.partial else ""
    logged = f"\n  attached to MLflow run {result.logged_to} (artifacts report/)" if result.logged_to else ""
    print(f"report of {len(source.runs)} run(s): {result.html}\n  figures: {drawn}{skipped}{partial}{logged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
