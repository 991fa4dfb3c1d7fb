"""FLARE (M4): the English fine-tuned model, a new LoRA, and the source pass that feeds its fusion.

    model = build_flare_model(job.model, english_cfg, method, fusion, query, source_state, task, num_labels)
    logits = model(input_ids, attention_mask, source_ids, source_mask).logits     # [b, num_labels]
    out = model(**qa_batch)     # task "qa": the English model's span head; start_logits, end_logits [windows, s]

`input_ids` is the target-language text; `source_ids` its English side (`fusion`) or the same
target text in NLLB tokens (`fusion_mt`), padded to the same length as the target (token-wise
fusion). One forward holds both passes, so ZeRO-3's parameter hooks see every use of a weight:

    fusion      the English text through the same LLM with the fusion adapters off, under no grad:
                every block's source state is recorded (`source_state`: `output`, block i's own
                output before any final norm, the paper's; `reference_hidden`, the un-normalised
                hidden_states[i], the reference code's; `input`, what the fused projection received),
                then the target pass fuses it
    fusion_mt   NLLB encoder (frozen, eval mode, no grad) -> a trainable Linear to the LLM width:
                one source for every block
    translate_train, input_fusion, zero_shot    plain LoRA on the target input (no source)

The head reads the pooled last layer of the target pass, as the English model's head did; for extractive QA
(`task="qa"`) the English model's span head reads every token of the target window (one source view per
window: `trainer.data.translated_pairs.FlareQACollator`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import ContextManager

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from trainer.models.fusion import FusionContext
from trainer.models.llm_forward import run_llm
from trainer.models.loading import load_nllb_encoder
from trainer.models.lora import add_fusion_lora, add_lora
from trainer.models.task_model import TaskOutput, build_task_model, head_output
from trainer.models.weights import load_trainable

FUSED_METHODS = ("fusion", "fusion_mt")


class FlareModel(nn.Module):
    """`forward(input_ids, attention_mask, source_ids=None, source_mask=None)` -> `TaskOutput`: logits [b, C], or
    QA's start_logits, end_logits [windows, s] (`trainer.models.task_model.head_output`)."""

    def __init__(self, llm: nn.Module, head: nn.Module, context: FusionContext | None, method: str,
                 source_state: str = "output", encoder: nn.Module | None = None, projection: nn.Module | None = None):
        super().__init__()
        self.llm, self.head, self.context = llm, head, context
        self.method, self.source_state = method, source_state
        self.encoder, self.projection = encoder, projection

    def train(self, mode: bool = True) -> "FlareModel":
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()   # the frozen NLLB encoder keeps dropout off
        return self

    def fill_sources(self, source_ids: torch.Tensor, source_mask: torch.Tensor) -> None:
        """The source pass: every block's source state [b, s, d] into the fusion context, no grad."""
        ctx = self.context
        if self.method == "fusion_mt":
            ctx.start("fuse")
            with torch.no_grad():
                encoded = self.encoder(input_ids=source_ids, attention_mask=source_mask).last_hidden_state
            ctx.shared = self.projection(encoded.to(self.projection.weight.dtype))   # trained: keeps its graph
        else:
            ctx.start("record" if self.source_state == "input" else "base")
            with torch.no_grad():
                ctx.by_layer.update(english_states(self.llm, source_ids, source_mask, self.source_state))
            ctx.mode = "fuse"
        ctx.source_mask, ctx.target_mask = source_mask, None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, source_ids: torch.Tensor | None = None,
                source_mask: torch.Tensor | None = None, **_) -> TaskOutput:
        if self.method in FUSED_METHODS:
            if source_ids is None:
                raise ValueError(f"flare.method={self.method!r} needs source_ids and source_mask in the batch")
            self.fill_sources(source_ids, source_mask)
            self.context.target_mask = attention_mask
        elif self.context is not None:
            self.context.start("plain")
        hidden = run_llm(self.llm, attention_mask, input_ids=input_ids).last_hidden_state
        return head_output(self.head, hidden, attention_mask)


SOURCE_STATES = ("output", "reference_hidden", "input")


