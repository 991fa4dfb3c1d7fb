"""MT-LLM stage 2 (M1): the teacher cache stays row-aligned by example id; distillation lowers the MSE."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from data_prep.make_task_data import write_task_data
from trainer.config import load_job
from trainer.data.batches import MicroBatches
from trainer.data.task import TaskExampleCollator
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.task_model import build_stage2_model, build_task_model
from trainer.models.teacher_cache import TeacherCache, check_fingerprint
from trainer.models.weights import load_trainable
from trainer.recipes import tasks
from trainer.run import run_job
from trainer.tiny.text import english_documents, write_task_files

TARGETS = ["deu_Latn"]


def _write(raw: dict, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return load_job(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_cache):
    """A stage-1 export, a fine-tuned teacher (FT) and the stage-2 job dict that uses both."""
    root = tmp_path_factory.mktemp("stage2")
    write_task_data(root / "task", TARGETS, n_train=96, n_eval=32, seed=0)
    write_task_files(root / "dev", ["eng_Latn", *TARGETS], 32, seed=2)
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(64, seed=0)))
    tracking = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "stage2-test"}
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    run_job(_write({"recipe": "stage1", "output_dir": str(root / "s1"),
                    "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                              "lora": lora, "cache_dir": tiny_cache},
                    "data": {"files": [str(docs)], "max_length": 32}, "optim": {"max_steps": 4, "micro_batch_size": 8},
                    "checkpoint": {"every": 0}, "tracking": tracking}, root / "s1.yaml"))
    task = {"benchmark": "topic", "target_languages": TARGETS, "max_length": 40, "eval_every": 0.5,
            "files": {"train": str(root / "task/train/{language}.jsonl"), "validation": str(root / "dev/{language}.jsonl"),
                      "test": str(root / "task/eval/{language}.jsonl")}}
    run_job(_write({"recipe": "finetune", "output_dir": str(root / "ft"),
                    "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                              "cache_dir": tiny_cache},
                    "task": task, "optim": {"lr": 3e-3, "max_steps": 12, "micro_batch_size": 16},
                    "checkpoint": {"every": 0}, "tracking": tracking}, root / "ft.yaml"))
    stage2 = {"recipe": "stage2", "output_dir": str(root / "s2"),
              "model": {"llm": {"name_or_path": "tiny:llama"}, "encoder": {"name_or_path": "tiny:nllb"},
                        "lora": lora, "cache_dir": tiny_cache, "stage1_export": str(root / "s1" / "export"),
                        "task_export": str(root / "ft" / "export")},
              "task": task, "optim": {"lr": 3e-3, "max_steps": 20, "micro_batch_size": 16},
              "checkpoint": {"every": 0}, "tracking": tracking}
    return root, stage2


def test_cached_vectors_match_a_fresh_computation_under_shuffling_two_ranks_and_resume(exports):
    root, raw = exports
    job = _write(raw, root / "s2.yaml")
    train = tasks.examples(job, "topic", "eng_Latn", "train")
    cache = tasks.build_teacher_cache(job, train, device="cpu")
    cache.save(root / "cache")
    cache = TeacherCache.load(root / "cache")
    assert cache.ids == sorted(e.id for e in train) and cache.vectors.shape[0] == len(train)
    teacher_cfg = tasks.teacher_config(job)
    teacher = build_task_model(teacher_cfg, "classification", 3)
    load_trainable(teacher, tasks.teacher_dir(job))   # the S-DEV snapshot by default
    teacher.eval()
    collate = TaskExampleCollator(load_llm_tokenizer(teacher_cfg.llm, teacher_cfg.cache_dir), 40)
    by_id = {e.id: e for e in train}
    checked = 0
    for rank in (0, 1):                                      # two ranks, each with its shuffled share
        batches = MicroBatches(train, 8, collate, seed=3, rank=rank, world_size=2)
        for _ in range(3):
            next(batches)
        resumed = MicroBatches(train, 8, collate, seed=3, rank=rank, world_size=2)
        resumed.load_state_dict(batches.state_dict())     # resume where the first loader stopped
        for _ in range(4):
            ids = next(resumed)["ids"]
            with torch.no_grad():                          # a fresh computation for exactly these examples
                fresh = teacher(**{k: v for k, v in collate([by_id[i] for i in ids]).items()}, mode="pooled").pooled
            torch.testing.assert_close(cache.lookup(ids), fresh, rtol=1e-4, atol=1e-5)
            checked += len(ids)
    assert checked == 2 * 4 * 8
    with pytest.raises(ValueError, match="no vector for example 'topic/eng_Latn/train/nope'"):
        cache.lookup(["topic/eng_Latn/train/nope"])


def test_stage2_lowers_the_mse_to_the_teacher_and_refuses_a_stale_cache(exports):
    root, raw = exports
    summary = run_job(_write(raw, root / "s2run.yaml"))
    rows = [json.loads(line) for line in (root / "s2" / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert {"test_sdev_eng_Latn", "test_tdev_deu_Latn", "target_mean_sdev"} <= summary["metrics"].keys()
    cache = TeacherCache.load(root / "s2" / "teacher_cache")            # built by the run, reusable
    changed = {**cache.fingerprint, "task_export": "0" * 64}
    with pytest.raises(ValueError, match="made for another teacher or data"):
        check_fingerprint(cache, changed, root / "s2" / "teacher_cache")


# --- multiple choice: a teacher row per (example, choice) ---------------------------------------------

def _mc_examples(n: int, seed: int = 0) -> list:
    """`n` multiple-choice examples with 2 to 4 distinct choices each (a shuffled id order, not sorted)."""
    from trainer.data.benchmarks import TaskExample
    from trainer.tiny.text import OBJECTS, sentences

    rng = random.Random(seed)
    passages = sentences("eng_Latn", n, seed=seed)
    out = []
    for i in rng.sample(range(n), n):
        choices = tuple(rng.sample(OBJECTS, 2 + i % 3))
        out.append(TaskExample(f"mc/eng_Latn/train/{i:03d}", "eng_Latn", "train", (passages[i], "What is it?"),
                               i % len(choices), choices))
    return out


def _row_vector(input_ids: torch.Tensor, attention_mask: torch.Tensor, d: int = 6) -> torch.Tensor:
    """A distinct vector per tokenised row, whatever its padding: a function of its real tokens only."""
    tokens = input_ids[attention_mask.bool()].tolist()
    return torch.tensor([float(sum((k + 1) * t for k, t in enumerate(tokens)) % 9973 + j * 0.5) for j in range(d)])


def test_a_multiple_choice_cache_returns_each_examples_choices_in_the_students_row_order(tiny_path, tmp_path):
    """N examples x up to C choices: the cache keeps one row per (example, choice) and a shuffled batch's lookup
    is, row for row, what the student's collator lays out (padded choices repeat the example's last)."""
    from transformers import AutoTokenizer

    from trainer.errors import DataError
    from trainer.models.teacher_cache import META_FILE, compute_teacher_cache

    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    tok.pad_token = tok.pad_token or tok.eos_token
    collate = TaskExampleCollator(tok, 48)
    train = _mc_examples(11)

    def embed(batch):
        return torch.stack([_row_vector(i, m) for i, m in zip(batch["input_ids"], batch["attention_mask"])])

    compute_teacher_cache(embed, train, collate, batch_size=4, fingerprint={"t": 1}).save(tmp_path / "c")
    cache = TeacherCache.load(tmp_path / "c", multiple_choice=True)
    by_id = {e.id: e for e in train}
    assert cache.choices == [len(by_id[i].choices) for i in sorted(by_id)]
    assert len(set(map(tuple, cache.vectors.tolist()))) == len(cache.vectors) == sum(len(e.choices) for e in train)

    def alone(e, choice: str) -> torch.Tensor:   # the independent computation: one (passage, question choice) text
        enc = tok(e.texts[0], f"{e.texts[1]} {choice}")
        return _row_vector(torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"]))

    rng = random.Random(5)
    for size in (1, 3, 5):
        batch_examples = rng.sample(train, size)
        batch = collate(batch_examples)                          # the student's rows: [b * width]
        width = batch["choice_mask"].shape[1]
        expected = torch.stack([alone(e, e.choices[min(c, len(e.choices) - 1)])
                                for e in batch_examples for c in range(width)])
        assert torch.equal(cache.lookup(batch["ids"], width), expected)
        assert torch.equal(embed(batch), expected)               # = the student's layout of the same rows
        own = [k * width + c for k, e in enumerate(batch_examples) for c in range(len(e.choices))]
        assert cache.choice_positions(batch["ids"], width).tolist() == own
    with pytest.raises(ValueError, match="looked up without choices"):
        cache.lookup([train[0].id])
    widest = next(e for e in train if len(e.choices) == 4)
    with pytest.raises(ValueError, match="has 4 choices, the batch 3"):
        cache.lookup([widest.id], 3)

    # a cache written before choices were kept (one vector per example, no `choices`): refused, one line, rebuild
    meta = json.loads((tmp_path / "c" / META_FILE).read_text())
    del meta["choices"]
    (tmp_path / "c" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError) as e:
        TeacherCache.load(tmp_path / "c", multiple_choice=True)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "c" / META_FILE) in message
    assert "one vector per example" in message and "rebuilt" in message
    TeacherCache([e.id for e in train], torch.randn(len(train), 6), {"t": 1}).save(tmp_path / "cls")
    assert TeacherCache.load(tmp_path / "cls", multiple_choice=False).lookup([train[2].id]).shape == (1, 6)
    TeacherCache(["a", "b"], torch.randn(5, 3), {}, [2, 3]).save(tmp_path / "mc")
    with pytest.raises(DataError, match="not multiple choice"):
        TeacherCache.load(tmp_path / "mc", multiple_choice=False)


def _write_mc_files(root: Path, n_train: int, n_eval: int) -> dict[str, str]:
    """A tiny Belebele-like task: RACE-format English training rows (3 or 4 options), Belebele-format dev and test
    rows per language (4 answers): the passage's object among other objects."""
    from trainer.tiny.text import OBJECTS, concept_sentences, render

    def options(concepts, k, lang, rng):
        wrong = rng.sample([o for o in OBJECTS if o != concepts[2]], k - 1)
        answer = rng.randrange(k)
        return [render([o], lang) for o in wrong[:answer] + [concepts[2]] + wrong[answer:]], answer

    rng = random.Random(0)
    (root / "race").mkdir(parents=True)
    with (root / "race" / "train.jsonl").open("w") as f:
        for i, concepts in enumerate(concept_sentences(n_train, seed=3)):
            opts, answer = options(concepts, 3 + i % 2, "eng_Latn", rng)
            f.write(json.dumps({"example_id": f"r{i}", "article": render(concepts, "eng_Latn"),
                                "question": "What is it about?", "options": opts, "answer": "ABCD"[answer]}) + "\n")
    for split, seed in (("validation", 4), ("test", 5)):
        for lang in ["eng_Latn", *TARGETS]:
            (root / split).mkdir(exist_ok=True)
            with (root / split / f"{lang}.jsonl").open("w") as f:
                for i, concepts in enumerate(concept_sentences(n_eval, seed=seed)):
                    opts, answer = options(concepts, 4, lang, rng)
                    f.write(json.dumps({"link": f"l{i}", "question_number": 1,
                                        "flores_passage": render(concepts, lang), "question": "What is it about?",
                                        **{f"mc_answer{k + 1}": o for k, o in enumerate(opts)},
                                        "correct_answer_num": str(answer + 1)}) + "\n")
    return {"train": str(root / "race" / "train.jsonl"), "validation": str(root / "validation" / "{language}.jsonl"),
            "test": str(root / "test" / "{language}.jsonl")}


