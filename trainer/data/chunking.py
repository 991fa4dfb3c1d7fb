"""Dual tokenization for MT-LLM stage 1: documents cut into spans that fit both tokenizers.

Each document is tokenized once by each
tokenizer with character offsets, and cut at positions that are token
boundaries in BOTH tokenizations, greedily as far as both views (special
tokens included) stay <= max_length, preferring sentence ends. A view is
then the tokenizer's own prefix/suffix specials around the slice of the
document's ids. Both views therefore cover exactly the same text span; no
truncation anywhere. A stretch without a common boundary that does not fit
(an over-long "word") is hard-split by characters and tokenized piece by piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from trainer.errors import DataError

SENTENCE_ENDS = ".!?…。！？"
WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)
MIN_FILL = 0.5  # a sentence-end (else word-start) cut is preferred when it keeps >= this share of the longest cut


@dataclass
class Chunk:
    """One example: a text span and its two views (special tokens included, unpadded)."""

    text: str
    llm_ids: np.ndarray  # [n_llm] int64, <= max_length
    nllb_ids: np.ndarray  # [n_nllb] int64, <= max_length


class _View:
    """One tokenizer as the chunker needs it: fast backend, special-token prefix/suffix, budget."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str, max_length: int):
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is None:
            raise DataError(f"{name} tokenizer {type(tokenizer).__name__} is not a fast tokenizer: the stream "
                             f"needs character offsets (load it with AutoTokenizer, use_fast=True)")
        probe = "hello world"
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                self.prefix, self.suffix = full[:start], full[start + len(plain):]
                break
        else:
            raise DataError(f"{name} tokenizer: its special tokens do not wrap the text (got {full} for {plain}); "
                             f"only prefix/suffix templates are supported")
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if self.budget < 1:
            raise DataError(f"max_length={max_length} leaves no room for text in the {name} view "
                             f"({len(self.prefix) + len(self.suffix)} special tokens)")
        self.name = name

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """texts -> [(ids [n], offsets [n, 2] in characters)] without special tokens."""
        out = []
        for enc in self.backend.encode_batch(texts, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            out.append((ids, offsets))
        return out

    def wrap(self, ids: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self.prefix, dtype=np.int64), ids,
                               np.asarray(self.suffix, dtype=np.int64)])


