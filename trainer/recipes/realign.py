"""Realignment with a language subset (M3): contrastive realignment, English fine-tuning, zero-shot evaluation.

    optimizer steps 0 .. S-1            realign: 2B-candidate loss on translation pairs of the subset
                                        (`parallel.languages`), h = masked mean of hidden_states[-1]
    optimizer steps S .. max_steps-1    fine-tune: classification head on the pooled last layer,
                                        source-language (English) task data
    then                                accuracy on every `task.eval_languages` (zero-shot transfer)

S = `alignment.steps` (default `optim.max_steps // 2`). The backbone is an encoder (XLM-R-like)
or a decoder LLM, trained through LoRA or fully (`model.finetune`); the head is always trained.

Choices:
- one engine and one warm-up/linear-decay learning-rate schedule over both phases (so the task
  phase runs at the lower end of the schedule); AdamW's state is zeroed when the task phase
  starts, as if a new optimizer began (its second moments from the contrastive phase would stall
  the task for hundreds of steps); the phase is a function of the step, so a checkpoint in either
  phase resumes exactly;
- in-batch negatives come from this rank's micro-batch only (pairs are not gathered across ranks);
- the phase's `grad_accum` micro-batches all train that phase's objective.

Metrics: per step `loss`, `align_loss` / `task_loss`, `lr`, `grad_norm`; translation retrieval
by layer before training (`retrieval_before`), after realignment (`retrieval_after`) and after
fine-tuning (`retrieval_final`), each the mean over ordered language pairs at the aligned layer;
at the end `accuracy_<lang>`, `source_accuracy` and `zero_shot_accuracy` (the sweep metric).
"""

from __future__ import annotations

import torch

from trainer.config import JobConfig
from trainer.data.task import ClassificationCollator
from trainer.engine import Engine
from trainer.models.heads import build_aligned_model
from trainer.models.loading import load_llm_tokenizer
from trainer.recipes import common


def realignment_steps(job: JobConfig) -> int:
    """Optimizer steps of the realignment phase (0 when alignment is off, all of them when the task is)."""
    a = job.alignment
    if not a.enabled:
        return 0
    if not a.task:
        return job.optim.max_steps
    return job.optim.max_steps // 2 if a.steps is None else a.steps


def run(job: JobConfig, tracker, checkpoints) -> dict:
    """Realign, fine-tune, evaluate; returns the per-step losses, the final metrics and the export directory."""
    torch.manual_seed(job.seed)
    engine = Engine(job)  # before the model: under ZeRO-3 the backbone loads partitioned
    try:
        tokenizer = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
        model = build_aligned_model(job.model, "classify", job.alignment.layers if job.alignment.layers is not None
                                    else "last", common.pair_loss(job.alignment, "two_b"), job.task.num_labels).train()
        align_steps = realignment_steps(job)
        collate = ClassificationCollator(tokenizer, job.task.max_length)
        data = common.Streams(
            pairs=common.pair_batches(job, tokenizer, engine) if align_steps > 0 else None,
            task=common.task_batches(job, collate, engine) if align_steps < job.optim.max_steps else None)
        evaluation = common.Evaluation(job, engine, model, tokenizer, tracker, collate)
        start_step, carried = common.start(engine, model, data, checkpoints, evaluation)

        def step_fn(step: int) -> dict[str, list[float]]:
            objective = "align" if step < align_steps else "task"
            return common.micro_batches(job, engine, data, step, [objective] * job.optim.grad_accum)

        def after_step(done: int) -> dict[str, float]:
            if done == align_steps and 0 < align_steps < job.optim.max_steps:
                engine.reset_optimizer()  # before the checkpoint of this step
                return evaluation.retrieval("after", done)
            return {}

        losses = common.train_steps(job, engine, tracker, checkpoints, data, start_step, "realign", step_fn,
                                    carried, after_step)
        final = dict(carried)
        if align_steps < job.optim.max_steps:   # the task was trained
            final |= evaluation.retrieval("final", job.optim.max_steps)
            final |= evaluation.task()
        else:                                   # realignment only: its end is "after"
            final |= evaluation.retrieval("after", job.optim.max_steps)
        return common.finish(job, engine, tracker, final, losses, start_step)
    finally:
        engine.close()
