"""Merge a task LoRA and an alignment LoRA (M2): `python -m trainer.merge TASK_DIR ALIGN_DIR ...`.

    python -m trainer.merge runs/task/export runs/align/export --weight 0.9 --out runs/merged
    python -m trainer.merge TASK ALIGN --search 0.5,0.7,0.9,1.0 --dev dev.jsonl --out runs/merged

`--weight w` writes `w * task + (1 - w) * alignment` for every tensor (A and B averaged
separately; see `trainer.models.merging`). `--search` scores each weight on dev data, keeps the
one with the lowest dev loss, and writes that merge; `merge.json` in the output records the
weight and every weight's score.

Dev data: JSONL (or parquet) records with a prompt and an answer (`--prompt-column`,
`--answer-column`). The score is the M2 task loss: causal-LM cross-entropy on the answer tokens
given the prompt, averaged over all answer tokens of the dev set (lower is better). Tokens:
`tokenizer(prompt)` (with the tokenizer's special tokens, e.g. BOS) + `tokenizer(answer)`
without special tokens + EOS.

The model for `--search`: the base LLM (`--base`, default the adapter's
`base_model_name_or_path` for peft adapters, `model.llm` of `config.yaml` for trainer exports) as
a causal LM, with the task adapter's LoRA layout; each candidate merge is loaded in place (the
base loads once). Trainer exports must hold the LoRA weights of a peft model only (names
containing `base_model.model.`).

The output directory is written beside its target and renamed into place; `--out` may not be an
input or a folder holding one, and a non-empty `--out` that is not a previous merge output (no
`merge.json`) is refused unless `--overwrite`.

Exit status: 0 done, 1 the merge or the search failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from trainer.errors import UserError, user_error
from trainer.fsutil import check_destination
from trainer.models.merging import (
    MERGE_INFO_FILE,
    PAPER_TASK_WEIGHT,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    adapter_format,
    merge_adapter_dirs,
    merge_state_dicts,
    search_merge_weight,
)
from trainer.models.weights import CONFIG_FILE, WEIGHTS_FILE

PEFT_PREFIX = "base_model.model."


class MergeError(UserError, ValueError):
    """A problem with the inputs that the CLI reports as one line."""


# --- dev data ------------------------------------------------------------------------------------

def read_dev_records(path: str | Path, prompt_column: str = "prompt", answer_column: str = "answer",
                     limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a JSONL or parquet file; errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dev file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        records = []
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise MergeError(f"{path}:{i}: not JSON ({e.msg})") from None
    out = []
    for i, rec in enumerate(records[:limit] if limit else records, start=1):
        for col in (prompt_column, answer_column):
            if not isinstance(rec.get(col), str):
                raise MergeError(f"{path}: record {i} has no text column {col!r} (keys: {sorted(rec)})")
        if not rec[answer_column]:
            raise MergeError(f"{path}: record {i} has an empty answer")
        out.append((rec[prompt_column], rec[answer_column]))
    if not out:
        raise MergeError(f"{path}: no dev records")
    return out


def tokenize_dev(tokenizer, records: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids (with the tokenizer's special tokens) and answer ids (none, then EOS)."""
    prompts = [tokenizer(p)["input_ids"] for p, _ in records]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, a in records]
    return prompts, answers


@torch.no_grad()
def dev_loss(model: torch.nn.Module, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
             pad_id: int, padding_side: str = "right", batch_size: int = 8, max_length: int | None = None,
             show_progress: bool = False) -> float:
    """Answer-token cross-entropy, summed over the dev set and divided by its answer-token count."""
    from trainer.models.llm_forward import run_llm
    from trainer.data.task import IGNORE_INDEX, build_prompt_answer_batch
    from trainer.objectives.task import causal_lm_loss

    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="dev batches", leave=False, disable=not show_progress):
        batch = build_prompt_answer_batch(prompts[start:start + batch_size], answers[start:start + batch_size],
                                          pad_id, padding_side, max_length)
        out = run_llm(model, batch["attention_mask"].to(device), input_ids=batch["input_ids"].to(device))
        labels = batch["labels"]
        total += float(causal_lm_loss(out.logits, labels, reduction="sum"))
        tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
    if tokens == 0:
        raise MergeError("the dev set has no answer tokens (all cut by --max-length?)")
    return total / tokens


# --- a model that takes each candidate merge in place --------------------------------------------

def _llm_config(name_or_path: str, dtype: str, extra: dict | None = None):
    from trainer.config import LLMConfig

    fields = dict(extra or {})
    fields["name_or_path"] = name_or_path
    if dtype:
        fields["dtype"] = dtype
    return LLMConfig(**fields)


