"""Adapter merging (M2): weighted averaging of a task LoRA and an alignment LoRA, and its CLI.

Adapters are real peft LoRA adapters of the tiny Llama (random non-zero A and B), saved in peft
format and as trainer exports. The checks compare model outputs after loading the merged
adapter with outputs computed here by hand: base weights plus `(alpha / r) * B @ A` added into
each adapted nn.Linear, with A and B averaged in the test.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from trainer import merge as merge_cli
from trainer.config import LLMConfig
from trainer.models.loading import load_llm, load_llm_tokenizer
from trainer.tiny import text as synthetic
from trainer.models.merging import (
    merge_adapter_dirs,
    merge_state_dicts,
    merge_with_peft,
    search_merge_weight,
)
from trainer.models.lora import add_lora
from trainer.models.weights import load_trainable, save_trainable

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # M2's modules
R, ALPHA = 4, 8.0
N_LAYERS = 4  # tiny Llama
FORMATS = ["peft", "trainable"]
WEIGHTS_FILE = {"peft": "adapter_model.safetensors", "trainable": "trainable.safetensors"}


def _cfg(tiny_path):
    return LLMConfig(name_or_path=tiny_path("llama"), attn_implementation="eager")


def _base(tiny_path):
    return load_llm(_cfg(tiny_path), causal_lm=True).eval()


def _random_adapter(tiny_path, seed, r=R, alpha=ALPHA, targets=TARGETS):
    model = add_lora(_base(tiny_path), r, alpha, 0.0, targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _job_yaml(tiny_path, r=R, alpha=ALPHA, targets=TARGETS):
    return (f"model:\n  llm:\n    name_or_path: {tiny_path('llama')}\n    attn_implementation: eager\n"
            f"  lora:\n    r: {r}\n    alpha: {alpha}\n    target_modules: {json.dumps(targets)}\n")


def _save(model, directory, fmt, tiny_path, **lora):
    if fmt == "peft":
        model.save_pretrained(str(directory))
    else:
        state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        save_trainable(state, directory, _job_yaml(tiny_path, **lora))
    return Path(directory)


def _load(tiny_path, directory, fmt):
    """The merged adapter loaded the way every adapter of its format is loaded."""
    if fmt == "peft":
        return PeftModel.from_pretrained(_base(tiny_path), str(directory)).eval()
    model = add_lora(_base(tiny_path), R, ALPHA, 0.0, TARGETS)
    load_trainable(model, directory)
    return model.eval()


IDS = torch.tensor([[1, 17, 240, 33, 901, 5, 66], [1, 400, 12, 87, 2, 2, 2]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])


@torch.no_grad()
def _logits(model):
    return model(input_ids=IDS, attention_mask=MASK).logits


@torch.no_grad()
def _hand_logits(tiny_path, updates):
    """Plain base model (no peft) with `updates` {module: dW} added to each module's weight."""
    base = _base(tiny_path)
    params = dict(base.named_parameters())
    for module, delta in updates.items():
        params[module + ".weight"] += delta
    return _logits(base)


def _lora_pairs(state):
    """{module path in the base model: (A, B)} from a saved adapter's tensors (either format)."""
    pairs = {}
    for name, a in state.items():
        if ".lora_A." in name:
            module = name[len("base_model.model."):name.index(".lora_A.")]
            pairs[module] = (a, state[name.replace(".lora_A.", ".lora_B.")])
    return pairs


def _averaged_ab_updates(task, align, w):
    """The documented merge: A and B averaged separately, then dW = (alpha / r) B A."""
    t, a = _lora_pairs(task), _lora_pairs(align)
    updates = {}
    for module in t:
        merged_a = w * t[module][0] + (1 - w) * a[module][0]
        merged_b = w * t[module][1] + (1 - w) * a[module][1]
        updates[module] = (ALPHA / R) * merged_b @ merged_a
    return updates


def _averaged_update_updates(task, align, w):
    """The average of the two updates: w (alpha/r) B_t A_t + (1 - w) (alpha/r) B_a A_a."""
    t, a = _lora_pairs(task), _lora_pairs(align)
    return {m: (ALPHA / R) * (w * t[m][1] @ t[m][0] + (1 - w) * a[m][1] @ a[m][0]) for m in t}


