"""data_prep.llm2vec: the base causal LM with a PEFT LoRA adapter (LLM2Vec's MNTP adapter) merged into a standard
transformers folder. On the tiny Llama: an adapter with non-zero B, saved over the decoder (as LLM2Vec publishes
it) or over the causal LM; the merged folder's logits equal the base + adapter's, computed by peft's own forward of
the unmerged adapter; a missing adapter is one error line."""

from __future__ import annotations

import json

import pytest
import torch

from data_prep.llm2vec import main

pytestmark = pytest.mark.filterwarnings("ignore")


def _adapter(tiny_path, folder, over: str) -> None:
    """A LoRA adapter on every linear layer of the tiny Llama's decoder (`over="decoder"`: keys as LLM2Vec's
    AutoModel adapters) or of the causal LM, with random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(0)
    base = (AutoModel if over == "decoder" else AutoModelForCausalLM).from_pretrained(tiny_path("llama"),
                                                                                     dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            assert p.abs().sum() > 0, name
    peft_model.save_pretrained(folder)


def _reference_logits(tiny_path, adapter, over: str, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(base logits, base + adapter logits) with the adapter unmerged: peft's LoRA forward."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_pretrained(tiny_path("llama"), dtype=torch.float32).eval()
    with torch.no_grad():
        plain = causal(input_ids=ids).logits
        if over == "decoder":
            PeftModel.from_pretrained(causal.model, adapter)   # LoRA layers injected into the causal LM's decoder
            with_adapter = causal(input_ids=ids).logits
        else:
            with_adapter = PeftModel.from_pretrained(causal, adapter)(input_ids=ids).logits
    return plain, with_adapter


@pytest.mark.parametrize("over", ["decoder", "causal"])
def test_the_merged_folder_computes_the_base_plus_adapter_logits(tiny_path, tmp_path, over):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, out = tmp_path / "adapter", tmp_path / "merged"
    _adapter(tiny_path, adapter, over)
    main(["--base", tiny_path("llama"), "--adapter", str(adapter), "--out", str(out)])
    ids = AutoTokenizer.from_pretrained(out)(["the farmer sees a red apple", "a child"], return_tensors="pt",
                                             padding=True).input_ids
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
    plain, expected = _reference_logits(tiny_path, adapter, over, ids)
    assert (expected - plain).abs().max() > 1e-2          # the adapter changes the model
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    info = json.loads((out / "llm2vec.json").read_text())
    assert info["adapter"] == str(adapter) and info["base"] == tiny_path("llama") and info["adapter_tensors"] == 56


def test_the_base_defaults_to_the_adapters_base_model(tiny_path, tmp_path):
    adapter = tmp_path / "adapter"
    _adapter(tiny_path, adapter, "decoder")
    main(["--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    assert json.loads((tmp_path / "merged" / "llm2vec.json").read_text())["base"] == tiny_path("llama")


def test_a_missing_adapter_is_one_error_line(tiny_path, tmp_path, capsys):
    tiny_path("llama")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--base", tiny_path("llama"), "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "merged")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: --adapter {tmp_path / 'nope'}: no such folder"), err
    assert not (tmp_path / "merged").exists()


def test_an_adapter_of_another_model_is_refused(tiny_path, tmp_path, capsys):
    """An adapter whose modules the base lacks (peft itself would only warn and leave the base unchanged)."""
    adapter = tmp_path / "adapter"
    _adapter(tiny_path, adapter, "decoder")
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k.replace("layers.0.", "layers.99."): v for k, v in weights.items()}, adapter / "adapter_model.safetensors")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--base", tiny_path("llama"), "--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err.strip().splitlines()[-1]   # after transformers' loading progress bars
    assert err.startswith("error: --adapter") and "14 of its 56 tensors match no module" in err, err
