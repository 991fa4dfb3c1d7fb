"""FLARE's fusion LoRA (M4): the source language fused into the target's LoRA bottleneck.

For a targeted linear layer `W` (the attention's query and value projections) of block `i`, with
the target input `x_t` [b, s, d_in] and the source representation `x_s` [b, s', d_in] of the same block:

    y = W x_t + (alpha / r) * B( f( A(drop(x_s)), A(drop(x_t)) ) )      one shared down-projection A

`f(S, T)` on the r-dim bottleneck, token by token (`s == s'`: the collator pads both views to one length):
`add` S + T, `mul` S * T, `add_relu` relu(S) + relu(T) (the paper's default), or `cross_attention`:
single-head attention in the bottleneck with its own Q/K/V projections [r, r], queries from one
side (`query`: source, the default, as the paper's formula and the FLARE reference code; or target),
keys and values from the other, padded key positions masked (the reference implementation did not
mask them). With queries from the source, output position j is source position j's attention over the
target, added to target position j (the collator pads both views to one length).

The layer is a subclass of peft's LoRA `Linear`, registered through peft's custom-module hook
(`LoraConfig._register_custom_module`, peft's documented extension point for custom LoRA layers),
so peft builds, marks trainable and saves it like any LoRA layer; nothing of peft is patched.
Where the source comes from is one `FusionContext` shared by the layers, filled by the model's
forward (`trainer.models.flare`) before the target pass and kept until the next forward, so the
re-computation of a gradient-checkpointed block fuses exactly as its first pass did (the reference
implementation's fusion silently turned off under gradient checkpointing).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

FUSIONS = ("add", "mul", "add_relu", "cross_attention")
TOKENWISE = ("add", "mul", "add_relu")


class CrossAttentionFusion(nn.Module):
    """Single-head attention in the r-dim bottleneck: queries from one side, keys/values from the other.

    `forward(S [b, s_s, r], T [b, s_t, r], source_mask [b, s_s], target_mask [b, s_t])` -> [b, s_q, r],
    `s_q` the query side's length; key positions where the key side's mask is 0 get no weight.

    `query="source"` (default): softmax(q(S) k(T)^T / sqrt(r)) v(T), queries from the English side, as the
    paper's cross-attention fusion (M4) and the FLARE reference code; `query="target"`:
    softmax(q(T) k(S)^T / sqrt(r)) v(S) (this trainer's earlier default, kept as an option).
    """

    def __init__(self, r: int, query: str = "source"):
        super().__init__()
        if query not in ("target", "source"):
            raise ValueError(f"flare.query: {query!r}; choose source or target")
        self.query_side = query
        self.q = nn.Linear(r, r, bias=False)
        self.k = nn.Linear(r, r, bias=False)
        self.v = nn.Linear(r, r, bias=False)

    def forward(self, S: torch.Tensor, T: torch.Tensor, source_mask: torch.Tensor,
                target_mask: torch.Tensor) -> torch.Tensor:
        queries, keys, key_mask = (T, S, source_mask) if self.query_side == "target" else (S, T, target_mask)
        scores = self.q(queries) @ self.k(keys).transpose(-1, -2) / math.sqrt(queries.shape[-1])   # [b, s_q, s_k]
        scores = scores.masked_fill(key_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1) @ self.v(keys)


def fuse(fusion: str, S: torch.Tensor, T: torch.Tensor, attention: CrossAttentionFusion | None = None,
         source_mask: torch.Tensor | None = None, target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`f(S, T)` of FLARE: S, T [b, s, r] (tokenwise fusions need equal lengths) -> [b, s, r]."""
    if fusion == "cross_attention":
        return attention(S, T, source_mask, target_mask)
    if S.shape != T.shape:
        raise ValueError(f"flare.fusion={fusion!r} fuses token by token: source {tuple(S.shape)} and target "
                         f"{tuple(T.shape)} must have one length (pad both views to it)")
    if fusion == "add":
        return S + T
    if fusion == "mul":
        return S * T
    if fusion == "add_relu":
        return F.relu(S) + F.relu(T)
    raise ValueError(f"flare.fusion: unknown {fusion!r}; choose one of {', '.join(FUSIONS)}")


class FusionContext:
    """What the fusion layers read during one forward: the mode, the source states, the masks.

    Modes: `plain` (ordinary LoRA on the target: no source), `record` (the source pass: each layer
    returns `W x` and stores its input as block `i`'s source: `flare.source_state: input`), `base` (the
    source pass when the model records the block states itself, `output` or `reference_hidden`: `W x`
    only), `fuse` (the target pass).
    """

    def __init__(self) -> None:
        self.mode = "plain"
        self.by_layer: dict[int, torch.Tensor] = {}   # block index -> [b, s, d] source states
        self.shared: torch.Tensor | None = None       # FLARE-MT: one source for every block
        self.source_mask: torch.Tensor | None = None  # [b, s]
        self.target_mask: torch.Tensor | None = None  # [b, s]

    def start(self, mode: str) -> None:
        """Begin a forward in `mode`, dropping the previous forward's sources."""
        self.mode, self.by_layer, self.shared = mode, {}, None

    def source(self, layer: int) -> torch.Tensor:
        if self.shared is not None:
            return self.shared
        if layer not in self.by_layer:
            raise RuntimeError(f"fusion: no source state for block {layer} (the source pass did not reach it)")
        return self.by_layer[layer]


def block_index(module_name: str) -> int:
    """The transformer block a module belongs to: the first number in its dotted name (`...layers.3.self_attn.q_proj`)."""
    found = re.search(r"\.(\d+)\.", f".{module_name}.")
    if found is None:
        raise ValueError(f"fusion LoRA on {module_name!r}: not inside a numbered transformer block")
    return int(found.group(1))


class FusionLinear(LoraLinear):
    """peft's LoRA Linear whose bottleneck fuses the source (see the module docstring).

    `attach(context, block, fusion, query="source")` is called once after peft built the layer; until then,
    and in the context's `plain` mode, it is ordinary LoRA.
    """

    context: FusionContext | None = None
    block: int = -1
    fusion: str = "add_relu"

    def attach(self, context: FusionContext, block: int, fusion: str, query: str = "source") -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"flare.fusion: unknown {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.context, self.block, self.fusion = context, block, fusion
        if fusion == "cross_attention":   # named lora_* so that peft treats it as adapter weights
            self.lora_fusion = nn.ModuleDict({
                name: CrossAttentionFusion(self.r[name], query).to(self.lora_A[name].weight.device,
                                                                   self.lora_A[name].weight.dtype)
                for name in self.lora_A})

    def merge(self, *args, **kwargs) -> None:
        raise NotImplementedError("fusion LoRA depends on the source input: it cannot be merged into W")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        ctx = self.context
        if ctx is None or ctx.mode == "plain" or self.disable_adapters:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if ctx.mode == "record":
            ctx.by_layer[self.block] = x
            return result
        if ctx.mode == "base":
            return result
        dtype = result.dtype
        source = ctx.source(self.block)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            A, B, drop = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            S = A(drop(source.to(A.weight.dtype))) * ctx.source_mask[..., None].to(A.weight.dtype)
            T = A(drop(x.to(A.weight.dtype)))
            attention = self.lora_fusion[name] if self.fusion == "cross_attention" else None
            fused = fuse(self.fusion, S, T, attention, ctx.source_mask, ctx.target_mask)
            result = result + B(fused) * self.scaling[name]
        return result.to(dtype)
