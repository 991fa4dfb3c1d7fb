"""Word-level tagging batches (POS, NER): a benchmark's words -> sub-word tokens, each word's tag on its first
sub-token.

    collate = TaggingCollator(tokenizer, max_length=128)
    batch = collate(examples)     # TaskExamples with .words and .tags (trainer.data.benchmarks)
    batch["labels"]               # [b, s]: the word's tag id on its first sub-token, -100 elsewhere
    batch["word_index"]           # [b, s]: the word's index on its first sub-token, -1 elsewhere

The words go through the fast tokenizer as pre-split input (`is_split_into_words`), and its
`word_ids()` say which word each token belongs to. XTREME's convention (and transformers'
token-classification examples): only the first sub-token of a word carries the word's tag; the
other sub-tokens, special tokens and padding are -100 (PyTorch's `ignore_index`), and a word's
prediction is read at its first sub-token.

Choice: every word but the first is given to the tokenizer with a leading space (`" " + word`), so
a byte-level BPE (GPT-2, Llama 3) sees the words as in running text (`Ġword`) rather than glued to
nothing; Metaspace tokenizers (XLM-R, NLLB, Gemma) and WordPiece (mBERT) tokenize the same either
way. Words cut off by `max_length` have no token: the scorers count them as not predicted.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.task import IGNORE_INDEX
from trainer.errors import DataError


def first_subtoken_labels(word_ids: list[int | None], tags: tuple[int, ...] | list[int]) -> tuple[list[int], list[int]]:
    """`word_ids` of one tokenized row (None for special and pad tokens) -> (labels, word_index), one per token.

    labels: the word's tag on its first sub-token, -100 elsewhere; word_index: the word's index on its
    first sub-token, -1 elsewhere. `tags` may be empty (unlabelled data): labels are then all -100.
    """
    labels, index, previous = [], [], None
    for word in word_ids:
        first = word is not None and word != previous
        labels.append(tags[word] if first and tags else IGNORE_INDEX)
        index.append(word if first else -1)
        previous = word
    return labels, index


class TaggingCollator:
    """Tagging `TaskExample`s -> input_ids, attention_mask, labels, word_index [b, s] (int64) and `ids`.

    `max_length` counts tokens with the special tokens; the words past it are dropped (no label).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"tagging needs a fast tokenizer (word_ids); {type(tokenizer).__name__} is not one")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, examples: list) -> dict:
        if any(not e.words for e in examples):
            bad = next(e.id for e in examples if not e.words)
            raise DataError(f"{bad}: a tagging example without words (is the benchmark a tagging task?)")
        words = [[w if i == 0 else " " + w for i, w in enumerate(e.words)] for e in examples]
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length,
                             padding=True, return_tensors="pt")
        rows = [first_subtoken_labels(enc.word_ids(row), e.tags) for row, e in enumerate(examples)]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([labels for labels, _ in rows], dtype=torch.long),
                "word_index": torch.tensor([index for _, index in rows], dtype=torch.long),
                "ids": [e.id for e in examples]}
