"""Merge a task LoRA and an alignment LoRA trained separately (M2) by weighted averaging.

Implemented choice (the paper's "weighted averaging of their weights", 0.9 on the task module):
every exported tensor is averaged on its own,

    A = w * A_task + (1 - w) * A_align,    B = w * B_task + (1 - w) * B_align

(same for any other trainable tensor in the export, e.g. a projection). This is *not* the
weighted average of the two weight updates: the merged update is

    B A = w^2 B_t A_t + (1-w)^2 B_a A_a + w(1-w) (B_t A_a + B_a A_t)

which differs from `w B_t A_t + (1-w) B_a A_a` by the cross terms and the squared weights. Only
w = 1 and w = 0 reproduce one module exactly. Both modules must have the same shapes (same r,
target modules) and, in peft format, the same scaling (alpha, rank/alpha patterns, rsLoRA).

Alternative: `merge_with_peft` calls peft's `add_weighted_adapter` on two adapters loaded in one
PeftModel. `combination_type="cat"` stacks the ranks (r_t + r_a) and gives exactly
`w s_t B_t A_t + (1-w) s_a B_a A_a` (the average of the updates); `"linear"` needs equal ranks
and gives `(sum_i sqrt(w_i s_i) B_i)(sum_i sqrt(w_i s_i) A_i)`, neither of the two above
(at w = 0.5 and equal scaling its update is exactly twice that of separate A/B averaging).

Formats (auto-detected, the merged directory has the format of its inputs):
- peft: `adapter_model.safetensors` + `adapter_config.json` (`PeftModel.from_pretrained`);
- ours: `trainable.safetensors` + `config.yaml` (`trainer.models.weights.load_trainable`).
A `merge.json` with the inputs and the weight is written beside the weights.

Command line (a fixed weight, or a search on dev data): `python -m trainer.merge`, see docs/merging.md.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.fsutil import write_atomic, write_dir
from trainer.models.weights import CONFIG_FILE, WEIGHTS_FILE, save_trainable

PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
MERGE_INFO_FILE = "merge.json"
PAPER_TASK_WEIGHT = 0.9

Progress = Callable[[Iterable], Iterable]

# adapter_config.json keys that must agree for A/B averaging to be meaningful
_SCALING_KEYS = ("base_model_name_or_path", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                 "use_rslora", "use_dora", "fan_in_fan_out", "layers_to_transform", "peft_type")


def merge_state_dicts(task: Mapping[str, torch.Tensor], alignment: Mapping[str, torch.Tensor],
                      task_weight: float = PAPER_TASK_WEIGHT, only_in_one: str = "error",
                      progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """name -> tensor, twice -> `w * task + (1 - w) * alignment` per tensor (A and B separately).

    Computed in fp32, returned in the task tensor's dtype. `only_in_one`: "error" (default) if a
    name is in one state dict only, or "copy" to keep such a tensor unchanged (e.g. a task head
    the alignment module does not have). Shapes must match; a mismatch names the tensor.
    `progress` wraps the iteration over the task tensors (e.g. `tqdm`), for a progress display.
    """
    _check_weight(task_weight)
    if only_in_one not in ("error", "copy"):
        raise ValueError(f"only_in_one must be error or copy, got {only_in_one!r}")
    task_only, align_only = sorted(task.keys() - alignment.keys()), sorted(alignment.keys() - task.keys())
    if (task_only or align_only) and only_in_one == "error":
        raise ValueError(f"adapters hold different tensors: {len(task_only)} only in task {task_only[:3]}, "
                         f"{len(align_only)} only in alignment {align_only[:3]} (same target modules and layers "
                         "needed, or only_in_one='copy')")
    merged = {}
    items = task.items()
    for name, t in (progress(items) if progress is not None else items):
        if name not in alignment:
            merged[name] = t.clone()
            continue
        a = alignment[name]
        if t.shape != a.shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} (task) vs {tuple(a.shape)} (alignment); "
                             "separate A/B averaging needs equal ranks (merge_with_peft 'cat' does not)")
        merged[name] = (task_weight * t.float() + (1.0 - task_weight) * a.float()).to(t.dtype)
    for name in align_only:
        merged[name] = alignment[name].clone()
    return merged


def adapter_format(directory: str | Path) -> str:
    """'peft' (adapter_model.safetensors) or 'trainable' (trainable.safetensors); error otherwise."""
    d = Path(directory)
    if (d / PEFT_WEIGHTS_FILE).is_file() and (d / PEFT_CONFIG_FILE).is_file():
        return "peft"
    if (d / WEIGHTS_FILE).is_file():
        return "trainable"
    raise FileNotFoundError(f"{d}: neither {PEFT_WEIGHTS_FILE} + {PEFT_CONFIG_FILE} (peft) nor {WEIGHTS_FILE} "
                            "(trainer export); peft .bin adapters are not supported")


def merge_adapter_dirs(task_dir: str | Path, alignment_dir: str | Path, out_dir: str | Path,
                       task_weight: float = PAPER_TASK_WEIGHT, only_in_one: str = "error",
                       progress: Progress | None = None, extra_info: Mapping | None = None) -> Path:
    """Merge two saved adapters of the same format into `out_dir` (same format; see module docstring).

    The config (adapter_config.json or config.yaml) is the task module's. `merge.json` records
    the inputs and the weight, plus `extra_info` (e.g. the scores of a weight search). `out_dir`
    is written atomically (complete or absent; an existing one is replaced). Returns `out_dir`.
    """
    kind, other = adapter_format(task_dir), adapter_format(alignment_dir)
    if kind != other:
        raise ValueError(f"cannot merge a {kind} adapter ({task_dir}) with a {other} adapter ({alignment_dir})")
    info = {"method": "weighted average of each tensor (A and B separately)", "task_weight": task_weight,
            "task": str(task_dir), "alignment": str(alignment_dir), "format": kind, **(extra_info or {})}
    if kind == "peft":
        return _merge_peft_dirs(Path(task_dir), Path(alignment_dir), Path(out_dir), task_weight, only_in_one, info,
                                progress)
    merged = merge_state_dicts(load_file(str(Path(task_dir) / WEIGHTS_FILE)),
                               load_file(str(Path(alignment_dir) / WEIGHTS_FILE)), task_weight, only_in_one,
                               progress)
    check_same_base(Path(task_dir), Path(alignment_dir))
    config_path = Path(task_dir) / CONFIG_FILE
    config_yaml = config_path.read_text() if config_path.is_file() else ""
    out = save_trainable(merged, out_dir, config_yaml)
    write_atomic(out / MERGE_INFO_FILE, json.dumps(info, indent=2) + "\n")
    return out


# Export config keys that must agree for the two adapters to sit on the same weights with the same scaling.
_EXPORT_KEYS = ("model.llm.name_or_path", "model.lora.r", "model.lora.alpha", "model.lora.target_modules",
                "model.finetune")


def check_same_base(task_dir: Path, alignment_dir: Path) -> None:
    """Two trainer exports must share the base model, LoRA rank, alpha and target modules (their config.yaml)."""
    import yaml

    def values(directory: Path) -> dict[str, object]:
        path = directory / CONFIG_FILE
        raw = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
        out = {}
        for key in _EXPORT_KEYS:
            node = raw
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[key] = node
        return out

    task, alignment = values(task_dir), values(alignment_dir)
    differing = {k: (task[k], alignment[k]) for k in _EXPORT_KEYS
                 if task[k] is not None and alignment[k] is not None and _normalised(task[k]) != _normalised(alignment[k])}
    if differing:
        shown = ", ".join(f"{k}: {t!r} (task) vs {a!r} (alignment)" for k, (t, a) in differing.items())
        raise ValueError(f"{task_dir / CONFIG_FILE} and {alignment_dir / CONFIG_FILE} differ in {shown}: the two "
                         f"adapters must be trained on the same base model with the same LoRA layout")


def _merge_peft_dirs(task_dir: Path, alignment_dir: Path, out_dir: Path, task_weight: float, only_in_one: str,
                     info: dict, progress: Progress | None = None) -> Path:
    # tensors first, so that a rank mismatch is reported with the tensor that shows it
    merged = merge_state_dicts(load_file(str(task_dir / PEFT_WEIGHTS_FILE)),
                               load_file(str(alignment_dir / PEFT_WEIGHTS_FILE)), task_weight, only_in_one,
                               progress)
    task_cfg = json.loads((task_dir / PEFT_CONFIG_FILE).read_text())
    align_cfg = json.loads((alignment_dir / PEFT_CONFIG_FILE).read_text())
    differing = {k: (task_cfg.get(k), align_cfg.get(k)) for k in _SCALING_KEYS
                 if _normalised(task_cfg.get(k)) != _normalised(align_cfg.get(k))}
    if differing:
        shown = ", ".join(f"{k}: {t!r} (task) vs {a!r} (alignment)" for k, (t, a) in differing.items())
        raise ValueError(f"{task_dir / PEFT_CONFIG_FILE} and {alignment_dir / PEFT_CONFIG_FILE} differ in {shown}: "
                         "separate A/B averaging needs the same shapes and scaling "
                         "(merge_with_peft with combination_type='cat' does not)")

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp / PEFT_WEIGHTS_FILE),
                  metadata={"format": "pt"})
        shutil.copyfile(task_dir / PEFT_CONFIG_FILE, tmp / PEFT_CONFIG_FILE)
        write_atomic(tmp / MERGE_INFO_FILE, json.dumps(info, indent=2) + "\n")

    return write_dir(out_dir, write)


def merge_with_peft(model, task_adapter: str, alignment_adapter: str, task_weight: float = PAPER_TASK_WEIGHT,
                    combination_type: str = "cat", merged_name: str = "merged") -> str:
    """peft route: add adapter `merged_name` = weighted combination of two adapters loaded in `model`.

    `model` is a PeftModel holding both adapters (e.g. `PeftModel.from_pretrained(base, task_dir,
    adapter_name="task")` then `model.load_adapter(alignment_dir, adapter_name="alignment")`).
    "cat" (default): exactly `w dW_task + (1-w) dW_align` at rank r_t + r_a; "linear": equal
    ranks, see the module docstring. The new adapter is made active; save it with
    `model.save_pretrained(dir, selected_adapters=[merged_name])` (peft writes it to
    `dir/merged_name/`). Returns `merged_name`.
    """
    _check_weight(task_weight)
    if combination_type not in ("cat", "linear"):
        raise ValueError(f"combination_type must be cat or linear here, got {combination_type!r}")
    model.add_weighted_adapter([task_adapter, alignment_adapter], [task_weight, 1.0 - task_weight],
                               adapter_name=merged_name, combination_type=combination_type)
    model.set_adapter(merged_name)
    return merged_name


def search_merge_weight(weights: Iterable[float], evaluate_fn: Callable[[float], float],
                        maximize: bool = True) -> tuple[float, dict[float, float]]:
    """Pick the task weight on dev data: `evaluate_fn(w)` -> score for each `w` -> (best w, {w: score}).

    `evaluate_fn` typically merges at `w`, loads the result and returns dev accuracy (or, with
    `maximize=False`, dev loss). NaN scores never win; ties go to the first weight given.
    """
    scores = {}
    best_w, best = None, None
    for w in weights:
        _check_weight(w)
        score = float(evaluate_fn(w))
        scores[w] = score
        if math.isnan(score):
            continue
        if best is None or (score > best if maximize else score < best):
            best_w, best = w, score
    if best_w is None:
        raise ValueError(f"no usable score among {scores}")
    return best_w, scores


def _check_weight(w: float) -> None:
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"task weight must be in [0, 1] (weighted average), got {w}")


def _normalised(value):
    return sorted(value) if isinstance(value, list) else value


