"""Task objective (M2): causal LM loss on answer tokens only, left and right padding."""

import math

import pytest
import torch

from trainer.config import LLMConfig
from trainer.data.task import IGNORE_INDEX, build_prompt_answer_batch, prompt_answer_example
from trainer.models.llm_forward import run_llm
from trainer.models.loading import load_llm
from trainer.objectives.task import causal_lm_loss, count_answer_tokens

PAD = 0
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12]]
ANSWERS = [[20, 21], [22, 23, 24, 25], [26]]


def test_right_padding_masks_prompt_and_padding():
    batch = build_prompt_answer_batch(PROMPTS, ANSWERS, pad_id=PAD, padding_side="right")
    X = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[5, 6, 7, 20, 21], [8, 22, 23, 24, 25], [9, 10, 11, 12, 26]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[X, X, X, 20, 21], [X, 22, 23, 24, 25], [X, X, X, X, 26]]
    short = build_prompt_answer_batch([[5], [6, 7, 8]], [[9], [10, 11]], pad_id=PAD, padding_side="right")
    assert short["input_ids"].tolist() == [[5, 9, PAD, PAD, PAD], [6, 7, 8, 10, 11]]
    assert short["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert short["labels"].tolist() == [[X, 9, X, X, X], [X, X, X, 10, 11]]


def test_left_padding_masks_prompt_and_padding():
    X = IGNORE_INDEX
    batch = build_prompt_answer_batch([[5], [6, 7, 8]], [[9], [10, 11]], pad_id=PAD, padding_side="left")
    assert batch["input_ids"].tolist() == [[PAD, PAD, PAD, 5, 9], [6, 7, 8, 10, 11]]
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[X, X, X, X, 9], [X, X, X, 10, 11]]


def test_pad_id_equal_to_an_answer_token_is_still_masked():
    """Llama 3 pads with EOS: labels must come from positions, not from comparing ids with pad_id."""
    eos = 2
    batch = build_prompt_answer_batch([[5], [6, 7]], [[9, eos], [10, 11, eos]], pad_id=eos, padding_side="right")
    X = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[5, 9, eos, eos, eos], [6, 7, 10, 11, eos]]
    assert batch["labels"].tolist() == [[X, 9, eos, X, X], [X, X, 10, 11, eos]]
    assert count_answer_tokens(batch["labels"]) == 2 + 3


def test_max_length_keeps_the_answer_and_the_end_of_the_prompt():
    ids, labels = prompt_answer_example([1, 2, 3, 4, 5], [6, 7], max_length=4)
    assert ids == [4, 5, 6, 7] and labels == [IGNORE_INDEX, IGNORE_INDEX, 6, 7]
    ids, labels = prompt_answer_example([1, 2], [6, 7], max_length=10)
    assert ids == [1, 2, 6, 7]
    ids, labels = prompt_answer_example([1, 2], [6, 7, 8], max_length=2)
    assert ids == [6, 7] and labels == [6, 7]
    with pytest.raises(ValueError):
        prompt_answer_example([1], [])


def _hand_loss(logits, labels):
    """Cross-entropy by hand over the answer tokens: position t predicts labels[t+1]."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            row = [float(v) for v in logits[b, t]]
            top = max(row)
            log_z = top + math.log(sum(math.exp(v - top) for v in row))
            total += log_z - row[target]
            count += 1
    return total, count


@pytest.mark.parametrize("side", ["left", "right"])
def test_loss_equals_hand_computation(side):
    batch = build_prompt_answer_batch(PROMPTS, ANSWERS, pad_id=PAD, padding_side=side)
    labels = batch["labels"]
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(*labels.shape, 30, generator=g).to(torch.bfloat16)
    total, count = _hand_loss(logits.float(), labels)
    assert count == sum(len(a) for a in ANSWERS) == count_answer_tokens(labels)
    mean = causal_lm_loss(logits, labels)
    assert mean.dtype == torch.float32
    assert mean.item() == pytest.approx(total / count, rel=1e-5)
    assert causal_lm_loss(logits, labels, reduction="sum").item() == pytest.approx(total, rel=1e-5)
    # logits that predict prompt or padding positions (and the last position) must not matter
    shifted_ignore = torch.ones_like(labels, dtype=torch.bool)
    shifted_ignore[:, :-1] = labels[:, 1:] == IGNORE_INDEX
    only_unused = logits.clone()
    only_unused[shifted_ignore] = torch.randn(int(shifted_ignore.sum()), 30).to(torch.bfloat16)
    assert causal_lm_loss(only_unused, labels).item() == pytest.approx(mean.item(), rel=1e-6)


def test_loss_through_a_model_is_the_same_for_left_and_right_padding(tiny_path):
    model = load_llm(LLMConfig(name_or_path=tiny_path("llama"), attn_implementation="sdpa"), causal_lm=True).eval()
    losses = {}
    for side in ("left", "right"):
        batch = build_prompt_answer_batch(PROMPTS, ANSWERS, pad_id=PAD, padding_side=side)
        with torch.no_grad():
            logits = run_llm(model, batch["attention_mask"], input_ids=batch["input_ids"]).logits
        losses[side] = causal_lm_loss(logits, batch["labels"]).item()
    single = []
    for p, a in zip(PROMPTS, ANSWERS):
        b = build_prompt_answer_batch([p], [a], pad_id=PAD)
        with torch.no_grad():
            logits = run_llm(model, b["attention_mask"], input_ids=b["input_ids"]).logits
        single.append(causal_lm_loss(logits, b["labels"], reduction="sum").item())
    assert losses["left"] == pytest.approx(losses["right"], rel=1e-4)
    assert losses["right"] == pytest.approx(sum(single) / sum(len(a) for a in ANSWERS), rel=1e-4)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        build_prompt_answer_batch([[1]], [[2], [3]], pad_id=0)
    with pytest.raises(ValueError):
        build_prompt_answer_batch([[1]], [[2]], pad_id=0, padding_side="middle")
    with pytest.raises(ValueError):
        causal_lm_loss(torch.zeros(1, 3, 5), torch.zeros(1, 4, dtype=torch.long))
