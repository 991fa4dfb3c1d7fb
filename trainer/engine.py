"""The training engine: optimizer, schedule, accumulation, clipping, stepping.

The interface mirrors DeepSpeed's engine (`backward(loss)` scales by the
accumulation and `step()` only updates at an accumulation boundary), so the
recipes do not change when the DeepSpeed engine replaces this one.
"""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from trainer.config import OptimConfig


class LocalEngine:
    """Single-process torch AdamW with warm-up then linear decay (M1 schedule)."""

    def __init__(self, params, cfg: OptimConfig):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("engine: the model has no trainable parameters")
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup_steps, cfg.max_steps)
        self.micro_step = 0
        self.global_step = 0
        self.last_grad_norm: float | None = None

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()
        self.micro_step += 1

    def is_boundary(self) -> bool:
        return self.micro_step % self.cfg.grad_accum == 0

    def step(self) -> bool:
        """Update at an accumulation boundary; returns whether an optimizer step happened."""
        if not self.is_boundary():
            return False
        if self.cfg.max_grad_norm is not None:
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return True

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]
