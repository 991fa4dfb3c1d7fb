"""Task heads on a backbone's last hidden states.

`ClassificationHead` (M1 NLI/sentiment, M3 tagging-free classification): pool the last hidden
states over the attention mask (`trainer.models.pooling.pool`: mean, bos or eos), then one
linear layer to the class logits, returned in fp32.
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
