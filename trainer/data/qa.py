"""Extractive QA batches: (question, context) pairs with long contexts split into overlapping windows.

    collate = QACollator(tokenizer, max_length=384, stride=128)          # XTREME's TyDiQA / SQuAD setting
    batch = collate(examples)      # TaskExamples with texts (context, question) and answers
    batch["input_ids"]             # [windows, s]: question, then one window of the context
    batch["example_index"]         # [windows]: which example of the batch each window belongs to
    batch["offsets"]               # [windows, s, 2]: each token's character span in the context
    batch["context_mask"]          # [windows, s]: True on the window's context tokens
    batch["start_positions"]       # [windows]: the answer's first / last token, -100 where the window
    batch["end_positions"]         #            does not hold the whole answer (targets=True)

The windows come from the fast tokenizer itself: `truncation="only_second"` with
`return_overflowing_tokens` and `stride` (the tokens consecutive windows share, as `doc_stride` in
transformers' run_qa.py), `return_offsets_mapping` for the character spans and `sequence_ids()` for
which tokens are context. The question comes first, as in transformers' QA examples.

Choice: a training window that does not hold the whole first answer gets no target (-100, ignored by
`trainer.objectives.task.span_loss`) rather than pointing at a CLS token, which decoder LLMs lack and
left padding moves; prediction searches only context tokens (`trainer.eval.qa.best_spans`), so GoldP
(every question answerable) needs no "no answer" position.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.task import IGNORE_INDEX
from trainer.errors import DataError


def answer_tokens(offsets: list[tuple[int, int]], context: list[int], start: int, end: int) -> tuple[int, int]:
    """The (first, last) token of characters [start, end) among the window's `context` token positions, or
    (-100, -100) when the window does not hold all of them. `offsets`: each token's character span."""
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return IGNORE_INDEX, IGNORE_INDEX
    first = max(t for t in context if offsets[t][0] <= start)
    last = min(t for t in context if offsets[t][1] >= end)
    return (first, last) if first <= last else (IGNORE_INDEX, IGNORE_INDEX)


class QACollator:
    """QA `TaskExample`s -> one row per context window (see the module docstring), and `ids` per example.

    `targets`: compute start/end positions from each example's first answer (training); its text must be
    the context's characters at its start, else a DataError names the example. `padding`: "longest" (the
    batch's longest window) or "max_length" (every window `max_length` tokens: FLARE pairs them token by token
    with a source view of that length, `trainer.data.translated_pairs.FlareQACollator`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int, targets: bool = True,
                 padding: str = "longest"):
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"extractive QA needs a fast tokenizer (offsets); {type(tokenizer).__name__} is not one")
        if stride >= max_length:
            raise DataError(f"QA windows: stride {stride} must be smaller than max_length {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.targets = targets
        self.padding = padding

    def __call__(self, examples: list) -> dict:
        self._check_room(examples)
        enc = self.tokenizer([e.texts[1] for e in examples], [e.texts[0] for e in examples],
                             truncation="only_second", max_length=self.max_length, stride=self.stride,
                             return_overflowing_tokens=True, return_offsets_mapping=True, padding=self.padding,
                             return_tensors="pt")
        example_index = enc["overflow_to_sample_mapping"].long()
        offsets = enc["offset_mapping"].long()
        windows, seq = enc["input_ids"].shape
        context_mask = torch.zeros(windows, seq, dtype=torch.bool)
        starts = torch.full((windows,), IGNORE_INDEX, dtype=torch.long)
        ends = torch.full((windows,), IGNORE_INDEX, dtype=torch.long)
        for w in range(windows):
            context = [t for t, s in enumerate(enc.sequence_ids(w)) if s == 1]
            context_mask[w, context] = True
            if self.targets:
                starts[w], ends[w] = self._target(examples[int(example_index[w])], offsets[w].tolist(), context)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "offsets": offsets,
                "context_mask": context_mask, "example_index": example_index, "start_positions": starts,
                "end_positions": ends, "ids": [e.id for e in examples]}

    def _check_room(self, examples: list) -> None:
        """Every question must leave more than `stride` tokens of each window to the context."""
        special = self.tokenizer.num_special_tokens_to_add(pair=True)
        questions = self.tokenizer([e.texts[1] for e in examples], add_special_tokens=False)["input_ids"]
        for e, question in zip(examples, questions):
            room = self.max_length - special - len(question)
            if room <= self.stride:
                raise DataError(f"{e.id}: its question takes {len(question)} tokens, leaving {room} of max_length "
                                f"{self.max_length} to the context; windows need more than the stride {self.stride}")

    @staticmethod
    def _target(example, offsets: list, context: list[int]) -> tuple[int, int]:
        if not example.answers:
            raise DataError(f"{example.id}: a QA training example without an answer")
        text, start = example.answers[0]
        if example.texts[0][start:start + len(text)] != text:
            raise DataError(f"{example.id}: answer {text!r} is not at character {start} of its context "
                            f"(found {example.texts[0][start:start + len(text)]!r})")
        return answer_tokens(offsets, context, start, start + len(text))
