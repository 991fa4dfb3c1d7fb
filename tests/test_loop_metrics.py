"""Step metrics stay on the device: the step path never waits for it, the loop reads each step once (issue 16).

A host read of a device tensor (`.item()`, `float()`, `bool()` in an `if`, `.tolist()`) makes the CPU wait
for every queued kernel, so it cannot queue the next micro-batch. Here those reads raise inside the step
path; the metrics they used to read must come out the same, bit for bit.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trainer import distributed
from trainer.loop import LLM_TOKENS, TOKENS, Sums, accumulate
from trainer.models.mt_llm import Stage1Output
from trainer.objectives.distillation import distillation_mse, fraction_of_variance_unexplained
from trainer.recipes import stage1

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__")


@pytest.fixture
def no_host_reads(monkeypatch):
    """Inside the block every host read of a tensor raises; returns a context manager."""
    import contextlib

    @contextlib.contextmanager
    def forbid():
        with monkeypatch.context() as m:
            for name in HOST_READS:
                def refuse(self, *args, _name=name, **kwargs):
                    raise AssertionError(f"Tensor.{_name}: a host sync in the step path")
                m.setattr(torch.Tensor, name, refuse)
            yield
    return forbid


class FakeBatches:
    """Stage-1 micro-batches with a `last_index`, as `accumulate` reads them."""

    def __init__(self, n: int = 3, b: int = 4, s: int = 6):
        g = torch.Generator().manual_seed(0)
        self.batches = [{"llm_input_ids": torch.randint(0, 50, (b, s), generator=g),
                         "llm_attention_mask": (torch.rand(b, s, generator=g) > 0.3).long(),
                         "nllb_input_ids": torch.randint(0, 50, (b, s + 1), generator=g),
                         "nllb_attention_mask": (torch.rand(b, s + 1, generator=g) > 0.2).long()}
                        for _ in range(n)]
        self.last_index = -1

    def __next__(self):
        self.last_index += 1
        return self.batches[self.last_index]


class FakeEngine:
    """The engine calls the stage-1 step makes; the model is a linear student of the NLLB view's ids."""

    def __init__(self):
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, 8))
        self.reduce_sum = distributed.all_reduce_sum

    def __call__(self, llm_input_ids, llm_attention_mask, nllb_input_ids, nllb_attention_mask, **_):
        teacher = (llm_input_ids * llm_attention_mask).float().sum(1, keepdim=True) / 50 * torch.ones(8)
        student = (nllb_input_ids * nllb_attention_mask).float().mean(1, keepdim=True) * self.weight
        return Stage1Output(teacher=teacher, student=student)

    def to_device(self, batch):
        return batch

    def backward(self, loss):
        loss.backward()

    def step(self):
        return True


def test_the_stage1_step_adds_its_metrics_on_the_device_and_they_equal_the_host_sums(no_host_reads):
    engine = FakeEngine()
    run = SimpleNamespace(job=SimpleNamespace(seed=0, optim=SimpleNamespace(grad_accum=3)), engine=engine)
    batches = FakeBatches()
    with no_host_reads():
        sums = stage1.step_function(run, batches)(0)
    means, tokens = sums.reduce(engine)

    # what the step used to do: one .item() / float() per value, added as Python floats
    loss = fvu = llm = total = 0.0
    for batch in FakeBatches().batches:
        out = engine(**batch)
        loss += distillation_mse(out.teacher, out.student).item()
        fvu += fraction_of_variance_unexplained(out.teacher, out.student).item()
        llm += float(batch["llm_attention_mask"].sum())
        total += float(batch["llm_attention_mask"].sum() + batch["nllb_attention_mask"].sum())
    assert means == {"loss": loss / 3, "fvu": fvu / 3}        # bit for bit, not approximately
    assert tokens == {TOKENS: total, LLM_TOKENS: llm} and llm < total


def test_fvu_of_a_constant_teacher_is_nan_without_a_branch_on_the_device(no_host_reads):
    teacher, student = torch.ones(2, 4), torch.zeros(2, 4)
    with no_host_reads():
        fvu = fraction_of_variance_unexplained(teacher, student)
    assert torch.isnan(fvu)
    assert fraction_of_variance_unexplained(torch.eye(2), torch.zeros(2, 2)).item() == pytest.approx(0.5 / 0.25)


def test_reduce_reads_every_key_of_the_step_once_and_floats_still_work(monkeypatch):
    sums = Sums()
    for value in (0.25, 0.5):                                   # recipes that still add floats
        sums.add("float_loss", value)
    for value in (torch.tensor(0.125), torch.tensor(1.0, dtype=torch.float32)):
        sums.add("loss", value)
    sums.count_tokens(torch.tensor(12))
    sums.count_tokens(7.0, LLM_TOKENS)
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real(self))
    means, tokens = sums.reduce(SimpleNamespace(reduce_sum=distributed.all_reduce_sum))
    assert len(reads) == 1
    assert means == {"float_loss": 0.375, "loss": 0.5625} and tokens == {TOKENS: 12.0, LLM_TOKENS: 7.0}
