"""The one pydantic base of every config section, and the language-code validators the sections share.

    class OptimConfig(Section):
        lr: float = Field(2e-4, gt=0)

    class ParallelDataConfig(Section):
        languages: list[str] = Field(default_factory=list)
        _languages = field_validator("languages")(flores_codes)

It lives on its own, below both the job schema (`trainer.config`) and the sections that sit beside their
components in `trainer.data` and `trainer.languages`, so each can import it without an import that runs
upward. It imports only pydantic and the language table.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo

from trainer.languages.table import language_table


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated, inf and nan refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def flores_code(value: str, info: ValidationInfo) -> str:
    """A field validator: any code the language table knows -> its FLORES-200 code, errors naming the field."""
    return language_table().flores(value, info.field_name)


def flores_codes(value: list[str], info: ValidationInfo) -> list[str]:
    """A field validator: codes -> FLORES-200 codes in order, unknown and repeated codes named with the field."""
    return language_table().resolve(value, info.field_name)
