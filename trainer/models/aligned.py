"""The model of the alignment recipes (M2, M3): one backbone, two objectives, one optimizer.

`AlignedModel.forward(mode, input_ids, attention_mask)` serves both objectives of one DeepSpeed
engine (one optimizer, one checkpoint); the recipes compute the losses from its outputs
(`trainer.objectives`):

- `embed`: sentence vectors [batch, d] fp32, the masked mean of `hidden_states[align_layers]` (over the tokens
  `align_pooling` keeps)
  (averaged over them when several; index convention in `trainer.models.pooling`). Only the
  backbone's body runs (a causal LM's output layer is skipped). The contrastive batch holds `2B`
  sentences, rows `0..B-1` English and `B..2B-1` their translations, in one forward pass.
- `logits`: task logits. `classify` (M3; encoders and decoders): a `ClassificationHead` on the
  pooled last hidden states -> [batch, num_labels]. `tag` (M3's POS and NER): a
  `TokenClassificationHead` on every token's last hidden state -> [batch, seq, num_labels] (the words'
  tags sit on their first sub-tokens, `trainer.data.tagging`). `causal_lm` (M2): the LM's next-token
  logits [batch, seq, V].
- `generate` (`causal_lm` only): greedy decoding of left-padded prompts -> `sequences` [batch, seq + new].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.utils import ModelOutput

from trainer.models.heads import ClassificationHead, TokenClassificationHead
from trainer.models.llm_forward import base_model_of, is_encoder_only, run_llm
from trainer.models.loading import load_llm
from trainer.models.lora import add_lora
from trainer.models.pooling import resolve_layers, sentence_embeddings

TaskKind = Literal["classify", "tag", "causal_lm"]


@dataclass
class AlignedOutput(ModelOutput):
    """A dict as well as a dataclass, so DeepSpeed's ZeRO-3 hooks can find the tensors in it."""

    embeddings: torch.Tensor | None = None   # [batch, d] fp32 (embed)
    logits: torch.Tensor | None = None       # [batch, num_labels] / [batch, seq, num_labels] fp32, or [batch, seq, V]
    sequences: torch.Tensor | None = None    # [batch, prompt + new tokens] (generate)


class AlignedModel(nn.Module):
    """Backbone (+ classification or token-classification head) with `forward(mode="embed" | "logits", input_ids,
    attention_mask)`."""

    def __init__(self, backbone: nn.Module, task: TaskKind, align_layers: list[int], num_labels: int = 0,
                 pooling: str = "mean", align_pooling: str = "mean"):
        super().__init__()
        if task not in ("classify", "tag", "causal_lm"):
            raise ValueError(f"task must be classify, tag or causal_lm, got {task!r}")
        self.backbone = backbone
        self.task = task
        self.align_layers = align_layers
        self.align_pooling = align_pooling
        self.num_labels = num_labels
        self.head = (ClassificationHead(self.hidden_size, num_labels, pooling) if task == "classify"
                     else TokenClassificationHead(self.hidden_size, num_labels) if task == "tag" else None)

    @property
    def hidden_size(self) -> int:
        return base_model_of(self.backbone).config.hidden_size

    @property
    def model_type(self) -> str:
        """The backbone's family as transformers names it (llama, qwen2, gemma2, gpt2, xlm-roberta)."""
        return base_model_of(self.backbone).config.model_type

    @property
    def num_hidden_layers(self) -> int:
        return base_model_of(self.backbone).config.num_hidden_layers

    def body(self) -> nn.Module:
        """The module whose `hidden_states` are aligned: the backbone without a causal LM's output layer.

        Not stored as an attribute (that would register the same parameters twice).
        """
        return base_model_of(self.backbone).base_model if self.task == "causal_lm" else self.backbone

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every layer's hidden states of the body ([batch, seq, d] each), for evaluation by layer."""
        return run_llm(self.body(), attention_mask, input_ids=input_ids, output_hidden_states=True).hidden_states

    def forward(self, mode: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> AlignedOutput:
        if mode == "embed":
            return AlignedOutput(embeddings=sentence_embeddings(self.body(), input_ids, attention_mask,
                                                                self.align_layers, self.align_pooling))
        if mode == "logits":
            out = run_llm(self.backbone, attention_mask, input_ids=input_ids)
            if self.task == "classify":
                return AlignedOutput(logits=self.head(out.last_hidden_state, attention_mask))
            if self.task == "tag":
                return AlignedOutput(logits=self.head(out.last_hidden_state))
            return AlignedOutput(logits=out.logits)
        if mode == "generate":   # M2's generative tasks: greedy decoding through transformers' generate
            return AlignedOutput(sequences=self.generate(input_ids, attention_mask, **kwargs))
        raise ValueError(f"mode must be embed, logits or generate, got {mode!r}")

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 eos_token_id: list[int], pad_token_id: int, synced_gpus: bool = False) -> torch.Tensor:
        """Greedy decoding (`do_sample=False`, one beam: the study's evaluation) of left-padded prompts
        [batch, seq] -> [batch, seq + new] token ids (rows that stop early are padded with `pad_token_id`).

        Reached as `engine("generate", ...)` so that ZeRO-3's hooks gather each block's weights; with several
        ranks pass `synced_gpus=True` (every rank runs forwards until all have finished).
        """
        if self.task != "causal_lm":
            raise ValueError(f"generate needs a causal LM backbone (task causal_lm), not {self.task!r}")
        return self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, num_beams=1,
                                      max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                      pad_token_id=pad_token_id, synced_gpus=synced_gpus, temperature=None,
                                      top_p=None, top_k=None)


def build_aligned_model(llm_cfg, lora_cfg, finetune: str, cache_dir: str, task: TaskKind,
                        align_layers: int | Sequence[int] | str, num_labels: int, pooling: str = "mean",
                        align_pooling: str = "mean") -> AlignedModel:
    """Load `llm_cfg` as the backbone (a causal LM for `causal_lm`), make it trainable, wrap it.

    `finetune`: `lora` adds peft LoRA (`lora_cfg`) to the frozen backbone; `full` trains every
    backbone weight. An encoder's pooler (unused: pooling is ours) is dropped, so that no trainable
    weight goes without a gradient. `align_layers`: hidden_states indices (negative allowed), or
    `middle` (block L//2 of L blocks, M2's default: layer 16 of 32). `num_labels`: classes
    (classify), tags (tag) or candidate answers per example (causal_lm). A layer out of range raises ValueError.
    """
    backbone = load_llm(llm_cfg, cache_dir, causal_lm=task == "causal_lm")
    if is_encoder_only(backbone) and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    if finetune == "lora":
        backbone = add_lora(backbone, lora_cfg.r, lora_cfg.alpha, lora_cfg.dropout, lora_cfg.target_modules)
    else:
        backbone.requires_grad_(True)
    n_layers = base_model_of(backbone).config.num_hidden_layers
    layers = n_layers // 2 if align_layers == "middle" else align_layers
    return AlignedModel(backbone, task, resolve_layers(layers, n_layers + 1), num_labels=num_labels, pooling=pooling,
                        align_pooling=align_pooling)
