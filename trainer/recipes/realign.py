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

from trainer.config import RealignJob
from trainer.data.task import ClassificationCollator
from trainer.loop import Hooks, Run, train
from trainer.models.loading import load_llm_tokenizer
from trainer.objectives.contrastive import M3_TEMPERATURE
from trainer.objectives.task import classification_loss
from trainer.recipes import alignment


def run(r: Run) -> dict:
    """Realign, fine-tune, evaluate; returns the per-step losses, the final metrics and the export directory."""
    job: RealignJob = r.job
    engine, max_steps = r.engine, job.optim.max_steps
    align_steps = job.realignment_steps
    tokenizer = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
    model = alignment.build_model(job, "classify", num_labels=job.task.num_labels)
    collate = ClassificationCollator(tokenizer, job.task.max_length)
    data = alignment.build_data(r, tokenizer, collate, pairs=align_steps > 0, task=align_steps < max_steps)
    tau = alignment.temperature(r, model, {}, M3_TEMPERATURE)
    loss_of = alignment.losses(r, lambda logits, batch: classification_loss(logits, batch["labels"]), tau)
    evaluations = alignment.Evaluations(r, model, tokenizer, collate,
                                        lambda batch: engine("logits", **engine.to_device(batch)).logits)

    def step(step: int):
        if step == align_steps > 0:
            engine.reset_optimizer()   # the task phase starts with fresh AdamW moments
        objective = "align" if step < align_steps else "task"
        return alignment.train_micro_batches(r, data, loss_of, step, [objective] * job.optim.grad_accum)

    def after_step(done: int) -> dict[str, float]:
        if done == align_steps and 0 < align_steps < max_steps:
            return evaluations.retrieval("after")
        return {}

    def at_end() -> dict[str, float]:
        if align_steps < max_steps:     # the task was trained
            return evaluations.retrieval("final") | evaluations.task()
        return evaluations.retrieval("after")   # realignment only: its end is "after"

    before = lambda: {"alignment_temperature": tau} | evaluations.retrieval("before")  # noqa: E731
    return train(r, model, data, step, Hooks(before=before,
                                              after_step=after_step, at_end=at_end))
