"""`realign` (M3) on a benchmark: realignment on translation pairs, then a token-classification head on the
generated topic_tags task (English), scored per language with finetune's dev/test evaluation; the study's
benchmark combinations validate and impossible ones fail naming the key."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import yaml

from alignment_helpers import final_metrics, run_inprocess, write_job
from data_prep.make_parallel_data import write_parallel_data
from trainer.config import ConfigError, RealignTaskConfig, TaskDataConfig, load_job
from trainer.tiny.text import write_tagging_files
from trainer.train import main

SUBSET = ["deu_Latn", "ell_Grek"]    # realigned and evaluated
EXTRA = ["rus_Cyrl"]                 # scored as a second benchmark (task.also_evaluate)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("realign-tags")
    write_parallel_data(root / "pairs", [(lang, 300) for lang in SUBSET], seed=0)
    write_parallel_data(root / "multiway", [(lang, 40) for lang in SUBSET], seed=1)
    write_tagging_files(root / "train", ["eng_Latn"], 400, seed=2)
    for split, seed in (("dev", 3), ("test", 4)):
        write_tagging_files(root / split, ["eng_Latn", *SUBSET, *EXTRA], 30, seed=seed)
    return root


def tagging_job(data: Path, out: Path, cache: str, **task) -> dict:
    files = {split: str(data / folder / "{language}.jsonl")
             for split, folder in (("train", "train"), ("validation", "dev"), ("test", "test"))}
    return {
        "recipe": "realign", "seed": 0, "output_dir": str(out),
        "model": {"llm": {"name_or_path": "tiny:xlmr"}, "finetune": "full", "cache_dir": cache},
        "parallel": {"files": [str(data / "pairs")], "languages": SUBSET},
        "task": {"benchmark": "topic_tags", "target_languages": SUBSET, "files": files, "max_length": 40,
                 "also_evaluate": [{"benchmark": "topic_tags", "target_languages": EXTRA,
                                    "files": {k: v for k, v in files.items() if k != "train"}}], **task},
        "alignment": {"batch_size": 16, "max_length": 40, "steps": 10},
        "eval": {"retrieval": {"files": [str(data / "multiway")], "languages": SUBSET}, "retrieval_sentences": 40},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 40, "micro_batch_size": 16},
        "checkpoint": {"every": 0},
        "tracking": {"uri": f"sqlite:///{out.parent / 'mlflow.db'}", "experiment": "realign-tags", "log_every": 10},
    }


def test_realign_on_a_tagging_benchmark_reports_entity_f1_per_language(data, tmp_path, tiny_cache):
    raw = tagging_job(data, tmp_path / "ner", tiny_cache)
    summary, final = run_inprocess(raw)
    languages = ["eng_Latn", *SUBSET, *(f"topic_tags_{lang}" for lang in EXTRA)]
    assert final["source_entity_f1"] == final["source_test"] > 0.5, final   # English entities learned (chance ~0)
    targets = [final[f"test_sdev_{lang}"] for lang in SUBSET]
    assert final["zero_shot_entity_f1"] == pytest.approx(sum(targets) / len(targets))   # the sweep metric
    assert final["zero_shot_entity_f1_topic_tags"] == pytest.approx(final["test_sdev_topic_tags_rus_Cyrl"])
    assert final["retrieval_after"] > final["retrieval_before"], final
    with (tmp_path / "ner" / "eval" / "task_test.csv").open() as f:
        table = {row["language"]: row for row in csv.DictReader(f)}
    assert set(table) == {*languages, "target_mean"}
    assert float(table["target_mean"]["s_dev_test"]) == pytest.approx(final["zero_shot_entity_f1"], abs=1e-6)
    run = mlflow.MlflowClient(tracking_uri=raw["tracking"]["uri"]).get_run(summary["run_id"])
    for key in ("zero_shot_entity_f1", "source_entity_f1", "retrieval_final", *(f"test_sdev_{x}" for x in languages)):
        assert run.data.metrics[key] == pytest.approx(final[key]), key


def test_realign_on_a_tagging_benchmark_reports_word_accuracy(data, tmp_path, tiny_cache):
    raw = tagging_job(data, tmp_path / "pos", tiny_cache, metric="accuracy", also_evaluate=[], eval_every=0.5)
    run_inprocess(raw)
    final = final_metrics(tmp_path / "pos")
    assert final["source_accuracy"] > 0.5 and 0 <= final["zero_shot_accuracy"] <= 1, final
    history = (tmp_path / "pos" / "eval" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2   # every half of the steps


@pytest.mark.parametrize("task, key", [
    ({"benchmark": "tydiqa"}, "task.benchmark"),                                     # QA: no span head in realign
    ({"benchmark": "udpo"}, "task.benchmark"),                                       # unknown, with a suggestion
    ({"benchmark": "udpos", "also_evaluate": [{"benchmark": "xnli", "target_languages": ["de"]}]},
     "task.also_evaluate.0.benchmark"),                                              # another kind of task
    ({"benchmark": "wikiann", "also_evaluate": [{"benchmark": "masakhaner", "target_languages": ["yor"]}]},
     "task.also_evaluate.0.benchmark"),                                              # DATE not read as O
    ({"benchmark": "udpos", "train_files": ["x.jsonl"]}, "task.train_files"),        # the two forms mixed
    ({"train_files": ["x.jsonl"], "target_languages": ["de"]}, "task.target_languages"),
])
def test_an_impossible_task_fails_naming_the_key(task, key, data, tmp_path, tiny_cache, capsys):
    raw = tagging_job(data, tmp_path / "bad", tiny_cache)
    raw["task"] = task
    assert main([str(write_job(raw, tmp_path / "job.yaml"))]) == 2
    err = capsys.readouterr().err
    assert f"{key}:" in err and "RealignTaskConfig" not in err, err


def test_the_study_s_settings_validate_and_files_keep_their_schema(data, tmp_path, tiny_cache):
    raw = tagging_job(data, tmp_path / "ok", tiny_cache)
    raw["task"] = {"benchmark": "wikiann", "target_languages": ["de"], "entity_types_as_o": ["DATE"],
                   "also_evaluate": [{"benchmark": "masakhaner", "target_languages": ["yor", "hau"]}]}
    job = load_job(write_job(raw, tmp_path / "ner.yaml"))
    assert isinstance(job.task, RealignTaskConfig) and job.task.eval_every == 0
    assert job.task.resolved_metric == "entity_f1"
    again = load_job(write_job(yaml.safe_load(job.to_yaml()), tmp_path / "again.yaml"))   # the resolved config
    assert again.task == job.task
    raw["task"] = {"train_files": ["x.jsonl"]}
    assert isinstance(load_job(write_job(raw, tmp_path / "files.yaml")).task, TaskDataConfig)
    with pytest.raises(ConfigError, match="task.train_files"):
        load_job(write_job({k: v for k, v in raw.items() if k != "task"}, tmp_path / "none.yaml"))
