"""Where parallel data comes from (schema only: the job schema imports it without importing datasets)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainer.schema_base import Section, flores_code, flores_codes


class HubSource(Section):
    """A hub dataset of parallel text; templates are filled per language pair.

    Placeholders (paired layout): `{eng_flores}`, `{oth_flores}`, `{eng_iso1}`,
    `{oth_iso1}`, `{eng_iso3}`, `{oth_iso3}`, `{eng_macro}`, `{oth_macro}` (the
    ISO 639-3 macrolanguage code where there is one, else the ISO 639-3 code),
    `{iso1_pair}` / `{iso3_pair}` / `{macro_pair}` / `{flores_pair}` (the two
    codes sorted and joined by `-`), `{eng_side}` / `{oth_side}` (`source` /
    `target` by sorted macrolanguage-code order, Tatoeba style).
    Multiway layout: `config` is filled per language with `{flores}`, `{iso1}`,
    `{iso3}`, `{macro}`, and the two configs are aligned row by row (checked on `id_field`).
    """

    name: str = Field(description="hub dataset id, e.g. Helsinki-NLP/opus-100")
    config: str | None = Field(None, description="config name template (see placeholders)")
    split: str = Field("train", description="dataset split")
    english_field: str = Field(description="field with the English side; dots go into nested mappings")
    other_field: str = Field(description="field with the other language's side")
    layout: Literal["paired", "multiway"] = Field("paired", description="one config per pair, or per language")
    id_field: str | None = Field(None, description="multiway: column that must match row by row")


HUB_PRESETS: dict[str, HubSource] = {
    "opus-100": HubSource(name="Helsinki-NLP/opus-100", config="{iso1_pair}",
                          english_field="translation.{eng_iso1}", other_field="translation.{oth_iso1}"),
    "nllb": HubSource(name="allenai/nllb", config="{flores_pair}",
                      english_field="translation.{eng_flores}", other_field="translation.{oth_flores}"),
    "tatoeba": HubSource(name="Helsinki-NLP/tatoeba_mt", config="{macro_pair}", split="test",
                         english_field="{eng_side}String", other_field="{oth_side}String"),
    "flores-200": HubSource(name="openlanguagedata/flores_plus", config="{flores}", split="dev", layout="multiway",
                            english_field="text", other_field="text", id_field="id"),
}


class ParallelDataConfig(Section):
    """Where (English, other) pairs come from and how they are sampled."""

    languages: list[str] = Field(default_factory=list, description=(
        "non-English languages to load (any code the language table knows; stored as FLORES-200 codes); "
        "empty: every language the local files provide, or `subset` of `subsets_file`"))
    subsets_file: str | None = Field(None, description="subsets.yaml written by python -m data_prep.select_languages")
    subset: str | None = Field(None, description="name of a subset in `subsets_file` (e.g. featural_max_5)")
    english: str = Field("eng_Latn", description="the English side's language code")
    files: list[str] = Field(default_factory=list, description=(
        "local files, globs or directories of <eng>-<lang>.{tsv,jsonl,parquet} files"))
    hub: list[str | HubSource] = Field(default_factory=list, description=(
        "hub sources tried in order for languages the files lack: preset names "
        f"({', '.join(HUB_PRESETS)}) or a HubSource mapping"))
    split: str | None = Field(None, description="override the split of every hub source")
    on_missing: Literal["error", "skip"] = Field("error", description=(
        "a language with no data: fail listing what is available, or skip it with a warning"))
    max_pairs_per_language: int | None = Field(None, ge=1, description=(
        "keep at most this many pairs per language (a seeded random sample)"))
    min_chars: int = Field(1, ge=0, description="drop pairs whose either side is shorter than this after stripping")
    temperature: float | None = Field(None, gt=0, description=(
        "language sampling p_l ~ n_l^(1/T); null: uniform over languages; 1: proportional to size"))
    seed: int = Field(0, description="seed of sampling, shuffling and sharding")

    _english = field_validator("english")(flores_code)
    _languages = field_validator("languages")(flores_codes)

    @field_validator("hub")
    @classmethod
    def _hub(cls, v: list[str | HubSource]) -> list[str | HubSource]:
        for item in v:
            if isinstance(item, str) and item not in HUB_PRESETS:
                raise ValueError(f"hub: unknown preset {item!r}; valid: {', '.join(HUB_PRESETS)} or a HubSource")
        return v

    @model_validator(mode="after")
    def _subset(self) -> "ParallelDataConfig":
        if (self.subset is None) != (self.subsets_file is None):
            raise ValueError("subset and subsets_file go together: name a subset of a subsets.yaml")
        if self.subset is not None and self.languages:
            raise ValueError("give either languages or subset/subsets_file, not both")
        if self.english in self.languages:
            raise ValueError(f"languages: {self.english} is the English side; list only the other languages")
        if not self.files and not self.hub:
            raise ValueError("no data source: set files and/or hub")
        return self
