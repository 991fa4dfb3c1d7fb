"""Task heads on pooled backbone states.

`SequenceClassifier`: backbone (decoder LLM with LoRA, or an encoder such as
XLM-R) -> pool over the last hidden states -> Linear -> logits. Used by the
realignment recipe's task phase (M3) and stage-2 style classification (M1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.llm_forward import run_llm
from trainer.models.pooling import pool


@dataclass
class ClassifierOutput:
    logits: torch.Tensor                 # [batch, num_labels] fp32
    loss: torch.Tensor | None            # scalar cross-entropy if labels were given
    hidden_states: tuple | None = None   # all layers, when asked for


class SequenceClassifier(nn.Module):
    """Pooled representation -> linear head; `backbone` may be peft-wrapped."""

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int, pooling: str = "mean"):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, num_labels)
        self.pooling = pooling

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        """All layers' states (HF convention: [0] embeddings, [i] output of block i), each [batch, seq, d]."""
        return run_llm(self.backbone, attention_mask, input_ids=input_ids, output_hidden_states=True).hidden_states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        out = run_llm(self.backbone, attention_mask, input_ids=input_ids)
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        logits = self.head(pooled.to(self.head.weight.dtype)).float()
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(logits=logits, loss=loss)
