"""Contrastive alignment losses (M2 InfoNCE, M3 2B-candidate) and layer pooling."""

import math

import pytest
import torch

from trainer.config import LLMConfig
from trainer.models.llm_forward import run_llm
from trainer.models.loading import load_llm
from trainer.models.lora import add_lora
from trainer.models.pooling import layer_embeddings, sentence_embeddings
from trainer.objectives.contrastive import info_nce, two_b_candidate_loss


def _cos(u, v):
    dot = sum(float(a) * float(b) for a, b in zip(u, v))
    return dot / (math.sqrt(sum(float(a) ** 2 for a in u)) * math.sqrt(sum(float(b) ** 2 for b in v)))


def _one_direction(src, tgt, tau):
    n = len(src)
    total = 0.0
    for k in range(n):
        numerator = math.exp(_cos(src[k], tgt[k]) / tau)
        denominator = sum(math.exp(_cos(src[k], tgt[v]) / tau) for v in range(n))
        total += -math.log(numerator / denominator)
    return total / n


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(3)
    source = torch.randn(5, 4, generator=g)
    target = source + 0.8 * torch.randn(5, 4, generator=g)  # related but not identical
    return source, target


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_one_direction_matches_loops(pairs, tau):
    source, target = pairs
    expected = _one_direction(source.tolist(), target.tolist(), tau)
    got = info_nce(source, target, temperature=tau, query="source")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_default_queries_with_the_translation_as_the_reference_does(pairs, tau):
    """The middle-layer alignment study's reference: the non-English sentence retrieves among the English ones."""
    source, target = pairs
    expected = _one_direction(target.tolist(), source.tolist(), tau)
    assert info_nce(source, target, temperature=tau).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert info_nce(source, target, tau, query="target").item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert abs(expected - _one_direction(source.tolist(), target.tolist(), tau)) > 1e-3


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_symmetric_matches_loops(pairs, tau):
    source, target = pairs
    forward = _one_direction(source.tolist(), target.tolist(), tau)
    backward = _one_direction(target.tolist(), source.tolist(), tau)
    got = info_nce(source, target, temperature=tau, query="both")
    assert got.item() == pytest.approx((forward + backward) / 2, rel=1e-5, abs=1e-6)
    assert abs(forward - backward) > 1e-3, "fixture should make the two directions differ"
    assert got.item() != pytest.approx(info_nce(source, target, temperature=tau).item(), rel=1e-4)
    with pytest.raises(ValueError, match="query"):
        info_nce(source, target, tau, query="english")


