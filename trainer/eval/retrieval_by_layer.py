"""Translation retrieval by layer as an evaluation component any recipe composes.

    retrieval = RetrievalByLayer(sentences, tokenizer, hidden_states, layers=[0, 1, 2, 3, 4], aligned=[2],
                                 subset=["eng_Latn", "deu_Latn"], out_dir=Path("run/eval"))
    metrics = retrieval("before")      # every rank; rank 0 writes eval/retrieval_before/ and the plots

It needs no particular model: `hidden_states(input_ids, attention_mask)` returns the model's
`hidden_states` tuple ([batch, seq, d] per layer, transformers' convention). The sentences are
split over the ranks (`trainer.eval.sharded`), so under ZeRO-3 every rank runs the same forwards.

Metrics, for a label `tag`: `retrieval_<tag>` the mean accuracy over all ordered language pairs
at the `aligned` layers (averaged over them when several), `retrieval_<tag>_layer<i>` the mean at
each evaluated layer, and `retrieval_<tag>_subset` the mean over the ordered pairs among `subset`
(English and the aligned languages) that the set holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from trainer.eval.plots import plot_layer_curves, save_retrieval_plots
from trainer.eval.retrieval import DEFAULT_K, RetrievalResult
from trainer.eval.sharded import retrieval_over_ranks

HiddenStates = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]
LAYER_CURVES = "retrieval_layers.png"


class RetrievalByLayer:
    """Retrieval accuracy now, labelled `tag`; keeps every result for the before/after plot."""

    def __init__(self, sentences: Mapping[str, Sequence[str]], tokenizer, hidden_states: HiddenStates,
                 layers: Sequence[int], aligned: Sequence[int], out_dir: Path, subset: Sequence[str] | None = None,
                 k: int = DEFAULT_K, batch_size: int = 32, max_length: int | None = None,
                 rank: int = 0, world_size: int = 1, candidates: str = "knn", pooling: str = "mean"):
        self.sentences, self.tokenizer, self.hidden_states = sentences, tokenizer, hidden_states
        self.layers = sorted(set(layers) | set(aligned))
        self.aligned = list(aligned)
        self.subset = list(subset) if subset is not None else None
        self.out_dir = out_dir
        self.k, self.batch_size, self.max_length, self.candidates = k, batch_size, max_length, candidates
        self.pooling = pooling
        self.rank, self.world_size = rank, world_size
        self.results: dict[str, RetrievalResult] = {}

    def folder(self, tag: str) -> Path:
        return self.out_dir / f"retrieval_{tag}"

    @property
    def curves(self) -> Path:
        return self.out_dir / LAYER_CURVES

    def __call__(self, tag: str) -> dict[str, float]:
        result = retrieval_over_ranks(self.hidden_states, self.tokenizer, self.sentences, self.layers, self.k,
                                      self.batch_size, self.max_length, self.rank, self.world_size,
                                      self.candidates, self.pooling)
        self.results[tag] = result
        means = dict(zip(result.layers, result.mean_per_layer().tolist()))
        metrics = {f"retrieval_{tag}": sum(means[i] for i in self.aligned) / len(self.aligned)}
        metrics |= {f"retrieval_{tag}_layer{i}": means[i] for i in result.layers}
        if self.subset is not None:
            subset = [result.languages.index(lang) for lang in self.subset if lang in result.languages]
            if len(subset) >= 2:
                index = torch.tensor(subset)
                within = [result.matrix(i)[index][:, index].nanmean().item() for i in self.aligned]
                metrics[f"retrieval_{tag}_subset"] = sum(within) / len(within)
        if self.rank == 0:
            result.write_csv(self.folder(tag))
            save_retrieval_plots(result, self.folder(tag), layer=self.aligned[0])
            plot_layer_curves(self.results, self.curves)
        return metrics
