"""Task fine-tuning with zero-shot evaluation (M1's FT and S1+FT; M3's and M4's tagging and QA fine-tuning), model
selection by S-DEV and T-DEV.

    train       English examples of `task.benchmark` (or `task.train_benchmark`), a classification head
                (NLI, sentiment: 3 classes) or a multiple-choice head (Belebele) on the pooled last
                layer, a token-classification head (POS, NER: the tag of each word on its first
                sub-token) or a span head (extractive QA: start and end over context windows) on every
                token; LoRA on the LLM or encoder (FT), or the stage-1 MT-LLM reading NLLB tokens (S1+FT)
    every 10%   dev and test score of the source language and of every target language
    at the end  S-DEV: the step with the best source dev score, for every language; T-DEV: for each
                language the step with its best dev score; the test table under both selections
                (`trainer.recipes.tasks`)
    exports     OUTPUT_DIR/export (the final step) and OUTPUT_DIR/export_sdev (the S-DEV step: rewritten after
                every evaluation that improves the source dev score; the same layout, PEFT adapter/ included,
                plus snapshot.json naming its step): stage 2 starts from the S-DEV snapshot by default
                (`model.teacher_snapshot`), as the MT-LLM study does
"""

from __future__ import annotations

import json
import logging

from trainer.config import FinetuneJob
from trainer.data.batches import MicroBatches
from trainer.data.benchmarks import BENCHMARKS
from trainer.loop import Run, Sums, accumulate, train
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.meaning import SDEV_DIR, SNAPSHOT_FILE
from trainer.models.task_model import build_task_model
from trainer.models.weights import export
from trainer.recipes import tasks

log = logging.getLogger(__name__)


def run(r: Run) -> dict:
    job: FinetuneJob = r.job
    engine, t = r.engine, job.task
    benchmark = BENCHMARKS[t.benchmark]
    s1 = job.model.stage1_export is not None
    tokenizer = (load_nllb_tokenizer(job.model.encoder, job.model.cache_dir) if s1
                 else load_llm_tokenizer(job.model.llm, job.model.cache_dir))
    collate, loss, scorer = tasks.task_head(r, tokenizer, set_language=s1)
    model = build_task_model(job.model, benchmark.task, benchmark.num_labels).train()
    batches = MicroBatches(tasks.examples(job, t.train_benchmark or t.benchmark, t.source_language, "train"),
                           job.optim.micro_batch_size, collate, seed=job.seed, rank=engine.rank,
                           world_size=engine.world_size)

    def fit(batch: dict, sums: Sums):
        sums.count_tokens(batch["attention_mask"].sum())
        return loss(engine(**batch), batch)

    predict = lambda batch: engine(**engine.to_device(batch)).logits  # noqa: E731
    summary = train(r, model, batches, lambda step: accumulate(r, batches, fit),
                    tasks.dev_test_hooks(r, collate, predict, scorer=scorer, snapshot=sdev_snapshot(r)))
    sdev = r.out_dir / SDEV_DIR
    if engine.is_main and (sdev / SNAPSHOT_FILE).is_file():
        step = json.loads((sdev / SNAPSHOT_FILE).read_text())["step"]
        r.tracker.set_tags({"sdev_export_step": str(step)})
        if job.tracking.export != "none":
            r.tracker.log_artifacts(str(sdev), SDEV_DIR)
    summary["sdev_export_dir"] = str(sdev) if (sdev / SNAPSHOT_FILE).is_file() else None
    return summary


def sdev_snapshot(r: Run):
    """`snapshot(step, source_dev)` for `tasks.dev_test_hooks`: the trainable weights now (gathered from every rank,
    ZeRO-3 partitions included: `Engine.gather_trainable`, a collective) written by rank 0 as OUTPUT_DIR/export_sdev,
    atomically, in the layout of the final export, with snapshot.json naming the step and its source dev score."""
    job, engine = r.job, r.engine
    source = job.task.source_language

    def save(step: int, score: float) -> None:
        state = engine.gather_trainable()
        if not engine.is_main:
            return
        header = (f"# config_sha256: {r.checkpoints.config_hash}   (trainer.run.training_hash of the job as "
                  f"written)\n" if r.checkpoints.config_hash else "")
        note = {"snapshot": "sdev", "step": step, f"dev_{source}": score, "metric": job.task.resolved_metric}
        export(state, r.out_dir / SDEV_DIR, header + f"# S-DEV snapshot: step {step}\n" + job.to_yaml(),
               engine.module, notes={SNAPSHOT_FILE: json.dumps(note, indent=1) + "\n"})
        log.info("finetune: S-DEV snapshot at step %d (dev %s %.4f) -> %s", step, source, score,
                 r.out_dir / SDEV_DIR)

    return save
