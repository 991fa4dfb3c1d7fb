"""Export and load the trainable weights (projection, LoRA, heads) as safetensors.

An export directory holds `trainable.safetensors` and the resolved `config.yaml`;
it is written to a temporary directory and renamed, so it is complete or absent.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.fsutil import replace_dir, temp_dir_beside

WEIGHTS_FILE = "trainable.safetensors"
CONFIG_FILE = "config.yaml"


def save_trainable(state: dict[str, torch.Tensor], out_dir: str | Path, config_yaml: str) -> Path:
    """Write `state` (name -> tensor) and the config atomically to `out_dir`."""
    out = Path(out_dir)
    empty = [name for name, t in state.items() if t.numel() == 0]
    if not state or empty:
        raise ValueError(f"refusing to export empty trainable weights: {empty or 'no tensors'}")
    tmp = temp_dir_beside(out)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(config_yaml)
    return replace_dir(tmp, out)


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