@pytest.fixture(scope="module")
def adapters(tiny_path, tmp_path_factory):
    """Task and alignment adapters in both formats, and their outputs on IDS."""
    root = tmp_path_factory.mktemp("adapters")
    task, align = _random_adapter(tiny_path, seed=1), _random_adapter(tiny_path, seed=2)
    dirs = {fmt: {"task": _save(task, root / fmt / "task", fmt, tiny_path),
                  "align": _save(align, root / fmt / "align", fmt, tiny_path)} for fmt in FORMATS}
    return {"dirs": dirs, "task_logits": _logits(task), "align_logits": _logits(align),
            "base_logits": _logits(_base(tiny_path))}


def _state(directory, fmt):
    return load_file(str(Path(directory) / WEIGHTS_FILE[fmt]))


# --- endpoints and an intermediate weight ---------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_weight_one_is_the_task_adapter_and_zero_the_alignment_adapter(adapters, tiny_path, tmp_path, fmt):
    task_logits, align_logits = adapters["task_logits"], adapters["align_logits"]
    # controls: the two adapters and the base model really differ, so the checks below can fail
    assert (task_logits - align_logits).abs().max() > 0.05
    assert (task_logits - adapters["base_logits"]).abs().max() > 0.05
    dirs = adapters["dirs"][fmt]
    one = merge_adapter_dirs(dirs["task"], dirs["align"], tmp_path / "w1", task_weight=1.0)
    zero = merge_adapter_dirs(dirs["task"], dirs["align"], tmp_path / "w0", task_weight=0.0)
    torch.testing.assert_close(_logits(_load(tiny_path, one, fmt)), task_logits, rtol=0, atol=0)
    torch.testing.assert_close(_logits(_load(tiny_path, zero, fmt)), align_logits, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_intermediate_weight_averages_a_and_b_separately(adapters, tiny_path, tmp_path, fmt):
    w = 0.3
    dirs = adapters["dirs"][fmt]
    task, align = _state(dirs["task"], fmt), _state(dirs["align"], fmt)
    out = merge_adapter_dirs(dirs["task"], dirs["align"], tmp_path / "merged", task_weight=w)
    merged = _state(out, fmt)
    assert merged.keys() == task.keys() and len(merged) == 2 * N_LAYERS * len(TARGETS)
    for name in task:
        torch.testing.assert_close(merged[name], 0.3 * task[name] + 0.7 * align[name], rtol=1e-6, atol=1e-7)
    expected = _hand_logits(tiny_path, _averaged_ab_updates(task, align, w))
    got = _logits(_load(tiny_path, out, fmt))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the documented difference: this is not the average of the two updates (cross terms, w^2)
    other = _hand_logits(tiny_path, _averaged_update_updates(task, align, w))
    assert (got - other).abs().max() > 1e-2


def test_merge_with_peft_cat_is_the_average_of_the_updates_and_round_trips(adapters, tiny_path, tmp_path):
    w = 0.3
    dirs = adapters["dirs"]["peft"]
    model = PeftModel.from_pretrained(_base(tiny_path), str(dirs["task"]), adapter_name="task")
    model.load_adapter(str(dirs["align"]), adapter_name="alignment")
    assert merge_with_peft(model, "task", "alignment", task_weight=w, combination_type="cat") == "merged"
    model.eval()
    expected = _hand_logits(tiny_path, _averaged_update_updates(_state(dirs["task"], "peft"),
                                                                _state(dirs["align"], "peft"), w))
    torch.testing.assert_close(_logits(model), expected, rtol=1e-4, atol=1e-5)
    model.save_pretrained(str(tmp_path / "cat"), selected_adapters=["merged"])
    saved = tmp_path / "cat" / "merged"
    assert json.loads((saved / "adapter_config.json").read_text())["r"] == 2 * R
    torch.testing.assert_close(_logits(_load(tiny_path, saved, "peft")), expected, rtol=1e-4, atol=1e-5)


# --- errors ---------------------------------------------------------------------------------------

def test_state_dict_shape_mismatch_names_the_tensor():
    task = {"layers.0.q_proj.lora_A.weight": torch.zeros(4, 8), "layers.0.q_proj.lora_B.weight": torch.zeros(8, 4)}
    align = {"layers.0.q_proj.lora_A.weight": torch.zeros(2, 8), "layers.0.q_proj.lora_B.weight": torch.zeros(8, 4)}
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj\.lora_A\.weight: shape \(4, 8\) \(task\) "
                                         r"vs \(2, 8\) \(alignment\)"):
        merge_state_dicts(task, align, 0.5)
    with pytest.raises(ValueError, match=r"1 only in task \['extra'\]"):
        merge_state_dicts({**task, "extra": torch.ones(3)}, task, 0.5)
    kept = merge_state_dicts({**task, "extra": torch.ones(3)}, task, 0.5, only_in_one="copy")
    assert torch.equal(kept["extra"], torch.ones(3))
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"task weight must be in \[0, 1\]"):
            merge_state_dicts(task, task, bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatched_ranks_fail_naming_the_tensor(adapters, tiny_path, tmp_path, fmt):
    wide = _save(_random_adapter(tiny_path, seed=3, r=2 * R), tmp_path / "wide", fmt, tiny_path, r=2 * R)
    # A is [r, in], B is [out, r]: whichever comes first, the ranks 4 and 8 are in the message
    pattern = (r"base_model\.model\.\S+\.lora_[AB]\.\S*weight: shape "
               rf"(\({R}, (\d+)\) \(task\) vs \({2 * R}, \2\)|\((\d+), {R}\) \(task\) vs \(\3, {2 * R}\)) "
               r"\(alignment\)")
    with pytest.raises(ValueError, match=pattern):
        merge_adapter_dirs(adapters["dirs"][fmt]["task"], wide, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["wide"]


def test_other_mismatches_fail_clearly(adapters, tiny_path, tmp_path):
    dirs = adapters["dirs"]
    # same shapes, different scaling: the average would be meaningless
    loud = _save(_random_adapter(tiny_path, seed=4, alpha=4 * ALPHA), tmp_path / "loud", "peft", tiny_path)
    with pytest.raises(ValueError, match=r"differ in lora_alpha: 8\.0 \(task\) vs 32\.0 \(alignment\)"):
        merge_adapter_dirs(dirs["peft"]["task"], loud, tmp_path / "out")
    # different target modules
    narrow = _save(_random_adapter(tiny_path, seed=5, targets=["q_proj", "v_proj"]), tmp_path / "narrow", "peft",
                   tiny_path)
    with pytest.raises(ValueError, match=r"40 only in task \[.*lora_A.*\], 0 only in alignment"):
        merge_adapter_dirs(dirs["peft"]["task"], narrow, tmp_path / "out")
    with pytest.raises(ValueError, match=r"cannot merge a peft adapter .* with a trainable adapter"):
        merge_adapter_dirs(dirs["peft"]["task"], dirs["trainable"]["align"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither adapter_model.safetensors"):
        merge_adapter_dirs(dirs["peft"]["task"], tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- saved like any other adapter -----------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_merged_adapter_round_trips(adapters, tiny_path, tmp_path, fmt):
    dirs = adapters["dirs"][fmt]
    task, align = _state(dirs["task"], fmt), _state(dirs["align"], fmt)
    out = tmp_path / "merged"
    merge_adapter_dirs(dirs["task"], dirs["align"], out, task_weight=0.9)
    config_file = "adapter_config.json" if fmt == "peft" else "config.yaml"
    meaning = ["meaning.json"] if fmt == "trainable" else []   # a trainer export says what fixes its meaning
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_FILE[fmt], config_file, "merge.json", *meaning])
    assert (out / config_file).read_text() == (dirs["task"] / config_file).read_text()
    info = json.loads((out / "merge.json").read_text())
    assert info["task_weight"] == 0.9 and info["format"] == fmt and info["task"] == str(dirs["task"])
    # replaced as a whole when written again; no temporary directories left beside it
    merge_adapter_dirs(dirs["task"], dirs["align"], out, task_weight=0.6, extra_info={"note": "second"})
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
    assert json.loads((out / "merge.json").read_text())["note"] == "second"
    expected = _hand_logits(tiny_path, _averaged_ab_updates(task, align, 0.6))
    torch.testing.assert_close(_logits(_load(tiny_path, out, fmt)), expected, rtol=1e-4, atol=1e-5)
    # a merged adapter is an input like any other: merging it with itself gives it back
    again = merge_adapter_dirs(out, out, tmp_path / "again", task_weight=0.25)
    for name, t in _state(out, fmt).items():
        torch.testing.assert_close(_state(again, fmt)[name], t, rtol=1e-6, atol=1e-7)


# --- choosing the weight --------------------------------------------------------------------------

def test_search_picks_the_weight_with_the_best_dev_score(adapters, tiny_path, tmp_path):
    """Dev score: -MSE to the outputs of the by-hand merge at 0.7 (so 0.7 must win, with score ~0)."""
    dirs = adapters["dirs"]["peft"]
    task, align = _state(dirs["task"], "peft"), _state(dirs["align"], "peft")
    target = _hand_logits(tiny_path, _averaged_ab_updates(task, align, 0.7))
    calls = []

    def dev_score(w):
        calls.append(w)
        out = merge_adapter_dirs(dirs["task"], dirs["align"], tmp_path / f"w{w}", task_weight=w)
        return -float(((_logits(_load(tiny_path, out, "peft")) - target) ** 2).mean())

    best, scores = search_merge_weight([1.0, 0.9, 0.7, 0.5], dev_score)
    assert calls == [1.0, 0.9, 0.7, 0.5]
    assert best == 0.7 and scores[0.7] > -1e-8
    assert all(scores[w] < -1e-4 for w in (1.0, 0.9, 0.5))


def test_search_rules():
    table = {0.5: 0.2, 0.7: 0.9, 0.9: 0.9, 1.0: float("nan")}
    assert search_merge_weight([0.5, 0.7, 0.9, 1.0], table.get) == (0.7, table)  # ties: the first
    assert search_merge_weight([1.0, 0.5, 0.9], table.get, maximize=False)[0] == 0.5  # NaN never wins
    with pytest.raises(ValueError, match="no usable score"):
        search_merge_weight([1.0], table.get)
    with pytest.raises(ValueError, match=r"task weight must be in \[0, 1\]"):
        search_merge_weight([0.5, 2.0], table.get)


# --- the command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_merges_with_a_weight(adapters, tmp_path, capsys, fmt):
    dirs = adapters["dirs"][fmt]
    rc = merge_cli.main([str(dirs["task"]), str(dirs["align"]), "--weight", "0.4", "--out", str(tmp_path / "m")])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.strip() == str(tmp_path / "m")
    assert "merging tensors" in captured.err and "weight 0.4" in captured.err  # progress and summary
    task, align, merged = _state(dirs["task"], fmt), _state(dirs["align"], fmt), _state(tmp_path / "m", fmt)
    for name in task:
        torch.testing.assert_close(merged[name], 0.4 * task[name] + 0.6 * align[name], rtol=1e-6, atol=1e-7)
    assert merge_cli.main([str(dirs["task"]), str(dirs["align"]), "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert json.loads((tmp_path / "d" / "merge.json").read_text())["task_weight"] == 0.9  # the paper's default


def test_cli_errors_are_one_clear_line(adapters, tiny_path, tmp_path, capsys):
    dirs = adapters["dirs"]["peft"]
    wide = _save(_random_adapter(tiny_path, seed=3, r=2 * R), tmp_path / "wide", "peft", tiny_path)
    capsys.readouterr()  # drop the model-loading output of the line above
    assert merge_cli.main([str(dirs["task"]), str(wide), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("error: base_model.model.") and "(task) vs" in last and "Traceback" not in err
    assert err.count("error:") == 1
    assert merge_cli.main([str(dirs["task"]), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "adapter directory not found" in capsys.readouterr().err
    for argv, message in [(["--weight", "1.5"], "in [0, 1]"), (["--search", "0.5,x"], "comma-separated"),
                          (["--search", "0.5,0.5", "--dev", "d.jsonl"], "repeated"),
                          (["--search", "0.5,0.9"], "--search needs dev data"),
                          (["--weight", "0.5", "--search", "0.5"], "not allowed with")]:
        with pytest.raises(SystemExit) as exit_info:
            merge_cli.main([str(dirs["task"]), str(dirs["align"]), "--out", str(tmp_path / "o"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _dev_file(path, n=6):
    pairs = synthetic.parallel_sentences("deu_Latn", n, seed=7)
    with path.open("w") as f:
        for src, tgt in pairs:
            f.write(json.dumps({"prompt": f"Translate: {src} =>", "answer": tgt}, ensure_ascii=False) + "\n")
    return [({"prompt": f"Translate: {s} =>", "answer": t}) for s, t in pairs]


@torch.no_grad()
def _hand_dev_loss(tiny_path, updates, records):
    """Token-mean answer cross-entropy, one unpadded example at a time, via log_softmax and gather."""
    base = _base(tiny_path)
    params = dict(base.named_parameters())
    for module, delta in updates.items():
        params[module + ".weight"] += delta
    tok = load_llm_tokenizer(_cfg(tiny_path))
    total, count = 0.0, 0
    for rec in records:
        prompt = tok(rec["prompt"])["input_ids"]
        answer = tok(rec["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        logprobs = torch.log_softmax(base(input_ids=ids).logits[0].float(), dim=-1)
        for j, token in enumerate(answer):
            total -= logprobs[len(prompt) + j - 1, token].item()  # position t predicts token t + 1
            count += 1
    return total / count


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_search_scores_dev_loss_and_writes_the_best(adapters, tiny_path, tmp_path, capsys, fmt):
    dirs = adapters["dirs"][fmt]
    records = _dev_file(tmp_path / "dev.jsonl")
    rc = merge_cli.main([str(dirs["task"]), str(dirs["align"]), "--search", "0.0,0.5,1.0",
                         "--dev", str(tmp_path / "dev.jsonl"), "--batch-size", "4", "--out", str(tmp_path / "best")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "merge weights" in captured.err and "<- best" in captured.err
    info = json.loads((tmp_path / "best" / "merge.json").read_text())
    task, align = _state(dirs["task"], fmt), _state(dirs["align"], fmt)
    expected = {w: _hand_dev_loss(tiny_path, _averaged_ab_updates(task, align, w), records) for w in (0.0, 0.5, 1.0)}
    got = {float(w): s for w, s in info["search"]["dev_loss"].items()}
    assert got.keys() == expected.keys()
    for w in expected:
        assert got[w] == pytest.approx(expected[w], rel=1e-4)
    assert len({round(v, 3) for v in expected.values()}) == 3, "weights should score differently"
    best = min(expected, key=expected.get)
    assert info["task_weight"] == best
    merged = _state(tmp_path / "best", fmt)
    for name in task:
        torch.testing.assert_close(merged[name], best * task[name] + (1 - best) * align[name], rtol=1e-6, atol=1e-7)


def test_cli_search_rejects_bad_dev_data(adapters, tmp_path, capsys):
    dirs = adapters["dirs"]["peft"]
    (tmp_path / "dev.jsonl").write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    argv = [str(dirs["task"]), str(dirs["align"]), "--search", "0.5,1.0", "--out", str(tmp_path / "o")]
    assert merge_cli.main([*argv, "--dev", str(tmp_path / "dev.jsonl")]) == 1
    assert "record 1 has no text column 'prompt'" in capsys.readouterr().err
    assert merge_cli.main([*argv, "--dev", str(tmp_path / "none.jsonl")]) == 1
    assert "dev file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_dash_m_entry_point(adapters, tmp_path):
    dirs = adapters["dirs"]["peft"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "trainer.merge", str(dirs["task"]), str(dirs["align"]),
                           "--weight", "0.9", "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "m")
    assert math.isclose(json.loads((tmp_path / "m" / "merge.json").read_text())["task_weight"], 0.9)
