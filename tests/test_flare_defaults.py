"""FLARE's defaults (#28 item 4): cross-attention queries from the source, the paper's fused state (block i's own
output, never the final-normed one), the reference code's un-normalised hidden state as an option, and the old
`input` variant; each checked on hand-worked tensors or against a formula written out here."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from trainer.config import FlareConfig, FlareModelConfig, TaskModelConfig
from trainer.models.flare import build_flare_model, english_states, transformer_blocks
from trainer.models.fusion import CrossAttentionFusion
from trainer.models.task_model import build_task_model
from trainer.models.weights import save_trainable


def test_the_defaults_are_the_papers():
    cfg = FlareConfig()
    assert cfg.query == "source" and cfg.source_state == "output"
    assert CrossAttentionFusion(2).query_side == "source"
    described = FlareConfig.model_fields["source_state"].description
    assert "paper" in described and "reference code" in described and "reference_hidden" in described


def identity_attention(query: str) -> CrossAttentionFusion:
    """r = 2, q = sqrt(2) I (so the 1/sqrt(r) scaling cancels), k = v = I: scores are plain dot products."""
    att = CrossAttentionFusion(2, query)
    with torch.no_grad():
        att.q.weight.copy_(math.sqrt(2) * torch.eye(2))
        att.k.weight.copy_(torch.eye(2))
        att.v.weight.copy_(torch.eye(2))
    return att


L3 = math.log(3.0)
S = torch.tensor([[[L3, 0.0], [0.0, 0.0]]])   # source positions 0, 1
T = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # target positions 0, 1
ONES = torch.ones(1, 2)


def test_queries_from_the_source_by_hand():
    # source pos 0 asks the target: scores [ln 3, 0] -> weights [3/4, 1/4] -> 3/4 [1, 0] + 1/4 [0, 1]
    # source pos 1 (zero query): scores [0, 0] -> [1/2, 1/2] -> [1/2, 1/2]
    with torch.no_grad():
        out = identity_attention("source")(S, T, ONES, ONES)
    torch.testing.assert_close(out, torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))
    # the target's padding gets no weight: only target position 0 remains as key, for every query
    with torch.no_grad():
        masked = identity_attention("source")(S, T, ONES, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(masked, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))


def test_queries_from_the_target_by_hand():
    # target pos 0 = [1, 0] asks the source: scores [ln 3, 0] -> [3/4, 1/4] -> 3/4 [ln 3, 0] + 1/4 [0, 0]
    # target pos 1 = [0, 1]: scores [0, 0] -> [1/2, 1/2] -> 1/2 [ln 3, 0]
    with torch.no_grad():
        out = identity_attention("target")(S, T, ONES, ONES)
    torch.testing.assert_close(out, torch.tensor([[[0.75 * L3, 0.0], [0.5 * L3, 0.0]]]))


# --- which English state is fused -----------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm written out: x / sqrt(mean(x^2) + eps) * weight."""
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


@pytest.fixture(scope="module")
def flare_parts(tmp_path_factory, tiny_cache):
    """An English FT export of tiny Llama (random LoRA B, no training) and a batch of English ids with padding."""
    out = tmp_path_factory.mktemp("english") / "export"
    cfg = TaskModelConfig(llm={"name_or_path": "tiny:llama"}, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                          cache_dir=tiny_cache)
    torch.manual_seed(0)
    model = build_task_model(cfg, "classification", 3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k or k.startswith("head.")}
    save_trainable(state, out, yaml.safe_dump({"recipe": "finetune", "model": cfg.model_dump(mode="json")}))
    ids = torch.randint(5, 200, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    return out, cfg, ids, mask


def flare(parts, source_state: str):
    export, cfg, _, _ = parts
    flare_cfg = FlareModelConfig(llm={"name_or_path": "tiny:llama"}, task_export=str(export),
                                 lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                                 cache_dir=cfg.cache_dir)
    torch.manual_seed(0)
    return build_flare_model(flare_cfg, cfg.model_copy(update={"llm": flare_cfg.llm}), "fusion", "add_relu",
                             "source", source_state, "classification", 3).eval()


def fused_sources(model, ids, mask) -> dict[int, torch.Tensor]:
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, source_ids=ids, source_mask=mask)
    return model.context.by_layer


def plain_pass(model, ids, mask):
    """The merged English LLM with the fusion adapters off: every hidden state and the modules to check them."""
    from trainer.models.llm_forward import run_llm

    model.context.start("base")
    with torch.no_grad():
        out = run_llm(model.llm, mask, input_ids=ids, output_hidden_states=True)
    base = model.llm.get_base_model()
    return out, base


def test_output_is_each_blocks_own_output_and_the_last_is_not_final_normed(flare_parts):
    _, _, ids, mask = flare_parts
    model = flare(flare_parts, "output")
    states = fused_sources(model, ids, mask)
    out, base = plain_pass(model, ids, mask)
    n = base.config.num_hidden_layers
    assert sorted(states) == list(range(n)) == sorted(transformer_blocks(model.llm))
    for i in range(n - 1):
        torch.testing.assert_close(states[i], out.hidden_states[i + 1])
    # transformers' last entry is the final norm of the last block's output: the fused state is the un-normed one
    norm = base.norm
    torch.testing.assert_close(rms_norm(states[n - 1], norm.weight, norm.variance_epsilon), out.hidden_states[n])
    assert not torch.allclose(states[n - 1], out.hidden_states[n], atol=1e-3)


def test_reference_hidden_is_the_unnormalised_block_input(flare_parts):
    _, _, ids, mask = flare_parts
    model = flare(flare_parts, "reference_hidden")
    states = fused_sources(model, ids, mask)
    out, base = plain_pass(model, ids, mask)
    n = base.config.num_hidden_layers
    assert sorted(states) == list(range(n))
    torch.testing.assert_close(states[0], base.embed_tokens.weight[ids])   # block 0 reads the embeddings
    for i in range(1, n):
        torch.testing.assert_close(states[i], out.hidden_states[i])


def test_input_is_what_the_projection_received(flare_parts):
    _, _, ids, mask = flare_parts
    model = flare(flare_parts, "input")
    states = fused_sources(model, ids, mask)
    out, base = plain_pass(model, ids, mask)
    for i, layer in enumerate(base.layers):
        norm = layer.input_layernorm
        torch.testing.assert_close(states[i], rms_norm(out.hidden_states[i], norm.weight, norm.variance_epsilon))


def test_the_three_states_differ_and_an_unknown_one_is_refused(flare_parts):
    _, _, ids, mask = flare_parts
    got = {name: fused_sources(flare(flare_parts, name), ids, mask)[1] for name in ("output", "reference_hidden", "input")}
    assert not torch.allclose(got["output"], got["reference_hidden"])
    assert not torch.allclose(got["reference_hidden"], got["input"])
    with pytest.raises(ValueError, match="flare.source_state: unknown 'hidden'"):
        english_states(flare(flare_parts, "output").llm, ids, mask, "hidden")
