"""Extractive QA decoding: the best answer span of each example over all of its context windows.

    spans = best_spans(start_logits, end_logits, context_mask, example_index, num_examples=len(examples))
    window, first, last = spans[0]                          # (-1, -1, -1): no valid span
    text = answer_text(context, offsets[window], first, last)

A span (i, j) is valid when both tokens are context tokens of one window, i <= j and it has at
most `max_answer_tokens` tokens (XTREME and transformers' run_qa.py: 30); its score is
`start_logits[i] + end_logits[j]`. The search is exhaustive over the valid spans (run_qa.py looks
only at the 20 best starts and ends), ties going to the earlier window and span. Characters come
from the fast tokenizer's offsets (`trainer.data.qa.QACollator`).
"""

from __future__ import annotations

import torch

MAX_ANSWER_TOKENS = 30   # XTREME / SQuAD: the longest answer the decoder returns, in tokens


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor,
               example_index: torch.Tensor, num_examples: int,
               max_answer_tokens: int = MAX_ANSWER_TOKENS) -> list[tuple[int, int, int]]:
    """Per example, (window, first token, last token) of its best valid span over its windows.

    `start_logits`, `end_logits`, `context_mask` [windows, seq]; `example_index` [windows] (which example
    each window belongs to). An example whose windows have no valid span gets (-1, -1, -1).
    """
    windows, seq = start_logits.shape
    start, end = start_logits.float().cpu(), end_logits.float().cpu()
    mask = context_mask.bool().cpu()
    width = max(1, min(max_answer_tokens, seq))
    # scores[w, i, k] = start[w, i] + end[w, i + k]: every span of at most `width` tokens, as a band
    pad_end = torch.cat([end, torch.full((windows, width - 1), float("-inf"))], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(windows, width - 1, dtype=torch.bool)], dim=1)
    last = torch.arange(seq)[:, None] + torch.arange(width)[None, :]               # [seq, width]
    scores = start[:, :, None] + pad_end[:, last]
    scores = scores.masked_fill(~(mask[:, :, None] & pad_mask[:, last]), float("-inf"))
    value, flat = scores.view(windows, -1).max(dim=1)                                # first maximum: earliest span
    best: list[tuple[float, tuple[int, int, int]]] = [(float("-inf"), (-1, -1, -1))] * num_examples
    for w in range(windows):
        example = int(example_index[w])
        if value[w] > best[example][0]:                                              # ties: the earlier window
            i, k = divmod(int(flat[w]), width)
            best[example] = (float(value[w]), (w, i, i + k))
    return [span for _, span in best]


def answer_text(context: str, offsets: torch.Tensor, first: int, last: int) -> str:
    """The context's characters from token `first`'s start to token `last`'s end (stripped: byte-level
    tokens carry their leading space); "" for no span (first < 0)."""
    if first < 0:
        return ""
    return context[int(offsets[first][0]):int(offsets[last][1])].strip()
