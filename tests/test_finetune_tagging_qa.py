"""`finetune` on tagging and extractive QA: tiny models, the generated topic_tags / topic_qa tasks (English
training data, dev and test sets in three languages), the loss falls and the per-language table holds the
task's metric under S-DEV and T-DEV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from trainer.config import load_job
from trainer.run import run_job
from trainer.tiny.text import write_qa_files, write_tagging_files

TARGETS = ["deu_Latn", "ell_Grek"]
LANGUAGES = ["eng_Latn", *TARGETS]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("token_tasks")
    for write, kind in ((write_tagging_files, "tags"), (write_qa_files, "qa")):
        write(root / kind / "train", ["eng_Latn"], 400, seed=0)
        write(root / kind / "dev", LANGUAGES, 30, seed=1)
        write(root / kind / "test", LANGUAGES, 30, seed=2)
    return root


def finetune(data: Path, out: Path, cache: str, kind: str, llm: str, steps: int, **task) -> tuple[dict, list, dict]:
    """Run the job; returns (final metrics, per-step losses, the test table by language)."""
    raw = {"recipe": "finetune", "seed": 0, "output_dir": str(out),
           "model": {"llm": {"name_or_path": f"tiny:{llm}"}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                     "cache_dir": cache},
           "task": {"benchmark": {"tags": "topic_tags", "qa": "topic_qa"}[kind], "target_languages": TARGETS,
                    "files": {split: str(data / kind / folder / "{language}.jsonl")
                              for split, folder in (("train", "train"), ("validation", "dev"), ("test", "test"))},
                    "eval_every": 0.5, **task},
           "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": steps, "micro_batch_size": 16},
           "checkpoint": {"every": 0},
           "tracking": {"uri": f"sqlite:///{out.parent / 'mlflow.db'}", "experiment": "token-tasks"}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    summary = run_job(load_job(path))
    losses = [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    with (out / "eval" / "task_test.csv").open() as f:
        table = {row["language"]: row for row in csv.DictReader(f)}
    return summary["metrics"], losses, table


def falls(losses: list[float], k: int = 5) -> bool:
    return sum(losses[-k:]) / k < 0.6 * sum(losses[:k]) / k


def test_ner_tagging_on_a_tiny_llama_learns_english_and_reports_entity_f1_per_language(data, tmp_path, tiny_cache):
    final, losses, table = finetune(data, tmp_path / "ner", tiny_cache, "tags", "llama", 40, max_length=48)
    assert falls(losses), losses
    assert final["source_test"] > 0.6, final                        # English entity F1 (chance is near 0)
    assert set(table) == {*LANGUAGES, "target_mean"}
    history = [json.loads(line) for line in (tmp_path / "ner" / "eval" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [20, 40]
    best = max(history, key=lambda row: (row["dev_eng_Latn"], -row["step"]))
    for lang in LANGUAGES:
        assert 0.0 <= final[f"test_sdev_{lang}"] <= 1.0
        assert float(table[lang]["s_dev_test"]) == pytest.approx(best[f"test_{lang}"], abs=1e-6)


def test_tagging_on_a_tiny_xlmr_encoder_reports_word_accuracy(data, tmp_path, tiny_cache):
    final, losses, table = finetune(data, tmp_path / "pos", tiny_cache, "tags", "xlmr", 40, max_length=48,
                                    metric="accuracy")
    assert falls(losses, 8), losses
    assert final["source_test"] > 0.5 and set(table) == {*LANGUAGES, "target_mean"}, final


def test_qa_on_a_tiny_llama_lowers_the_span_loss_and_reports_f1_and_exact_match(data, tmp_path, tiny_cache):
    final, losses, table = finetune(data, tmp_path / "qa", tiny_cache, "qa", "llama", 30, max_length=64,
                                    doc_stride=16, max_answer_length=8)
    assert falls(losses), losses
    assert set(table) == {*LANGUAGES, "target_mean"}
    assert {"s_dev_test_em", "t_dev_test_em"} <= set(table["eng_Latn"])
    for lang in LANGUAGES:
        assert 0.0 <= final[f"test_em_sdev_{lang}"] <= final[f"test_sdev_{lang}"] <= 1.0   # EM <= F1
    assert final["source_test"] > 0.1, final                        # picks object phrases (F1 0 at the start)
