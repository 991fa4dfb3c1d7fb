"""Job schema: YAML + overrides validate, and every error names the key path."""

from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError, JobConfig, load_job, validate

BASE = {"recipe": "stage1", "data": {"files": ["x.jsonl"]}}


def write(tmp_path, raw):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_are_typed_and_nested(tmp_path):
    job = load_job(write(tmp_path, BASE), ["model.lora.r=8", "optim.lr=1e-4", "model.llm.bidirectional=true"])
    assert job.model.lora.r == 8 and isinstance(job.model.lora.r, int)
    assert job.optim.lr == pytest.approx(1e-4)
    assert job.model.llm.bidirectional is True


@pytest.mark.parametrize("override, key, hint", [
    ("model.lora.alpah=8", "model.lora.alpah", "Did you mean alpha"),      # unknown key, close match offered
    ("model.lora.rank=8", "model.lora.rank", "Allowed here: alpha, dropout, r, target_modules"),
    ("model.lora.r=-1", "model.lora.r", "greater than 0"),                # impossible value
    ("optim.max_steps=many", "optim.max_steps", "valid integer"),        # wrong type
    ("model.pooling=max", "model.pooling", "'mean', 'bos' or 'eos'"),    # not one of the choices
    ("model.llm.attn_implementation=flash", "model.llm.attn_implementation", "sdpa"),
])
def test_errors_name_the_key_and_what_is_allowed(tmp_path, override, key, hint):
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, BASE), [override])
    assert key in str(err.value)
    assert hint in str(err.value)


def test_unknown_top_level_section_lists_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, {**BASE, "optimizer": {"lr": 1}}))
    assert "optimizer: unknown key" in str(err.value) and "optim" in str(err.value)


def test_cross_field_check(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, BASE), ["optim.warmup_steps=50", "optim.max_steps=10"])
    assert "warmup_steps" in str(err.value)


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, {"recipe": "stage1"}))
    assert "data: required key is missing" in str(err.value)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_job(write(tmp_path, BASE), ["model.lora.r"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    job = load_job(write(tmp_path, BASE), ["model.lora.alpha=7"])
    again = validate(yaml.safe_load(job.to_yaml()), JobConfig)
    assert again == job


@pytest.mark.parametrize("path", sorted(p for p in (Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml")
                                        if "recipe:" in p.read_text()), ids=lambda p: p.name)
def test_every_job_file_in_jobs_validates(path):
    job = load_job(path)
    assert job.recipe in path.read_text()
