"""FLARE (M4): fusion functions against their formulas, the model's invariants, the collator, the recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from data_prep.make_task_data import write_task_data
from alignment_helpers import launch, ok, step_rows
from trainer.config import ConfigError, FlareModelConfig, TaskModelConfig, load_job
from trainer.data.benchmarks import TaskExample
from trainer.data.translated_pairs import FlareCollator, TranslatedPair, pair_by_id
from trainer.errors import DataError
from trainer.models.flare import build_flare_model
from trainer.models.fusion import FusionContext, FusionLinear
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.lora import add_fusion_lora, add_lora
from trainer.models.task_model import build_task_model
from trainer.models.weights import save_trainable
from trainer.run import run_job
from trainer.tiny.text import write_task_files

TARGETS = ["deu_Latn", "ell_Grek"]


# --- the fusion layer against its formula ---------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(6, 5)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])


def toy_layer(fusion: str, r: int = 3, alpha: float = 6.0, query: str = "source") -> tuple[FusionLinear, FusionContext]:
    torch.manual_seed(0)
    model, context = add_fusion_lora(Toy(), r, alpha, 0.0, ["q_proj"], fusion, query)
    layer = model.base_model.model.layers[1].q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()   # B = 0 at init: make the LoRA branch visible
    return layer, context


def written_out(fusion: str, layer: FusionLinear, xs, xt, ms, mt):
    """y = W x_t + b + (alpha/r) B f(A x_s * mask_s, A x_t), f written out per formula (loops for attention)."""
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    scale = layer.scaling["default"]
    S, T = (xs @ A.T) * ms[..., None], xt @ A.T
    if fusion == "add":
        f = S + T
    elif fusion == "mul":
        f = S * T
    elif fusion == "add_relu":
        f = torch.where(S > 0, S, 0.0) + torch.where(T > 0, T, 0.0)
    else:
        att = layer.lora_fusion["default"]
        asks, answers, key_mask = (T, S, ms) if att.query_side == "target" else (S, T, mt)
        Q, K, V = asks @ att.q.weight.T, answers @ att.k.weight.T, answers @ att.v.weight.T
        f = torch.zeros_like(asks)
        r = T.shape[-1]
        for i in range(asks.shape[0]):
            for t in range(asks.shape[1]):
                weights = [math.exp(float(Q[i, t] @ K[i, s]) / math.sqrt(r)) if key_mask[i, s] else 0.0
                           for s in range(answers.shape[1])]
                total = sum(weights)
                f[i, t] = sum(w / total * V[i, s] for s, w in enumerate(weights))
    return xt @ W.T + b + scale * (f @ B.T)


def fused(layer: FusionLinear, context: FusionContext, xs, xt, ms, mt):
    context.start("fuse")
    context.by_layer, context.source_mask, context.target_mask = {1: xs}, ms, mt
    return layer(xt)


@pytest.mark.parametrize("fusion, query", [("add", "source"), ("mul", "source"), ("add_relu", "source"),
                                           ("cross_attention", "source"), ("cross_attention", "target")])
def test_each_fusion_function_matches_its_formula(fusion, query):
    layer, context = toy_layer(fusion, query=query)
    torch.manual_seed(1)
    xs, xt = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    ms = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    mt = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(fused(layer, context, xs, xt, ms, mt),
                                   written_out(fusion, layer, xs, xt, ms, mt), rtol=1e-5, atol=1e-5)


def test_add_with_a_zero_source_is_plain_lora():
    layer, context = toy_layer("add")
    torch.manual_seed(0)
    plain = add_lora(Toy(), 3, 6.0, 0.0, ["q_proj"]).base_model.model.layers[1].q_proj
    plain.load_state_dict(layer.state_dict())
    xt = torch.randn(2, 4, 6)
    ones = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(fused(layer, context, torch.zeros(2, 4, 6), xt, ones, ones), plain(xt))
        assert not torch.allclose(plain(xt), layer.base_layer(xt))   # the LoRA branch is not zero


def test_masked_cross_attention_ignores_whatever_sits_at_padded_source_positions():
    layer, context = toy_layer("cross_attention", query="target")   # the source side gives the keys
    torch.manual_seed(2)
    xs, xt = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    ms, mt = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        reference = fused(layer, context, xs, xt, ms, mt)
        noisy = xs.clone()
        noisy[ms == 0] = 1e3 * torch.randn(int((ms == 0).sum()), 6)
        torch.testing.assert_close(fused(layer, context, noisy, xt, ms, mt), reference)
        # and the attention really reads the source: changing a real position changes the output
        noisy[0, 0] += 1.0
        assert not torch.allclose(fused(layer, context, noisy, xt, ms, mt)[0], reference[0])


def test_tokenwise_fusion_refuses_unequal_lengths():
    layer, context = toy_layer("add")
    with pytest.raises(ValueError, match="fuses token by token"):
        fused(layer, context, torch.randn(1, 3, 6), torch.randn(1, 4, 6), torch.ones(1, 3), torch.ones(1, 4))


# --- the model -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def english_export(tmp_path_factory, tiny_cache):
    """An FT export (LoRA + head, random non-zero weights) and its model config, without training."""
    return untrained_export(tmp_path_factory.mktemp("english") / "export", tiny_cache, "classification", 3)


def untrained_export(out: Path, tiny_cache: str, task: str, num_labels: int):
    """(export folder, model config, the model in eval mode): a tiny Llama FT model of `task` with random LoRA B."""
    cfg = TaskModelConfig(llm={"name_or_path": "tiny:llama"}, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                          cache_dir=tiny_cache)
    torch.manual_seed(0)
    model = build_task_model(cfg, task, num_labels)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k or k.startswith("head.")}
    save_trainable(state, out, yaml.safe_dump({"recipe": "finetune", "model": cfg.model_dump(mode="json")}))
    return out, cfg, model.eval()


def flare_model(export, cfg, method="fusion", fusion="add_relu", checkpointing=False, dropout=0.0, **kw):
    flare_cfg = FlareModelConfig(llm={"name_or_path": "tiny:llama", "gradient_checkpointing": checkpointing},
                                 task_export=str(export), lora={"r": 4, "alpha": 8, "dropout": dropout,
                                                                "target_modules": ["q_proj", "v_proj"]},
                                 cache_dir=cfg.cache_dir, **kw)
    torch.manual_seed(0)
    return build_flare_model(flare_cfg, cfg.model_copy(update={"llm": flare_cfg.llm}), method, fusion, "target",
                             "input", "classification", 3)


def a_batch(cfg, method="fusion"):
    tok = load_llm_tokenizer(cfg.llm, cfg.cache_dir)
    nllb = load_nllb_tokenizer(FlareModelConfig(task_export="x").encoder, cfg.cache_dir)
    pairs = [TranslatedPair(TaskExample(f"t/deu_Latn/test/{i}", "deu_Latn", "test", (t,), i % 3),
                            TaskExample(f"t/eng_Latn/test/{i}", "eng_Latn", "test", (s,), i % 3))
             for i, (t, s) in enumerate([("Abc def ghi jk.", "The farmer sees a red apple."),
                                         ("Xy z.", "A child reads an old book in the garden today."),
                                         ("Lmn opq rst uvw xyz abc.", "The pilot opens the door.")])]
    return FlareCollator(tok, 32, method, nllb)(pairs)


def test_b_zero_leaves_the_english_models_output_unchanged(english_export):
    export, cfg, english = english_export
    batch = a_batch(cfg)
    for method, fusion in [("fusion", "add_relu"), ("fusion", "cross_attention"), ("fusion_mt", "add")]:
        model = flare_model(export, cfg, method, fusion).eval()
        with torch.no_grad():
            expected = english(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_keeps_the_fusion_and_its_gradients(english_export):
    export, cfg, _ = english_export
    batch = a_batch(cfg)
    results = []
    for checkpointing in (False, True):
        model = flare_model(export, cfg, "fusion", "cross_attention", checkpointing=checkpointing, dropout=0.1).train()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
        torch.manual_seed(5)
        logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads))
        model.method = "translate_train"   # the same weights without the source: a different output
        torch.manual_seed(5)
        assert not torch.allclose(model(**batch).logits, logits, atol=1e-4)
    (plain_logits, plain_grads), (ckpt_logits, ckpt_grads) = results
    torch.testing.assert_close(ckpt_logits, plain_logits, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and any("lora_fusion" in n for n in plain_grads)
    for name in plain_grads:
        assert plain_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_flare_mt_trains_the_projection_and_keeps_the_encoder_frozen(english_export):
    export, cfg, _ = english_export
    model = flare_model(export, cfg, "fusion_mt", "add").train()
    assert not model.encoder.training
    batch = a_batch(cfg, "fusion_mt")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    torch.nn.functional.cross_entropy(model(**batch).logits, batch["labels"]).backward()
    assert model.projection.weight.grad is not None and model.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())


# --- the collator ------------------------------------------------------------------------------------

def test_collator_pads_both_views_to_one_length_and_sets_each_languages_code(english_export):
    _, cfg, _ = english_export
    tok = load_llm_tokenizer(cfg.llm, cfg.cache_dir)
    fusion = a_batch(cfg, "fusion")
    assert fusion["input_ids"].shape == fusion["source_ids"].shape
    assert fusion["attention_mask"][0].sum() == len(tok("Abc def ghi jk.")["input_ids"])
    assert fusion["source_mask"][1].sum() == len(tok("A child reads an old book in the garden today.")["input_ids"])
    mt = a_batch(cfg, "fusion_mt")
    nllb = load_nllb_tokenizer(FlareModelConfig(task_export="x").encoder, cfg.cache_dir)
    code = nllb.convert_tokens_to_ids("deu_Latn")
    real = mt["source_ids"][mt["source_mask"].bool()]
    assert mt["source_ids"].shape == mt["input_ids"].shape and (real == code).sum() == 3   # one code per example
    joined = a_batch(cfg, "input_fusion")
    assert "source_ids" not in joined
    text = tok.decode(joined["input_ids"][0][joined["attention_mask"][0].bool()], skip_special_tokens=True)
    assert "Abc def ghi jk." in text and "The farmer sees a red apple." in text


def test_pairs_join_by_the_benchmarks_own_id_and_name_what_is_missing():
    english = [TaskExample(f"topic/eng_Latn/train/{i}", "eng_Latn", "train", (f"e{i}",), 0) for i in range(3)]
    target = [TaskExample(f"topic/deu_Latn/translate_train/{i}", "deu_Latn", "translate_train", (f"d{i}",), 0)
              for i in (2, 0)]
    assert [p.source.texts for p in pair_by_id(target, english, "x")] == [("e2",), ("e0",)]
    with pytest.raises(DataError, match=r"topic deu_Latn train: 1 of 2 examples have no English row.*\['2'\]"):
        pair_by_id(target, english[:2], "topic deu_Latn train")


# --- the recipe --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_cache):
    """Generated topic data (English train, its rendering in the targets, dev/test) and an English FT run."""
    root = tmp_path_factory.mktemp("flare")
    write_task_data(root / "task", TARGETS, n_train=320, n_eval=48, seed=0)
    write_task_files(root / "translated", TARGETS, 320, seed=0)
    write_task_files(root / "dev", ["eng_Latn", *TARGETS], 48, seed=2)
    files = {"train": str(root / "task/train/{language}.jsonl"), "validation": str(root / "dev/{language}.jsonl"),
             "test": str(root / "task/eval/{language}.jsonl")}
    common = {"seed": 0, "checkpoint": {"every": 0},
              "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "flare-test"}}
    ft = {"recipe": "finetune", "output_dir": str(root / "ft"), **common,
          "model": {"llm": {"name_or_path": "tiny:llama"}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                    "cache_dir": tiny_cache},
          "task": {"benchmark": "topic", "target_languages": TARGETS, "files": files, "max_length": 40,
                   "eval_every": 0},
          "optim": {"lr": 3e-3, "max_steps": 60, "micro_batch_size": 16}}
    run_job(write(ft, root / "ft.yaml"))
    flare = {"recipe": "flare", "output_dir": str(root / "flare"), **common,
             "model": {"llm": {"name_or_path": "tiny:llama"}, "task_export": str(root / "ft" / "export"),
                       "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
                       "cache_dir": tiny_cache},
             "task": {"benchmark": "topic", "target_languages": TARGETS, "max_length": 40, "eval_every": 0.5,
                      "files": {**files, "translate_train": str(root / "translated/{language}.jsonl")}},
             "optim": {"lr": 3e-3, "warmup_steps": 0, "max_steps": 40, "micro_batch_size": 16}}
    return root, flare


def write(raw: dict, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return load_job(path)


def with_(raw: dict, out: Path, **flare) -> dict:
    return {**raw, "output_dir": str(out), "flare": flare}


def test_flare_learns_the_targets_and_reports_the_test_table(task, tmp_path):
    root, raw = task
    # source_state input: on tiny:llama the un-normalised states (output, reference_hidden: norm ~0.2 against the
    # normalised projection input's ~8, embeddings at std 0.02) barely reach the bottleneck in 40 steps (docs/flare.md)
    final = run_job(write(with_(raw, tmp_path / "fl", method="fusion", source_state="input"),
                          tmp_path / "fl.yaml"))["metrics"]
    assert {"test_sdev_deu_Latn", "test_tdev_ell_Grek", "target_mean_sdev", "s_dev_step"} <= final.keys()
    exported = (tmp_path / "fl" / "export")
    assert (exported / "trainable.safetensors").is_file() and not (exported / "adapter").exists()  # no lossy PEFT copy
    zero = run_job(write({**with_(raw, tmp_path / "zs", method="zero_shot"),
                          "optim": {**raw["optim"], "max_steps": 1}}, tmp_path / "zs.yaml"))["metrics"]
    assert final["target_mean_sdev"] > zero["target_mean_sdev"] + 0.2, (final, zero)
    rows = step_rows(tmp_path / "zs")
    assert len(rows) == 1 and "grad_norm" not in rows[0]     # zero-shot: measured, never updated


@pytest.mark.slow
def test_every_fusion_function_beats_zero_shot(task, tmp_path):
    root, raw = task
    zero = run_job(write({**with_(raw, tmp_path / "zs", method="zero_shot"),
                          "optim": {**raw["optim"], "max_steps": 1}}, tmp_path / "zs.yaml"))["metrics"]
    table = {"zero_shot": zero["target_mean_sdev"]}
    for name in ("add", "mul", "add_relu", "cross_attention"):   # the baselines' table: docs/flare.md
        settings = {"fusion": name, "source_state": "input", "query": "target"}   # the demo's (tiny:llama, see above)
        out = tmp_path / name
        table[name] = run_job(write(with_(raw, out, **settings), tmp_path / f"{name}.yaml"))["metrics"][
            "target_mean_sdev"]
    print(json.dumps(table, indent=1))
    for name in ("add", "mul", "add_relu", "cross_attention"):
        assert table[name] > table["zero_shot"], table


@pytest.mark.slow
def test_two_zero3_ranks_give_the_one_rank_losses(task, tmp_path):
    root, raw = task
    losses = {}
    for nproc, accum in ((1, 2), (2, 1)):
        job = {**with_(raw, tmp_path / f"r{nproc}", method="fusion", fusion="cross_attention"),
               "engine": {"deepspeed": "zero3"},
               "optim": {**raw["optim"], "max_steps": 4, "micro_batch_size": 8, "grad_accum": accum},
               "task": {**raw["task"], "eval_every": 0, "max_eval_examples": 8}}
        path = tmp_path / f"r{nproc}.yaml"
        path.write_text(yaml.safe_dump(job))
        ok(launch(path, nproc))
        losses[nproc] = [row["loss"] for row in step_rows(tmp_path / f"r{nproc}")]
    assert len(losses[1]) == 4
    torch.testing.assert_close(torch.tensor(losses[2]), torch.tensor(losses[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, key", [
    ({"task": {"benchmark": "belebele"}}, "task.benchmark"),
    ({"task": {"benchmark": "topic_tags"}}, "task.benchmark"),
    ({"flare": {"languages": ["fra_Latn"]}}, "flare.languages"),
    ({"flare": {"fusion": "concat"}}, "flare.fusion"),
])
def test_bad_flare_settings_fail_naming_the_key(task, tmp_path, change, key):
    root, raw = task
    bad = json.loads(json.dumps(raw))
    for section, values in change.items():
        bad[section] = {**bad.get(section, {}), **values}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        write(bad, tmp_path / "bad.yaml")


def test_a_model_other_than_the_exports_fails_naming_both(task, tmp_path):
    root, raw = task
    bad = {**raw, "output_dir": str(tmp_path / "other"), "model": {**raw["model"], "llm": {"name_or_path": "tiny:qwen2"}}}
    with pytest.raises(ConfigError, match="model.llm.name_or_path: 'tiny:qwen2'.*'tiny:llama'"):
        run_job(write(bad, tmp_path / "other.yaml"))
