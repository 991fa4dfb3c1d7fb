"""Task losses on tensors, in fp32: classification, causal LM on the answer (M2), answer likelihoods, token
classification (tagging, M3) and answer spans (extractive QA, M4).

A causal LM example is `prompt + answer` as one token sequence (built by
`trainer.data.task.build_prompt_answer_batch`); the loss covers the answer tokens only (labels
are -100, PyTorch's `ignore_index`, on the prompt and on padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


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


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class logits [batch, C] against labels [batch] -> scalar fp32 (mean over the batch)."""
    return F.cross_entropy(logits.float(), labels)


def answer_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, num_choices: int) -> torch.Tensor:
    """Summed log-likelihood of each row's answer tokens -> [examples, num_choices] fp32.

    `logits` [rows, seq, V] and `labels` [rows, seq] hold every example once per candidate answer
    (example-major: rows = examples x num_choices), labels -100 outside the answer. No length
    normalisation: M2's candidates are short label words, scored like the reference.
    """
    logprobs = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:].to(logprobs.device)
    keep = target != IGNORE_INDEX
    picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(dim=1).view(-1, num_choices)


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of tag logits [batch, seq, T] against labels [batch, seq] -> scalar fp32.

    Positions labelled -100 (every sub-token but a word's first, special tokens, padding) are ignored;
    the mean runs over the labelled tokens of the batch (transformers' `*ForTokenClassification`). A batch
    without a labelled token gives 0 (still connected to the graph).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [batch, seq]")
    labels = labels.to(logits.device)
    if not (labels != IGNORE_INDEX).any():
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
              end_positions: torch.Tensor) -> torch.Tensor:
    """Extractive QA: (CE(start) + CE(end)) / 2 over the windows, each CE over the window's positions -> scalar fp32.

    `start_logits`, `end_logits` [windows, seq]; positions [windows], -100 for a window without the answer
    (ignored). transformers' `*ForQuestionAnswering` averages the two the same way. A batch whose windows
    all lack the answer gives 0 (still connected to the graph).
    """
    if start_logits.shape != end_logits.shape or start_logits.shape[:1] != start_positions.shape:
        raise ValueError(f"start {tuple(start_logits.shape)}, end {tuple(end_logits.shape)} and positions "
                         f"{tuple(start_positions.shape)} disagree")
    start_positions, end_positions = start_positions.to(start_logits.device), end_positions.to(start_logits.device)
    if not (start_positions != IGNORE_INDEX).any():
        return (start_logits.float().sum() + end_logits.float().sum()) * 0.0
    start = F.cross_entropy(start_logits.float(), start_positions, ignore_index=IGNORE_INDEX)
    end = F.cross_entropy(end_logits.float(), end_positions, ignore_index=IGNORE_INDEX)
    return (start + end) / 2
