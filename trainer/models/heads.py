"""Task heads and the two-objective model of the alignment recipes (M2, M3).

`AlignedModel` holds one backbone and serves three forwards, chosen by `objective`, so that one
DeepSpeed engine (one optimizer, one checkpoint) trains both objectives:

- `align`: contrastive alignment of translation pairs. The batch holds `2B` sentences, rows
  `0..B-1` English and rows `B..2B-1` their translations (one forward for both sides); `h` is the
  masked mean of `hidden_states[layers]` (see `trainer.objectives.contrastive` for the index
  convention) and the loss is the configured pair loss (M2 InfoNCE or M3 2B-candidate), in fp32.
- `task`: the training loss of the task. `classify` (M3, encoders and decoders): a linear head on
  the pooled last hidden states (`pooling` over the attention mask), cross-entropy. `causal_lm`
  (M2): next-token loss on the answer tokens only (`labels` = -100 on the prompt and padding).
- `score`: evaluation logits `[b, C]`. `classify`: the head's logits. `causal_lm`: the batch holds
  every example once per candidate answer (example-major, `C` rows each); a row's logit is the
  summed log-likelihood of its answer tokens (no length normalisation: the candidates are short
  label words).

Only the backbone's decoder/encoder body runs for `align` (a causal LM's output layer is skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from trainer.config import ModelConfig
from trainer.models.llm_forward import base_model_of, is_encoder_only, run_llm
from trainer.models.loading import load_llm
from trainer.models.mt_llm import add_lora
from trainer.models.pooling import pool
from trainer.objectives.contrastive import sentence_embeddings
from trainer.objectives.task import IGNORE_INDEX, causal_lm_loss

TaskKind = Literal["classify", "causal_lm"]
PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TaskAlignOutput(ModelOutput):
    """A dict as well as a dataclass, so DeepSpeed's ZeRO-3 hooks can find the tensors in it."""

    loss: torch.Tensor | None = None     # scalar fp32 (None for `score`)
    logits: torch.Tensor | None = None   # [batch, num_labels] fp32 (classify / score)


class AlignedModel(nn.Module):
    """Backbone (+ classification head) with `forward(objective="align" | "task" | "score", ...)`."""

    def __init__(self, backbone: nn.Module, task: TaskKind, align_layers: int | Sequence[int],
                 align_loss: PairLoss, num_labels: int = 0, pooling: str = "mean"):
        super().__init__()
        if task not in ("classify", "causal_lm"):
            raise ValueError(f"task must be classify or causal_lm, got {task!r}")
        self.backbone = backbone
        self.task = task
        self.align_layers = align_layers
        self.align_loss = align_loss
        self.pooling = pooling
        self.num_labels = num_labels
        self.head = nn.Linear(self.hidden_size, num_labels) if task == "classify" else None

    @property
    def hidden_size(self) -> int:
        return base_model_of(self.backbone).config.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return base_model_of(self.backbone).config.num_hidden_layers

    def body(self) -> nn.Module:
        """The module whose `hidden_states` are aligned: the backbone without a causal LM's output layer.

        Not stored as an attribute (that would register the same parameters twice).
        """
        return base_model_of(self.backbone).base_model if self.task == "causal_lm" else self.backbone

    def forward(self, objective: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> TaskAlignOutput:
        if objective == "align":
            return TaskAlignOutput(loss=self.alignment_loss(input_ids, attention_mask))
        if objective == "task":
            if labels is None:
                raise ValueError("objective=task needs labels")
            if self.task == "classify":
                logits = self.classify(input_ids, attention_mask)
                return TaskAlignOutput(loss=F.cross_entropy(logits, labels), logits=logits)
            out = run_llm(self.backbone, attention_mask, input_ids=input_ids)
            return TaskAlignOutput(loss=causal_lm_loss(out.logits, labels))
        if objective == "score":
            if self.task == "classify":
                return TaskAlignOutput(loss=None, logits=self.classify(input_ids, attention_mask))
            if labels is None:
                raise ValueError("objective=score of a causal LM needs the answer labels")
            return TaskAlignOutput(loss=None, logits=self.answer_loglik(input_ids, attention_mask, labels))
        raise ValueError(f"objective must be align, task or score, got {objective!r}")

    def alignment_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rows 0..B-1 English, B..2B-1 their translations -> the pair loss on pooled `align_layers`."""
        if input_ids.shape[0] % 2:
            raise ValueError(f"alignment batch needs 2B rows (B English, B translations), got {input_ids.shape[0]}")
        h = sentence_embeddings(self.body(), input_ids, attention_mask, self.align_layers)
        source, target = h.chunk(2, dim=0)
        return self.align_loss(source, target)

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = run_llm(self.backbone, attention_mask, input_ids=input_ids)
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        return self.head(pooled.to(self.head.weight.dtype)).float()

    def answer_loglik(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
        """Rows = examples x candidates (example-major) -> [examples, candidates] summed answer log-likelihood."""
        logits = run_llm(self.backbone, attention_mask, input_ids=input_ids).logits[:, :-1].float()
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        logprobs = logits.log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logprobs * keep).sum(dim=1).view(-1, self.num_labels)


def build_aligned_model(cfg: ModelConfig, task: TaskKind, align_layers: int | Sequence[int] | str,
                        align_loss: PairLoss, num_labels: int) -> AlignedModel:
    """Load `cfg.llm` as the backbone (a causal LM for `causal_lm`), make it trainable, wrap it.

    `cfg.finetune`: `lora` adds peft LoRA (`cfg.lora`) to the frozen backbone; `full` trains every
    backbone weight. An encoder's pooler (unused: pooling is ours) is dropped, so that no trainable
    weight goes without a gradient. `align_layers`: hidden_states indices, or `middle` (block L//2 of
    L, M2's default) or `last` (-1, M3's default). `num_labels`: classes (classify) or candidate
    answers per example (causal_lm).
    """
    backbone = load_llm(cfg.llm, cfg.cache_dir, causal_lm=task == "causal_lm")
    if is_encoder_only(backbone) and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    if cfg.finetune == "lora":
        backbone = add_lora(backbone, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    else:
        backbone.requires_grad_(True)
    if align_layers == "middle":
        align_layers = base_model_of(backbone).config.num_hidden_layers // 2
    elif align_layers == "last":
        align_layers = -1
    return AlignedModel(backbone, task, align_layers, align_loss, num_labels=num_labels, pooling=cfg.pooling)
