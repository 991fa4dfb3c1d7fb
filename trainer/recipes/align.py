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
"""

from __future__ import annotations

import torch

from trainer.config import JobConfig
from trainer.data.task import PromptAnswerCollator
from trainer.engine import Engine
from trainer.models.heads import build_aligned_model
from trainer.models.loading import load_llm_tokenizer
from trainer.recipes import common


def objectives_of_step(job: JobConfig, step: int) -> list[str]:
    """The objective of each of the step's `grad_accum` micro-batches."""
    accum, a = job.optim.grad_accum, job.alignment
    if not a.task:
        return ["align"] * accum
    if not a.enabled:
        return ["task"] * accum
    return [("task", "align")[(step * accum + j) % 2] for j in range(accum)]


def run(job: JobConfig, tracker, checkpoints) -> dict:
    """Train with alternating objectives, evaluate; returns the per-step losses, final metrics, export directory."""
    torch.manual_seed(job.seed)
    engine = Engine(job)  # before the model: under ZeRO-3 the LLM loads partitioned
    try:
        tokenizer = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
        task = job.task
        words = task.label_words or [str(i) for i in range(task.num_labels)]
        model = build_aligned_model(job.model, "causal_lm", job.alignment.layers if job.alignment.layers is not None
                                    else "middle", common.pair_loss(job.alignment, "info_nce"), task.num_labels).train()
        train_collate = PromptAnswerCollator(tokenizer, task.prompt_template, words, task.max_length)
        eval_collate = PromptAnswerCollator(tokenizer, task.prompt_template, words, task.max_length, choices=True)
        data = common.Streams(pairs=common.pair_batches(job, tokenizer, engine) if job.alignment.enabled else None,
                              task=common.task_batches(job, train_collate, engine) if job.alignment.task else None)
        evaluation = common.Evaluation(job, engine, model, tokenizer, tracker, eval_collate)
        start_step, carried = common.start(engine, model, data, checkpoints, evaluation)

        def step_fn(step: int) -> dict[str, list[float]]:
            return common.micro_batches(job, engine, data, step, objectives_of_step(job, step))

        losses = common.train_steps(job, engine, tracker, checkpoints, data, start_step, "align", step_fn, carried)
        final = carried | evaluation.retrieval("after", job.optim.max_steps) | evaluation.task()
        return common.finish(job, engine, tracker, final, losses, start_step)
    finally:
        engine.close()
