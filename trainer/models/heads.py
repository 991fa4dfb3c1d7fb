"""Task heads on a backbone's last hidden states.

`ClassificationHead` (M1 NLI and sentiment, M3 classification): pool the last hidden
states over the attention mask (`trainer.models.pooling.pool`: mean, bos or eos), then one
linear layer to the class logits, returned in fp32. NLI: premise and hypothesis are embedded
jointly as one sequence (a tokenizer text pair).

`MultipleChoiceHead` (M1 Belebele): each (passage, question, answer_i) embedded jointly, pooled,
one logit per choice; the loss is the cross-entropy over the choices
(`trainer.objectives.task.classification_loss` on its [examples, choices] logits).

`TokenClassificationHead` (M3 POS and NER): one linear layer on every token's last hidden state; the
words' tags sit on their first sub-tokens (`trainer.data.tagging`), the loss is
`trainer.objectives.task.token_classification_loss`.

`SpanHead` (extractive QA, M4 TyDiQA): start and end logits per token, transformers'
`*ForQuestionAnswering` layout (one `Linear(d, 2)`); the loss is `trainer.objectives.task.span_loss`
and the answer the best span over a context's windows (`trainer.eval.qa.best_spans`).
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


class TokenClassificationHead(nn.Linear):
    """hidden [batch, seq, d] -> logits [batch, seq, num_labels] fp32, every token (XTREME's tagging head,
    transformers' `*ForTokenClassification` without its dropout: LoRA has its own). No pooling."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype)).float()


class SpanHead(nn.Linear):
    """hidden [batch, seq, d] -> (start_logits, end_logits), each [batch, seq] fp32: `Linear(d, 2)` split in two
    (transformers' `*ForQuestionAnswering`). Positions outside the context are masked when decoding, not here."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = super().forward(hidden.to(self.weight.dtype)).float()
        return logits[..., 0], logits[..., 1]
