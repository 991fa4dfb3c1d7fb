"""The study's GPU-only options (QLoRA's 4-bit LLM, 8-bit AdamW): what they ask of transformers, and the clear
errors where they cannot run. Their speed and memory on a GPU: benchmarks/stage1_gpu.py."""

from __future__ import annotations

import pytest
import torch

from trainer.config import ConfigError, check_gpu_options, validate
from trainer.engine import check_zero_stage
from trainer.models.loading import quantization


def job(**sections):
    raw = {"recipe": "stage1", "data": {"files": ["docs.jsonl"]}, **sections}
    return validate(raw)


def test_qlora_and_8bit_adamw_refuse_a_machine_without_cuda_naming_the_key():
    with pytest.raises(ConfigError, match=r"model.llm.quantization=nf4 needs a CUDA GPU"):
        check_gpu_options(job(model={"llm": {"quantization": "nf4"}}), cuda=False)
    eight_bit = job(optim={"optimizer": "adamw_8bit"}, checkpoint={"portable": False})
    with pytest.raises(ConfigError, match=r"optim.optimizer=adamw_8bit needs a CUDA GPU"):
        check_gpu_options(eight_bit, cuda=False)
    check_gpu_options(job(), cuda=False)                       # the defaults run anywhere


def test_with_cuda_but_without_bitsandbytes_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ConfigError, match=r"model.llm.quantization=nf4 needs bitsandbytes: pip install"):
        check_gpu_options(job(model={"llm": {"quantization": "nf4"}}), cuda=True)


def test_8bit_moments_cannot_go_into_portable_checkpoints():
    with pytest.raises(ConfigError, match=r"optim.optimizer=adamw_8bit .* checkpoint.portable: false"):
        job(optim={"optimizer": "adamw_8bit"})


def test_4bit_weights_refuse_zero3():
    nf4 = job(model={"llm": {"quantization": "nf4"}}, engine={"deepspeed": "zero3"})
    with pytest.raises(ConfigError, match=r"nf4 with engine.deepspeed='zero3' \(ZeRO-3\)"):
        check_zero_stage(nf4, 3)
    check_zero_stage(nf4, 2)
    check_zero_stage(job(), 3)


def test_nf4_asks_transformers_for_qlora_4bit_double_quantized_computing_in_the_llm_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    cfg = job(model={"llm": {"quantization": "nf4", "dtype": "bfloat16"}}).model.llm
    args = quantization(cfg)
    q = args["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert args["device_map"] == {"": 3}                    # this rank's GPU
    assert quantization(job().model.llm) == {}
