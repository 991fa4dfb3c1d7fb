"""FLARE's inputs (M4): a target-language example with its English side, joined by the benchmark's own id.

    pairs = pair_by_id(target_examples, english_examples, what="xnli deu_Latn test")
    batch = FlareCollator(llm_tokenizer, max_length, method="fusion")(pairs)
    # input_ids, attention_mask [b, s]: the target text;  source_ids, source_mask [b, s]: its English
    # (fusion), or the target text in NLLB tokens (fusion_mt); both views padded to one length s

A translated row keeps its original's id (`data_prep.translate`), and multi-way parallel sets
(XNLI, the generated task) number their rows alike in every language, so the part of
`TaskExample.id` after `<benchmark>/<language>/<split>/` joins a translation to its English.

Extractive QA (`FlareQACollator`): the target (question, context) is split into `QACollator`'s windows, each
window with one source view of the same length (`max_length`, both padded to it):

    batch = FlareQACollator(QACollator(tok, 384, 128, padding="max_length"), "fusion", tok)(pairs)
    # QACollator's keys for the target windows [w, s] (offsets, context_mask, example_index, start/end
    # positions: the target side only) + source_ids, source_mask [w, s]

Choice (the English view of a target window): the English (question, context) is windowed the same way
(`max_length`, `stride`) and target window k of n gets English window round(k (m - 1) / (n - 1)) of m, the one
at the same relative place in the context; when the English fits one window (the usual case for TyDiQA-GoldP
at 384 tokens) every target window reads it whole. The reference code truncates both sides to one window;
this keeps a long context's later windows paired with the English they translate. FLARE-MT: the NLLB view of
a window is its own text (the question, then the window's context characters) in NLLB tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.benchmark_files import native_id
from trainer.data.benchmarks import TaskExample
from trainer.data.qa import QACollator
from trainer.errors import DataError


@dataclass(frozen=True)
class TranslatedPair:
    """One example in the target language and its English side (the same example when there is none)."""

    target: TaskExample
    source: TaskExample

    @property
    def label(self) -> int:
        return self.target.label

    @property
    def language(self) -> str:
        return self.target.language

    @property
    def id(self) -> str:
        return self.target.id

    @property
    def texts(self) -> tuple[str, ...]:
        return self.target.texts   # a scorer reads the pair as its target (QA: the context the spans index)

    @property
    def answers(self) -> tuple[tuple[str, int], ...]:
        return self.target.answers


def pair_by_id(targets: Sequence[TaskExample], english: Sequence[TaskExample], what: str) -> list[TranslatedPair]:
    """Each target example with the English example of the same native id; a missing one is a DataError."""
    by_id = {native_id(e): e for e in english}
    missing = [native_id(t) for t in targets if native_id(t) not in by_id]
    if missing:
        raise DataError(f"{what}: {len(missing)} of {len(targets)} examples have no English row with the same id "
                        f"(first: {missing[:3]}); the English side must keep the ids of the translated rows")
    return [TranslatedPair(t, by_id[native_id(t)]) for t in targets]


def unpaired(examples: Sequence[TaskExample]) -> list[TranslatedPair]:
    """Examples without an English side (methods that read the target only)."""
    return [TranslatedPair(e, e) for e in examples]


class FlareCollator:
    """`TranslatedPair`s -> a batch for `FlareModel` (see the module docstring), labels [b].

    `method`: fusion (English side in LLM tokens as the source view), fusion_mt (the target text in NLLB
    tokens, `src_lang` set per example, as the source view), input_fusion (one input: the target texts
    then the English texts as a text pair), translate_train / zero_shot (the target text only).
    Texts that do not fit `max_length` lose their end.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, method: str,
                 nllb_tokenizer: PreTrainedTokenizerBase | None = None):
        if method == "fusion_mt" and nllb_tokenizer is None:
            raise ValueError("flare.method=fusion_mt needs the NLLB tokenizer")
        self.tokenizer, self.max_length, self.method, self.nllb = tokenizer, max_length, method, nllb_tokenizer

    def __call__(self, pairs: Sequence[TranslatedPair]) -> dict[str, torch.Tensor]:
        targets = [p.target for p in pairs]
        labels = torch.tensor([p.label for p in pairs], dtype=torch.long)
        if self.method == "input_fusion":
            targets = [TaskExample(t.id, t.language, t.split, (" ".join(t.texts), " ".join(p.source.texts)),
                                   t.label) for t, p in zip(targets, pairs)]
        target_ids = token_ids(self.tokenizer, targets, self.max_length)
        if self.method not in ("fusion", "fusion_mt"):
            return {**pad(self.tokenizer, target_ids), "labels": labels}
        if self.method == "fusion":
            source_ids = token_ids(self.tokenizer, [p.source for p in pairs], self.max_length)
            source_tok = self.tokenizer
        else:
            source_ids, source_tok = nllb_token_ids(self.nllb, targets, self.max_length), self.nllb
        length = max(len(ids) for ids in target_ids + source_ids)
        target, source = pad(self.tokenizer, target_ids, length), pad(source_tok, source_ids, length)
        return {**target, "source_ids": source["input_ids"], "source_mask": source["attention_mask"],
                "labels": labels}


