"""Exports record what fixes their meaning (#28 item 3): LLM, attention direction, pooling, tokenizers; a job that
loads one under other values fails at once naming the key and both values; the paper-scale MT-LLM jobs agree."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer.config import ConfigError, TaskModelConfig, load_job
from trainer.models.meaning import meaning_of, read_meaning
from trainer.models.task_model import build_task_model
from trainer.models.weights import save_trainable

ROOT = Path(__file__).resolve().parents[1]


def stage1_export(folder: Path, bidirectional: bool, pooling: str = "mean", llm: str = "tiny:llama") -> Path:
    """A stage-1 export's files (weights are not read before the check): its config as a stage-1 run writes it."""
    config = {"recipe": "stage1", "model": {"llm": {"name_or_path": llm, "bidirectional": bidirectional},
                                            "encoder": {"name_or_path": "tiny:nllb"}, "pooling": pooling}}
    return save_trainable({"projection.weight": torch.zeros(2, 2)}, folder, yaml.safe_dump(config))


def job_file(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def stage2_job(tmp_path: Path, export: Path, bidirectional: bool, **model) -> dict:
    return {"recipe": "stage2", "output_dir": str(tmp_path / "s2"),
            "model": {"llm": {"name_or_path": "tiny:llama", "bidirectional": bidirectional},
                      "stage1_export": str(export), "task_export": str(tmp_path / "ft" / "export"), **model},
            "task": {"benchmark": "topic", "target_languages": ["deu_Latn"]}}


def test_an_export_writes_its_meaning(tmp_path):
    export = stage1_export(tmp_path / "s1", bidirectional=True)
    assert json.loads((export / "meaning.json").read_text()) == {
        "recipe": "stage1", "llm": "tiny:llama", "bidirectional": True, "pooling": "mean", "tokenizer": "tiny:llama",
        "encoder": "tiny:nllb"}
    # an FT export has no encoder; an export without meaning.json (older runs) is read from its config.yaml
    assert meaning_of({"recipe": "finetune", "model": {"llm": {"name_or_path": "x"}}}) == {
        "recipe": "finetune", "llm": "x", "bidirectional": False, "pooling": "mean", "tokenizer": "x"}
    (export / "meaning.json").unlink()
    assert read_meaning(export)["bidirectional"] is True


@pytest.mark.parametrize("ours, theirs", [(True, False), (False, True)])
def test_stage2_over_the_other_attention_direction_fails_naming_both(tmp_path, ours, theirs):
    export = stage1_export(tmp_path / "s1", bidirectional=theirs)
    path = job_file(tmp_path / "s2.yaml", stage2_job(tmp_path, export, ours))
    with pytest.raises(ConfigError) as failed:
        load_job(path)
    message = str(failed.value)
    assert (f"model.llm.bidirectional: {json.dumps(ours)} in this job, but model.stage1_export ({export}) was "
            f"trained with {json.dumps(theirs)}") in message


def test_the_cli_refuses_it_in_under_five_seconds(tmp_path):
    export = stage1_export(tmp_path / "s1", bidirectional=False)
    path = job_file(tmp_path / "s2.yaml", stage2_job(tmp_path, export, True))
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trainer.train", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"direction mismatch refused in {wall:.2f} s wall, {cpu:.2f} s CPU")
    assert done.returncode != 0
    assert "model.llm.bidirectional: true in this job" in done.stderr and "trained with false" in done.stderr
    assert cpu < 5.0   # the CPU it takes; the wall time also counts waiting on a shared machine
    assert not (tmp_path / "s2").exists()   # refused before the run directory, MLflow or any model


def test_finetune_and_flare_over_another_export_fail_naming_both(tmp_path):
    export = stage1_export(tmp_path / "s1", bidirectional=False, pooling="eos")
    ft = {"recipe": "finetune", "output_dir": str(tmp_path / "ft"),
          "model": {"llm": {"name_or_path": "tiny:llama", "bidirectional": False}, "stage1_export": str(export)},
          "task": {"benchmark": "topic", "target_languages": ["deu_Latn"]}}
    with pytest.raises(ConfigError, match=r"model.pooling: 'mean' in this job, but model.stage1_export .* with 'eos'"):
        load_job(job_file(tmp_path / "ft.yaml", ft))
    english = tmp_path / "en" / "export"
    save_trainable({"head.weight": torch.zeros(3, 2)}, english, yaml.safe_dump(
        {"recipe": "finetune", "model": {"llm": {"name_or_path": "tiny:llama", "bidirectional": True}}}))
    flare = {"recipe": "flare", "output_dir": str(tmp_path / "fl"),
             "model": {"llm": {"name_or_path": "tiny:llama"}, "task_export": str(english)},
             "task": {"benchmark": "topic", "target_languages": ["deu_Latn"]}}
    with pytest.raises(ConfigError, match=r"model.llm.bidirectional: false in this job, but model.task_export .* "
                                          r"with true"):
        load_job(job_file(tmp_path / "fl.yaml", flare))


def test_an_export_written_after_the_job_loaded_is_checked_when_it_loads(tmp_path, tiny_cache):
    cfg = TaskModelConfig(llm={"name_or_path": "tiny:llama", "bidirectional": True},
                          stage1_export=str(tmp_path / "s1"), cache_dir=tiny_cache)   # no export yet: validates
    stage1_export(tmp_path / "s1", bidirectional=False)
    with pytest.raises(ConfigError, match=r"model.llm.bidirectional: true in this job, but .* trained with false"):
        build_task_model(cfg, "classification", 3)


def test_the_paper_scale_chain_agrees_and_warms_up_over_ten_percent():
    jobs = {name: load_job(ROOT / "jobs" / f"{name}.yaml")
            for name in ("stage1_llama3_8b", "finetune_xnli_llama3", "stage2_xnli_llama3")}
    meanings = {name: meaning_of(job.model_dump(mode="json")) for name, job in jobs.items()}
    for key in ("llm", "bidirectional", "pooling", "tokenizer"):
        assert len({m[key] for m in meanings.values()}) == 1, (key, meanings)
    assert meanings["stage1_llama3_8b"]["bidirectional"] is True        # LLM2Vec: bidirectional attention
    assert meanings["stage1_llama3_8b"]["encoder"] == meanings["stage2_xnli_llama3"]["encoder"]
    for name, job in jobs.items():
        assert job.optim.warmup_steps == round(0.1 * job.optim.max_steps), name
    stage2 = jobs["stage2_xnli_llama3"].model
    assert stage2.stage1_export == f"{jobs['stage1_llama3_8b'].output_dir}/export"
    assert stage2.task_export == f"{jobs['finetune_xnli_llama3'].output_dir}/export"
    assert stage2.teacher_snapshot == "sdev"
