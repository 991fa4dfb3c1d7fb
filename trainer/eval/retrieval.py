"""Translation retrieval accuracy per layer over a multi-way parallel set (diagnostic for M1-M3).

For `N` languages with the same `n` sentences in the same order (FLORES-200 dev: 997), every
sentence is embedded per layer (masked mean of `hidden_states[i]`, see
`trainer.objectives.contrastive` for the index convention). For each of the `N(N-1)` ordered
language pairs and each layer, each source sentence `x` retrieves the target sentence `y` with
the highest ratio margin (LASER xsim, k = 4):

    margin(x, y) = cos(x, y) / ((avg_k cos(x, NN_k(x)) + avg_k cos(y, NN_k(y))) / 2)

`NN_k(x)` are the k nearest target sentences of `x`, `NN_k(y)` the k nearest source sentences of
`y` (neighbourhoods in both directions). A hit is the gold translation (same index).

Candidates (`candidates`): `knn` (default, as LASER's xsim, which the studies adapted) scores
only the k cosine-nearest targets of `x` by the margin and takes the best of them; `all` takes the
margin argmax over every target sentence. The two differ only when the margin lifts a candidate
outside the cosine top-k above all of them.

Choices:
- cosine on L2-normalised *copies* (the caller's embeddings are never modified; faiss would
  normalise in place);
- ties go to the lower index (`argmax`); with continuous embeddings they do not occur;
- if `n < k`, all `n` candidates form the neighbourhood.

Cost: per layer, each language is normalised once; the margin matrix of an unordered pair
{a, b} serves both directions (row argmax: a -> b, column argmax: b -> a), so a layer costs
N(N-1)/2 matmuls [n, d] x [d, n], batched over all b > a.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.fsutil import write_atomic
from trainer.models.llm_forward import run_llm
from trainer.models.pooling import alignment_mask, masked_mean, resolve_layers

DEFAULT_K = 4


# --- scoring -------------------------------------------------------------------------------------

def knn_means(sim: torch.Tensor, k: int = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines [..., n, m] -> (avg_k cos(x, NN_k(x)) [..., n] over targets, avg_k cos(y, NN_k(y)) [..., m] over sources)."""
    k_rows = min(k, sim.shape[-1])
    k_cols = min(k, sim.shape[-2])
    rows = sim.topk(k_rows, dim=-1).values.mean(dim=-1)
    cols = sim.transpose(-1, -2).topk(k_cols, dim=-1).values.mean(dim=-1)
    return rows, cols