def _canonical_starts(offsets: np.ndarray, nonws: np.ndarray, n_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Token starts moved forward past whitespace, and the positions where a clean cut is possible.

    A token's canonical start is the first non-space character at or after its
    start (so " word" and "word" both start at "w"). A position P is a cut when
    the first token with canonical start P begins at or after the end of the
    previous token (no token straddles it).
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    idx = np.searchsorted(nonws, starts)
    cs = np.where(idx < len(nonws), nonws[np.minimum(idx, len(nonws) - 1)], n_chars)
    cs = np.maximum.accumulate(cs) if len(cs) else cs
    first = np.ones(len(cs), dtype=bool)
    first[1:] = cs[1:] != cs[:-1]
    clean = np.ones(len(cs), dtype=bool)
    clean[1:] = ends[:-1] <= starts[1:]
    return cs, cs[first & clean]


class DualChunker:
    """Cut documents into spans whose LLM view and NLLB view both fit `max_length`.

    `chunk_documents(texts)` -> for each text a list of `Chunk`s (possibly empty
    for a blank text). Concatenated, a document's chunk texts give back the
    document up to whitespace. Each view = the tokenizer's specials around the
    slice of the document-level token ids between two common token boundaries,
    so both views decode to the same span. Greedy: each chunk extends to the
    farthest common boundary that fits both budgets; the farthest sentence end
    (else the farthest word start) is taken instead when it keeps at least half
    of that length, so cuts inside words happen only for over-long words.
    """

    def __init__(self, llm_tokenizer: PreTrainedTokenizerBase, nllb_tokenizer: PreTrainedTokenizerBase,
                 max_length: int):
        self.max_length = max_length
        self.llm = _View(llm_tokenizer, "llm", max_length)
        self.nllb = _View(nllb_tokenizer, "nllb", max_length)

    def chunk_documents(self, texts: list[str]) -> list[list[Chunk]]:
        llm, nllb = self.llm.encode(texts), self.nllb.encode(texts)
        return [self._chunk(t, *a, *b) for t, a, b in zip(texts, llm, nllb)]

    def chunk(self, text: str) -> list[Chunk]:
        return self.chunk_documents([text])[0]

    def _chunk(self, doc: str, l_ids, l_off, n_ids, n_off) -> list[Chunk]:
        codes = np.frombuffer(doc.encode("utf-32-le"), dtype=np.uint32)
        is_ws = np.isin(codes, WHITESPACE)
        nonws = np.flatnonzero(~is_ws)
        if len(nonws) == 0:
            return []
        n_chars = len(doc)
        l_cs, l_cuts = _canonical_starts(l_off, nonws, n_chars)
        n_cs, n_cuts = _canonical_starts(n_off, nonws, n_chars)
        common = np.intersect1d(l_cuts, n_cuts)
        common = common[(common > nonws[0]) & (common < n_chars)]
        # Sentence cuts: the previous non-space character ends a sentence, or a newline lies between.
        prev = nonws[np.searchsorted(nonws, common) - 1]
        newlines = np.cumsum(codes == 10)
        sentence = np.isin(codes[prev], np.frombuffer(SENTENCE_ENDS.encode("utf-32-le"), dtype=np.uint32))
        sentence |= newlines[common - 1] > newlines[prev]
        preferred = (common[sentence], common[is_ws[common - 1]])  # sentence ends, then word starts
        bl, bn = self.llm.budget, self.nllb.budget
        chunks: list[Chunk] = []
        pos = int(nonws[0])
        while True:
            kl, kn = np.searchsorted(l_cs, pos), np.searchsorted(n_cs, pos)
            if len(l_cs) - kl <= bl and len(n_cs) - kn <= bn:  # the rest fits: one last chunk
                chunks.append(Chunk(doc[pos:].strip(), self.llm.wrap(l_ids[kl:]), self.nllb.wrap(n_ids[kn:])))
                return chunks
            limit = min(l_cs[kl + bl] if kl + bl < len(l_cs) else n_chars + 1,
                        n_cs[kn + bn] if kn + bn < len(n_cs) else n_chars + 1)
            lo = np.searchsorted(common, pos, side="right")
            hi = np.searchsorted(common, limit, side="right")
            if hi > lo:
                cut = int(common[hi - 1])
                size = max(np.searchsorted(l_cs, cut) - kl, np.searchsorted(n_cs, cut) - kn)
                for cuts in preferred:
                    s = np.searchsorted(cuts, limit, side="right") - 1
                    if s >= 0 and cuts[s] > pos:
                        alt = int(cuts[s])
                        if max(np.searchsorted(l_cs, alt) - kl, np.searchsorted(n_cs, alt) - kn) >= \
                                MIN_FILL * size:
                            cut = alt
                            break
                el, en = np.searchsorted(l_cs, cut), np.searchsorted(n_cs, cut)
                chunks.append(Chunk(doc[pos:cut].strip(), self.llm.wrap(l_ids[kl:el]),
                                    self.nllb.wrap(n_ids[kn:en])))
                pos = cut
            else:  # no common boundary fits: hard-split the stretch up to the next one
                end = int(common[lo]) if lo < len(common) else n_chars
                chunks += self._hard_split(doc, pos, end)
                if end == n_chars:
                    return chunks
                pos = end

    def _hard_split(self, doc: str, start: int, end: int) -> list[Chunk]:
        """Pieces of doc[start:end], each the longest prefix whose separate tokenizations both fit."""
        pieces = []
        while start < end and doc[start:end].strip():
            lo, hi = start + 1, end  # invariant: doc[start:lo] fits (checked below), search the largest
            if not self._fits(doc[start:lo]):
                raise DataError(f"max_length={self.max_length} cannot hold even the character {doc[start]!r}")
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._fits(doc[start:mid]):
                    lo = mid
                else:
                    hi = mid - 1
            text = doc[start:lo]
            (l_ids, _), = self.llm.encode([text])
            (n_ids, _), = self.nllb.encode([text])
            if text.strip():
                pieces.append(Chunk(text.strip(), self.llm.wrap(l_ids), self.nllb.wrap(n_ids)))
            start = lo
        return pieces

    def _fits(self, text: str) -> bool:
        (l_ids, _), = self.llm.encode([text])
        (n_ids, _), = self.nllb.encode([text])
        return len(l_ids) <= self.llm.budget and len(n_ids) <= self.nllb.budget