def token_ids(tokenizer: PreTrainedTokenizerBase, examples: Sequence[TaskExample], max_length: int,
              truncation: str = "only_first") -> list[list[int]]:
    """Each example's texts (one text, or a text pair: `truncation` says which loses its end) -> token ids."""
    pairs = all(len(e.texts) == 2 for e in examples)
    first = [e.texts[0] for e in examples]
    second = [e.texts[1] for e in examples] if pairs else None
    return tokenizer(first, second, truncation=truncation if pairs else True, max_length=max_length)["input_ids"]


def nllb_token_ids(nllb: PreTrainedTokenizerBase, examples: Sequence[TaskExample], max_length: int,
                   truncation: str = "only_first") -> list[list[int]]:
    """`token_ids` through the NLLB tokenizer, `src_lang` set to each example's language (its code token)."""
    ids: list[list[int] | None] = [None] * len(examples)
    for language in dict.fromkeys(e.language for e in examples):
        nllb.src_lang = language
        rows = [i for i, e in enumerate(examples) if e.language == language]
        for i, row in zip(rows, token_ids(nllb, [examples[i] for i in rows], max_length, truncation)):
            ids[i] = row
    return ids


class FlareQACollator:
    """QA `TranslatedPair`s -> `windows`' batch of the target windows [w, s] plus one source view per window
    (`source_ids`, `source_mask` [w, s], s = `windows.max_length`): see the module docstring.

    `windows`: the task's `QACollator` (training: with targets; evaluation: without), built with
    `padding="max_length"` for the fused methods, so that both views have one length. `method`: fusion
    (English windows in `tokenizer`'s tokens), fusion_mt (each target window's text in NLLB tokens),
    translate_train / zero_shot (the target windows only). Answer positions and offsets are the target's.
    """

    def __init__(self, windows: QACollator, method: str, tokenizer: PreTrainedTokenizerBase,
                 nllb_tokenizer: PreTrainedTokenizerBase | None = None):
        if method == "input_fusion":
            raise ValueError("flare.method=input_fusion has no extractive QA form (the schema refuses it)")
        if method in ("fusion", "fusion_mt") and windows.padding != "max_length":
            raise ValueError("fused QA views pair tokens by position: the QACollator must pad to max_length")
        if method == "fusion_mt" and nllb_tokenizer is None:
            raise ValueError("flare.method=fusion_mt needs the NLLB tokenizer")
        self.windows, self.method, self.nllb = windows, method, nllb_tokenizer
        self.english = QACollator(tokenizer, windows.max_length, windows.stride, targets=False, padding="max_length")

    def __call__(self, pairs: Sequence[TranslatedPair]) -> dict:
        batch = self.windows([p.target for p in pairs])
        if self.method == "fusion":
            english = self.english([p.source for p in pairs])
            rows = source_windows(batch["example_index"], english["example_index"])
            return {**batch, "source_ids": english["input_ids"][rows], "source_mask": english["attention_mask"][rows]}
        if self.method == "fusion_mt":
            owners = [pairs[int(i)] for i in batch["example_index"]]
            views = [TaskExample(p.id, p.language, p.target.split, (p.texts[1], window_text(p.texts[0], offsets, mask)),
                                 p.label) for p, offsets, mask in zip(owners, batch["offsets"], batch["context_mask"])]
            source = pad(self.nllb, nllb_token_ids(self.nllb, views, self.windows.max_length, "only_second"),
                         self.windows.max_length)
            return {**batch, "source_ids": source["input_ids"], "source_mask": source["attention_mask"]}
        return batch


def source_windows(target_index: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """For each target window, the row of its source window: target window k of an example's n gets source
    window round(k (m - 1) / (n - 1)) of the same example's m (the same relative place; m = 1: that one).

    `target_index` [w_t], `source_index` [w_s]: each window's example (`QACollator`'s `example_index`,
    ascending) -> [w_t] rows of the source batch.
    """
    rows = torch.empty(len(target_index), dtype=torch.long)
    for example in dict.fromkeys(target_index.tolist()):
        mine = (target_index == example).nonzero().flatten()
        theirs = (source_index == example).nonzero().flatten()
        n, m = len(mine), len(theirs)
        for k, row in enumerate(mine.tolist()):
            rows[row] = theirs[round(k * (m - 1) / (n - 1)) if n > 1 else 0]
    return rows


def window_text(context: str, offsets: torch.Tensor, context_mask: torch.Tensor) -> str:
    """A window's context characters: from its first context token's start to its last one's end.
    `offsets` [s, 2] (character spans), `context_mask` [s]."""
    positions = context_mask.nonzero().flatten()
    if not len(positions):
        return ""
    return context[int(offsets[positions[0]][0]):int(offsets[positions[-1]][1])]


def pad(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]], length: int | None = None) -> dict[str, torch.Tensor]:
    """Token id lists -> input_ids, attention_mask [b, length] (default: the longest), on the tokenizer's padding side."""
    length = length or max(len(row) for row in ids)
    return tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=length, return_tensors="pt")
