"""Realignment with a language subset (M3): contrastive realignment, English fine-tuning, zero-shot evaluation.

    optimizer steps 0 .. S-1            realign: 2B-candidate loss on translation pairs of the subset
                                        (`parallel.languages`), h = masked mean of hidden_states[-1]
    optimizer steps S .. max_steps-1    fine-tune: classification head on the pooled last layer (or a
                                        token-classification head for tagging), source-language (English)
                                        task data
    then                                accuracy on every `task.eval_languages` (zero-shot transfer), or a
                                        benchmark's dev/test score per target language

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

The task is generated task files (`TaskDataConfig`: a classification head, accuracy per
`task.eval_languages`) or a benchmark (`task.benchmark` given, `RealignTaskConfig`): the study's NLI
(XNLI English; XNLI, IndoNLI, Myanmar-XNLI, AfriXNLI, AmericasNLI), POS (UDPOS English; UDPOS,
MasakhaPOS) and NER (WikiANN English; WikiANN, MasakhaNER) through finetune's pieces
(`trainer.recipes.tasks`): the benchmark's examples, a classification head or a token-classification
head (each word's tag on its first sub-token), and its dev/test scoring with S-DEV / T-DEV.

Metrics: per step `loss`, `align_loss` / `task_loss`, `lr`, `grad_norm`; translation retrieval
by layer before training (`retrieval_before`), after realignment (`retrieval_after`) and after
fine-tuning (`retrieval_final`), each the mean over ordered language pairs at the aligned layer;
at the end, task files: `accuracy_<lang>`, `source_accuracy` and `zero_shot_accuracy` (the sweep
metric); a benchmark: finetune's `test_sdev_<lang>` / `test_tdev_<lang>` (eval/task_test.csv), and
`zero_shot_<metric>` (the mean test score over `task.target_languages` under S-DEV: the final model's
with the default `task.eval_every: 0`; the sweep metric, e.g. `zero_shot_accuracy` for POS and NLI,
`zero_shot_entity_f1` for NER), `source_<metric>` and `zero_shot_<metric>_<benchmark>` per
`task.also_evaluate` benchmark.
"""

from __future__ import annotations

from trainer.config import RealignJob, TaskDataConfig
from trainer.data.benchmarks import BENCHMARKS, TAGGING
from trainer.data.task import ClassificationCollator
from trainer.loop import Hooks, Run, train
from trainer.models.aligned import AlignedOutput
from trainer.models.loading import load_llm_tokenizer
from trainer.objectives.contrastive import M3_TEMPERATURE
from trainer.objectives.task import classification_loss
from trainer.recipes import alignment, tasks


def run(r: Run) -> dict:
    """Realign, fine-tune, evaluate; returns the per-step losses, the final metrics and the export directory."""
    job: RealignJob = r.job
    engine, max_steps = r.engine, job.optim.max_steps
    align_steps = job.realignment_steps
    trains_task = align_steps < max_steps
    tokenizer = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
    logits = lambda batch: engine("logits", **engine.to_device(batch))  # noqa: E731
    on_benchmark = not isinstance(job.task, TaskDataConfig)
    if on_benchmark:   # finetune's head, loss and scorer for the benchmark's kind of task
        t = job.task
        benchmark = BENCHMARKS[t.benchmark]
        model = alignment.build_model(job, "tag" if benchmark.task in TAGGING else "classify", benchmark.num_labels)
        collate, task_loss, scorer = tasks.task_head(r, tokenizer, forward=logits)
        train_examples = (tasks.examples(job, t.train_benchmark or t.benchmark, t.source_language, "train")
                          if trains_task else None)
    else:              # generated task files: a classification head
        model = alignment.build_model(job, "classify", num_labels=job.task.num_labels)
        collate = ClassificationCollator(tokenizer, job.task.max_length)
        task_loss = lambda out, batch: classification_loss(out.logits, batch["labels"])  # noqa: E731
        scorer = train_examples = None
    data = alignment.build_data(r, tokenizer, collate, pairs=align_steps > 0, task=trains_task,
                                task_examples=train_examples)
    tau = alignment.temperature(r, model, {}, M3_TEMPERATURE)
    loss_of = alignment.losses(r, lambda out_logits, batch: task_loss(AlignedOutput(logits=out_logits), batch), tau)
    evaluations = alignment.Evaluations(r, model, tokenizer, collate, lambda batch: logits(batch).logits)

    def step(step: int):
        if step == align_steps > 0:
            engine.reset_optimizer()   # the task phase starts with fresh AdamW moments
        objective = "align" if step < align_steps else "task"
        return alignment.train_micro_batches(r, data, loss_of, step, [objective] * job.optim.grad_accum)

    before = lambda: {"alignment_temperature": tau} | evaluations.retrieval("before")  # noqa: E731
    dev_test = (tasks.dev_test_hooks(r, collate, lambda batch: logits(batch).logits, before=before, scorer=scorer)
                if trains_task and on_benchmark else None)

    def after_step(done: int) -> dict[str, float]:
        scores = dev_test.after_step(done) if dev_test else {}
        if done == align_steps and 0 < align_steps < max_steps:
            return evaluations.retrieval("after") | scores
        return scores

    def at_end() -> dict[str, float]:
        if not trains_task:
            return evaluations.retrieval("after")   # realignment only: its end is "after"
        if dev_test is None:
            return evaluations.retrieval("final") | evaluations.task()
        return evaluations.retrieval("final") | zero_shot_scores(job, dev_test.at_end())

    return train(r, model, data, step, Hooks(before=dev_test.before if dev_test else before,
                                              after_step=after_step, at_end=at_end))


def zero_shot_scores(job: RealignJob, final: dict[str, float]) -> dict[str, float]:
    """`final` (finetune's S-DEV / T-DEV report) with realign's summary: `zero_shot_<metric>` (the mean test score
    over `task.target_languages` under S-DEV: the sweep metric), `source_<metric>`, and per `task.also_evaluate`
    benchmark `zero_shot_<metric>_<benchmark>` (the mean over its languages)."""
    t = job.task
    metric = t.resolved_metric
    summary = {f"source_{metric}": final["source_test"]}
    if "target_mean_sdev" in final:
        summary[f"zero_shot_{metric}"] = final["target_mean_sdev"]
    for extra in t.also_evaluate:
        scores = [final[f"test_sdev_{extra.benchmark}_{lang}"] for lang in extra.target_languages]
        summary[f"zero_shot_{metric}_{extra.benchmark}"] = sum(scores) / len(scores)
    return final | summary