def ratio_margin(sim: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Cosines [..., n, m] -> ratio-margin scores [..., n, m] (formula in the module docstring)."""
    rows, cols = knn_means(sim, k)
    return sim / ((rows.unsqueeze(-1) + cols.unsqueeze(-2)) / 2)


def margin_scores(x: torch.Tensor, y: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Source [..., n, d], target [..., m, d] embeddings -> ratio-margin scores [..., n, m] fp32.

    Cosine on normalised copies; `x` and `y` are left unchanged.
    """
    xn = F.normalize(x.float(), dim=-1)
    yn = F.normalize(y.float(), dim=-1)
    return ratio_margin(xn @ yn.transpose(-1, -2), k)


CANDIDATES = ("knn", "all")


def _best(margin: torch.Tensor, sim: torch.Tensor, k: int, dim: int, candidates: str) -> torch.Tensor:
    """Index along `dim` of the best-margin candidate: among the k cosine-nearest (knn) or all of them."""
    if candidates == "all":
        return margin.argmax(dim=dim)
    near = sim.topk(min(k, sim.shape[dim]), dim=dim).indices
    return near.gather(dim, margin.gather(dim, near).argmax(dim=dim, keepdim=True)).squeeze(dim)


def layer_accuracy(normed: torch.Tensor, k: int = DEFAULT_K, candidates: str = "knn") -> torch.Tensor:
    """One layer's L2-normalised embeddings [N, n, d] -> accuracy [N, N] (row src, col tgt; NaN diagonal).

    For each source language `a`, one batched matmul against all languages `b > a` gives the
    cosines [N-a-1, n, n]; the margin matrix's row argmax is a -> b, its column argmax b -> a.
    Two [N-1, n, n] fp32 work buffers (three with `knn`) are allocated once per call and reused (fresh large
    allocations cost more than the arithmetic on CPU).
    """
    if candidates not in CANDIDATES:
        raise ValueError(f"candidates must be one of {', '.join(CANDIDATES)}, got {candidates!r}")
    n_lang, n = normed.shape[0], normed.shape[1]
    acc = torch.full((n_lang, n_lang), float("nan"), dtype=torch.float64)
    gold = torch.arange(n, device=normed.device)
    sim_buf = torch.empty(n_lang - 1, n, n, dtype=normed.dtype, device=normed.device)
    den_buf = torch.empty_like(sim_buf)
    cos_buf = torch.empty_like(sim_buf) if candidates == "knn" else None
    for a in range(n_lang - 1):
        m = n_lang - a - 1
        sim, den = sim_buf[:m], den_buf[:m]
        torch.matmul(normed[a].unsqueeze(0).expand(m, -1, -1), normed[a + 1:].transpose(1, 2), out=sim)
        rows, cols = knn_means(sim, k)
        torch.add(rows.unsqueeze(-1), cols.unsqueeze(-2), out=den)
        cosine = cos_buf[:m].copy_(sim) if candidates == "knn" else sim   # neighbourhoods are by cosine
        margin = sim.div_(den)  # ratio margin / 2, in place: the constant factor does not move the argmax
        acc[a, a + 1:] = (_best(margin, cosine, k, 2, candidates) == gold).double().mean(dim=1).cpu()  # a -> b
        acc[a + 1:, a] = (_best(margin, cosine, k, 1, candidates) == gold).double().mean(dim=1).cpu()  # b -> a
    return acc


def retrieval_accuracy(embeddings: torch.Tensor, languages: Sequence[str] | None = None,
                       layers: Sequence[int] | None = None, k: int = DEFAULT_K,
                       candidates: str = "knn") -> "RetrievalResult":
    """Embeddings [N_languages, n_layers, n_sentences, d] -> accuracy for every layer and ordered pair.

    Row `i` of language `a` is the translation of row `i` of every other language. `languages`
    labels dim 0 (default "0", "1", ...), `layers` labels dim 1 (default 0..n_layers-1, i.e. the
    hidden_states indices when every layer was embedded). Any float dtype; computed in fp32, one
    layer at a time, on the embeddings' device. The input is not modified.
    """
    if embeddings.ndim != 4:
        raise ValueError(f"expected [languages, layers, sentences, d], got shape {tuple(embeddings.shape)}")
    n_lang, n_layers = embeddings.shape[:2]
    if n_lang < 2:
        raise ValueError("retrieval needs at least 2 languages")
    languages = [str(i) for i in range(n_lang)] if languages is None else list(languages)
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(languages) != n_lang or len(layers) != n_layers:
        raise ValueError(f"{len(languages)} language and {len(layers)} layer labels for embeddings "
                         f"of shape {tuple(embeddings.shape)}")
    per_layer = []
    for li in range(n_layers):
        normed = F.normalize(embeddings[:, li].float(), dim=-1)  # a new tensor: the input stays as it is
        per_layer.append(layer_accuracy(normed, k, candidates))
    return RetrievalResult(languages=languages, layers=layers, accuracy=torch.stack(per_layer))


# --- results -------------------------------------------------------------------------------------

@dataclass
class RetrievalResult:
    """Accuracy [n_layers, N, N] (row = source, column = target language; NaN on the diagonal)."""

    languages: list[str]
    layers: list[int]
    accuracy: torch.Tensor

    def rows(self) -> list[dict]:
        """One dict per (layer, src, tgt) with src != tgt: keys layer, src, tgt, accuracy."""
        out = []
        for li, layer in enumerate(self.layers):
            for a, src in enumerate(self.languages):
                for b, tgt in enumerate(self.languages):
                    if a != b:
                        out.append({"layer": layer, "src": src, "tgt": tgt,
                                    "accuracy": float(self.accuracy[li, a, b])})
        return out

    def mean_per_layer(self) -> torch.Tensor:
        """[n_layers] mean accuracy over the N(N-1) ordered pairs."""
        return self.accuracy.nanmean(dim=(1, 2))

    def layer_means(self) -> list[dict]:
        """One dict per layer: keys layer, mean_accuracy."""
        return [{"layer": layer, "mean_accuracy": float(m)} for layer, m in zip(self.layers, self.mean_per_layer())]

    def best_layer(self) -> int:
        """The layer label with the highest mean accuracy (the first one on ties)."""
        return self.layers[int(self.mean_per_layer().argmax())]

    def matrix(self, layer: int) -> torch.Tensor:
        """[N, N] accuracies at the layer labelled `layer` (src rows, tgt columns)."""
        return self.accuracy[self.layers.index(layer)]

    def to_dataframe(self):
        """The `rows()` table as a pandas DataFrame (columns layer, src, tgt, accuracy)."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["layer", "src", "tgt", "accuracy"])

    def write_csv(self, out_dir: str | Path, prefix: str = "retrieval") -> dict[str, Path]:
        """Write `{prefix}_pairs.csv` (layer, src, tgt, accuracy) and `{prefix}_layers.csv` (layer, mean_accuracy)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"pairs": out / f"{prefix}_pairs.csv", "layers": out / f"{prefix}_layers.csv"}
        _write_rows(paths["pairs"], self.rows(), ["layer", "src", "tgt", "accuracy"])
        _write_rows(paths["layers"], self.layer_means(), ["layer", "mean_accuracy"])
        return paths


