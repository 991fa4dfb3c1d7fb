"""Stage 2 of MT-LLM (M1): task-specific distillation of the fine-tuned LLM into the stage-1 MT-LLM.

    teacher  x = phi(LLM_ft(llm_tokens(S)))            the finetune (FT) run's LLM + LoRA, pooled; computed
                                                       once per training example (multiple choice: per
                                                       (example, choice), as the student's rows) into a cache
                                                       keyed by id;
                                                       the run's S-DEV snapshot (export_sdev/) unless
                                                       `model.teacher_snapshot: final`, as the study
    student  z = phi(LLM_s1(U(ENC(nllb_tokens(S)))))   the stage-1 MT-LLM; its LoRA (and U, by
                                                       `model.train_projection`) keep training
    loss     MSE(x, z) in fp32 on the English task examples; logged with the FVU
    predict  head_ft(LLM_s1(U(ENC(...))))              the fine-tuned head, frozen, on the MT-LLM

Evaluation as `finetune` (dev and test per language every 10% of the steps, S-DEV / T-DEV) through
the fine-tuned head, the inputs in every language going through NLLB with their language code.
The cache is row-aligned by id (`trainer.models.teacher_cache`): shuffling, ranks and resuming
change which examples a batch holds, never which vector belongs to an example.
"""

from __future__ import annotations

import logging

from trainer.config import Stage2Job
from trainer.data.batches import MicroBatches
from trainer.data.benchmarks import BENCHMARKS
from trainer.data.task import TaskExampleCollator
from trainer.loop import Run, Sums, accumulate, train
from trainer.models.loading import load_nllb_tokenizer
from trainer.models.meaning import read_snapshot
from trainer.models.task_model import build_stage2_model
from trainer.objectives.distillation import distillation_mse, fraction_of_variance_unexplained
from trainer.recipes import tasks

log = logging.getLogger(__name__)


def run(r: Run) -> dict:
    job: Stage2Job = r.job
    engine, t = r.engine, job.task
    record_teacher(r)
    benchmark = BENCHMARKS[t.benchmark]
    train_examples = tasks.examples(job, t.train_benchmark or t.benchmark, t.source_language, "train")
    cache = tasks.teacher_cache(r, train_examples)
    model = build_stage2_model(job.model, benchmark.task, benchmark.num_labels).train()
    collate = TaskExampleCollator(load_nllb_tokenizer(job.model.encoder, job.model.cache_dir), t.max_length,
                                  set_language=True)
    batches = MicroBatches(train_examples, job.optim.micro_batch_size, collate, seed=job.seed, rank=engine.rank,
                           world_size=engine.world_size)

    def distil(batch: dict, sums: Sums):
        student = engine(**batch, mode="pooled").pooled                     # [b, d] through NLLB; choices: [b * C, d]
        width = batch["choice_mask"].shape[1] if "choice_mask" in batch else None   # multiple choice: C
        teacher = cache.lookup(batch["ids"], width).to(student.device)      # the same examples (and choices) by id
        if width is not None:   # row for row, an example's padded choices (repeats of its last) left out
            own = cache.choice_positions(batch["ids"], width).to(student.device)
            teacher, student = teacher[own], student[own]
        sums.add("fvu", fraction_of_variance_unexplained(teacher, student.detach()))   # on the device
        sums.count_tokens(batch["attention_mask"].sum())
        return distillation_mse(teacher, student)

    predict = lambda batch: engine(**engine.to_device(batch)).logits  # noqa: E731
    return train(r, model, batches, lambda step: accumulate(r, batches, distil),
                 tasks.dev_test_hooks(r, collate, predict))


def record_teacher(r: Run) -> None:
    """Which finetune export teaches and predicts (`model.teacher_snapshot`): a log line, MLflow tags, and
    `model.task_export` set to that folder, so the export's config.yaml names it (the S-DEV snapshot's step too)."""
    job = r.job
    folder = tasks.teacher_dir(job)
    step = read_snapshot(folder).get("step")
    log.info("stage2: teacher and head from the %s snapshot %s%s", job.model.teacher_snapshot, folder,
             f" (finetune step {step})" if step is not None else "")
    r.tracker.set_tags({"teacher_snapshot": job.model.teacher_snapshot, "teacher_export": str(folder),
                        **({"teacher_step": str(step)} if step is not None else {})})
    job.model.task_export = str(folder)
