"""What the task recipes (M1 `finetune`, `stage2`; `flare`, and `realign` on a benchmark) share: benchmark
examples, the dev/test evaluation every N% of steps with S-DEV / T-DEV selection (and translate-test, when
`task.files.translate_test` names the target test sets translated to English), and stage 2's teacher cache.

Choice: the test sets are scored at every evaluation step, so a selection reads its step's test
scores instead of reloading a checkpoint (the same numbers, no extra checkpoints kept). Scores are
accuracy, or macro-F1 for NusaX (`task.metric`); word accuracy (POS) or entity F1 (NER) for tagging;
SQuAD F1 for extractive QA, with exact match beside it (`em`: `test_em_<lang>` in the history,
`test_em_sdev_<lang>` / `test_em_tdev_<lang>` at the end, selected by F1). The dev/test history is
OUTPUT_DIR/eval/history.jsonl, rewritten as a resumed run re-evaluates (the last row of a step counts).

`task_head(r, tokenizer)` gives what `finetune` needs for the benchmark's kind of task: the collators,
the loss on the model's output, and the scorer of the dev and test sets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from trainer import distributed
from trainer.data.benchmarks import BENCHMARKS, QA, TAGGING, has_language, load_benchmark
from trainer.data.qa import QACollator
from trainer.data.tagging import TaggingCollator
from trainer.data.task import TaskExampleCollator
from trainer.eval.metrics import METRICS
from trainer.eval.plots import plot_language_bars
from trainer.eval.selection import best_step, select_checkpoints
from trainer.eval.sharded import counts_over_ranks
from trainer.eval.task_scores import ClassificationScorer, QAScorer, TaggingScorer
from trainer.fsutil import sha256_file, write_atomic
from trainer.loop import Hooks, Run
from trainer.models.loading import load_llm_tokenizer
from trainer.models.meaning import check_export, meaning_of, teacher_export
from trainer.models.task_model import build_task_model
from trainer.models.teacher_cache import META_FILE, TeacherCache, check_fingerprint, compute_teacher_cache
from trainer.models.weights import load_trainable
from trainer.objectives.task import classification_loss, span_loss, token_classification_loss


def examples(job, benchmark: str, language: str, split: str, files: dict[str, str] | None = None) -> list:
    """`TaskExample`s of a benchmark's language and split, from `files` (default `task.files`: split -> template
    with {language}) or the hub (eval sets capped at `task.max_eval_examples`; train and translate_train never).

    NER: the tags of `task.entity_types_as_o` are read as O (e.g. MasakhaNER's DATE when training on WikiANN).
    """
    t = job.task
    template = (t.files if files is None else files).get(split)
    rows = load_benchmark(benchmark, language, split, files=[template.format(language=language)] if template else None)
    rows = rows if split in ("train", "translate_train") or not t.max_eval_examples else rows[:t.max_eval_examples]
    if t.entity_types_as_o:
        names = tag_names(job, benchmark)
        outside = names.index("O")
        rows = [replace(e, tags=tuple(outside if names[tag] == "O" else tag for tag in e.tags)) for e in rows]
    return rows


def tag_names(job, benchmark: str | None = None) -> list[str]:
    """The tag names of a tagging benchmark, those of `task.entity_types_as_o` renamed O (read as outside)."""
    dropped = set(job.task.entity_types_as_o)
    return ["O" if name.partition("-")[2] in dropped else name
            for name in BENCHMARKS[benchmark or job.task.benchmark].labels]


def languages(job) -> list[str]:
    return list(dict.fromkeys([job.task.source_language, *job.task.target_languages]))


def evaluation_sets(job) -> dict[str, dict[str, list]]:
    """split (validation, test, and translate_test when `task.files` has it) -> language -> examples.

    The source language's sets come from `task.train_benchmark` when `task.benchmark` lacks that language
    (WikiANN English for MasakhaNER, UDPOS English for MasakhaPOS); `task.files` templates apply all the same.
    realign's `task.also_evaluate` benchmarks add their dev and test sets keyed `<benchmark>_<language>`.
    """
    t, langs = job.task, languages(job)
    source = (t.train_benchmark if t.train_benchmark and not has_language(t.benchmark, t.source_language)
              else t.benchmark)
    sets = {split: {lang: examples(job, source if lang == t.source_language else t.benchmark, lang, split)
                    for lang in langs}
            for split in ("validation", "test")}
    if "translate_test" in t.files:   # target test sets translated to English: read as English (NLLB: eng code)
        sets["translate_test"] = {lang: [replace(e, language=t.source_language)
                                         for e in examples(job, t.benchmark, lang, "translate_test")]
                                  for lang in langs if lang != t.source_language}
    for extra in getattr(t, "also_evaluate", ()):
        for split in ("validation", "test"):
            sets[split] |= {f"{extra.benchmark}_{lang}": examples(job, extra.benchmark, lang, split, extra.files)
                            for lang in extra.target_languages}
    return sets


def dev_test_hooks(r: Run, collate: Callable[[list], dict], predict: Callable[[dict], torch.Tensor],
                   before: Callable[[], dict[str, float]] | None = None,
                   sets: dict[str, dict[str, list]] | None = None, scorer=None,
                   snapshot: Callable[[int, float], None] | None = None) -> Hooks:
    """Hooks that score every language's dev and test set every `task.eval_every` of the steps and select at the end.

    `predict(batch) -> scores [b, C]` scores a classification batch of `collate`; `scorer` (a
    `trainer.eval.task_scores` scorer: tagging, QA) replaces both. `before` adds metrics to the fresh
    run's first row. `sets`: split -> language -> examples (default `evaluation_sets(job)`); every test set is
    reported, the target mean is over `task.target_languages`. `snapshot(step, source_dev)` is called on every
    rank (a collective may run in it) after an evaluation whose step is, so far, the S-DEV choice (the
    source dev score beats every earlier step's: ties keep the earlier step, as `select_checkpoints`).
    """
    job, engine, t = r.job, r.engine, r.job.task
    benchmark = BENCHMARKS[t.benchmark]
    sets = sets if sets is not None else evaluation_sets(job)
    langs, targets = list(sets["test"]), [lang for lang in languages(job) if lang != t.source_language]
    scorer = scorer or ClassificationScorer(predict, collate, benchmark.num_labels, METRICS[t.resolved_metric])
    history = r.out_dir / "eval" / "history.jsonl"
    every = max(1, round(t.eval_every * job.optim.max_steps)) if t.eval_every else job.optim.max_steps

    def evaluate(done: int) -> dict[str, float]:
        scores = {}
        for split, by_language in sets.items():
            counts = counts_over_ranks(scorer.count, by_language, t.eval_batch_size, scorer.size, engine.rank,
                                       engine.world_size)
            name = {"validation": "dev", "test": "test", "translate_test": "tt"}[split]
            for lang, c in counts.items():
                for extra, value in scorer.scores(c).items():
                    scores[f"{name}_{extra}_{lang}" if extra else f"{name}_{lang}"] = value
        if engine.is_main:
            history.parent.mkdir(parents=True, exist_ok=True)
            with history.open("a") as f:
                f.write(json.dumps({"step": done, **scores}) + "\n")
        distributed.barrier()   # every rank reads the history at the end: rank 0's row must be on disk first
        if snapshot is not None and sdev_so_far(history, t.source_language, done) == done:
            snapshot(done, scores[f"dev_{t.source_language}"])
        return scores

    def fresh() -> dict[str, float]:
        if engine.is_main:
            history.unlink(missing_ok=True)
        return before() if before else {}

    def at_end() -> dict[str, float]:
        if job.optim.max_steps % every:
            evaluate(job.optim.max_steps)
        return select_and_report(r, history, t.source_language, langs, t.resolved_metric, scorer.extras, targets)

    return Hooks(before=fresh, after_step=lambda done: evaluate(done) if done % every == 0 else {}, at_end=at_end)


def sdev_so_far(history_path: Path, source: str, upto: int) -> int | None:
    """The S-DEV step among the history's evaluations up to step `upto` (the last row of a step counts: a resumed
    run's rows after its checkpoint are re-evaluated, so later rows of the interrupted run do not compete)."""
    rows = {}
    for line in history_path.read_text().splitlines():
        row = json.loads(line)
        if row["step"] <= upto:
            rows[row["step"]] = row
    return best_step({step: {source: row[f"dev_{source}"]} for step, row in rows.items()}, source)


def task_head(r: Run, tokenizer, set_language: bool = False, forward: Callable[[dict], object] | None = None,
              views: Callable[[QACollator], Callable[[list], dict]] | None = None):
    """(training collator, loss(output, batch), evaluation scorer) for the kind of task `task.benchmark` is.

    Classification and multiple choice: `TaskExampleCollator` (NLLB `src_lang` per batch with
    `set_language`), `classification_loss`, the default scorer (None). Tagging: `TaggingCollator`,
    `token_classification_loss`, `TaggingScorer`. QA: `QACollator` (windows of `task.max_length` tokens
    sharing `task.doc_stride`), `span_loss`, `QAScorer` (answers of at most `task.max_answer_length` tokens).
    `forward(batch) -> output` runs the model in evaluation (default: the engine on the batch moved to the
    device; realign's `AlignedModel` takes its mode first). `views(windows)` (QA only) wraps both QA collators,
    which then pad every window to `task.max_length`: FLARE's target windows with their source views
    (`trainer.data.translated_pairs.FlareQACollator`).
    """
    job, engine, t = r.job, r.engine, r.job.task
    task = BENCHMARKS[t.benchmark].task
    forward = forward or (lambda batch: engine(**engine.to_device(batch)))
    if task in TAGGING:
        collate = TaggingCollator(tokenizer, t.max_length)
        scorer = TaggingScorer(lambda batch: forward(batch).logits, collate, tag_names(job), t.resolved_metric)
        return collate, lambda out, batch: token_classification_loss(out.logits, batch["labels"]), scorer
    if task in QA:
        def predict(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            out = forward(batch)
            return out.start_logits, out.end_logits

        wrap, padding = (views, "max_length") if views else ((lambda windows: windows), "longest")
        windows = lambda targets: wrap(QACollator(tokenizer, t.max_length, t.resolved_doc_stride,  # noqa: E731
                                                  targets=targets, padding=padding))
        scorer = QAScorer(predict, windows(False), t.max_answer_length)
        loss = lambda out, batch: span_loss(out.start_logits, out.end_logits,  # noqa: E731
                                            batch["start_positions"], batch["end_positions"])
        return windows(True), loss, scorer
    collate = TaskExampleCollator(tokenizer, t.max_length, set_language=set_language)
    return collate, lambda out, batch: classification_loss(out.logits, batch["labels"]), None


def select_and_report(r: Run, history_path, source: str, languages: list[str], metric: str,
                      extras: list[str] | tuple[str, ...] = (), targets: list[str] | None = None) -> dict[str, float]:
    """S-DEV and T-DEV over the dev history -> per-language test scores, averages over the targets; the table
    (eval/task_test.csv) and a bar chart go to the run directory and MLflow. `extras`: further test scores in
    the history (`test_<extra>_<lang>`, e.g. QA's exact match) reported at the steps the metric selects.
    `targets`: the languages averaged into `target_mean_*` (default: every language but the source)."""
    rows = {}
    for line in history_path.read_text().splitlines():   # a step evaluated again after a resume: the last counts
        row = json.loads(line)
        rows[row["step"]] = row
    dev = {step: {lang: row[f"dev_{lang}"] for lang in languages} for step, row in rows.items()}
    chosen = select_checkpoints(dev, source)
    s_dev = {lang: rows[chosen["s_dev"]][f"test_{lang}"] for lang in languages}
    t_dev = {lang: rows[chosen["t_dev"][lang]][f"test_{lang}"] for lang in languages}
    targets = [lang for lang in languages if lang != source] if targets is None else targets
    final = {f"test_sdev_{lang}": s_dev[lang] for lang in languages} | {f"test_tdev_{lang}": t_dev[lang]
                                                                        for lang in languages}
    extra = {(x, lang): (rows[chosen["s_dev"]][f"test_{x}_{lang}"], rows[chosen["t_dev"][lang]][f"test_{x}_{lang}"])
             for x in extras for lang in languages}
    final |= {f"test_{x}_{selection}_{lang}": pair[i] for (x, lang), pair in extra.items()
              for i, selection in enumerate(("sdev", "tdev"))}
    translate_test = {lang: rows[chosen["s_dev"]][f"tt_{lang}"] for lang in targets
                      if f"tt_{lang}" in rows[chosen["s_dev"]]}   # translate-test, under S-DEV
    final |= {f"translate_test_sdev_{lang}": score for lang, score in translate_test.items()}
    final |= {"s_dev_step": chosen["s_dev"], "source_test": s_dev[source]}
    if targets:
        final |= {"target_mean_sdev": sum(s_dev[lang] for lang in targets) / len(targets),
                  "target_mean_tdev": sum(t_dev[lang] for lang in targets) / len(targets)}
    if r.engine.is_main:
        out = history_path.parent
        tt = lambda lang: f"{translate_test[lang]:.6f}" if lang in translate_test else ""  # noqa: E731
        more = lambda lang: "".join(f",{extra[x, lang][0]:.6f},{extra[x, lang][1]:.6f}" for x in extras)  # noqa: E731
        table = ("language,s_dev_step,s_dev_test,t_dev_step,t_dev_test,s_dev_translate_test"
                 + "".join(f",s_dev_test_{x},t_dev_test_{x}" for x in extras) + "\n") + "".join(
            f"{lang},{chosen['s_dev']},{s_dev[lang]:.6f},{chosen['t_dev'][lang]},{t_dev[lang]:.6f},{tt(lang)}"
            f"{more(lang)}\n" for lang in languages)
        if targets:
            table += f"target_mean,,{final['target_mean_sdev']:.6f},,{final['target_mean_tdev']:.6f},"
            table += "," * (2 * len(extras)) + "\n"
        write_atomic(out / "task_test.csv", table)
        plot_language_bars({"S-DEV": s_dev, "T-DEV": t_dev}, out / "task_test.png", f"test {metric}")
    r.log_files(history_path.parent / "task_test.csv", "eval")
    r.log_files(history_path.parent / "task_test.png", "eval")
    return final


# --- stage 2's teacher cache ---------------------------------------------------------------------------

def teacher_dir(job) -> Path:
    """The finetune export a job reads: stage 2's `model.task_export` under `model.teacher_snapshot` (the S-DEV
    snapshot by default: `trainer.models.meaning.teacher_export`); FLARE's `model.task_export` as given."""
    snapshot = getattr(job.model, "teacher_snapshot", None)
    return teacher_export(job.model.task_export, snapshot) if snapshot else Path(job.model.task_export)


def teacher_config(job):
    """The fine-tuned teacher's model section (from its export's config.yaml), as a finetune job model."""
    import yaml

    from trainer.config import ConfigError, TaskModelConfig

    path = teacher_dir(job) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"model.task_export: {path} not found (the export of a finetune run)")
    check_export(meaning_of(job.model_dump(mode="json")), path.parent, "model.task_export",
                 ("llm", "bidirectional", "pooling"))
    raw = yaml.safe_load(path.read_text()) or {}
    if raw.get("recipe") != "finetune" or (raw.get("model") or {}).get("stage1_export"):
        raise ConfigError(f"model.task_export: {path} is not the export of an FT finetune run (stage1_export unset)")
    cfg = TaskModelConfig(**raw["model"])
    if cfg.pooling != job.model.pooling:
        raise ConfigError(f"model.pooling: {job.model.pooling!r}, but the teacher pooled with {cfg.pooling!r}")
    return cfg


def cache_fingerprint(job, train: list) -> dict:
    """What a teacher cache must have been made from: the teacher's weights, the training examples (multiple
    choice: with their numbers of choices), the pooling."""
    ids = "\n".join(sorted(f"{e.id}\t{len(e.choices)}" if e.choices else e.id for e in train))
    return {"task_export": sha256_file(teacher_dir(job) / "trainable.safetensors"),
            "examples": hashlib.sha256(ids.encode()).hexdigest(), "pooling": job.model.pooling}


def build_teacher_cache(job, train: list, device: str | None = None) -> TeacherCache:
    """The fine-tuned LLM's pooled vector of every training example (its LLM tokens), in sorted-id order; multiple
    choice: of every (example, choice), the collator's rows (`trainer.models.teacher_cache`)."""
    cfg = teacher_config(job)
    teacher = build_task_model(cfg, BENCHMARKS[job.task.benchmark].task, BENCHMARKS[job.task.benchmark].num_labels)
    load_trainable(teacher, teacher_dir(job))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device).eval()
    collate = TaskExampleCollator(load_llm_tokenizer(cfg.llm, cfg.cache_dir), job.task.max_length)

    def embed(batch: dict) -> torch.Tensor:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return teacher(**batch, mode="pooled").pooled

    return compute_teacher_cache(embed, train, collate, job.task.eval_batch_size, cache_fingerprint(job, train))


def teacher_cache(r: Run, train: list) -> TeacherCache:
    """Load the job's cache (built by rank 0 when missing), checked against this teacher and data."""
    job = r.job
    folder = Path(job.teacher_cache) if job.teacher_cache else r.out_dir / "teacher_cache"
    if not (folder / META_FILE).is_file() and r.engine.zero_stage == 3:
        from trainer.config import ConfigError

        raise ConfigError(f"teacher_cache: {folder} is missing; under ZeRO-3 build it first with "
                          f"python -m data_prep.teacher_cache JOB.yaml")
    with distributed.main_first():
        if r.engine.is_main and not (folder / META_FILE).is_file():
            build_teacher_cache(job, train).save(folder)
    cache = TeacherCache.load(folder, multiple_choice=BENCHMARKS[job.task.benchmark].task == "multiple_choice")
    check_fingerprint(cache, cache_fingerprint(job, train), folder)
    return cache