def _write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


# --- embedding a multi-way parallel set with a model ---------------------------------------------

def tokenize_languages(tokenizer, sentences: Mapping[str, Sequence[str]],
                       max_length: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{language: sentences} -> {language: {input_ids, attention_mask} [n, s]}, the tokenizer's padding side."""
    lengths = {lang: len(s) for lang, s in sentences.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"multi-way parallel set expected: sentence counts differ {lengths}")
    out = {}
    for lang, texts in sentences.items():
        enc = tokenizer(list(texts), padding=True, truncation=max_length is not None, max_length=max_length,
                        return_tensors="pt")
        out[lang] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return out


HiddenStates = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


def hidden_states_of(model: torch.nn.Module) -> HiddenStates:
    """`(input_ids, attention_mask) -> hidden_states` of a transformers model (plain, peft or bidirectional).

    The batch is moved to the model's device; `run_llm` computes position ids right for either padding side.
    """
    device = next(model.parameters()).device

    def hidden_states(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Sequence[torch.Tensor]:
        return run_llm(model, attention_mask.to(device), input_ids=input_ids.to(device),
                       output_hidden_states=True).hidden_states

    return hidden_states


@torch.no_grad()
def embed_languages(hidden_states: HiddenStates, tokenized: Mapping[str, Mapping[str, torch.Tensor]],
                    batch_size: int = 32, layers: Sequence[int] | None = None,
                    dtype: torch.dtype = torch.float32, pooling: str = "mean",
                    ) -> tuple[list[str], list[int], torch.Tensor]:
    """Masked-mean embeddings of every sentence at every layer -> (languages, layers, [N, n_layers, n, d]).

    `hidden_states(input_ids, attention_mask)` runs the model (`hidden_states_of(model)` for a
    transformers model; the caller chooses eval mode). `tokenized[lang]` holds `input_ids` and
    `attention_mask` [n, s] (either padding side); each batch is cut to the columns holding real
    tokens. `layers` are hidden_states indices (default: all, 0 = embeddings .. L = last,
    final-normed). Result on CPU in `dtype` (bf16 halves the memory: 20 x 33 x 997 x 4096 is
    10.8 GB in fp32). `pooling`: the tokens averaged, as `alignment.pooling` (`mean`: every real one).
    """
    languages = list(tokenized)
    n = _common_size(tokenized)
    result, chosen = None, None
    for li, lang in enumerate(languages):
        for start in range(0, n, batch_size):
            ids, mask = _trimmed_batch(tokenized[lang], start, batch_size)
            states = hidden_states(ids, mask)
            if result is None:
                chosen = list(range(len(states))) if layers is None else resolve_layers(list(layers), len(states))
                result = torch.empty(len(languages), len(chosen), n, states[0].shape[-1], dtype=dtype)
            mask_dev = alignment_mask(mask.to(states[0].device), pooling)
            for j, layer in enumerate(chosen):
                pooled = masked_mean(states[layer], mask_dev)
                result[li, j, start:start + ids.shape[0]] = pooled.to("cpu", dtype)
    return languages, chosen, result


def evaluate_retrieval(model: torch.nn.Module, tokenized: Mapping[str, Mapping[str, torch.Tensor]],
                       batch_size: int = 32, layers: Sequence[int] | None = None, k: int = DEFAULT_K,
                       dtype: torch.dtype = torch.float32, candidates: str = "knn") -> RetrievalResult:
    """The whole diagnostic for one model, in eval mode (restored after): embed, then `retrieval_accuracy`."""
    was_training = model.training
    model.eval()
    try:
        languages, chosen, emb = embed_languages(hidden_states_of(model), tokenized, batch_size, layers, dtype)
    finally:
        model.train(was_training)
    return retrieval_accuracy(emb, languages, chosen, k, candidates)


def _common_size(tokenized: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
    sizes = {lang: int(t["input_ids"].shape[0]) for lang, t in tokenized.items()}
    if len(sizes) < 2 or len(set(sizes.values())) != 1:
        raise ValueError(f"need >= 2 languages with equally many sentences, got {sizes}")
    return next(iter(sizes.values()))


def _trimmed_batch(enc: Mapping[str, torch.Tensor], start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = enc["input_ids"][start:start + size]
    mask = enc["attention_mask"][start:start + size]
    keep = mask.bool().any(dim=0)
    return ids[:, keep], mask[:, keep]
