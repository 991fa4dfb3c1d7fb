"""docs/config.md is the generated reference of the job and sweep schemas, and every option is described."""

from pathlib import Path

from trainer import config_docs
from trainer.config import JobConfig
from trainer.sweep import SweepConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_config_reference_is_up_to_date():
    expected = config_docs.render()
    assert DOC.is_file(), f"{DOC} is missing: run `{config_docs.COMMAND}`"
    assert DOC.read_text() == expected, (
        f"docs/config.md does not match the config schemas (a new, changed or removed option): "
        f"run `{config_docs.COMMAND}` and commit the result")


def test_every_job_option_has_a_description():
    missing = config_docs.undocumented(JobConfig)
    assert not missing, ("job options without a Field(description=...): " + ", ".join(missing)
                         + f"; describe them, then run `{config_docs.COMMAND}`")


def test_every_section_and_sweep_option_has_a_description():
    missing = config_docs.undocumented(JobConfig, leaves_only=False) + [
        f"sweep: {key}" for key in config_docs.undocumented(SweepConfig, leaves_only=False)]
    assert not missing, ("config fields without a Field(description=...): " + ", ".join(missing)
                         + f"; describe them, then run `{config_docs.COMMAND}`")


def test_rendering_covers_optional_nested_and_literal_fields():
    text = config_docs.render()
    for needle in ("### `parallel`", "| `parallel.hub[].name` |", "### `eval.retrieval`",
                   "| `search.<key>.grid` |", "### `subsets`", "Optional section",
                   '`"stage1" \\| "align" \\| "realign" \\| "finetune" \\| "stage2" \\| "flare"`', "| `optim.betas` | `tuple[float, float]` | `[0.9, 0.999]` |",
                   "| `model.lora.r` | `int`, > 0 | `16` |", "| `job` | `str` | required |"):
        assert needle in text, needle


def test_undocumented_reports_a_field_without_description():
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        ok: int = Field(1, description="described")
        bare: str = "x"

    class Outer(BaseModel):
        inner: Inner | None = None
        items: list[Inner] = Field(default_factory=list, description="listed")
        top: bool = False

    assert config_docs.undocumented(Outer) == ["top", "inner.bare"]
    assert config_docs.undocumented(Outer, leaves_only=False) == ["top", "inner", "inner.bare"]


def test_main_writes_the_reference(capsys):
    assert config_docs.main([]) == 0
    assert capsys.readouterr().out == config_docs.render()
