"""Middle-layer alignment during fine-tuning (M2): task and alignment micro-batches alternate.

    task micro-batch        causal LM loss on the answer given the prompt (`task.prompt_template`,
                            answer = `task.label_words[label]` + EOS), source-language data
    alignment micro-batch   InfoNCE over translation pairs of `parallel.languages`, h = masked
                            mean of hidden_states[L // 2] (the middle block; `alignment.layers`)

Global micro-batch `m = step * grad_accum + j` trains the task when `m` is even and the alignment
when it is odd, so with an even `grad_accum` every optimizer step mixes both equally (with
`grad_accum: 1` the steps alternate). Either objective can be switched off
(`alignment.task: false` trains an alignment-only LoRA, the "alignment module" that
`trainer.models.merging` averages with a task LoRA; `alignment.enabled: false` is the task-only
baseline). The backbone is a decoder LLM with LoRA (`model.finetune: full` trains every weight).

Metrics: per step `loss`, `task_loss`, `align_loss`, `lr`, `grad_norm`; retrieval by layer
before (`retrieval_before`) and after training (`retrieval_after`), the mean over ordered language
pairs at the aligned layer; with the task on, `accuracy_<lang>` per `task.eval_languages` (the
answer with the highest likelihood among the label words), `source_accuracy`, `zero_shot_accuracy`.

With `task.benchmark` (a generative benchmark, `trainer.recipes.generation`): the task micro-batches are
the study's prompt + answer on the training languages' examples, and at the end every evaluation
language is decoded greedily and scored: `slot_f1_<lang>` (MASSIVE) or `bleu_<src>-<tgt>`,
`chrf_<src>-<tgt>` (translation), with `source_<metric>` and `zero_shot_<metric>`.
"""

from __future__ import annotations

from trainer.config import AlignJob, GenerativeTaskConfig
from trainer.data.task import PromptAnswerCollator
from trainer.loop import Hooks, Run, train
from trainer.models.loading import load_llm_tokenizer
from trainer.objectives.contrastive import M2_DEFAULT_TEMPERATURE, M2_TEMPERATURES
from trainer.objectives.task import answer_log_likelihood, causal_lm_loss
from trainer.recipes import alignment
from trainer.recipes.generation import GenerativeTask


def objectives_of_step(job: AlignJob, step: int) -> list[str]:
    """The objective of each of the step's `grad_accum` micro-batches."""
    accum, a = job.optim.grad_accum, job.alignment
    if not a.task:
        return ["align"] * accum
    if not a.enabled:
        return ["task"] * accum
    return [("task", "align")[(step * accum + j) % 2] for j in range(accum)]


def run(r: Run) -> dict:
    """Train with alternating objectives, evaluate; returns the per-step losses, final metrics, export directory."""
    job: AlignJob = r.job
    engine, task = r.engine, job.task
    tokenizer = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
    if isinstance(task, GenerativeTaskConfig):
        return run_generative(r, tokenizer)
    words = task.label_words or [str(i) for i in range(task.num_labels)]
    model = alignment.build_model(job, "causal_lm", num_labels=task.num_labels)
    train_collate = PromptAnswerCollator(tokenizer, task.prompt_template, words, task.max_length)
    choices_collate = PromptAnswerCollator(tokenizer, task.prompt_template, words, task.max_length, choices=True)
    data = alignment.build_data(r, tokenizer, train_collate, pairs=job.alignment.enabled, task=job.alignment.task)
    tau = alignment.temperature(r, model, M2_TEMPERATURES, M2_DEFAULT_TEMPERATURE)
    loss_of = alignment.losses(r, lambda logits, batch: causal_lm_loss(logits, batch["labels"]), tau)

    def predict(batch: dict):   # every example once per label word -> [examples, words] answer log-likelihoods
        batch = engine.to_device(batch)
        return answer_log_likelihood(engine("logits", **batch).logits, batch["labels"], task.num_labels)

    evaluations = alignment.Evaluations(r, model, tokenizer, choices_collate, predict)

    def step(step: int):
        return alignment.train_micro_batches(r, data, loss_of, step, objectives_of_step(job, step))

    hooks = Hooks(before=lambda: {"alignment_temperature": tau} | evaluations.retrieval("before"),
                  at_end=lambda: evaluations.retrieval("after") | evaluations.task())
    return train(r, model, data, step, hooks)


def run_generative(r: Run, tokenizer) -> dict:
    """`run` on a generative benchmark: the study's prompts, causal LM on the answer, greedy decoding at the end."""
    job: AlignJob = r.job
    gen = GenerativeTask(r, tokenizer)
    model = alignment.build_model(job, "causal_lm", num_labels=0)
    examples = gen.train_examples() if job.alignment.task else None
    data = alignment.build_data(r, tokenizer, gen.collate, pairs=job.alignment.enabled, task=job.alignment.task,
                                task_examples=examples)
    tau = alignment.temperature(r, model, M2_TEMPERATURES, M2_DEFAULT_TEMPERATURE)
    loss_of = alignment.losses(r, lambda logits, batch: causal_lm_loss(logits, batch["labels"]), tau)
    evaluations = alignment.Evaluations(r, model, tokenizer, gen.collate, predict=None)
    scoring = gen.evaluation() if job.alignment.task else None

    def step(step: int):
        return alignment.train_micro_batches(r, data, loss_of, step, objectives_of_step(job, step))

    def at_end() -> dict:
        metrics = evaluations.retrieval("after")
        if scoring is not None:
            metrics |= scoring()
            r.log_files(scoring.table, "eval")
            r.log_files(scoring.out_dir / "predictions", "eval/predictions")
        return metrics

    hooks = Hooks(before=lambda: {"alignment_temperature": tau} | evaluations.retrieval("before"), at_end=at_end)
    return train(r, model, data, step, hooks)