def test_stage2_on_multiple_choice_distils_each_choice_row_onto_its_teacher_row(exports):
    """Belebele-like stage 2 (micro batch 4, examples of 3 and 4 choices): a few steps with finite losses, and the
    first step's loss is the MSE between each (example, choice)'s student row and that example's own choice's
    teacher row, computed here one example at a time without the cache."""
    root, raw = exports
    mc = root / "mc"
    task = {"benchmark": "belebele", "train_benchmark": "race", "target_languages": TARGETS, "max_length": 48,
            "eval_every": 0, "eval_batch_size": 8, "files": _write_mc_files(mc / "data", 24, 6)}
    tracking = raw["tracking"]
    run_job(_write({"recipe": "finetune", "output_dir": str(mc / "ft"),
                    "model": {**{k: raw["model"][k] for k in ("llm", "cache_dir")},
                              "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                    "task": task, "optim": {"lr": 3e-3, "max_steps": 3, "micro_batch_size": 8},
                    "checkpoint": {"every": 0}, "tracking": tracking}, mc / "ft.yaml"))
    stage2 = {**raw, "output_dir": str(mc / "s2"), "model": {**raw["model"], "task_export": str(mc / "ft" / "export")},
              "task": task, "optim": {"lr": 3e-3, "max_steps": 3, "micro_batch_size": 4}}
    job = _write(stage2, mc / "s2.yaml")
    run_job(job)
    rows = [json.loads(line) for line in (mc / "s2" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses

    job = _write(stage2, mc / "s2check.yaml")   # the recipe rewrites model.task_export: a fresh job to rebuild from
    train = tasks.examples(job, "race", "eng_Latn", "train")
    assert {len(e.choices) for e in train} == {3, 4}
    first = next(MicroBatches(train, 4, lambda examples: examples, seed=job.seed, rank=0, world_size=1))
    assert {len(e.choices) for e in first} == {3, 4}    # the run's first micro-batch pads a 3-choice example
    teacher_cfg = tasks.teacher_config(job)
    teacher = build_task_model(teacher_cfg, "multiple_choice", 4)
    load_trainable(teacher, tasks.teacher_dir(job))
    student = build_stage2_model(job.model, "multiple_choice", 4)
    teacher.eval()
    student.eval()
    teacher_rows = TaskExampleCollator(load_llm_tokenizer(teacher_cfg.llm, teacher_cfg.cache_dir), 48)
    student_rows = TaskExampleCollator(load_nllb_tokenizer(job.model.encoder, job.model.cache_dir), 48,
                                       set_language=True)
    cache = TeacherCache.load(mc / "s2" / "teacher_cache", multiple_choice=True)
    squares = []
    with torch.no_grad():
        for e in first:                                  # one example at a time: its own choices, no padding
            x = teacher(**teacher_rows([e]), mode="pooled").pooled
            z = student(**student_rows([e]), mode="pooled").pooled
            assert x.shape[0] == z.shape[0] == len(e.choices)
            torch.testing.assert_close(cache.lookup([e.id], len(e.choices)), x, rtol=1e-4, atol=1e-5)
            squares.append(((x.float() - z.float()) ** 2).reshape(-1))
    expected = torch.cat(squares).mean().item()
    assert losses[0] == pytest.approx(expected, rel=1e-4), (losses[0], expected)
