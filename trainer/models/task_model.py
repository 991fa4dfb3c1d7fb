"""A text encoder with a task head (M1's fine-tuned models): the LLM with LoRA ("FT"), or a stage-1
MT-LLM whose input goes through the NLLB encoder ("S1+FT").

    model = build_task_model(job.model, task="classification", num_labels=3)
    logits = model(input_ids, attention_mask).logits           # [b, 3]; multiple choice: [examples, C]
    build_task_model(job.model, task="ner", num_labels=9)(input_ids, attention_mask).logits   # [b, s, 9]
    out = build_task_model(job.model, task="qa", num_labels=0)(input_ids, attention_mask)
    out.start_logits, out.end_logits                           # [b, s] each

The body returns the last hidden states [b, s, d] and the head pools them (`model.pooling`, mean
in the study); tagging (`pos`, `ner`) and QA heads read every token instead. For S1+FT `input_ids`
are NLLB tokens (the text's language as `src_lang`); the stage-1 export (projection + LoRA) is loaded,
and its LoRA, the projection and the head all train (the study fine-tunes the stage-1 MT-LLM as a
whole; the NLLB encoder stays frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from trainer.models.heads import ClassificationHead, MultipleChoiceHead, SpanHead, TokenClassificationHead
from trainer.models.llm_forward import run_llm
from trainer.models.loading import load_llm
from trainer.models.lora import add_lora
from trainer.models.meaning import check_export, meaning_of, teacher_export
from trainer.models.mt_llm import MTLLM, build_mt_llm
from trainer.models.pooling import pool
from trainer.models.weights import load_trainable


@dataclass
class TaskOutput(ModelOutput):
    """A dict as well as a dataclass, so DeepSpeed's ZeRO-3 hooks can find the tensors in it."""

    logits: torch.Tensor | None = None   # [b, num_labels] or [examples, choices]; tagging [b, s, tags]; fp32
    pooled: torch.Tensor | None = None   # [b, d] fp32 (mode="pooled": what the head pools, for stage 2)
    start_logits: torch.Tensor | None = None   # QA: [windows, s] fp32
    end_logits: torch.Tensor | None = None     # QA: [windows, s] fp32


class TaskModel(nn.Module):
    """`forward(input_ids, attention_mask, choice_mask=None, mode="logits" | "pooled")` -> task logits, or the
    pooled representation the head reads (stage 2's student and teacher vectors)."""

    def __init__(self, body: nn.Module, head: nn.Module, num_choices: int = 0):
        super().__init__()
        self.body = body
        self.head = head
        self.num_choices = num_choices   # > 0: multiple choice (rows = examples x choices)

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if isinstance(self.body, MTLLM):
            self.body.train(mode)   # keeps the frozen NLLB encoder in eval mode
        return self

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.body, MTLLM):
            return self.body.student_states(input_ids, attention_mask)
        return run_llm(self.body, attention_mask, input_ids=input_ids).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, choice_mask: torch.Tensor | None = None,
                mode: str = "logits", **_) -> TaskOutput:
        hidden = self.hidden(input_ids, attention_mask)
        per_token = isinstance(self.head, (TokenClassificationHead, SpanHead))
        if mode == "pooled" and not per_token:
            return TaskOutput(pooled=pool(hidden, attention_mask, self.head.pooling))
        if self.num_choices:
            return TaskOutput(logits=self.head(hidden, attention_mask, choice_mask.shape[1], choice_mask))
        return head_output(self.head, hidden, attention_mask)


def head_output(head: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> TaskOutput:
    """A classification, tagging or span head on the last hidden states [b, s, d]: `logits` [b, C] (pooled over
    `attention_mask` [b, s]) or [b, s, T] (every token), or `start_logits`, `end_logits` [b, s] (QA)."""
    if isinstance(head, TokenClassificationHead):
        return TaskOutput(logits=head(hidden))
    if isinstance(head, SpanHead):
        start, end = head(hidden)
        return TaskOutput(start_logits=start, end_logits=end)
    return TaskOutput(logits=head(hidden, attention_mask))


def build_task_model(cfg, task: str, num_labels: int) -> TaskModel:
    """FT (`cfg.stage1_export` unset): the LLM with LoRA; S1+FT: the stage-1 MT-LLM with its export loaded.

    `task`: multiple_choice (a `MultipleChoiceHead`, `num_labels` choices), pos or ner (a
    `TokenClassificationHead` with `num_labels` tags), qa (a `SpanHead`) or any classification task (a
    `ClassificationHead` with `num_labels` classes).
    """
    if cfg.stage1_export:
        check_export(meaning_of({"recipe": "finetune", "model": cfg.model_dump(mode="json")}), cfg.stage1_export,
                     "model.stage1_export")
        body = build_mt_llm(cfg)
        load_trainable(body, cfg.stage1_export)
        hidden_size = body.llm.config.hidden_size
    else:
        body = add_lora(load_llm(cfg.llm, cfg.cache_dir), cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout,
                        cfg.lora.target_modules)
        hidden_size = body.config.hidden_size
    return TaskModel(body, task_head(task, hidden_size, num_labels, cfg.pooling),
                     num_choices=num_labels if task == "multiple_choice" else 0)


def task_head(task: str, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
    """The head of `task`: multiple choice, tagging (pos, ner), qa, else a `ClassificationHead` of `num_labels`."""
    if task in ("pos", "ner"):
        return TokenClassificationHead(hidden_size, num_labels)
    if task == "qa":
        return SpanHead(hidden_size)
    if task == "multiple_choice":
        return MultipleChoiceHead(hidden_size, pooling)
    return ClassificationHead(hidden_size, num_labels, pooling)


def build_stage2_model(cfg, task: str, num_labels: int) -> TaskModel:
    """Stage 2's student: the stage-1 MT-LLM (its export loaded) under the fine-tuned model's head (frozen).

    Trainable: the stage-1 LoRA, and the projection when `cfg.train_projection`. The head comes from the finetune
    export `cfg.teacher_snapshot` picks (`trainer.models.meaning.teacher_export`); the stage-1 export must have
    been trained under this LLM, attention direction, pooling and encoder (`ConfigError` naming both values).
    """
    from safetensors.torch import load_file

    check_export(meaning_of({"recipe": "stage2", "model": cfg.model_dump(mode="json")}), cfg.stage1_export,
                 "model.stage1_export")
    body = build_mt_llm(cfg)
    load_trainable(body, cfg.stage1_export)
    body.projection.requires_grad_(cfg.train_projection)
    hidden_size = body.llm.config.hidden_size
    head = task_head(task, hidden_size, num_labels, cfg.pooling)
    teacher = teacher_export(cfg.task_export, cfg.teacher_snapshot)   # the S-DEV snapshot by default
    exported = load_file(str(teacher / "trainable.safetensors"))
    head_state = {k.removeprefix("head."): v for k, v in exported.items() if k.startswith("head.")}
    if set(head_state) != {"weight", "bias"}:
        raise ValueError(f"{teacher}: no task head in the export (want head.weight and head.bias, "
                         f"from a finetune run)")
    head.load_state_dict(head_state)
    head.requires_grad_(False)
    return TaskModel(body, head, num_choices=num_labels if task == "multiple_choice" else 0)