def build_search_model(task_dir: Path, base: str | None, dtype: str | None, device: str):
    """(model, tokenizer, load_merged) for the task adapter's layout; `load_merged(state)` sets its LoRA weights."""
    import yaml

    from trainer.config import LoraConfig
    from trainer.models.loading import load_llm, load_llm_tokenizer

    kind = adapter_format(task_dir)
    cache_dir = ".cache/tiny-models"
    if kind == "peft":
        adapter_cfg = json.loads((task_dir / PEFT_CONFIG_FILE).read_text())
        name = base or adapter_cfg.get("base_model_name_or_path")
        if not name:
            raise MergeError(f"{task_dir / PEFT_CONFIG_FILE} names no base_model_name_or_path: give --base")
        llm_cfg = _llm_config(name, dtype or "float32")
    else:
        config_path = task_dir / CONFIG_FILE
        raw = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
        model_raw = (raw or {}).get("model") or {}
        if "lora" not in model_raw:
            raise MergeError(f"{config_path}: no model.lora section, so the LoRA layout of {task_dir / WEIGHTS_FILE} "
                             "is unknown (search needs a trainer export of a LoRA model)")
        llm_raw = dict(model_raw.get("llm") or {})
        cache_dir = model_raw.get("cache_dir", cache_dir)
        name = base or llm_raw.pop("name_or_path", None)
        if not name:
            raise MergeError(f"{config_path}: no model.llm.name_or_path: give --base")
        llm_raw.pop("name_or_path", None)
        llm_cfg = _llm_config(name, dtype or llm_raw.pop("dtype", "float32"), llm_raw)
        lora_cfg = LoraConfig(**model_raw["lora"])

    tokenizer = load_llm_tokenizer(llm_cfg, cache_dir)
    llm = load_llm(llm_cfg, cache_dir, causal_lm=True)
    if kind == "peft":
        from peft import PeftModel, set_peft_model_state_dict

        model = PeftModel.from_pretrained(llm, str(task_dir))

        def load_merged(state: dict[str, torch.Tensor]) -> None:
            result = set_peft_model_state_dict(model, state)
            lora_missing = [k for k in result.missing_keys if "lora_" in k]
            if result.unexpected_keys or lora_missing:
                raise MergeError(f"the merged adapter does not fit {name}: unexpected "
                                 f"{result.unexpected_keys[:3]}, missing {lora_missing[:3]}")
    else:
        from trainer.models.lora import add_lora

        model = add_lora(llm, lora_cfg.r, lora_cfg.alpha, 0.0, lora_cfg.target_modules)
        params = dict(model.named_parameters())
        lora_names = {n for n in params if "lora_" in n}

        def load_merged(state: dict[str, torch.Tensor]) -> None:
            outside = [k for k in state if PEFT_PREFIX not in k]
            if outside:
                raise MergeError(f"{task_dir / WEIGHTS_FILE} holds tensors outside a peft model, e.g. {outside[:3]}: "
                                 "the search evaluates LoRA weights of a causal LM only (merge with --weight instead)")
            mapped = {k[k.index(PEFT_PREFIX):]: v for k, v in state.items()}
            unexpected = sorted(mapped.keys() - params.keys())
            missing = sorted(lora_names - mapped.keys())
            if unexpected or missing:
                raise MergeError(f"{task_dir / WEIGHTS_FILE} does not fit {name} with LoRA r={lora_cfg.r} on "
                                 f"{lora_cfg.target_modules}: unexpected {unexpected[:3]}, missing {missing[:3]}")
            with torch.no_grad():
                for k, v in mapped.items():
                    params[k].copy_(v)

    model.to(device).eval()
    return model, tokenizer, load_merged


def search(task_dir: Path, align_dir: Path, weights: Sequence[float], dev_path: Path, args,
           log: Callable[[str], None]) -> tuple[float, dict[float, float]]:
    """Dev loss of every candidate weight -> (best weight, {weight: dev loss})."""
    records = read_dev_records(dev_path, args.prompt_column, args.answer_column, args.max_dev)
    task = load_file(str(task_dir / _weights_file(task_dir)))
    alignment = load_file(str(align_dir / _weights_file(align_dir)))
    merge_state_dicts(task, alignment, 1.0)  # names and shapes checked before the model loads
    log(f"loading the base model for {len(records)} dev examples ...")
    model, tokenizer, load_merged = build_search_model(task_dir, args.base, args.dtype, args.device)
    prompts, answers = tokenize_dev(tokenizer, records)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = tqdm(total=len(weights), desc="merge weights", unit="weight", disable=args.quiet)

    def evaluate(w: float) -> float:
        load_merged(merge_state_dicts(task, alignment, w))
        loss = dev_loss(model, prompts, answers, pad_id, tokenizer.padding_side, args.batch_size, args.max_length,
                        show_progress=not args.quiet)
        bar.update(1)
        bar.set_postfix(weight=w, dev_loss=f"{loss:.4f}")
        return loss

    try:
        return search_merge_weight(weights, evaluate, maximize=False)
    finally:
        bar.close()


