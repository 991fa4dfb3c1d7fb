"""Translation retrieval accuracy with ratio-margin scoring (LASER xsim style), per layer and pair."""

import csv
import math

import pytest
import torch

from trainer.config import LLMConfig
from trainer.eval.plots import plot_layer_curve, plot_layer_curves, plot_pair_heatmap, save_retrieval_plots
from trainer.tiny import text as synthetic
from trainer.eval.retrieval import (
    embed_languages,
    hidden_states_of,
    evaluate_retrieval,
    margin_scores,
    retrieval_accuracy,
    tokenize_languages,
)
from trainer.models.llm_forward import run_llm
from trainer.models.loading import load_llm, load_llm_tokenizer
from trainer.models.pooling import layer_embeddings


def _cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _brute_margins(xs, ys, k):
    """Double loop over (x, y); k-NN of x among ys and of y among xs by sorting explicit lists."""
    def knn_mean(u, pool):
        sims = sorted((_cos(u, w) for w in pool), reverse=True)
        top = sims[:min(k, len(sims))]
        return sum(top) / len(top)

    fwd = [knn_mean(x, ys) for x in xs]
    bwd = [knn_mean(y, xs) for y in ys]
    return [[_cos(x, y) / ((fwd[i] + bwd[j]) / 2) for j, y in enumerate(ys)] for i, x in enumerate(xs)]


def _brute_accuracy(xs, ys, k, candidates="all"):
    """all: the margin argmax over every target; knn (LASER's xsim): over x's k cosine-nearest targets only."""
    margins = _brute_margins(xs, ys, k)
    hits = 0
    for i, x in enumerate(xs):
        pool = list(range(len(ys)))
        if candidates == "knn":
            pool = sorted(pool, key=lambda j: _cos(x, ys[j]), reverse=True)[:min(k, len(ys))]
        hits += max(pool, key=lambda j: margins[i][j]) == i
    return hits / len(xs)


@pytest.mark.parametrize("k", [4, 2, 9])
def test_margin_scores_match_brute_force(k):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g), torch.randn(6, 5, generator=g)
    got = margin_scores(x, y, k=k)
    expected = torch.tensor(_brute_margins(x.tolist(), y.tolist(), k))
    assert got.shape == (7, 6)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # fp32 vs Python floats


def _noisy_copies(n_lang, n_layers, n, d, noise, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, n_layers, n, d, generator=g)
    offsets = torch.randn(n_lang, n_layers, 1, d, generator=g)  # a language-specific shift, as in real models
    return base + 0.5 * offsets + noise * torch.randn(n_lang, n_layers, n, d, generator=g)


@pytest.mark.parametrize("candidates", ["knn", "all"])
def test_accuracy_matches_brute_force_per_pair_and_layer(candidates):
    emb = _noisy_copies(n_lang=3, n_layers=2, n=12, d=6, noise=1.0, seed=1)
    emb[:, 1] *= torch.linspace(0.5, 2.0, 12).view(1, 12, 1)  # norms vary: cosine must not care
    result = retrieval_accuracy(emb, languages=["a", "b", "c"], layers=[3, 7], candidates=candidates)
    seen = set()
    for li, layer in enumerate([3, 7]):
        for s in range(3):
            for t in range(3):
                if s == t:
                    assert math.isnan(result.accuracy[li, s, t])
                    continue
                expected = _brute_accuracy(emb[s, li].tolist(), emb[t, li].tolist(), 4, candidates)
                assert result.accuracy[li, s, t].item() == pytest.approx(expected)
                seen.add(round(expected, 3))
    assert len(seen) > 2 and min(seen) < 1.0, "data should give varied, imperfect accuracies"
    rows = result.rows()
    assert len(rows) == 2 * 3 * 2 and {r["layer"] for r in rows} == {3, 7}
    assert rows[0] == {"layer": 3, "src": "a", "tgt": "b", "accuracy": result.accuracy[0, 0, 1].item()}


def test_xsim_candidates_differ_from_all_candidates_on_some_rows():
    """The default follows LASER's xsim (best margin among the k cosine-nearest); on noisy data the
    margin sometimes lifts a target outside them, where the two conventions disagree."""
    differing = 0
    for seed in range(10):
        emb = _noisy_copies(n_lang=3, n_layers=1, n=30, d=8, noise=1.5, seed=seed)
        knn, every = (retrieval_accuracy(emb, candidates=c).accuracy for c in ("knn", "all"))
        assert torch.equal(retrieval_accuracy(emb).accuracy.nan_to_num(), knn.nan_to_num())   # knn is the default
        differing += int((knn.nan_to_num() != every.nan_to_num()).any())
    assert differing > 0
    with pytest.raises(ValueError, match="candidates"):
        retrieval_accuracy(emb, candidates="top1")


def test_noisy_copies_are_all_retrieved_and_input_is_not_normalised():
    emb = _noisy_copies(n_lang=5, n_layers=3, n=200, d=32, noise=0.05, seed=2)
    before = emb.clone()
    result = retrieval_accuracy(emb)
    assert torch.equal(emb, before), "embeddings must not be normalised in place"
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    assert torch.all(result.accuracy[:, off_diagonal] == 1.0)
    assert torch.all(result.mean_per_layer() == 1.0)


