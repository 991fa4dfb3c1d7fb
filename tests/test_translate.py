"""data_prep.translate: NLLB translate-test / translate-train of task data, resumable, with span projection,
language fallbacks and a Ray Data mode; its translate-test files feed the finetune evaluation.

The translator is a tiny M2M100 (the tiny NLLB tokenizer, d=64) trained for a few seconds to memorise
the translation of a small topic test set (the generated German and Greek sentences -> their English
originals) and of a few QA contexts with marked answers; so every output is known in advance.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.make_task_data import write_task_data
from data_prep.span_projection import Span, mark_span, recover_span, span_problem
from data_prep.translate import main, parse_args, run
from trainer.data.benchmark_files import benchmark_rows, native_id
from trainer.data.benchmarks import load_benchmark
from trainer.languages.nllb import FALLBACKS, nllb_language
from trainer.languages.table import UnknownLanguageError, language_table
from trainer.tiny.text import concept_sentences, lexicon, render, synthetic_task, write_task_files

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"
TARGETS = ["deu_Latn", "ell_Grek"]
N_EVAL = 12          # test examples per language (write_task_data: eval seed = seed + 1)
PARENS = ("(", ")")  # QA markers the tiny tokenizer knows (it has no square brackets)


def qa_cases() -> list[dict]:
    """QA records over German test sentences, and the (memorised) English output of each marked context."""
    concepts = concept_sentences(N_EVAL, seed=1)
    cases = []
    for i, kind in enumerate(["ok", "lost", "duplicated"]):
        context = render(concepts[i], "deu_Latn")
        german_verb, verb = lexicon("deu_Latn")[concepts[i][1]], concepts[i][1]
        english = render(concepts[i], "eng_Latn")
        assert context.count(german_verb) == 1 and english.count(verb) == 1
        output = {"ok": english.replace(verb, f"({verb})"), "lost": english,
                  "duplicated": "(" + english.replace(" ", ") ", 1).replace(verb, f"({verb})")}[kind]
        cases.append({"kind": kind, "record": {
            "id": f"q{i}", "title": "topic", "context": context, "question": render(concepts[i + 3], "deu_Latn"),
            "answers": {"text": [german_verb], "answer_start": [context.index(german_verb)]}},
            "marked": mark_span(context, context.index(german_verb), german_verb, PARENS), "output": output,
            "verb": verb, "english": english})
    return cases


def training_pairs() -> list[tuple[str, str, str]]:
    """(source language, source text, English output) the translator memorises."""
    english = [r["text"] for r in synthetic_task("eng_Latn", N_EVAL, 1)]
    pairs = [(lang, r["text"], e) for lang in TARGETS for r, e in zip(synthetic_task(lang, N_EVAL, 1), english)]
    return pairs + [("deu_Latn", c["marked"], c["output"]) for c in qa_cases()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def translator(tiny_path, tmp_path_factory) -> str:
    """A tiny M2M100 trained to translate `training_pairs` exactly (checked), saved with the tiny NLLB tokenizer."""
    from transformers import AutoTokenizer, M2M100Config, M2M100ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_path("nllb"))
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tok), d_model=64, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                          decoder_ffn_dim=128, max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
                          activation_dropout=0.0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                          scale_embedding=True)
    model = M2M100ForConditionalGeneration(config)
    sources, labels = [], []
    for lang, text, english in training_pairs():
        tok.src_lang = lang
        sources.append(tok(text)["input_ids"])
        tok.src_lang = "eng_Latn"                       # labels: eng_Latn tag, tokens, </s>
        labels.append(tok(english)["input_ids"])
    width, label_width = max(map(len, sources)), max(map(len, labels))
    input_ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in sources])
    label_ids = torch.tensor([lab + [-100] * (label_width - len(lab)) for lab in labels])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 150)
    for _ in range(150):                                  # about 3 s on one core
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tok.pad_token_id).long(), labels=label_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    out = tmp_path_factory.mktemp("memorising-nllb")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translate-task")
    write_task_data(root / "task", TARGETS, n_train=300, n_eval=N_EVAL, seed=0)
    write_task_files(root / "dev", ["eng_Latn", *TARGETS], 24, seed=2)
    return root


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def translate_test_args(task_dir: Path, model: str, out: Path, *extra: str) -> list[str]:
    return ["--direction", "test", "--benchmark", "topic", "--split", "test", "--languages", *TARGETS,
            "--files", str(task_dir / "task/eval/{language}.jsonl"), "--model", model, "--out", str(out),
            "--batch-size", "5", "--threads", "1", *extra]


def translate_test(task_dir: Path, model: str, out: Path, *extra: str) -> dict:
    """The topic test sets of TARGETS into English, in process; returns the manifest."""
    return run(parse_args(translate_test_args(task_dir, model, out, *extra)))


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, and the manifest without its run facts (time, resumed batches)."""
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("run")
    files = {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}
    return {**files, "manifest": json.dumps(manifest, sort_keys=True).encode()}


