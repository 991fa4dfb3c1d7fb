"""What fixes the meaning of an export, and which of a fine-tuning run's exports a later stage reads.

An export's weights only mean what they were trained to mean under the same LLM, attention direction
(`model.llm.bidirectional`), pooling and tokenizers: a stage-1 adapter trained causally and then run
bidirectionally is a different model. `trainer.models.weights.export` writes them to `meaning.json`:

    {"recipe": "stage1", "llm": "meta-llama/Meta-Llama-3-8B", "bidirectional": true, "pooling": "mean",
     "tokenizer": "meta-llama/Meta-Llama-3-8B", "encoder": "facebook/nllb-200-distilled-600M"}

(`encoder`, the NLLB encoder and its tokenizer, only where the model reads through it.) An older export
without the file is read from its config.yaml. `check_export` compares an export with the job that loads
it and fails with one line naming the key and both values; the job schema calls it when the job is
loaded (`trainer.config`), before torch or any model loads, and the model builders call it again.

A finetune run writes two exports: `export/` (the final step) and `export_sdev/` (the step with the best
source-language dev score, S-DEV, the snapshot the MT-LLM study starts stage 2 from), the latter with
`snapshot.json` ({"snapshot": "sdev", "step": ..., "dev_<source>": ...}). `teacher_export` resolves a
stage-2 job's `model.task_export` under `model.teacher_snapshot`.

No torch here: the job schema imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

MEANING_FILE = "meaning.json"
SNAPSHOT_FILE = "snapshot.json"
FINAL_DIR = "export"
SDEV_DIR = "export_sdev"

# meaning key -> the job key that sets it
KEYS = {"llm": "model.llm.name_or_path", "bidirectional": "model.llm.bidirectional", "pooling": "model.pooling",
        "tokenizer": "model.llm.name_or_path (the LLM's tokenizer)", "encoder": "model.encoder.name_or_path"}


def uses_encoder(raw: dict[str, Any]) -> bool:
    model = raw.get("model") or {}
    return (raw.get("recipe") in ("stage1", "stage2") or bool(model.get("stage1_export"))
            or (raw.get("flare") or {}).get("method") == "fusion_mt")


def meaning_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The meaning of a job (its raw dict, as `JobBase.to_yaml` writes it) or of the export it wrote."""
    model = raw.get("model") or {}
    llm = model.get("llm") or {}
    name = llm.get("name_or_path", "tiny:llama")
    meaning = {"recipe": raw.get("recipe"), "llm": name, "bidirectional": bool(llm.get("bidirectional", False)),
               "pooling": model.get("pooling", "mean"), "tokenizer": name}
    if uses_encoder(raw):
        meaning["encoder"] = (model.get("encoder") or {}).get("name_or_path", "tiny:nllb")
    return meaning


def meaning_json(config_yaml: str) -> str:
    """meaning.json's text for an export whose config is `config_yaml`."""
    return json.dumps(meaning_of(yaml.safe_load(config_yaml) or {}), indent=1) + "\n"


def read_meaning(export_dir: str | Path) -> dict[str, Any] | None:
    """An export's meaning: its meaning.json, else derived from its config.yaml; None when it has neither."""
    folder = Path(export_dir)
    if (folder / MEANING_FILE).is_file():
        return json.loads((folder / MEANING_FILE).read_text())
    if (folder / "config.yaml").is_file():
        return meaning_of(yaml.safe_load((folder / "config.yaml").read_text()) or {})
    return None


def show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def mismatch(job_meaning: dict[str, Any], export_dir: str | Path, export_key: str,
             keys: tuple[str, ...] = ("llm", "bidirectional", "pooling", "encoder")) -> str | None:
    """The first of `keys` on which the export at `export_dir` (set by `export_key`) and the job differ, as one
    line naming the key and both values; None when they agree or the export is not there (yet)."""
    theirs = read_meaning(export_dir)
    if theirs is None:
        return None
    for key in keys:
        if key in theirs and key in job_meaning and theirs[key] != job_meaning[key]:
            return (f"{KEYS[key]}: {show(job_meaning[key])} in this job, but {export_key} ({export_dir}) was trained "
                    f"with {show(theirs[key])}")
    return None


def check_export(job_meaning: dict[str, Any], export_dir: str | Path, export_key: str,
                 keys: tuple[str, ...] = ("llm", "bidirectional", "pooling", "encoder")) -> None:
    """`mismatch` as a `ConfigError`."""
    problem = mismatch(job_meaning, export_dir, export_key, keys)
    if problem:
        from trainer.config import ConfigError

        raise ConfigError(problem)


def read_snapshot(export_dir: str | Path) -> dict[str, Any]:
    """snapshot.json of an export ({"snapshot": "sdev", "step": ...}); {"snapshot": "final"} when it has none."""
    path = Path(export_dir) / SNAPSHOT_FILE
    return json.loads(path.read_text()) if path.is_file() else {"snapshot": "final"}


def teacher_export(task_export: str | Path, snapshot: str) -> Path:
    """The finetune export a stage-2 job reads: `model.task_export` names the finetune run's export (or the run
    directory); `model.teacher_snapshot` picks `sdev` (its sibling export_sdev/, the default) or `final`.

    A `task_export` that is itself an S-DEV snapshot is taken as it is under `sdev` and refused under `final`.
    Returns the folder; raises `ConfigError` naming the key and both values when it cannot be that snapshot.
    """
    from trainer.config import ConfigError

    given = Path(task_export)
    if (given / FINAL_DIR).is_dir() or (given / SDEV_DIR).is_dir():   # the run directory
        given = given / FINAL_DIR
    is_sdev = read_snapshot(given).get("snapshot") == "sdev"
    if snapshot == "final":
        if is_sdev:
            raise ConfigError(f"model.teacher_snapshot: 'final', but model.task_export ({task_export}) is the S-DEV "
                              f"snapshot; name the run's {FINAL_DIR}/ folder or set model.teacher_snapshot: sdev")
        return given
    if is_sdev:
        return given
    sdev = given.parent / SDEV_DIR
    if not (sdev / "trainable.safetensors").is_file() and (given / "trainable.safetensors").is_file():
        raise ConfigError(f"model.teacher_snapshot: 'sdev', but model.task_export ({task_export}) has no S-DEV "
                          f"snapshot beside it ({sdev} missing: a finetune run before #28, or one without dev "
                          f"evaluations); set model.teacher_snapshot: final to use the final export")
    return sdev
