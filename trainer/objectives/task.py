"""Task objective of M2: causal language modelling on the answer given the prompt, in fp32.

A training example is `prompt + answer` as one token sequence; the loss covers the answer tokens
only (labels are -100 on the prompt and on padding). Token lists are used as given: add BOS to the
prompt and EOS to the answer before calling `build_prompt_answer_batch` if the model should see /
learn them (the EOS then counts as an answer token, so the model learns to stop).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def prompt_answer_example(prompt: Sequence[int], answer: Sequence[int],
                          max_length: int | None = None) -> tuple[list[int], list[int]]:
    """One example -> (input_ids, labels), labels = -100 on the prompt, the answer ids on the answer.

    With `max_length`, the prompt is cut from the left (its end, next to the answer, is kept);
    if the answer alone is longer, it is cut from the right and no prompt token is kept.
    """
    if not answer:
        raise ValueError("empty answer: nothing to train on")
    prompt, answer = list(prompt), list(answer)
    if max_length is not None:
        answer = answer[:max_length]
        keep = max_length - len(answer)
        prompt = prompt[max(0, len(prompt) - keep):] if keep > 0 else []
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def build_prompt_answer_batch(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int,
                              padding_side: str = "right", max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Token lists -> padded `input_ids`, `attention_mask`, `labels`, each [batch, seq] int64.

    `labels` is -100 on prompt tokens and on padding (either side), the token id on answer tokens;
    `labels` is aligned with `input_ids` (no shift here: `causal_lm_loss` shifts). Pass the
    attention mask to `run_llm`, which computes position ids right for left padding too.
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need equally many prompts and answers (got {len(prompts)} and {len(answers)})")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    examples = [prompt_answer_example(p, a, max_length) for p, a in zip(prompts, answers)]
    seq = max(len(ids) for ids, _ in examples)
    rows_ids, rows_mask, rows_labels = [], [], []
    for ids, labels in examples:
        pad = seq - len(ids)
        if padding_side == "right":
            rows_ids.append(ids + [pad_id] * pad)
            rows_mask.append([1] * len(ids) + [0] * pad)
            rows_labels.append(labels + [IGNORE_INDEX] * pad)
        else:
            rows_ids.append([pad_id] * pad + ids)
            rows_mask.append([0] * pad + [1] * len(ids))
            rows_labels.append([IGNORE_INDEX] * pad + labels)
    return {"input_ids": torch.tensor(rows_ids, dtype=torch.long),
            "attention_mask": torch.tensor(rows_mask, dtype=torch.long),
            "labels": torch.tensor(rows_labels, dtype=torch.long)}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy: logits [batch, seq, V], labels [batch, seq] -> scalar fp32.

    Position `t` predicts `labels[:, t+1]` (the usual shift); positions labelled -100 are ignored.
    `mean`: average over all answer tokens of the batch (token-level mean, transformers'
    convention, so long answers weigh more than short ones); `sum`: the summed loss, to divide by
    `count_answer_tokens` across gradient-accumulation micro-batches.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [batch, seq]")
    shifted_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1).to(shifted_logits.device)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction=reduction)


def count_answer_tokens(labels: torch.Tensor) -> int:
    """Number of tokens `causal_lm_loss` averages over (labels after the shift that are not -100)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