def test_shuffled_targets_give_chance_accuracy():
    """Each language's sentences permuted independently: expected accuracy 1/n per pair.

    Tolerance: the mean over all 20 ordered pairs and 2 layers (8,000 trials, expected 40 hits,
    sd about 6.3) must stay below 3/n (120 hits), i.e. far above chance and far below any signal.
    """
    n = 200
    emb = _noisy_copies(n_lang=5, n_layers=2, n=n, d=32, noise=0.05, seed=3)
    assert retrieval_accuracy(emb).mean_per_layer().min().item() == 1.0  # control: aligned data
    g = torch.Generator().manual_seed(4)
    for lang in range(5):
        emb[lang] = emb[lang][:, torch.randperm(n, generator=g)]
    result = retrieval_accuracy(emb)
    assert result.mean_per_layer().mean().item() < 3 / n


def test_results_table_csv_and_dataframe(tmp_path):
    emb = _noisy_copies(n_lang=3, n_layers=2, n=20, d=8, noise=0.7, seed=5)
    result = retrieval_accuracy(emb, languages=["eng_Latn", "deu_Latn", "ell_Grek"], layers=[0, 4])
    paths = result.write_csv(tmp_path)
    with paths["pairs"].open() as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 12 and pairs[0].keys() == {"layer", "src", "tgt", "accuracy"}
    assert float(pairs[1]["accuracy"]) == pytest.approx(result.rows()[1]["accuracy"])
    with paths["layers"].open() as f:
        layers = list(csv.DictReader(f))
    means = [sum(r["accuracy"] for r in result.rows() if r["layer"] == layer) / 6 for layer in (0, 4)]
    assert [float(r["mean_accuracy"]) for r in layers] == pytest.approx(means)
    assert result.best_layer() == (0, 4)[int(means[1] > means[0])]
    frame = result.to_dataframe()
    assert list(frame.columns) == ["layer", "src", "tgt", "accuracy"] and len(frame) == 12


def test_plots_are_png(tmp_path):
    emb = _noisy_copies(n_lang=4, n_layers=3, n=20, d=8, noise=0.7, seed=6)
    result = retrieval_accuracy(emb, languages=["eng_Latn", "deu_Latn", "ell_Grek", "rus_Cyrl"])
    heat = plot_pair_heatmap(result, 1, tmp_path / "h.png")
    curve = plot_layer_curve(result, tmp_path / "sub" / "c.png")
    both = save_retrieval_plots(result, tmp_path / "both")
    before = retrieval_accuracy(_noisy_copies(n_lang=4, n_layers=3, n=20, d=8, noise=3.0, seed=7))
    curves = plot_layer_curves({"before": before, "after": result}, tmp_path / "curves.png")
    for path in (heat, curve, curves, *both.values()):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert both["heatmap"].name == f"retrieval_heatmap_layer{result.best_layer()}.png"


# --- embedding with a model -----------------------------------------------------------------------

@pytest.mark.parametrize("side", ["left", "right"])
def test_embed_languages_matches_manual_pooling_and_batch_size(tiny_path, side):
    cfg = LLMConfig(name_or_path=tiny_path("llama"), attn_implementation="sdpa", padding_side=side)
    model, tok = load_llm(cfg).eval(), load_llm_tokenizer(cfg)
    langs = ["deu_Latn", "ell_Grek", "rus_Cyrl"]
    sentences = {"eng_Latn": [s for s, _ in synthetic.parallel_sentences(langs[0], 9, seed=1)]}
    for lang in langs:
        sentences[lang] = [t for _, t in synthetic.parallel_sentences(lang, 9, seed=1)]
    tokenized = tokenize_languages(tok, sentences)
    names, layers, emb = embed_languages(hidden_states_of(model), tokenized, batch_size=4)
    assert names == ["eng_Latn", *langs] and layers == [0, 1, 2, 3, 4]
    assert emb.shape == (4, 5, 9, 64) and emb.dtype == torch.float32
    _, _, big = embed_languages(hidden_states_of(model), tokenized, batch_size=50)
    torch.testing.assert_close(emb, big, rtol=1e-4, atol=1e-5)
    # sentence 5 of Greek, alone and unpadded, pooled by hand
    enc = tok([sentences["ell_Grek"][5]], return_tensors="pt")
    hs = run_llm(model, enc["attention_mask"], input_ids=enc["input_ids"], output_hidden_states=True).hidden_states
    for layer in range(5):
        torch.testing.assert_close(emb[2, layer, 5], layer_embeddings(hs, enc["attention_mask"], layer)[0],
                                   rtol=1e-4, atol=1e-5)
    _, chosen, sub = embed_languages(hidden_states_of(model), tokenized, batch_size=4, layers=[2, -1], dtype=torch.bfloat16)
    assert chosen == [2, 4] and sub.dtype == torch.bfloat16
    torch.testing.assert_close(sub.float(), emb[:, [2, 4]], rtol=2e-2, atol=2e-2)
    result = evaluate_retrieval(model, tokenized, batch_size=4, layers=[2, -1])
    assert result.layers == [2, 4] and result.accuracy.shape == (2, 4, 4)
    assert model.training is False
