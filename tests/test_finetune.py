"""The finetune recipe (M1's FT and S1+FT) on tiny models and the generated topic task, and its metrics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from data_prep.make_task_data import write_task_data
from trainer.config import load_job
from trainer.eval.metrics import accuracy, macro_f1
from trainer.run import run_job
from trainer.tiny.text import english_documents, write_task_files

TARGETS = ["deu_Latn", "ell_Grek"]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("topic")
    write_task_data(root / "task", TARGETS, n_train=400, n_eval=60, seed=0)
    write_task_files(root / "dev", ["eng_Latn", *TARGETS], 60, seed=2)
    return root


def job_dict(root: Path, out: Path, cache: str, **model) -> dict:
    return {"recipe": "finetune", "seed": 0, "output_dir": str(out),
            "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                      "cache_dir": cache, **model},
            "task": {"benchmark": "topic", "target_languages": TARGETS,
                     "files": {"train": str(root / "task/train/{language}.jsonl"),
                               "validation": str(root / "dev/{language}.jsonl"),
                               "test": str(root / "task/eval/{language}.jsonl"),
                               "translate_test": str(root / "task/eval/eng_Latn.jsonl")},
                     "max_length": 48, "eval_every": 0.25},
            "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 40, "micro_batch_size": 16},
            "checkpoint": {"every": 0},
            "tracking": {"uri": f"sqlite:///{out.parent / 'mlflow.db'}", "experiment": "finetune-test"}}


def run(raw: dict) -> dict:
    path = Path(raw["output_dir"]).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return run_job(load_job(path))


def test_ft_learns_english_and_reports_the_test_table_under_both_selections(task_files, tmp_path, tiny_cache):
    raw = job_dict(task_files, tmp_path / "ft", tiny_cache)
    summary = run(raw)
    final = summary["metrics"]
    assert final["source_test"] > 0.6, final            # chance is 1/3
    with (tmp_path / "ft" / "eval" / "task_test.csv").open() as f:
        table = {row["language"]: row for row in csv.DictReader(f)}
    assert set(table) == {"eng_Latn", *TARGETS, "target_mean"}
    history = [json.loads(line) for line in (tmp_path / "ft" / "eval" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [10, 20, 30, 40]           # every 25% of 40 steps
    # S-DEV: the step with the best English dev score (the earliest on ties), its test scores for every language
    best = max(history, key=lambda row: (row["dev_eng_Latn"], -row["step"]))
    assert final["s_dev_step"] == best["step"] == int(table["eng_Latn"]["s_dev_step"])
    for lang in ["eng_Latn", *TARGETS]:
        assert final[f"test_sdev_{lang}"] == pytest.approx(best[f"test_{lang}"])
        own = max(history, key=lambda row: (row[f"dev_{lang}"], -row["step"]))
        assert final[f"test_tdev_{lang}"] == pytest.approx(own[f"test_{lang}"])
    assert final["target_mean_sdev"] == pytest.approx(sum(best[f"test_{lang}"] for lang in TARGETS) / 2)
    # translate-test: the targets' test sets "translated" (here: the English test set) score like English
    for lang in TARGETS:
        assert final[f"translate_test_sdev_{lang}"] == pytest.approx(best[f"tt_{lang}"])
        assert best[f"tt_{lang}"] == pytest.approx(best["test_eng_Latn"])
    assert table["deu_Latn"]["s_dev_translate_test"] != "" and table["eng_Latn"]["s_dev_translate_test"] == ""
    client = mlflow.MlflowClient(tracking_uri=raw["tracking"]["uri"])
    run_info = client.get_run(summary["run_id"])
    assert run_info.data.metrics["target_mean_tdev"] == pytest.approx(final["target_mean_tdev"])
    assert {"eval/task_test.csv", "eval/task_test.png"} <= {a.path for a in client.list_artifacts(summary["run_id"],
                                                                                                   "eval")}


def test_s1_ft_reads_nllb_tokens_with_each_languages_code(task_files, tmp_path, tiny_cache):
    stage1 = tmp_path / "stage1"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(64, seed=0)))
    run({"recipe": "stage1", "output_dir": str(stage1),
         "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                   "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "cache_dir": tiny_cache},
         "data": {"files": [str(docs)], "max_length": 32}, "optim": {"max_steps": 4, "micro_batch_size": 8},
         "checkpoint": {"every": 0}, "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    raw = job_dict(task_files, tmp_path / "s1ft", tiny_cache, stage1_export=str(stage1 / "export"),
                   encoder={"name_or_path": "tiny:nllb"})
    raw["optim"]["max_steps"] = 8
    summary = run(raw)
    assert {f"test_sdev_{lang}" for lang in ["eng_Latn", *TARGETS]} <= summary["metrics"].keys()
    from safetensors.torch import load_file
    exported = load_file(str(Path(summary["export_dir"]) / "trainable.safetensors"))
    assert any(k.startswith("body.projection.") for k in exported) and "head.weight" in exported

    from transformers import AutoTokenizer

    from trainer.data.benchmarks import TaskExample
    from trainer.data.task import TaskExampleCollator
    from trainer.models.loading import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny:nllb", tiny_cache))
    collate = TaskExampleCollator(tok, 32, set_language=True)
    for lang in ("ell_Grek", "deu_Latn"):
        ids = collate([TaskExample("x", lang, "test", ("Ένα κείμενο",), 0)])["input_ids"][0].tolist()
        assert tok.convert_tokens_to_ids(lang) in ids[:2]             # NLLB's language tag of the text's language
    with pytest.raises(ValueError, match="one language"):
        collate([TaskExample("a", "deu_Latn", "test", ("x",), 0), TaskExample("b", "ell_Grek", "test", ("y",), 0)])


def test_accuracy_and_macro_f1_match_written_out_computations():
    gold = [0, 0, 1, 1, 2, 2, 2, 0]
    pred = [0, 1, 1, 1, 2, 0, 2, 0]
    confusion = torch.zeros(3, 3, dtype=torch.float64)
    for g, p in zip(gold, pred):
        confusion[g, p] += 1
    assert accuracy(confusion) == pytest.approx(sum(g == p for g, p in zip(gold, pred)) / len(gold))
    f1s = []
    for c in range(3):
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert macro_f1(confusion) == pytest.approx(sum(f1s) / 3)
    never = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 0]])     # class 2 never gold nor predicted: not counted
    assert macro_f1(never) == pytest.approx(1.0)


def _confusion(gold: list[int], pred: list[int], classes: int) -> torch.Tensor:
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    for g, p in zip(gold, pred):
        confusion[g, p] += 1
    return confusion


@pytest.mark.parametrize("gold, pred", [
    ([0, 0, 1], [0, 1, 1]),                     # class 2 of 3 in neither: 0.667 (the old mean over 3 classes: 0.444)
    ([0, 1, 2, 2], [0, 1, 1, 2]),               # every class present
    ([0, 0, 0, 1], [0, 0, 2, 1]),               # class 2 predicted, never gold (F1 0, counted)
    ([0, 2, 2, 2], [0, 0, 0, 0]),               # class 2 gold, never predicted (F1 0, counted); class 1 absent
    ([3, 3, 3], [3, 3, 3]),                     # one class of 5 present
    ([1, 4, 4, 1, 0], [4, 4, 1, 1, 2]),         # classes 0, 1, 2, 4 of 5 present, 3 absent
])
def test_macro_f1_is_sklearns_over_the_classes_in_gold_or_prediction(gold, pred):
    from sklearn.metrics import f1_score

    classes = 5
    expected = f1_score(gold, pred, average="macro", zero_division=0)   # sklearn's labels: those in either
    assert macro_f1(_confusion(gold, pred, classes)) == pytest.approx(expected)


def test_macro_f1_with_an_absent_class_by_hand():
    # gold [0, 0, 1], predicted [0, 1, 1], 3 classes: class 0 TP 1 FN 1 -> F1 2/3; class 1 TP 1 FP 1 -> 2/3;
    # class 2 neither gold nor predicted: left out, so (2/3 + 2/3) / 2, not (2/3 + 2/3 + 0) / 3 = 0.444
    assert macro_f1(_confusion([0, 0, 1], [0, 1, 1], 3)) == pytest.approx(2 / 3)
    assert math.isnan(macro_f1(torch.zeros(3, 3)))                 # nothing scored