def _weights_file(directory: Path) -> str:
    return PEFT_WEIGHTS_FILE if adapter_format(directory) == "peft" else WEIGHTS_FILE


# --- command line --------------------------------------------------------------------------------

def parse_weights(text: str) -> list[float]:
    """'0.5,0.7,0.9,1.0' -> [0.5, 0.7, 0.9, 1.0]; each in [0, 1], no repeats."""
    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.7,0.9,1.0, got {text!r}")
    return [_weight(w) for w in _unique(weights, text)]


def _unique(weights: list[float], text: str) -> list[float]:
    if not weights:
        raise argparse.ArgumentTypeError(f"no weights in {text!r}")
    if len(set(weights)) != len(weights):
        raise argparse.ArgumentTypeError(f"repeated weight in {text!r}")
    return weights


def _weight(value) -> float:
    w = float(value)
    if not (0.0 <= w <= 1.0) or math.isnan(w):
        raise argparse.ArgumentTypeError(f"a task weight is in [0, 1] (weighted average), got {value}")
    return w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.merge",
        description="Merge a task LoRA and an alignment LoRA by weighted averaging (M2). "
                    "Both adapters in peft format (adapter_model.safetensors) or both trainer exports "
                    "(trainable.safetensors + config.yaml); the output has the same format.")
    p.add_argument("task_dir", type=Path, help="the task adapter (weight w)")
    p.add_argument("align_dir", type=Path, help="the alignment adapter (weight 1 - w)")
    p.add_argument("--out", type=Path, required=True,
                   help="output adapter directory: new, empty, or a previous merge output (it holds merge.json); "
                        "never one of the inputs or a folder holding one")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not a merge output")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--weight", type=_weight, default=None,
                     help=f"task weight w in [0, 1] (default {PAPER_TASK_WEIGHT}, the paper's)")
    how.add_argument("--search", type=parse_weights, default=None, metavar="W1,W2,...",
                     help="candidate task weights; the one with the lowest dev loss (--dev) is written")
    dev = p.add_argument_group("weight search (--search)")
    dev.add_argument("--dev", type=Path, help="dev data: JSONL or parquet with prompt and answer columns")
    dev.add_argument("--prompt-column", default="prompt")
    dev.add_argument("--answer-column", default="answer")
    dev.add_argument("--max-dev", type=int, default=None, help="use the first N dev records")
    dev.add_argument("--base", default=None, help="base model (default: from the task adapter)")
    dev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="weights dtype of the base model (default: float32, or the export's config)")
    dev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    dev.add_argument("--batch-size", type=int, default=8)
    dev.add_argument("--max-length", type=int, default=None, help="cut prompt+answer to N tokens (prompt first)")
    p.add_argument("--allow-extra", action="store_true",
                   help="copy tensors present in one adapter only (e.g. a task head) instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.search is not None and args.dev is None:
        parser.error("--search needs dev data: --dev FILE.jsonl")
    if args.search is None and args.dev is not None:
        parser.error("--dev is only used with --search")

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    only_in_one = "copy" if args.allow_extra else "error"
    start = time.perf_counter()
    bars = []

    def progress(items):
        bars.append(tqdm(items, desc="merging tensors", unit="tensor", disable=args.quiet))
        return bars[-1]

    try:
        for d in (args.task_dir, args.align_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"adapter directory not found: {d}")
        check_destination(args.out, [args.task_dir, args.align_dir], args.overwrite, written_by=MERGE_INFO_FILE)
        extra = {}
        if args.search is not None:
            weight, scores = search(args.task_dir, args.align_dir, args.search, args.dev, args, log)
            extra = {"search": {"dev": str(args.dev), "score": "answer-token cross-entropy (lower is better)",
                                "dev_loss": {str(w): s for w, s in scores.items()}}}
            for w, s in scores.items():
                log(f"  weight {w:<5} dev loss {s:.4f}{'  <- best' if w == weight else ''}")
        else:
            weight = PAPER_TASK_WEIGHT if args.weight is None else args.weight
        out = merge_adapter_dirs(args.task_dir, args.align_dir, args.out, weight, only_in_one, progress, extra)
    except Exception as e:   # noqa: BLE001 - a refusal or a full disk is one line; anything else is raised
        problem = user_error(e, args.out, also=(ValueError, FileNotFoundError))
        if problem is None:
            raise
        for bar in bars:
            bar.close()  # the error gets a line of its own
        print(f"error: {problem}", file=sys.stderr)
        return 1
    log(f"merged {args.task_dir} (weight {weight}) and {args.align_dir} (weight {round(1 - weight, 6)}) "
        f"into {out} in {time.perf_counter() - start:.1f}s")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
