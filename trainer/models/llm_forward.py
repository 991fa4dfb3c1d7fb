"""Run an LLM on token ids or embeddings with the right positions and mask.

Position ids are always passed explicitly: counted over real tokens only, so
left-padded sequences start at position 0 at their first real token.
"""

from __future__ import annotations

import torch

from trainer.models.bidirectional import is_bidirectional, padding_mask_4d


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] -> [batch, seq] positions 0.. over real tokens (pads get 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


ENCODER_ONLY_TYPES = {"xlm-roberta", "roberta", "bert", "xlm-roberta-xl"}


def is_encoder_only(model: torch.nn.Module) -> bool:
    """True for BERT-like encoders, which attend both ways and number positions themselves."""
    return base_model_of(model).config.model_type in ENCODER_ONLY_TYPES


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under any peft wrappers (for its config)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def run_llm(model: torch.nn.Module, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
            inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool = False, **kwargs):
    """Forward `model` (plain or peft-wrapped) on ids or embeddings; returns the transformers output."""
    base = base_model_of(model)
    if is_encoder_only(base):
        return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                     output_hidden_states=output_hidden_states, **kwargs)
    mask = attention_mask
    if is_bidirectional(base) and base.config._attn_implementation != "flash_attention_2":
        dtype = inputs_embeds.dtype if inputs_embeds is not None else base.dtype
        mask = padding_mask_4d(attention_mask, dtype)
    return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask,
                 position_ids=position_ids_from_mask(attention_mask),
                 output_hidden_states=output_hidden_states, use_cache=False, **kwargs)
