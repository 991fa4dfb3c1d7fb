"""Self-distillation loss of MT-LLM (M1): MSE between pooled teacher and student vectors."""

from __future__ import annotations

import torch


def distillation_mse(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """[batch, d] x2 -> scalar mean squared error over all elements, computed in fp32."""
    return torch.mean((teacher.float() - student.float()) ** 2)


def fraction_of_variance_unexplained(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """MSE / variance of the teacher vectors (per-dimension variance over the batch, averaged).

    1.0 = no better than predicting the batch mean; 0.0 = perfect. Needs a batch of at
    least 2; returns NaN for a batch whose teacher vectors are all equal. Branch-free (`torch.where`),
    so it never waits for the device.
    """
    teacher = teacher.float()
    variance = teacher.var(dim=0, unbiased=False).mean()
    mse = distillation_mse(teacher, student)
    return torch.where(variance > 0, mse / variance, torch.full_like(mse, float("nan")))
