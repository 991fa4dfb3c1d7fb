"""FLARE's inputs (M4): a target-language example with its English side, joined by the benchmark's own id.

    pairs = pair_by_id(target_examples, english_examples, what="xnli deu_Latn test")
    batch = FlareCollator(llm_tokenizer, max_length, method="fusion")(pairs)
    # input_ids, attention_mask [b, s]: the target text;  source_ids, source_mask [b, s]: its English
    # (fusion), or the target text in NLLB tokens (fusion_mt); both views padded to one length s

A translated row keeps its original's id (`data_prep.translate`), and multi-way parallel sets
(XNLI, the generated task) number their rows alike in every language, so the part of
`TaskExample.id` after `<benchmark>/<language>/<split>/` joins a translation to its English.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.benchmark_files import native_id
from trainer.data.benchmarks import TaskExample
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

    def _ids(self, tokenizer, examples: Sequence[TaskExample]) -> list[list[int]]:
        pairs = all(len(e.texts) == 2 for e in examples)
        first = [e.texts[0] for e in examples]
        second = [e.texts[1] for e in examples] if pairs else None
        return tokenizer(first, second, truncation="only_first" if pairs else True,
                         max_length=self.max_length)["input_ids"]

    def _nllb_ids(self, examples: Sequence[TaskExample]) -> list[list[int]]:
        ids: list[list[int] | None] = [None] * len(examples)
        for language in dict.fromkeys(e.language for e in examples):   # NLLB: src_lang per language
            self.nllb.src_lang = language
            rows = [i for i, e in enumerate(examples) if e.language == language]
            for i, row in zip(rows, self._ids(self.nllb, [examples[i] for i in rows])):
                ids[i] = row
        return ids

    def __call__(self, pairs: Sequence[TranslatedPair]) -> dict[str, torch.Tensor]:
        targets = [p.target for p in pairs]
        labels = torch.tensor([p.label for p in pairs], dtype=torch.long)
        if self.method == "input_fusion":
            targets = [TaskExample(t.id, t.language, t.split, (" ".join(t.texts), " ".join(p.source.texts)),
                                   t.label) for t, p in zip(targets, pairs)]
        target_ids = self._ids(self.tokenizer, targets)
        if self.method not in ("fusion", "fusion_mt"):
            return {**pad(self.tokenizer, target_ids), "labels": labels}
        if self.method == "fusion":
            source_ids, source_tok = self._ids(self.tokenizer, [p.source for p in pairs]), self.tokenizer
        else:
            source_ids, source_tok = self._nllb_ids(targets), self.nllb
        length = max(len(ids) for ids in target_ids + source_ids)
        target, source = pad(self.tokenizer, target_ids, length), pad(source_tok, source_ids, length)
        return {**target, "source_ids": source["input_ids"], "source_mask": source["attention_mask"],
                "labels": labels}


def pad(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]], length: int | None = None) -> dict[str, torch.Tensor]:
    """Token id lists -> input_ids, attention_mask [b, length] (default: the longest), on the tokenizer's padding side."""
    length = length or max(len(row) for row in ids)
    return tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=length, return_tensors="pt")
