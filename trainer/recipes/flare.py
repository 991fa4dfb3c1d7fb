"""FLARE (M4) and its baselines: translate-train from the English fine-tuned model.

    start    the finetune (FT) run's export: its task LoRA merged into the LLM, its head
    train    (English example, its translation) pairs of every `flare.languages` language, shuffled:
             fusion         target pass with English fused into the q/v LoRA bottleneck:
                            y = W x_t + (alpha/r) B(f(A(drop(x_s)), A(drop(x_t))))   (`trainer.models.fusion`)
             fusion_mt      the same, x_s = Linear(NLLB_enc(target text)) for every block
             translate_train / input_fusion    plain LoRA on the target (input_fusion: target + English text)
             zero_shot      no update: the English model on the target text (the step only measures the loss)
             -> head on the pooled last layer -> cross-entropy
             extractive QA (TyDiQA): the target (question, context) in `QACollator`'s windows, each window with
             one source view (`FlareQACollator`) -> the English model's span head -> `span_loss`
    every 10%   dev and test score of every language, each input with its English side (QA: `QAScorer`, the
                best span over the windows, SQuAD F1 and EM)
    at the end  S-DEV / T-DEV selection as `finetune` (`trainer.recipes.tasks`)

The source language itself is scored with English as both sides.
"""

from __future__ import annotations

from dataclasses import replace

from trainer.config import ConfigError, FlareJob
from trainer.data.batches import MicroBatches
from trainer.data.benchmarks import BENCHMARKS, IDS_NAME_LANGUAGE, QA
from trainer.data.translated_pairs import FlareCollator, FlareQACollator, pair_by_id, unpaired
from trainer.loop import Run, Sums, accumulate, train
from trainer.models.flare import build_flare_model
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.objectives.task import classification_loss
from trainer.recipes import tasks

NEEDS_ENGLISH = ("fusion", "input_fusion")


def run(r: Run) -> dict:
    job: FlareJob = r.job
    engine, t, method = r.engine, job.task, job.flare.method
    benchmark = BENCHMARKS[t.benchmark]
    model = build_flare_model(job.model, english_config(job), method, job.flare.fusion, job.flare.query,
                              job.flare.source_state, benchmark.task, benchmark.num_labels,
                              engine.modifying).train()
    nllb = load_nllb_tokenizer(job.model.encoder, job.model.cache_dir) if method == "fusion_mt" else None
    tokenizer = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
    if benchmark.task in QA:   # finetune's QA windows, span loss and scorer, each window with its source view
        collate, loss, scorer = tasks.task_head(
            r, tokenizer, views=lambda windows: FlareQACollator(windows, method, tokenizer, nllb))
    else:
        collate, scorer = FlareCollator(tokenizer, t.max_length, method, nllb), None
        loss = lambda out, batch: classification_loss(out.logits, batch["labels"])  # noqa: E731
    batches = MicroBatches(training_pairs(job), job.optim.micro_batch_size, collate, seed=job.seed,
                           rank=engine.rank, world_size=engine.world_size)

    def fit(batch: dict, sums: Sums):
        sums.count_tokens(batch["attention_mask"].sum())
        return loss(engine(**batch), batch)

    update = method != "zero_shot"   # zero_shot: the same batches, measured only
    step = lambda step: accumulate(r, batches, fit, update=update)  # noqa: E731
    predict = lambda batch: engine(**engine.to_device(batch)).logits  # noqa: E731
    return train(r, model, batches, step,
                 tasks.dev_test_hooks(r, collate, predict, sets=evaluation_pairs(job), scorer=scorer))


def english_config(job: FlareJob):
    """The English model's section (from its export's config.yaml), with this job's LLM settings."""
    cfg = tasks.teacher_config(job)
    if cfg.llm.name_or_path != job.model.llm.name_or_path:
        raise ConfigError(f"model.llm.name_or_path: {job.model.llm.name_or_path!r}, but model.task_export was "
                          f"trained on {cfg.llm.name_or_path!r}")
    return cfg.model_copy(update={"llm": job.model.llm})


def training_pairs(job: FlareJob) -> list:
    """Every `flare.languages` language's translated training examples, each with its English example."""
    t = job.task
    split = "translate_train" if "translate_train" in t.files else "train"
    english = tasks.examples(job, t.train_benchmark or t.benchmark, t.source_language, "train")
    pairs = []
    for language in job.flare.languages or t.target_languages:
        targets = translated_examples(job, language, split)
        pairs += (pair_by_id(targets, english, f"{t.benchmark} {language} {split}")
                  if job.flare.method in NEEDS_ENGLISH else unpaired(targets))
    return pairs


def translated_examples(job: FlareJob, language: str, split: str) -> list:
    """`language`'s training examples of `split`. A translate_train file of a benchmark whose ids name their language
    (TyDiQA: the English original's `english-...` ids) is read under the source language and marked `language`."""
    t = job.task
    if split != "translate_train" or t.benchmark not in IDS_NAME_LANGUAGE:
        return tasks.examples(job, t.benchmark, language, split)
    files = {split: t.files[split].replace("{language}", language)}
    return [replace(e, language=language) for e in tasks.examples(job, t.benchmark, t.source_language, split, files)]


def evaluation_pairs(job: FlareJob) -> dict[str, dict[str, list]]:
    """split -> language -> dev/test examples with their English side (the `translate_validation` /
    `translate_test` file of the split, or the source language's set of the same split by id)."""
    t = job.task
    sets = {}
    for split in ("validation", "test"):
        english = tasks.examples(job, t.benchmark, t.source_language, split)
        sets[split] = {}
        for language in tasks.languages(job):
            targets = english if language == t.source_language else tasks.examples(job, t.benchmark, language, split)
            if job.flare.method not in NEEDS_ENGLISH:
                sets[split][language] = unpaired(targets)
                continue
            translated = f"translate_{split}"
            side = (tasks.examples(job, t.benchmark, language, translated)
                    if translated in t.files and language != t.source_language else english)
            sets[split][language] = pair_by_id(targets, side, f"{t.benchmark} {language} {split}")
    return sets
