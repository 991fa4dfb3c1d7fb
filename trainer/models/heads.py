"""Task heads on a backbone's last hidden states.

`ClassificationHead` (M1 NLI and sentiment, M3 classification): pool the last hidden
states over the attention mask (`trainer.models.pooling.pool`: mean, bos or eos), then one
linear layer to the class logits, returned in fp32. NLI: premise and hypothesis are embedded
jointly as one sequence (a tokenizer text pair).

`MultipleChoiceHead` (M1 Belebele): each (passage, question, answer_i) embedded jointly, pooled,
one logit per choice; the loss is the cross-entropy over the choices
(`trainer.objectives.task.classification_loss` on its [examples, choices] logits).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.pooling import pool


class ClassificationHead(nn.Linear):
    """hidden [batch, seq, d] + attention_mask [batch, seq] -> logits [batch, num_labels] fp32.

    A `nn.Linear` itself, so its weights export as `head.weight` / `head.bias`.
    """

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "mean"):
        super().__init__(hidden_size, num_labels)
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, self.pooling)
        return super().forward(pooled.to(self.weight.dtype)).float()


class MultipleChoiceHead(nn.Linear):
    """One logit per choice: rows = examples x choices (example-major), each (passage, question, answer_i)
    embedded jointly -> pooled -> `H: d -> 1`; logits [examples, num_choices] fp32 (M1, Belebele).

    `choice_mask` [examples, num_choices] (1 = a real choice) sets padded choices to -inf, so an
    example with fewer options spreads no probability over the missing ones.
    """

    def __init__(self, hidden_size: int, pooling: str = "mean"):
        super().__init__(hidden_size, 1)
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, num_choices: int,
                choice_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, self.pooling)
        logits = super().forward(pooled.to(self.weight.dtype)).float().view(-1, num_choices)
        if choice_mask is not None:
            logits = logits.masked_fill(~choice_mask.bool().to(logits.device), float("-inf"))
        return logits