@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_two_b_candidate_loss_matches_loops(pairs, tau):
    source, target = pairs
    sentences = source.tolist() + target.tolist()
    b = len(source)
    total = 0.0
    for j in range(2 * b):
        partner = j + b if j < b else j - b
        denominator = sum(math.exp(_cos(sentences[j], sentences[c]) / tau) for c in range(2 * b) if c != j)
        total += -math.log(math.exp(_cos(sentences[j], sentences[partner]) / tau) / denominator)
    expected = total / (2 * b)
    got = two_b_candidate_loss(source, target, temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # without the same-language negatives it would be the symmetric M2 loss: must differ
    assert got.item() != pytest.approx(info_nce(source, target, tau, query="both").item(), rel=1e-3)


def test_losses_are_fp32_with_gradients_from_bf16_inputs(pairs):
    source, target = (t.to(torch.bfloat16).requires_grad_() for t in pairs)
    for loss in (info_nce(source, target), info_nce(source, target, query="both"),
                 two_b_candidate_loss(source, target)):
        assert loss.dtype == torch.float32
        (grad,) = torch.autograd.grad(loss, source)
        assert torch.isfinite(grad.float()).all() and grad.abs().sum() > 0


def test_losses_leave_inputs_unchanged_and_reject_bad_shapes(pairs):
    source, target = pairs
    before = source.clone()
    info_nce(source, target)
    two_b_candidate_loss(source, target)
    assert torch.equal(source, before)
    with pytest.raises(ValueError):
        info_nce(source, target[:3])
    with pytest.raises(ValueError):
        two_b_candidate_loss(source[:1], target[:1])
    with pytest.raises(ValueError):
        info_nce(source, target, temperature=0.0)


# --- layer_embeddings on a tiny model ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tiny_path):
    return load_llm(LLMConfig(name_or_path=tiny_path("llama"), attn_implementation="sdpa")).eval()


def _batch(side):
    ids = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    if side == "left":
        ids = torch.tensor([[11, 12, 13, 14, 15], [0, 0, 21, 22, 23]])
        mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    return ids, mask


def _manual_mean(states, mask):
    rows = []
    for b in range(states.shape[0]):
        real = [t for t in range(states.shape[1]) if mask[b, t] == 1]
        rows.append(sum(states[b, t].float() for t in real) / len(real))
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
def test_layer_embeddings_picks_block_output(tiny_llama, side):
    """Index i = output of block i (captured by a hook), masked mean computed by hand."""
    ids, mask = _batch(side)
    captured = {}
    blocks = tiny_llama.layers
    hooks = [blk.register_forward_hook(
        lambda _m, _i, out, i=i: captured.__setitem__(i + 1, out[0] if isinstance(out, tuple) else out))
        for i, blk in enumerate(blocks)]
    try:
        out = run_llm(tiny_llama, mask, input_ids=ids, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    hs = out.hidden_states
    assert len(hs) == len(blocks) + 1
    for i in range(1, len(blocks)):  # blocks 1..L-1: raw block outputs
        torch.testing.assert_close(layer_embeddings(hs, mask, [i]), _manual_mean(captured[i], mask))
    torch.testing.assert_close(layer_embeddings(hs, mask, 0), _manual_mean(tiny_llama.embed_tokens(ids), mask))
    # -1 is transformers' last entry: the final-normed output (== last_hidden_state), not the raw last block
    torch.testing.assert_close(layer_embeddings(hs, mask, [-1]), _manual_mean(out.last_hidden_state, mask))
    raw_last = _manual_mean(captured[len(blocks)], mask)
    assert not torch.allclose(layer_embeddings(hs, mask, [-1]), raw_last)
    assert torch.equal(layer_embeddings(hs, mask, [-2]), layer_embeddings(hs, mask, [len(blocks) - 1]))


def test_layer_embeddings_averages_layers_and_checks_range(tiny_llama):
    ids, mask = _batch("right")
    hs = run_llm(tiny_llama, mask, input_ids=ids, output_hidden_states=True).hidden_states
    expected = (_manual_mean(hs[1], mask) + _manual_mean(hs[2], mask) + _manual_mean(hs[4], mask)) / 3
    got = layer_embeddings(hs, mask, [1, 2, -1])
    assert got.shape == (2, hs[0].shape[-1]) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="out of range"):
        layer_embeddings(hs, mask, [len(hs)])
    with pytest.raises(ValueError):
        layer_embeddings(hs, mask, [])


@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_skip_first_leaves_out_each_rows_first_real_token(side):
    """alignment.pooling: mean_skip_first averages the real tokens after the first; a one-token row keeps it."""
    ids, mask = _batch(side)
    mask = torch.cat([mask, torch.tensor([[0, 0, 0, 0, 1]] if side == "left" else [[1, 0, 0, 0, 0]])])
    states = torch.randn(3, 5, 4)
    states[:, 0] += 1000.0 if side == "right" else 0.0   # a sink on a first token weighs on the plain mean only
    expected = []
    for b in range(3):
        real = [t for t in range(5) if mask[b, t] == 1]
        kept = real[1:] if len(real) > 1 else real
        expected.append(sum(states[b, t] for t in kept) / len(kept))
    got = layer_embeddings([states], mask, 0, mode="mean_skip_first")
    torch.testing.assert_close(got, torch.stack(expected))
    torch.testing.assert_close(layer_embeddings([states], mask, 0), _manual_mean(states, mask))
    with pytest.raises(ValueError, match="alignment.pooling"):
        layer_embeddings([states], mask, 0, mode="max")


def test_sentence_embeddings_gets_lora_gradients(tiny_path):
    llm = load_llm(LLMConfig(name_or_path=tiny_path("llama"), attn_implementation="sdpa"))
    lora = add_lora(llm, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    ids, mask = _batch("left")
    ids2 = ids.flip(1) * mask.flip(1)
    loss = info_nce(sentence_embeddings(lora, ids, mask, 2), sentence_embeddings(lora, ids2, mask.flip(1), 2))
    loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_A" in n and "layers.0." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    unused = [p.grad for n, p in lora.named_parameters() if "lora_" in n and "layers.3." in n]
    assert all(g is None or g.abs().sum() == 0 for g in unused), "layer above the pooled one got gradient"
