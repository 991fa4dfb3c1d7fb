"""Export and load the trainable weights (projection, LoRA, heads) as safetensors.

An export directory (a run's OUTPUT_DIR/export, written by `export`) holds

    trainable.safetensors   every trained weight by its name in the model (projection, LoRA, heads)
    config.yaml             the resolved job
    meaning.json            what fixes the weights' meaning: LLM, attention direction, pooling, tokenizers
                            (`trainer.models.meaning`; loading under other ones fails naming both values)
    snapshot.json           only in a finetune run's export_sdev/: the S-DEV step it holds
    adapter/                the LoRA weights as a standard PEFT adapter folder (adapter_config.json,
                            adapter_model.safetensors): PeftModel.from_pretrained(base_model, "adapter")
    model.safetensors       only with tracking.export: all, every weight, frozen ones included

(A model with several peft models inside has one folder each, `adapter-<module path>`.) The
folder is written to a temporary directory and renamed, so it is complete or absent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import peft
import torch
from safetensors.torch import load_file, save_file

from trainer.fsutil import current_umask, write_dir
from trainer.models.fusion import FusionLinear
from trainer.models.meaning import MEANING_FILE, meaning_json

WEIGHTS_FILE = "trainable.safetensors"
CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"
FULL_MODEL_FILE = "model.safetensors"

log = logging.getLogger(__name__)


def save_trainable(state: dict[str, torch.Tensor], out_dir: str | Path, config_yaml: str) -> Path:
    """Write `state` (name -> tensor) and the config atomically to `out_dir`."""
    return export(state, out_dir, config_yaml)


def export(state: dict[str, torch.Tensor], out_dir: str | Path, config_yaml: str, model: torch.nn.Module | None = None,
           frozen: dict[str, torch.Tensor] | None = None, notes: dict[str, str] | None = None) -> Path:
    """Write an export folder atomically: `state` (name -> full trained tensor) as trainable.safetensors, the
    config and its meaning.json, a PEFT adapter folder per peft model inside `model`, with `frozen` (the other
    weights) model.safetensors holding every weight, and `notes` (file name -> text) beside them.

    The tensors come from `state`, not from `model`: under ZeRO-3 a parameter's own data is an empty
    partition, and the engine's gather has already made full copies. `model` only gives the peft
    structure (adapter config and key names).
    """
    out = Path(out_dir)
    empty = [name for name, t in state.items() if t.numel() == 0]
    if not state or empty:
        raise ValueError(f"refusing to export empty trainable weights: {empty or 'no tensors'}")
    def write(tmp: Path) -> None:
        save_file(_contiguous(state), str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(config_yaml)
        (tmp / MEANING_FILE).write_text(meaning_json(config_yaml))
        for name, text in (notes or {}).items():
            (tmp / name).write_text(text)
        if model is not None:
            save_peft_adapters(model, state, tmp)
        if frozen is not None:
            save_file(_contiguous({**frozen, **state}), str(tmp / FULL_MODEL_FILE))
        mode = 0o666 & ~current_umask()   # safetensors writes 0600: colleagues on a shared cluster could not read it
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(mode)

    return write_dir(out, write)   # a full disk leaves no half-written export beside it


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def peft_models(model: torch.nn.Module) -> list[tuple[str, peft.PeftModel]]:
    """(module path, peft model) for every peft model inside `model` (path "" when it is one itself)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, peft.PeftModel)]


def save_peft_adapters(model: torch.nn.Module, state: dict[str, torch.Tensor], out: Path) -> list[Path]:
    """Each peft model inside `model` as a PEFT adapter folder under `out` (`adapter`, or `adapter-<path>` when
    there are several), its weights taken from `state` (names relative to `model`); returns the folders.

    A peft model whose adapter PEFT cannot save, or would load wrongly (FLARE's fusion LoRA, which reads a
    source representation), is skipped: its weights are still in trainable.safetensors.
    """
    found = peft_models(model)
    folders = []
    for path, peft_model in found:
        prefix = f"{path}." if path else ""
        own = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
        folder = out / (ADAPTER_DIR if len(found) == 1 else f"{ADAPTER_DIR}-{path or 'model'}")
        if any(isinstance(m, FusionLinear) for m in peft_model.modules()):
            # PEFT would load FLARE's fusion LoRA as plain LoRA, silently without the fusion
            log.info("export: no PEFT adapter folder for %s: fusion LoRA needs trainer.models.flare to run (its "
                     "weights are in %s)", path or "the model", WEIGHTS_FILE)
            continue
        try:
            peft_model.save_pretrained(str(folder), state_dict=_contiguous(own), save_embedding_layers=False)
        except Exception as e:  # noqa: BLE001 - the export itself must not fail at the end of training
            log.warning("export: no PEFT adapter folder for %s (%s: %s); its weights are in %s",
                        path or "the model", type(e).__name__, e, WEIGHTS_FILE)
            continue
        folders.append(folder)
    return folders


def load_trainable(model: torch.nn.Module, export_dir: str | Path) -> None:
    """Load an export into `model`; every trainable parameter must be present, nothing extra."""
    path = Path(export_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {export_dir}")
    state = load_file(str(path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - state.keys())
    unexpected = sorted(state.keys() - {n for n, _ in model.named_parameters()})
    if missing or unexpected:
        raise ValueError(f"{path}: does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
