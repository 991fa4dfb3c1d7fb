"""LLM2Vec weights as a standard transformers folder: the base causal LM with the published MNTP adapter merged.

    python -m data_prep.llm2vec --adapter McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp \\
        --out models/llm2vec-llama3-8b-instruct-mntp         # --base defaults to the adapter's own base model
                                                             # (meta-llama/Meta-Llama-3-8B-Instruct)

The study's LLMs are LLM2Vec models: bidirectional attention, trained with masked next token prediction
(MNTP), published as a PEFT LoRA adapter over the base LLM. This command loads the base causal LM
(`--base`, a hub name or a folder; default: `base_model_name_or_path` of the adapter's adapter_config.json),
applies the adapter (`--adapter`, a hub name or a folder), merges it (peft's `merge_and_unload`) and writes
`--out`: the merged weights (safetensors), the base's tokenizer and `llm2vec.json` (what it was made from).
LLM2Vec trains its adapters on the decoder without the LM head (transformers' `AutoModel`: keys
`base_model.model.layers.*`); an adapter saved over the causal LM (`base_model.model.model.layers.*`) is
applied there; every tensor of the adapter is checked to have been loaded (peft only warns about keys it
does not find, which would leave the base weights unchanged). The LM head is the base's: MNTP's head is not
part of the adapter.

Jobs then load the folder with bidirectional attention, as LLM2Vec was trained (README, "LLM2Vec weights"):

    model:
      llm: {name_or_path: models/llm2vec-llama3-8b-instruct-mntp, dtype: bfloat16, bidirectional: true}

The weights are written in `--dtype` (default: the base's own dtype; the merge itself is computed in that
dtype, as LLM2Vec's own loading does). A missing adapter or base folder, an adapter folder without
adapter_config.json, or an `--out` that exists and was not written by this command ends in one error line
(exit status 2). tests/test_llm2vec.py checks the merged folder's logits against the base + adapter's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.errors import UserError, report

MARKER = "llm2vec.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")


class AdapterError(UserError):
    """An adapter that is missing, is not a PEFT LoRA adapter, or does not fit the base model."""


def _local(name_or_path: str) -> bool:
    from trainer.models.loading import local_intent

    return local_intent(name_or_path) or Path(name_or_path).expanduser().exists()


def check_inputs(adapter: str, base: str | None) -> str:
    """The base model to use (`base`, or the adapter's `base_model_name_or_path`), after refusing a local adapter
    or base that does not exist and an adapter folder that is not a PEFT adapter."""
    if _local(adapter):
        folder = Path(adapter).expanduser()
        if not folder.exists():
            raise AdapterError(f"--adapter {adapter}: no such folder ({folder.absolute()}); give the adapter's folder "
                               f"(adapter_config.json + adapter_model.safetensors) or its hub name, e.g. "
                               f"McGill-NLP/LLM2Vec-Meta-Llama-3-8B-Instruct-mntp")
        if not (folder / "adapter_config.json").is_file():
            raise AdapterError(f"--adapter {adapter}: no adapter_config.json there; it is not a PEFT adapter folder")
    if base is None:
        from peft import PeftConfig

        base = PeftConfig.from_pretrained(adapter).base_model_name_or_path
        if not base:
            raise AdapterError(f"--adapter {adapter}: its adapter_config.json names no base_model_name_or_path; "
                               f"pass --base")
    if _local(base) and not Path(base).expanduser().exists():
        raise AdapterError(f"--base {base}: no such folder ({Path(base).expanduser().absolute()})")
    return base


def merge_llm2vec(base: str, adapter: str, out: str | Path, dtype: str = "auto") -> Path:
    """Write `out`: `base` (a causal LM) with the PEFT LoRA `adapter` merged, its tokenizer and llm2vec.json."""
    import torch
    from peft import PeftModel
    from peft.utils import load_peft_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.fsutil import write_dir

    weights = load_peft_weights(adapter, device="cpu")
    if not weights:
        raise AdapterError(f"--adapter {adapter}: holds no weights")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    decoder = getattr(model, model.base_model_prefix)
    outer = f"base_model.model.{model.base_model_prefix}."   # an adapter saved over the causal LM
    if all(k.startswith(outer) for k in weights):
        target, layout = model, "causal LM"
    elif all(k.startswith("base_model.model.") and not k.startswith(outer) for k in weights):
        target, layout = decoder, "decoder (AutoModel, as LLM2Vec)"
    else:
        raise AdapterError(f"--adapter {adapter}: its keys (e.g. {next(iter(weights))}) fit neither {type(model).__name__} "
                           f"nor its decoder")
    peft_model = PeftModel.from_pretrained(target, adapter)
    _check_loaded(peft_model, weights, adapter, base)
    merged = peft_model.merge_and_unload()
    if target is decoder:
        setattr(model, model.base_model_prefix, merged)   # the same module, its LoRA layers merged away
    tokenizer = AutoTokenizer.from_pretrained(base)
    info = {"base": base, "adapter": adapter, "adapter_applied_to": layout, "dtype": str(model.dtype).split(".")[-1],
            "adapter_tensors": len(weights),
            "load_with": "model.llm.bidirectional: true (LLM2Vec's attention; README, 'LLM2Vec weights')"}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")

    return write_dir(out, write)


def _check_loaded(peft_model, weights: dict, adapter: str, base: str) -> None:
    """Every adapter tensor is in the model, with its value: peft warns and goes on when keys do not match."""
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(peft_model)
    missing = sorted(set(weights) - set(loaded))
    if missing:
        raise AdapterError(f"--adapter {adapter}: {len(missing)} of its {len(weights)} tensors match no module of "
                           f"{base} (e.g. {missing[0]}): an adapter of another model")
    for key, value in weights.items():
        if loaded[key].shape != value.shape or not (loaded[key].float().cpu() == value.float()).all():
            raise AdapterError(f"--adapter {adapter}: {key} did not load as saved (shape {tuple(value.shape)} in the "
                               f"adapter, {tuple(loaded[key].shape)} in {base})")


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="the MNTP PEFT adapter: a hub name or a folder")
    parser.add_argument("--base", help="the base causal LM (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--out", required=True, help="the merged transformers folder to write")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the base's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out this command did not write")
    args = parser.parse_args(argv)
    from trainer.fsutil import check_destination

    try:
        base = check_inputs(args.adapter, args.base)
        check_destination(args.out, [p for p in (base, args.adapter) if _local(p)], args.overwrite, written_by=MARKER)
        out = merge_llm2vec(base, args.adapter, args.out, args.dtype)
    except UserError as e:
        sys.exit(report(e))
    print(f"{out}: {base} + {args.adapter} merged; load it with model.llm.bidirectional: true")
    return out


if __name__ == "__main__":
    main()
