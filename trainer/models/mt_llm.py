"""MT-LLM (M1): frozen NLLB encoder -> trainable projection U -> LLM with LoRA.

    z = phi(LLM_lora(U(ENC(nllb_tokens(S)))))      student
    x = phi(LLM(llm_tokens(S)))                     teacher: same weights, adapters off, no grad

The forward returns both pooled vectors; the stage-1 recipe computes the distillation loss from
them (`trainer.objectives.distillation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
from torch import nn
from transformers.utils import ModelOutput

from trainer.config import MTLLMConfig
from trainer.models.llm_forward import run_llm
from trainer.models.loading import load_llm, load_nllb_encoder
from trainer.models.lora import add_lora
from trainer.models.pooling import pool


class Projection(nn.Module):
    """U: [batch, seq, d_enc] -> [batch, seq, d_llm]; one Linear (paper) or a 2-layer GELU MLP."""

    def __init__(self, d_enc: int, d_llm: int, kind: str = "linear", hidden_multiplier: int = 2):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(d_enc, d_llm)
        elif kind == "mlp":
            hidden = d_llm * hidden_multiplier
            self.net = nn.Sequential(nn.Linear(d_enc, hidden), nn.GELU(), nn.Linear(hidden, d_llm))
        else:
            raise ValueError(f"projection.kind: unknown {kind!r}; choose linear or mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Stage1Output(ModelOutput):
    """A dict as well as a dataclass, so DeepSpeed's ZeRO-3 hooks can find the tensors in it."""

    teacher: torch.Tensor | None = None   # [batch, d_llm] fp32, no grad
    student: torch.Tensor | None = None   # [batch, d_llm] fp32


class MTLLM(nn.Module):
    """The stacked model; only the projection and the LoRA weights are trainable."""

    def __init__(self, encoder: nn.Module, llm: peft.PeftModel, projection: Projection, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.llm = llm
        self.projection = projection
        self.pooling = pooling

    def train(self, mode: bool = True) -> "MTLLM":
        super().train(mode)
        self.encoder.eval()  # frozen encoder: dropout stays off in training
        return self

    def encode(self, nllb_input_ids: torch.Tensor, nllb_attention_mask: torch.Tensor) -> torch.Tensor:
        """NLLB tokens [batch, s] -> projected encoder states [batch, s, d_llm] in the LLM's dtype."""
        with torch.no_grad():
            states = self.encoder(input_ids=nllb_input_ids, attention_mask=nllb_attention_mask).last_hidden_state
        projected = self.projection(states.to(self.projection_dtype))
        return projected.to(self.llm_dtype)

    def student_states(self, nllb_input_ids: torch.Tensor, nllb_attention_mask: torch.Tensor) -> torch.Tensor:
        """LLM_lora(U(ENC(...))) last hidden states [batch, s, d_llm] (the NLLB attention mask applies)."""
        embeds = self.encode(nllb_input_ids, nllb_attention_mask)
        return run_llm(self.llm, nllb_attention_mask, inputs_embeds=embeds).last_hidden_state

    def student(self, nllb_input_ids: torch.Tensor, nllb_attention_mask: torch.Tensor) -> torch.Tensor:
        """z = phi(LLM_lora(U(ENC(...)))) -> [batch, d_llm] fp32."""
        return pool(self.student_states(nllb_input_ids, nllb_attention_mask), nllb_attention_mask, self.pooling)

    @torch.no_grad()
    def teacher(self, llm_input_ids: torch.Tensor, llm_attention_mask: torch.Tensor) -> torch.Tensor:
        """x = phi(LLM(tokens)) with the adapters disabled (same weights, no copy) -> [batch, d_llm] fp32."""
        with self.llm.disable_adapter():
            out = run_llm(self.llm, llm_attention_mask, input_ids=llm_input_ids)
        return pool(out.last_hidden_state, llm_attention_mask, self.pooling)

    def forward(self, llm_input_ids: torch.Tensor, llm_attention_mask: torch.Tensor,
                nllb_input_ids: torch.Tensor, nllb_attention_mask: torch.Tensor,
                teacher_targets: torch.Tensor | None = None, **_) -> Stage1Output:
        """Both pooled vectors; `teacher_targets` [batch, d_llm] (stage 1's teacher cache) replaces the teacher
        forward."""
        if teacher_targets is not None:
            teacher = teacher_targets.float()
        else:
            teacher = self.teacher(llm_input_ids, llm_attention_mask)
        student = self.student(nllb_input_ids, nllb_attention_mask)
        return Stage1Output(teacher=teacher, student=student)

    @property
    def projection_dtype(self) -> torch.dtype:
        return next(self.projection.parameters()).dtype

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Name -> tensor for every trainable parameter (projection + LoRA)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


def build_mt_llm(cfg: MTLLMConfig) -> MTLLM:
    """Load the encoder and LLM named in `cfg`, add LoRA and a fresh projection."""
    encoder = load_nllb_encoder(cfg.encoder, cfg.cache_dir)
    llm = load_llm(cfg.llm, cfg.cache_dir)
    lora = add_lora(llm, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    projection = Projection(encoder.config.d_model, llm.config.hidden_size,
                            cfg.projection.kind, cfg.projection.hidden_multiplier)
    return MTLLM(encoder, lora, projection, cfg.pooling)
