"""FLARE (M4) on extractive QA: the two-view window collator, the fused span head at B = 0, a tiny run's
per-language EM/F1, and the method/task combinations the schema refuses."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from test_flare import untrained_export
from trainer.config import ConfigError, FlareModelConfig, TaskModelConfig, load_job
from trainer.data.benchmarks import TaskExample
from trainer.data.qa import QACollator
from trainer.data.translated_pairs import FlareQACollator, TranslatedPair, source_windows
from trainer.eval.qa import answer_text
from trainer.models.flare import build_flare_model
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.run import run_job
from trainer.tiny.text import synthetic_qa, write_qa_files

TARGETS = ["deu_Latn", "ell_Grek"]


def qa_example(language: str, row: int = 0) -> TaskExample:
    """Row `row` of the generated QA task with six-sentence contexts (the same example in every language)."""
    r = synthetic_qa(language, 3, seed=5, sentences_per_context=6)[row]
    return TaskExample(f"topic_qa/{language}/train/{r['id']}", language, "train", (r["context"], r["question"]), -1,
                       answers=((r["answers"]["text"][0], r["answers"]["answer_start"][0]),))


@pytest.fixture(scope="module")
def tok(tiny_cache):
    return load_llm_tokenizer(TaskModelConfig(llm={"name_or_path": "tiny:llama"}).llm, tiny_cache)


def test_source_window_of_each_target_window_by_hand():
    # example 0: 3 target windows, 2 English -> 0, round(0.5) = 0, 1; example 1: 1 target window -> its only one
    assert source_windows(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1])).tolist() == [0, 0, 1, 2]
    # example 0: 2 target windows, 3 English -> the first and the last
    assert source_windows(torch.tensor([0, 0]), torch.tensor([0, 0, 0])).tolist() == [0, 2]


def test_collator_gives_each_target_window_its_english_view_and_the_targets_answer_positions(tok, tiny_cache):
    target, english = qa_example("deu_Latn"), qa_example("eng_Latn")   # 146 and 46 tokens: 12 and 3 windows
    windows = QACollator(tok, max_length=32, stride=8, padding="max_length")
    batch = FlareQACollator(windows, "fusion", tok)([TranslatedPair(target, english)])
    alone = QACollator(tok, max_length=32, stride=8)([target])           # what finetune's collator gives the target
    n = batch["input_ids"].shape[0]
    assert n == alone["input_ids"].shape[0] == 12 and batch["input_ids"].shape == batch["source_ids"].shape == (n, 32)
    (context, question), (answer, start) = target.texts, target.answers[0]
    starts, ends = batch["start_positions"].tolist(), batch["end_positions"].tolist()
    assert starts == alone["start_positions"].tolist() and [w for w in range(n) if starts[w] >= 0] == [7]
    assert answer_text(context, batch["offsets"][7], starts[7], ends[7]) == answer == "xd gépeä èsñ"
    assert tok.decode(batch["input_ids"][7, starts[7]:ends[7] + 1]).strip() == answer   # the target's own tokens
    in_context = lambda w: [t for t in range(32) if batch["context_mask"][w, t]]  # noqa: E731
    crossing = [w for w in range(n) if w != 7 and any(batch["offsets"][w, t, 0] <= start < batch["offsets"][w, t, 1]
                                                      for t in in_context(w))]
    assert crossing and all(batch["offsets"][w, in_context(w)[-1], 1] < start + len(answer) for w in crossing)
    # the English side: windowed alike (3 windows); target window k of 12 reads English window round(2k / 11)
    english_windows = QACollator(tok, 32, 8, targets=False, padding="max_length")([english])
    assert english_windows["input_ids"].shape[0] == 3
    chosen = [0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2]
    assert [round(2 * k / 11) for k in range(12)] == chosen
    for k in range(n):
        assert batch["source_ids"][k].tolist() == english_windows["input_ids"][chosen[k]].tolist()
        assert batch["source_mask"][k].tolist() == english_windows["attention_mask"][chosen[k]].tolist()
    assert english.texts[1] in tok.decode(batch["source_ids"][0][batch["source_mask"][0].bool()])
    # FLARE-MT: each window's own text (question, then the window's context) in NLLB tokens, the target's code
    nllb = load_nllb_tokenizer(FlareModelConfig(task_export="x").encoder, tiny_cache)
    mt = FlareQACollator(windows, "fusion_mt", tok, nllb)([TranslatedPair(target, english)])
    assert mt["source_ids"].shape == (n, 32) and (mt["source_ids"] == nllb.convert_tokens_to_ids("deu_Latn")).sum() == n
    nllb.src_lang = "deu_Latn"
    last = in_context(n - 1)
    text = context[int(batch["offsets"][n - 1, last[0], 0]):int(batch["offsets"][n - 1, last[-1], 1])]
    expected = nllb(question, text, truncation="only_second", max_length=32)["input_ids"]
    assert mt["source_ids"][-1][mt["source_mask"][-1].bool()].tolist() == expected


@pytest.fixture(scope="module")
def qa_export(tmp_path_factory, tiny_cache):
    """An English QA FT export (LoRA with B != 0, a span head), untrained, and the English model itself."""
    return untrained_export(tmp_path_factory.mktemp("english_qa") / "export", tiny_cache, "qa", 0)


def test_b_zero_gives_the_english_models_start_and_end_logits(qa_export, tok, tiny_cache):
    export, cfg, english = qa_export
    pair = TranslatedPair(qa_example("deu_Latn"), qa_example("eng_Latn"))
    nllb = load_nllb_tokenizer(FlareModelConfig(task_export="x").encoder, tiny_cache)
    windows = QACollator(tok, max_length=32, stride=8, targets=False, padding="max_length")
    for method, fusion in [("fusion", "add_relu"), ("fusion", "cross_attention"), ("fusion_mt", "add")]:
        flare_cfg = FlareModelConfig(llm={"name_or_path": "tiny:llama"}, task_export=str(export), cache_dir=tiny_cache,
                                     lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
        torch.manual_seed(0)
        model = build_flare_model(flare_cfg, cfg, method, fusion, "target", "input", "qa", 0).eval()
        batch = FlareQACollator(windows, method, tok, nllb)([pair])
        with torch.no_grad():
            out = model(**batch)
            expected = english(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert out.start_logits.shape == batch["input_ids"].shape
        torch.testing.assert_close(out.start_logits, expected.start_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.end_logits, expected.end_logits, rtol=1e-5, atol=1e-5)


def flare_qa_job(root, export, tiny_cache, **change) -> dict:
    files = {split: str(root / split / "{language}.jsonl") for split in ("train", "validation", "test")}
    return {"recipe": "flare", "seed": 0, "output_dir": str(root / "out"), "checkpoint": {"every": 0},
            "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "flare-qa-test"},
            "model": {"llm": {"name_or_path": "tiny:llama"}, "task_export": str(export), "cache_dir": tiny_cache,
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
            "flare": change.pop("flare", {"method": "fusion", "fusion": "add_relu"}),
            "task": {"benchmark": "topic_qa", "target_languages": TARGETS, "max_length": 40, "doc_stride": 12,
                     "max_answer_length": 8, "eval_every": 0, "max_eval_examples": 6, "eval_batch_size": 6,
                     "files": {**files, "translate_train": str(root / "translated" / "{language}.jsonl")}},
            "optim": {"lr": 3e-3, "warmup_steps": 0, "max_steps": 3, "micro_batch_size": 4}, **change}


def write(raw: dict, path):
    path.write_text(yaml.safe_dump(raw))
    return load_job(path)


def test_a_tiny_flare_qa_run_trains_and_reports_em_and_f1_per_language(qa_export, tiny_cache, tmp_path):
    export, _, _ = qa_export
    write_qa_files(tmp_path / "train", ["eng_Latn"], 24, seed=0)
    write_qa_files(tmp_path / "translated", TARGETS, 24, seed=0)     # the English train set in each target
    write_qa_files(tmp_path / "validation", ["eng_Latn", *TARGETS], 6, seed=1)
    write_qa_files(tmp_path / "test", ["eng_Latn", *TARGETS], 6, seed=2)
    final = run_job(write(flare_qa_job(tmp_path, export, tiny_cache), tmp_path / "job.yaml"))["metrics"]
    for lang in ["eng_Latn", *TARGETS]:
        assert {f"test_sdev_{lang}", f"test_em_sdev_{lang}", f"test_em_tdev_{lang}"} <= final.keys()
        assert 0.0 <= final[f"test_em_sdev_{lang}"] <= final[f"test_sdev_{lang}"] <= 1.0   # EM <= F1
    rows = [json.loads(line) for line in (tmp_path / "out" / "eval" / "history.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and {"dev_em_deu_Latn", "test_em_ell_Grek"} <= rows[-1].keys()
    with (tmp_path / "out" / "eval" / "task_test.csv").open() as f:
        table = {row["language"]: row for row in csv.DictReader(f)}
    assert set(table) == {"eng_Latn", *TARGETS, "target_mean"} and "s_dev_test_em" in table["deu_Latn"]
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
             if "loss" in line]
    assert len(steps) == 3 and all(row["loss"] > 0 for row in steps) and "grad_norm" in steps[-1]


@pytest.mark.parametrize("change, key", [
    ({"flare": {"method": "input_fusion"}}, "flare.method"),
    ({"task": {"benchmark": "tydiqa", "target_languages": ["swh_Latn"], "files": {}}}, "task.files.translate_train"),
    ({"task": {"benchmark": "tydiqa", "target_languages": ["swh_Latn"],
               "files": {"translate_train": "tt/{language}.jsonl", "translate_test": "te/{language}.jsonl"}}},
     "task.files.translate_validation"),
])
def test_a_refused_qa_combination_names_the_key(change, key, tmp_path, tiny_cache):
    raw = flare_qa_job(tmp_path, tmp_path / "export", tiny_cache)
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        write(raw, tmp_path / "bad.yaml")
    tydiqa = {**raw["task"], "benchmark": "tydiqa", "target_languages": ["swh_Latn"], "files": {}}
    write({**raw, "flare": {"method": "translate_train"}, "task": tydiqa}, tmp_path / "ok.yaml")   # no English needed
