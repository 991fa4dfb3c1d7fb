"""LoRA adapters through peft: the one place that builds them (MT-LLM, the aligned model, merging).

Paper defaults live in the job schema: r=16, alpha=32, dropout 0.05 on all linear layers (M1);
r=8, alpha=16, dropout 0.1 (M2); r=64, alpha=128 on q/v (M4).
"""

from __future__ import annotations

import peft
from torch import nn

from trainer.models.fusion import FusionContext, FusionLinear, block_index


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float,
             target_modules: list[str] | str = "all-linear") -> peft.PeftModel:
    """Wrap `model` with peft LoRA (no bias); B starts at zero, so the output is unchanged at init.

    Only the LoRA weights are trainable afterwards (peft freezes the rest).
    """
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                             bias="none")
    return peft.get_peft_model(model, config)


def add_fusion_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str],
                    fusion: str, query: str = "source"):
    """Wrap `model` with FLARE's fusion LoRA (`trainer.models.fusion`) on `target_modules`.

    Returns (the peft model, its `FusionContext`). peft builds a `FusionLinear` for every targeted
    `nn.Linear` through its custom-module hook; B starts at zero, so the output is unchanged at init.
    """
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                             bias="none")
    config._register_custom_module({nn.Linear: FusionLinear})   # peft's documented hook for custom LoRA layers
    model = peft.get_peft_model(model, config)
    context = FusionContext()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, FusionLinear)]
    if not layers:
        raise ValueError(f"flare: model.lora.target_modules {target_modules} matched no nn.Linear layer "
                         f"(FLARE fuses into the attention's query and value projections, e.g. q_proj, v_proj)")
    for name, module in layers:
        module.attach(context, block_index(name), fusion, query)
    return model, context
