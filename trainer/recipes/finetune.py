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
"""

from __future__ import annotations

from trainer.config import FinetuneJob
from trainer.data.batches import MicroBatches
from trainer.data.benchmarks import BENCHMARKS
from trainer.loop import Run, Sums, accumulate, train
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.task_model import build_task_model
from trainer.recipes import tasks


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
    return train(r, model, batches, lambda step: accumulate(r, batches, fit),
                 tasks.dev_test_hooks(r, collate, predict, scorer=scorer))
