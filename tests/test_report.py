"""`python -m trainer.report` on an MLflow store logged the way the trainer logs it.

The store is written through `trainer.tracking` as the demo sweep writes it (a parent run from
`start_parent_run`, one child per trial from `Tracker` with the trial's resolved realign job as
params, `trial_tags` as tags, the realign recipe's metric names), plus an experiment of single
FLARE-like runs that vary `flare.fusion`. One child is left RUNNING: the sweep is still going.
The real sweep's store is reported on in tests/test_tune.py (slow).
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
import yaml

from trainer import tracking
from trainer.config import JobConfig, TrackingConfig, validate
from trainer.report import ReportError, build_report, find_source, main, trials_of
from trainer.sweep import load_sweep
from trainer.tune import STATE_FILE, trial_job

ROOT = Path(__file__).resolve().parents[1]
POOL = ["deu_Latn", "fra_Latn", "ell_Grek", "rus_Cyrl", "arb_Arab", "zho_Hans", "hin_Deva", "amh_Ethi", "swh_Latn"]
LAYERS = range(5)
FUSIONS = ["add", "mul", "add_relu", "cross_attention"]
FIGURES = {"language_scores", "score_by_size", "retrieval_by_layer", "fusion"}


def realign_metrics(rng: random.Random, languages: list[str], lr: float) -> list[tuple[int, dict[str, float]]]:
    """(step, row) as the realign recipe logs them: retrieval before, after realignment and at the end by layer,
    training rows, then accuracy per language and the means."""
    def retrieval(tag: str, lift: float) -> dict[str, float]:
        layers = {f"retrieval_{tag}_layer{i}": min(1.0, 0.2 + 0.1 * i + lift + rng.uniform(0, 0.05)) for i in LAYERS}
        return {f"retrieval_{tag}": layers[f"retrieval_{tag}_layer{max(LAYERS)}"], **layers}

    accuracy = {f"accuracy_{lang}": min(1.0, 0.4 + (0.15 if lang in languages else 0.0) + lr * 20 + rng.uniform(0, 0.1))
                for lang in POOL}
    return [(0, {"alignment_temperature": 0.1, **retrieval("before", 0.0)}),
            *[(step, {"loss": 2.0 / step, "lr": lr}) for step in (10, 20)],
            (10, retrieval("after", 0.3)),
            (20, retrieval("final", 0.25) | accuracy | {"accuracy_eng_Latn": 0.95, "source_accuracy": 0.95,
                                                         "zero_shot_accuracy": sum(accuracy.values()) / len(accuracy)})]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep over 8 subsets (3 heuristics, sizes 2 and 3, random with 2 seeds) x 2 learning rates, its last
    trial still RUNNING; and an experiment of 8 single FLARE-like runs (4 fusions x 2 seeds)."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    (tmp / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "fake", "job": str(ROOT / "jobs" / "demo_realign.yaml"), "experiment": "fake-sweep",
        "subsets": {"key": "parallel.languages", "select": {"pool": POOL, "heuristics": ["featural_max", "featural_min",
                                                                                        "random"],
                                                            "sizes": [2, 3], "seeds": [1, 2]}},
        "search": {"optim.lr": {"grid": [1e-3, 3e-3]}}, "metric": "zero_shot_accuracy", "mode": "max",
        "output_dir": str(tmp / "sweeps"), "tracking_uri": uri, "overrides": ["checkpoint.every=50"]}))
    sweep = load_sweep(tmp / "sweep.yaml", prepare=False)
    sweep_dir = tmp / "sweeps" / "fake"
    sweep_dir.mkdir(parents=True)
    parent = tracking.start_parent_run(uri, "fake-sweep", "fake", sweep.config.model_dump(mode="json"))
    (sweep_dir / STATE_FILE).write_text(json.dumps({"parent_run_id": parent, "tracking_uri": uri,   # as run_sweep
                                                    "sweep": sweep.config.model_dump(mode="json")}))
    rng = random.Random(0)
    trials = [(subset, lr) for subset in sorted(sweep.subsets) for lr in (1e-3, 3e-3)]
    running = None
    for n, (subset, lr) in enumerate(trials):
        trial_id = f"fake0_{n:05d}"
        raw = trial_job(sweep, {"settings": {"optim.lr": lr}, "subset": subset}, sweep_dir / "trials" / trial_id,
                        parent, f"run_trial_{trial_id}", trial_id)
        job = validate(raw, JobConfig)
        tracker = tracking.Tracker(job.tracking)
        tracker.start(job.model_dump(mode="json"), tags={"recipe": job.recipe})
        rows = realign_metrics(rng, sweep.subsets[subset]["languages"], lr)
        last = n == len(trials) - 1
        for step, row in rows[:2] if last else rows:   # the last trial is still training
            tracker.log_metrics(row, step)
        if last:
            running = tracker
        else:
            tracker.end()
    running_id = running.run_id
    running.end()            # leave no active fluent run to later tests; reopen it as a worker mid-run looks
    mlflow.MlflowClient(tracking_uri=uri).update_run(running_id, status="RUNNING")
    for fusion in FUSIONS:
        for seed in (1, 2):
            cfg = TrackingConfig(uri=uri, experiment="flare-fusions", run_name=f"flare {fusion} seed={seed}")
            tracker = tracking.Tracker(cfg)
            tracker.start({"recipe": "flare", "seed": seed, "flare": {"fusion": fusion},
                           "task": {"source_language": "eng_Latn"}, "output_dir": f"out/{fusion}-{seed}"})
            scores = {f"test_sdev_{lang}": 0.3 + 0.1 * FUSIONS.index(fusion) + rng.uniform(0, 0.05) for lang in POOL}
            tracker.log_metrics({"test_sdev_eng_Latn": 0.9, "source_test": 0.9, **scores,
                                 "target_mean_sdev": sum(scores.values()) / len(scores)}, step=100)
            tracker.end()
    return {"uri": uri, "sweep_dir": sweep_dir, "parent": parent, "running": running_id, "trials": len(trials)}


@pytest.fixture(scope="module")
def sweep_report(store, tmp_path_factory):
    return build_report(find_source(store["sweep_dir"]), tmp_path_factory.mktemp("sweep-report"))


@pytest.fixture(scope="module")
def fusion_report(store, tmp_path_factory):
    return build_report(find_source("flare-fusions", store["uri"]), tmp_path_factory.mktemp("fusion-report"))


def png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, path
    return data


def test_a_sweep_report_draws_each_figure_and_attaches_itself_to_the_parent_run(store, sweep_report):
    report = sweep_report
    assert set(report.figures) == {"language_scores", "score_by_size", "retrieval_by_layer"}
    assert "fusion" in report.skipped["fusion"]                      # the sweep varies no *.fusion key
    for name, figure in report.figures.items():
        png(figure)
        assert report.tables[name].read_text().count("\n") > 2, name
    scores = report.tables["language_scores"].read_text().splitlines()
    assert len(scores) == 1 + store["trials"] * (len(POOL) + 1)    # a row per run, a column per language
    assert sum(line.endswith(",nan") and "[running]" not in line and ",RUNNING," in line for line in scores) == 10
    by_size = report.tables["score_by_size"].read_text()
    assert "random optim.lr=0.001,2," in by_size                     # a line per heuristic and setting, by size
    random_line = next(line for line in by_size.splitlines() if line.startswith("random optim.lr=0.001,2,"))
    assert random_line.endswith(",2")                               # two random subsets (seeds) of size 2
    retrieval = report.tables["retrieval_by_layer"].read_text()
    assert {"before", "after", "final"} <= {line.split(",")[1] for line in retrieval.splitlines()[1:]}
    assert report.partial
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri=store["uri"]).list_artifacts(store["parent"], "report")}
    assert {"report/report.html", "report/trials.csv", "report/language_scores.png"} <= artifacts


def test_the_trials_carry_heuristic_size_subset_and_settings(store):
    trials = trials_of(tracking.read_runs(store["uri"], parent_run_id=store["parent"]))
    assert len(trials) == store["trials"]
    assert {t.heuristic for t in trials} == {"featural_max", "featural_min", "random"}
    assert {t.size for t in trials} == {2, 3}
    assert all(t.settings.keys() == {"optim.lr"} and len(t.languages) == t.size for t in trials)
    assert [t.run_id for t in trials if t.running] == [store["running"]]


def test_a_plain_experiment_varying_fusion_gets_the_fusion_figure(fusion_report):
    report = fusion_report
    assert {"language_scores", "fusion"} <= set(report.figures)
    assert "retrieval_by_layer" in report.skipped and "score_by_size" not in report.figures
    fusion = report.tables["fusion"].read_text().splitlines()
    assert fusion[0] == "flare.fusion,language,mean,std,n"
    assert {line.split(",")[0] for line in fusion[1:]} == set(FUSIONS)
    assert sum(line.split(",")[1] == "mean" for line in fusion[1:]) == len(FUSIONS)
    assert not any(",eng_Latn," in line for line in fusion)       # target languages only
    assert report.logged_to is None and not report.partial           # no parent run to attach to
    trials = report.tables["trials"].read_text().splitlines()
    assert "flare.fusion" in trials[0] and "seed" in trials[0] and "output_dir" not in trials[0]


class PageParser(HTMLParser):
    """What the report page holds: images, headings, table header and rows, scripts."""

    def __init__(self):
        super().__init__()
        self.images, self.headings, self.columns, self.rows, self.scripts = [], [], [], [], 0
        self.ids, self.links, self._in = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr" and "tbody" in self._in:
            self.rows.append(attrs.get("class", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "link" or (tag == "script" and "src" in attrs):
            self.links.append(attrs)
        self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag)]

    def handle_data(self, data):
        if self._in and self._in[-1] == "th":
            self.columns.append(data)
        elif self._in and self._in[-1] == "h2":
            self.headings.append(data)


def test_the_page_is_self_contained_with_every_figure_and_a_sortable_table(store, sweep_report):
    page = PageParser()
    page.feed(sweep_report.html.read_text())
    assert len(page.images) == len(sweep_report.figures) and not page.links    # nothing fetched from elsewhere
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert page.headings[:4] == ["Per-language scores", "Target score by subset size", "Retrieval accuracy by layer",
                                 "Fusion functions"]
    assert {"trial-table", "partial", "language_scores", "trials"} <= page.ids
    assert page.columns[:5] == ["run", "status", "subset", "heuristic", "size"]
    assert {"optim.lr", "zero_shot_accuracy", "retrieval_after"} <= set(page.columns)
    assert len(page.rows) == store["trials"] and page.rows.count("running") == 1
    assert page.scripts == 1 and "addEventListener(\"click\"" in sweep_report.html.read_text()


def test_bad_targets_name_what_would_be_valid(store, tmp_path, capsys):
    from trainer import report

    assert report.STATE_FILE == STATE_FILE                          # the file trainer.tune writes
    with pytest.raises(ReportError, match=r"nope: .*Experiments there: fake-sweep, flare-fusions"):
        find_source("nope", store["uri"])
    with pytest.raises(ReportError, match=f"{tmp_path}: not a sweep directory \\(no {STATE_FILE}"):
        find_source(tmp_path)
    assert main([str(tmp_path / "missing" / "demo")]) == 2
    assert "no such sweep directory" in capsys.readouterr().err


def test_the_command_writes_the_report_where_asked(store, tmp_path, capsys):
    assert main([str(store["sweep_dir"]), "--out", str(tmp_path / "r"), "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "language_scores.png" in out and "partial" in out and "attached" not in out
    assert (tmp_path / "r" / "report.html").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium); the page's structure is checked "
                           "by test_the_page_is_self_contained_with_every_figure_and_a_sortable_table")
def test_headless_chromium_renders_the_page(sweep_report, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "page.png"
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1280,2000", sweep_report.html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05          # not a blank page
    assert len({tuple(p) for p in pixels[::7, ::7].reshape(-1, 3).round(2).tolist()}) > 50   # figures drawn
