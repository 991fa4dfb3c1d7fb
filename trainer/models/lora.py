"""LoRA adapters through peft: the one place that builds them (MT-LLM, the aligned model, merging).

Paper defaults live in the job schema: r=16, alpha=32, dropout 0.05 on all linear layers (M1);
r=8, alpha=16, dropout 0.1 (M2); r=64, alpha=128 on q/v (M4).
"""

from __future__ import annotations

import peft
from torch import nn


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float,
             target_modules: list[str] | str = "all-linear") -> peft.PeftModel:
    """Wrap `model` with peft LoRA (no bias); B starts at zero, so the output is unchanged at init.

    Only the LoRA weights are trainable afterwards (peft freezes the rest).
    """
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                             bias="none")
    return peft.get_peft_model(model, config)