# --- end to end ----------------------------------------------------------------------------------------------

def test_translate_test_runs_end_to_end_keeps_ids_and_languages_and_equals_generate(translator, task_dir, tmp_path,
                                                                                    capsys):
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    out = tmp_path / "tt"
    manifest = translate_test(task_dir, translator, out)
    english = [r["text"] for r in synthetic_task("eng_Latn", N_EVAL, 1)]
    tok = AutoTokenizer.from_pretrained(translator)
    model = M2M100ForConditionalGeneration.from_pretrained(translator).eval()
    for lang in TARGETS:
        original = load_benchmark("topic", lang, "test", files=[str(task_dir / f"task/eval/{lang}.jsonl")])
        rows = read_rows(out / f"{lang}.jsonl")
        # the memorised translations, row for row: ids, labels and languages kept
        assert [r["text"] for r in rows] == english
        assert [r["translation"]["id"] for r in rows] == [e.id for e in original]
        assert [r["label"] for r in rows] == [e.label for e in original]
        assert {(r["translation"]["source_language"], r["translation"]["language"]) for r in rows} == \
            {(lang, "eng_Latn")}
        # read back by the benchmark adapter (what task.files.translate_test does): the same own ids
        back = load_benchmark("topic", lang, "translate_test", files=[str(out / f"{lang}.jsonl")])
        assert [native_id(e) for e in back] == [native_id(e) for e in original]
        # greedy output of the batched CLI == generate called directly on each sentence alone
        for example, row in list(zip(original, rows))[:4]:
            tok.src_lang = lang
            ids = model.generate(**tok([example.texts[0]], return_tensors="pt"), num_beams=1, do_sample=False,
                                 forced_bos_token_id=tok.convert_tokens_to_ids("eng_Latn"), max_new_tokens=64)
            assert tok.batch_decode(ids, skip_special_tokens=True)[0] == row["text"]
        info = manifest["languages"][lang]
        assert info | {"sha256": None} == {
            "file": f"{lang}.jsonl", "sha256": None, "examples": N_EVAL, "rows": N_EVAL, "dropped": {},
            "segments": N_EVAL, "batches": 3, "truncated": 0, "source_language": lang, "target_language": "eng_Latn",
            "nllb_source": lang, "nllb_target": "eng_Latn"}
        from trainer.fsutil import sha256_file
        assert info["sha256"] == sha256_file(out / f"{lang}.jsonl")
    assert manifest["job"]["model"] == translator and manifest["job"]["decoding"]["beams"] == 1
    assert manifest["fallbacks"] == {} and not (out / ".work").exists()
    # a finished job is not run again; another job in the same folder is refused
    before = outputs(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(translate_test_args(task_dir, translator, out)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert outputs(out) == before and {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert main(translate_test_args(task_dir, translator, out, "--beams", "2")) == 2
    assert "another translation job" in capsys.readouterr().err


def test_translate_train_covers_pairs_single_texts_and_multiple_choice(tiny_path, tmp_path):
    """English -> German over an NLI, a sentiment and a multiple-choice fixture (random tiny NLLB, beam search):
    every text and option is replaced, labels and ids kept, and the adapter reads the output back. (The XNLI
    fixture stands in for English XNLI: what is read is its format; MNLI itself knows only English.)"""
    cases = [("xnli", "xnli_de_validation.jsonl", "deu_Latn"), ("nusax_senti", "nusax_eng_train.jsonl", "jav_Latn"),
             ("belebele", "belebele_eng_Latn.jsonl", "deu_Latn")]
    for benchmark, fixture, lang in cases:
        out = tmp_path / benchmark
        manifest = run(parse_args(["--direction", "train", "--benchmark", benchmark, "--split", "train",
                                   "--languages", lang, "--files", str(FIXTURES / fixture), "--model",
                                   tiny_path("nllb"), "--out", str(out), "--max-new-tokens", "4", "--beams", "2"]))
        english = load_benchmark(benchmark, "eng_Latn", "train", files=[str(FIXTURES / fixture)])
        translated = load_benchmark(benchmark, lang, "train", files=[str(out / f"{lang}.jsonl")])
        assert [native_id(e) for e in translated] == [native_id(e) for e in english]
        assert [e.label for e in translated] == [e.label for e in english]
        for en, tr in zip(english, translated):
            assert len(tr.texts) == len(en.texts) and len(tr.choices) == len(en.choices)
            assert tr.texts != en.texts and (not en.choices or tr.choices != en.choices)
        rows = read_rows(out / f"{lang}.jsonl")
        assert [r["translation"]["id"] for r in rows] == [e.id for e in english]
        unique = {t for e in english for t in (*e.texts, *e.choices)}
        info = manifest["languages"][lang]
        assert info["segments"] == len(unique) and info["target_language"] == lang   # each text translated once
        assert manifest["job"]["decoding"]["beams"] == 2


# --- kill and resume -----------------------------------------------------------------------------------------

def test_a_crash_while_writing_a_batch_resumes_to_the_uninterrupted_output(translator, task_dir, tmp_path,
                                                                           monkeypatch):
    from trainer import faults

    whole = tmp_path / "whole"
    translate_test(task_dir, translator, whole)
    out = tmp_path / "crashed"

    def crash(point: str, count: int) -> None:
        if (point, count) == ("in_batch", 4):
            raise KeyboardInterrupt("crash with half a line on disk")

    monkeypatch.setattr(faults, "maybe_kill", crash)
    with pytest.raises(KeyboardInterrupt):
        translate_test(task_dir, translator, out)
    monkeypatch.undo()
    parts = out / ".work" / "ell_Grek.jsonl"     # deu_Latn: batches 1-3 done; ell_Grek: its first, cut
    assert not parts.read_bytes().endswith(b"\n") and not (out / "manifest.json").exists()
    assert len((out / ".work" / "deu_Latn.jsonl").read_text().splitlines()) == 3
    manifest = translate_test(task_dir, translator, out)
    assert manifest["run"]["batches_resumed"] == 3 and manifest["run"]["batches_translated"] == 3
    assert outputs(out) == outputs(whole)
    for lang in TARGETS:
        ids = [r["translation"]["id"] for r in read_rows(out / f"{lang}.jsonl")]
        assert len(ids) == len(set(ids)) == N_EVAL


@pytest.mark.slow
def test_sigkill_after_a_batch_then_resume_equals_the_uninterrupted_run(translator, task_dir, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "killed"
    translate_test(task_dir, translator, whole)
    env = {**os.environ, "TRAINER_FAULT": "after_batch:2", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-m", "data_prep.translate",
                             *translate_test_args(task_dir, translator, out)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    lines = (out / ".work" / "deu_Latn.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in lines] == [0, 1]
    manifest = translate_test(task_dir, translator, out)
    assert manifest["run"]["batches_resumed"] == 2
    assert outputs(out) == outputs(whole)


# --- span projection -----------------------------------------------------------------------------------------

def test_markers_are_recovered_from_hand_made_translations():
    context = "He lives in Paris now."
    marked = mark_span(context, 12, "Paris")
    assert marked == "He lives in [Paris] now."
    assert recover_span(marked) == Span(context, 12, "Paris")                       # an unchanged "translation"
    cases = {
        "Il habite à [Paris] maintenant.": Span("Il habite à Paris maintenant.", 12, "Paris"),
        "[Paris] est sa ville.": Span("Paris est sa ville.", 0, "Paris"),
        "Er wohnt jetzt in [ Paris ] .": Span("Er wohnt jetzt in Paris .", 18, "Paris"),
        "Er wohnt in [der Stadt Paris].": Span("Er wohnt in der Stadt Paris.", 12, "der Stadt Paris"),
        "Vive en[ París]ahora.": Span("Vive en Parísahora.", 8, "París"),
    }
    for translation, span in cases.items():
        got = recover_span(translation)
        assert got == span, translation
        assert got.context[got.start:got.start + len(got.text)] == got.text
    broken = {"Il habite à Paris maintenant.": "lost", "Il habite à [Paris maintenant.": "lost",
              "Il habite à Paris] maintenant.": "lost", "[Il] habite à [Paris].": "duplicated",
              "Il habite à [[Paris]].": "duplicated", "Il habite à ]Paris[ maintenant.": "reversed",
              "Il habite à [ ] Paris.": "empty"}
    for translation, problem in broken.items():
        assert span_problem(translation) == problem and recover_span(translation) is None, translation
    assert recover_span("a (b) c", PARENS) == Span("a b c", 2, "b")
    with pytest.raises(ValueError, match="not at character"):
        mark_span(context, 3, "Paris")
    with pytest.raises(ValueError, match="already holds a marker"):
        mark_span("see [1] in Paris", 11, "Paris")


def test_qa_spans_are_projected_and_lost_or_doubled_markers_dropped_and_counted(translator, tmp_path):
    cases = qa_cases()
    unanswerable = {"id": "q9", "title": "topic", "context": synthetic_task("deu_Latn", N_EVAL, 1)[5]["text"],
                    "question": cases[0]["record"]["question"], "answers": {"text": [], "answer_start": []}}
    misplaced = {**cases[0]["record"], "id": "q10", "answers": {"text": ["nicht"], "answer_start": [0]}}
    source = tmp_path / "xquad_deu_Latn.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                              for r in [c["record"] for c in cases] + [unanswerable, misplaced]))
    out = tmp_path / "qa"
    manifest = run(parse_args(["--direction", "test", "--benchmark", "squad", "--split", "test", "--languages",
                               "deu_Latn", "--files", str(source), "--model", translator, "--out", str(out),
                               "--markers", *PARENS]))
    info = manifest["languages"]["deu_Latn"]
    assert info["examples"] == 5 and info["rows"] == 2
    assert info["dropped"] == {"duplicated": 1, "lost": 1, "unmarkable": 1}
    ok, empty = read_rows(out / "deu_Latn.jsonl")
    english = cases[0]["english"]
    assert ok["context"] == english and ok["answers"]["text"] == [cases[0]["verb"]]
    assert english[ok["answers"]["answer_start"][0]:].startswith(cases[0]["verb"])
    assert ok["question"] == render(concept_sentences(N_EVAL, 1)[3], "eng_Latn") and ok["title"] == "topic"
    assert ok["translation"] == {"id": "squad/deu_Latn/test/q0", "source_language": "deu_Latn",
                                 "language": "eng_Latn"}
    assert empty["id"] == "q9" and empty["answers"] == {"text": [], "answer_start": []}
    assert empty["context"] == synthetic_task("eng_Latn", N_EVAL, 1)[5]["text"]


# --- languages -----------------------------------------------------------------------------------------------

def test_unknown_language_names_close_codes_and_a_fallback_is_listed_in_the_manifest(tiny_path, task_dir, tmp_path,
                                                                                    capsys):
    table = language_table()
    assert all(nllb in table and code not in table for code, (nllb, _) in FALLBACKS.items())
    documented = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| `(\w+)` \|", (ROOT / "docs/translation.md").read_text(),
                                 re.MULTILINE))
    assert documented == {code: nllb for code, (nllb, _) in FALLBACKS.items()}      # the documented table
    with pytest.raises(UnknownLanguageError, match="deu_Latn"):
        nllb_language("deu_Latm")
    assert nllb_language("de").nllb == "deu_Latn" and nllb_language("mad_Latn").nllb == "jav_Latn"
    args = ["--direction", "test", "--benchmark", "topic", "--split", "test", "--languages", "ell_Grk",
            "--files", str(task_dir / "task/eval/{language}.jsonl"), "--model", tiny_path("nllb"),
            "--out", str(tmp_path / "bad")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'ell_Grk'" in err and "ell_Grek (Greek)" in err and not (tmp_path / "bad").exists()
    out = tmp_path / "fallback"
    manifest = run(parse_args(["--direction", "train", "--benchmark", "nusax_senti", "--split", "train",
                               "--languages", "mad_Latn", "ind_Latn", "--files",
                               str(FIXTURES / "nusax_eng_train.jsonl"), "--model", tiny_path("nllb"),
                               "--out", str(out), "--max-new-tokens", "3"]))
    assert manifest["fallbacks"] == {"mad_Latn": {"nllb": "jav_Latn", "reason": FALLBACKS["mad_Latn"][1]}}
    assert manifest["languages"]["mad_Latn"]["nllb_target"] == "jav_Latn"
    assert manifest["languages"]["ind_Latn"]["nllb_target"] == "ind_Latn"


def test_benchmark_rows_round_trip_through_every_adapter(tmp_path):
    cases = [("mnli", "en", "train", "mnli_train.jsonl"), ("xnli", "de", "validation", "xnli_de_validation.jsonl"),
             ("americasnli", "quy", "test", "americasnli_quy_test.jsonl"),
             ("kardes_nli", "kk", "validation", "xnli.dev.kk.csv"),
             ("nusax_senti", "ace", "train", "nusax_ace_train.csv"),
             ("belebele", "eng_Latn", "test", "belebele_eng_Latn.jsonl"), ("race", "en", "train", "race_train.jsonl")]
    for benchmark, code, split, fixture in cases:
        examples = load_benchmark(benchmark, code, split, files=[str(FIXTURES / fixture)])
        out = tmp_path / f"{benchmark}.jsonl"
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in benchmark_rows(benchmark, examples)))
        assert load_benchmark(benchmark, code, split, files=[str(out)]) == examples, benchmark
    from trainer.errors import DataError

    with pytest.raises(DataError, match="row numbers"):
        benchmark_rows("xnli", load_benchmark("xnli", "de", "validation",
                                              files=[str(FIXTURES / "xnli_de_validation.jsonl")])[1:])


# --- consumers and scale-out ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_scores_the_translate_test_files_next_to_zero_shot(translator, task_dir, tmp_path, tiny_cache):
    """Zero-shot and translate-test on the same tiny task: the translator reproduces the English test set, so
    each target's translate-test score equals the English test score at every evaluation."""
    import yaml

    from trainer.config import load_job
    from trainer.run import run_job

    translated = tmp_path / "tt"
    translate_test(task_dir, translator, translated)
    raw = {"recipe": "finetune", "seed": 0, "output_dir": str(tmp_path / "ft"),
           "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                     "cache_dir": tiny_cache},
           "task": {"benchmark": "topic", "target_languages": TARGETS, "max_length": 48, "eval_every": 0.5,
                    "files": {"train": str(task_dir / "task/train/{language}.jsonl"),
                              "validation": str(task_dir / "dev/{language}.jsonl"),
                              "test": str(task_dir / "task/eval/{language}.jsonl"),
                              "translate_test": str(translated / "{language}.jsonl")}},
           "optim": {"lr": 3e-3, "warmup_steps": 1, "max_steps": 8, "micro_batch_size": 16},
           "checkpoint": {"every": 0},
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "translate-test"}}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw))
    final = run_job(load_job(path))["metrics"]
    history = [json.loads(line) for line in (tmp_path / "ft/eval/history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [4, 8]
    for row in history:
        for lang in TARGETS:
            assert {f"test_{lang}", f"tt_{lang}"} <= row.keys()                 # zero-shot and translate-test
            assert row[f"tt_{lang}"] == pytest.approx(row["test_eng_Latn"])
    for lang in TARGETS:
        assert final[f"translate_test_sdev_{lang}"] == pytest.approx(final["test_sdev_eng_Latn"])
        assert f"test_sdev_{lang}" in final


@pytest.mark.slow
def test_ray_data_mode_writes_what_the_in_process_run_writes(translator, task_dir, tmp_path):
    here, on_ray = tmp_path / "here", tmp_path / "ray"
    translate_test(task_dir, translator, here)
    manifest = translate_test(task_dir, translator, on_ray, "--ray", "--ray-actors", "1")
    assert manifest["run"]["ray"] is True and manifest["run"]["batches_translated"] == 6
    assert outputs(on_ray) == outputs(here)
