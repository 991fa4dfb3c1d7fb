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


# --- precision and weights dtypes (issue 16) ---------------------------------------------------------

@pytest.mark.parametrize("overrides, said, key", [
    (["engine.precision=bf16", "model.llm.dtype=float32"], "engine.precision=bf16", "model.llm.dtype=float32"),
    (["engine.precision=fp16", "model.encoder.dtype=float32"], "engine.precision=fp16", "model.encoder.dtype=float32"),
    (["model.llm.dtype=bfloat16", "model.encoder.dtype=float32"],          # auto precision follows the LLM
     "engine.precision=auto (resolved to bf16 from model.llm.dtype)", "model.encoder.dtype=float32"),
])
def test_a_bf16_or_fp16_job_with_float32_weights_fails_naming_both_settings(tmp_path, overrides, said, key):
    from trainer.config import check_precision

    with pytest.raises(ConfigError) as err:
        check_precision(load_job(write(tmp_path, BASE), overrides))
    assert f"{said} but {key}" in str(err.value)


def test_the_check_runs_before_anything_is_written(tmp_path):
    from trainer.run import run_job

    out = tmp_path / "never"
    job = load_job(write(tmp_path, {**BASE, "output_dir": str(out)}), ["engine.precision=bf16", "model.llm.dtype=float32"])
    with pytest.raises(ConfigError, match="model.llm.dtype=float32"):
        run_job(job)
    assert not out.exists()


def test_dtype_auto_follows_the_precision_then_cuda(tmp_path, monkeypatch):
    """auto: the precision's dtype when it is set; both auto: bf16 where CUDA supports it, float32 on CPU."""
    import torch

    from trainer.config import check_precision, resolve_dtypes, resolve_precision

    def dtypes(*overrides):
        job = load_job(write(tmp_path, BASE), list(overrides))
        check_precision(job)
        resolved = resolve_dtypes(job)
        return resolved.model.llm.dtype, resolved.model.encoder.dtype, resolve_precision(job)

    assert load_job(write(tmp_path, BASE)).model.llm.dtype == "auto"        # the job as written keeps auto
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dtypes() == ("float32", "float32", "fp32")                     # every CPU job: as before
    assert dtypes("engine.precision=bf16") == ("bfloat16", "bfloat16", "bf16")
    assert dtypes("engine.precision=fp16") == ("float16", "float16", "fp16")
    assert dtypes("model.llm.dtype=bfloat16") == ("bfloat16", "bfloat16", "bf16")
    assert dtypes("model.llm.dtype=float32", "model.encoder.dtype=bfloat16") == ("float32", "bfloat16", "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dtypes() == ("bfloat16", "bfloat16", "bf16")                   # a GPU job's default
    assert dtypes("engine.precision=fp32") == ("float32", "float32", "fp32")


def test_an_encoder_the_job_does_not_load_is_not_checked(tmp_path):
    """finetune without stage1_export (FT) reads no NLLB encoder: its dtype does not matter."""
    from trainer.config import check_precision

    raw = {"recipe": "finetune", "task": {"benchmark": "topic"}, "model": {"llm": {"dtype": "bfloat16"},
                                                                          "encoder": {"dtype": "float32"}}}
    check_precision(load_job(write(tmp_path, raw)))


ALIGNMENT = {"recipe": "realign", "parallel": {"files": ["x.tsv"]}, "alignment": {"task": False},
             "eval": {"retrieval": {"files": ["x.tsv"]}}}


@pytest.mark.parametrize("raw, override, key", [
    (ALIGNMENT, "parallel.temperature=.inf", "parallel.temperature"),    # a data section's float
    (ALIGNMENT, "parallel.temperature=.nan", "parallel.temperature"),
    (ALIGNMENT, "eval.retrieval.temperature=-.inf", "eval.retrieval.temperature"),
    ({"recipe": "stage1", "data": {"manifest": "m.json"}}, "data.shuffle_window=.inf", "data.shuffle_window"),
    ({"recipe": "stage1", "data": {"manifest": "m.json"}}, "data.consumers=.nan", "data.consumers"),
    (BASE, "optim.lr=.inf", "optim.lr"),
])
def test_a_non_finite_value_in_any_section_is_refused_naming_the_key(tmp_path, raw, override, key):
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, raw), [override])
    assert key in str(err.value)
    assert "finite" in str(err.value)


def section_models(annotation, found):
    """Every pydantic model inside a field annotation (unions, Annotated, lists, dicts), and the models inside them."""
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in found:
            found.add(annotation)
            for field in annotation.model_fields.values():
                section_models(field.annotation, found)
        return found
    for arg in get_args(annotation):
        section_models(arg, found)
    return found


def test_every_section_shares_the_one_base():
    """One base for every section of every recipe (and the sections a key chooses): unknown keys, assignment and
    inf/nan behave the same in each, wherever the section is defined."""
    from trainer import config
    from trainer.data.parallel_config import HubSource, ParallelDataConfig
    from trainer.data.stream_config import StreamConfig, StreamOptions
    from trainer.data.text_config import TextDataConfig
    from trainer.languages.subsets import SelectionConfig
    from trainer.schema_base import Section

    found: set = set()
    section_models(JobConfig, found)
    for schema in [*config.RECIPE_SCHEMAS.values(), *config.SECTION_TAGS.values()]:
        section_models(schema, found)
    assert {ParallelDataConfig, HubSource, TextDataConfig, config.OptimConfig} <= found
    for model in found | {StreamOptions, StreamConfig, SelectionConfig}:
        assert issubclass(model, Section), f"{model.__module__}.{model.__qualname__} is not a trainer.schema_base.Section"
    assert config.Section is Section and config.TextDataConfig is TextDataConfig    # still importable from config
    assert Section.model_config["allow_inf_nan"] is False and Section.model_config["extra"] == "forbid"