def transformer_blocks(model: nn.Module) -> dict[int, nn.Module]:
    """Block index -> block: the modules named `<...>.<i>` with no other number in the name (`layers.3`, `h.3`,
    `encoder.layer.3`), the numbering `trainer.models.fusion.block_index` gives the fusion layers."""
    blocks = {}
    for name, module in model.named_modules():
        numbers = re.findall(r"(?:^|\.)(\d+)(?=\.|$)", name)
        if len(numbers) == 1 and name.endswith(f".{numbers[0]}"):
            blocks[int(numbers[0])] = module
    if not blocks:
        raise ValueError("flare.source_state: the LLM has no numbered transformer blocks to read the source states of")
    return blocks


def english_states(llm: nn.Module, ids: torch.Tensor, mask: torch.Tensor, source_state: str) -> dict[int, torch.Tensor]:
    """One pass of `llm` over the English side; block index -> the state block i fuses [b, s, d].

    output            block i's own output, from a forward hook on the block (the paper's "source state after
                      block i"). Not `hidden_states[i + 1]`: transformers' last entry is after the final norm.
    reference_hidden  `hidden_states[i]`, the un-normalised input of block i (the embeddings for block 0), as the
                      FLARE reference code fuses it.
    input             {}: the fusion layers record what they receive themselves (context mode `record`).
    """
    if source_state not in SOURCE_STATES:
        raise ValueError(f"flare.source_state: unknown {source_state!r}; choose one of {', '.join(SOURCE_STATES)}")
    if source_state == "input":
        run_llm(llm, mask, input_ids=ids)
        return {}
    if source_state == "reference_hidden":
        hidden = run_llm(llm, mask, input_ids=ids, output_hidden_states=True).hidden_states
        return dict(enumerate(hidden[:-1]))
    states: dict[int, torch.Tensor] = {}

    def keep(index):
        return lambda module, args, output: states.__setitem__(index, output[0] if isinstance(output, tuple) else output)

    handles = [block.register_forward_hook(keep(i)) for i, block in transformer_blocks(llm).items()]
    try:
        run_llm(llm, mask, input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return states


def build_flare_model(cfg, english_cfg, method: str, fusion: str, query: str, source_state: str, task: str,
                      num_labels: int, modifying: Callable[[list], ContextManager] | None = None) -> FlareModel:
    """The English fine-tuned model (`cfg.task_export`, built from `english_cfg`) with its LoRA merged into W,
    then the new LoRA (`cfg.lora`): fusion LoRA for `fusion` / `fusion_mt`, plain LoRA for the baselines.

    `modifying(params)`: a context in which partitioned weights are whole while a LoRA is merged into them
    (the engine's, under ZeRO-3); one layer at a time, so no rank holds more than one full weight extra.
    Trainable: the new LoRA (and cross-attention's Q/K/V), the head unless `cfg.train_head` is false, and
    FLARE-MT's projection (a Linear d_enc -> d_llm, as M1's U).
    """
    english = build_task_model(english_cfg, task, num_labels)
    load_trainable(english, cfg.task_export)
    llm = merge_lora(english.body, modifying or (lambda params: contextlib.nullcontext()))
    llm.requires_grad_(False)
    lora = cfg.lora
    context = None
    if method in FUSED_METHODS:
        llm, context = add_fusion_lora(llm, lora.r, lora.alpha, lora.dropout, lora.target_modules, fusion, query)
    else:
        llm = add_lora(llm, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    english.head.requires_grad_(cfg.train_head)
    encoder = projection = None
    if method == "fusion_mt":
        encoder = load_nllb_encoder(cfg.encoder, cfg.cache_dir)
        projection = nn.Linear(encoder.config.d_model, llm.get_base_model().config.hidden_size,
                               dtype=english.head.weight.dtype)
    return FlareModel(llm, english.head, context, method, source_state, encoder, projection)


def merge_lora(peft_model, modifying: Callable[[list], ContextManager]) -> nn.Module:
    """W <- W + (alpha/r) B A in every LoRA layer, one layer at a time inside `modifying([W])`; the plain model."""
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            with modifying([module.get_base_layer().weight]):
                module.merge()
    return peft_model.unload()
