"""PNG plots of translation retrieval accuracy (see `trainer.eval.retrieval`).

Figures are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), so nothing
here touches the global pyplot backend or needs a display.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.eval.retrieval import RetrievalResult


def plot_pair_heatmap(result: RetrievalResult, layer: int, path: str | Path, annotate: bool | None = None) -> Path:
    """Heatmap of accuracy at `layer` (a layer label of `result`): rows source, columns target language.

    The diagonal (no retrieval) is left blank. Cell values are written in when `annotate`
    (default: up to 12 languages).
    """
    matrix = result.matrix(layer).numpy()
    n = len(result.languages)
    annotate = n <= 12 if annotate is None else annotate
    size = max(4.0, 0.45 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), result.languages, rotation=90)
    ax.set_yticks(range(n), result.languages)
    ax.set_xlabel("target language")
    ax.set_ylabel("source language")
    mean = result.mean_per_layer()[result.layers.index(layer)]
    ax.set_title(f"Retrieval accuracy, layer {layer} (mean {float(mean):.3f})")
    if annotate:
        for i in range(n):
            for j in range(n):
                if i != j:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] < 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def plot_layer_curve(result: RetrievalResult, path: str | Path) -> Path:
    """Line plot of mean accuracy over all ordered pairs against the layer label."""
    return plot_layer_curves({"": result}, path)


def plot_layer_curves(results: dict[str, RetrievalResult], path: str | Path, title: str | None = None) -> Path:
    """One mean-accuracy-by-layer line per labelled result (e.g. before / after training) in one plot."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for label, result in results.items():
        ax.plot(result.layers, result.mean_per_layer().numpy(), marker="o", label=label)
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("mean retrieval accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    if any(results):  # a single unlabelled curve (plot_layer_curve) needs no legend
        ax.legend()
    n = len(next(iter(results.values())).languages) if results else 0
    ax.set_title(title or f"Translation retrieval over {n} languages")
    return save_figure(fig, path)


def save_retrieval_plots(result: RetrievalResult, out_dir: str | Path, layer: int | None = None,
                         prefix: str = "retrieval") -> dict[str, Path]:
    """Both plots into `out_dir`: `{prefix}_heatmap_layer{L}.png` (default L: best layer) and `{prefix}_layers.png`."""
    out = Path(out_dir)
    layer = result.best_layer() if layer is None else layer
    return {"heatmap": plot_pair_heatmap(result, layer, out / f"{prefix}_heatmap_layer{layer}.png"),
            "layers": plot_layer_curve(result, out / f"{prefix}_layers.png")}


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out `fig` and write it to `path` as PNG (120 dpi), making the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_language_bars(scores: dict[str, dict[str, float]], path: str | Path, ylabel: str,
                       errors: dict[str, dict[str, float]] | None = None, title: str | None = None) -> Path:
    """Grouped bars: one group per language, one bar per series (e.g. {"S-DEV": {lang: score}, "T-DEV": ...});
    `errors`, in the same shape, draws error bars (e.g. the standard deviation over seeds)."""
    series = list(scores)
    languages = list(dict.fromkeys(lang for values in scores.values() for lang in values))
    bars = len(languages) * len(series)
    fig = Figure(figsize=(max(5.0, min(0.6 * bars, 0.25 * bars + 4.0)), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs = [j + i * width for j in range(len(languages))]
        yerr = [errors[name].get(lang, 0.0) for lang in languages] if errors and name in errors else None
        ax.bar(xs, [scores[name].get(lang, float("nan")) for lang in languages], width, label=name, yerr=yerr,
               capsize=2 if yerr else 0)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(languages))], languages, rotation=60, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.0)
    ax.legend(ncol=min(4, len(series)), fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path
