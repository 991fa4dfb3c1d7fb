"""The language table: FLORES-200 codes (NLLB) <-> ISO 639 codes, names, scripts, families.

One row per NLLB-200 language (the 202 FLORES-200 codes the NLLB tokenizer
knows), shipped as `trainer/languages/languages.csv`. Columns:

- `flores`: the exact FLORES-200 code (`ell_Grek`, `zho_Hans`, `arb_Arab`).
- `iso639_3`: the language part of the FLORES code (an individual language
  code, or a macrolanguage code where NLLB uses one, e.g. `est`, `zho`).
- `iso639_1`: two-letter code where one applies (for an individual member of
  a macrolanguage, the macrolanguage's two-letter code: `arb` -> `ar`).
- `macrolanguage`: ISO 639-3 macrolanguage the code belongs to (`arb` -> `ara`).
- `aliases`: further codes that resolve to this row, space-separated: the
  macrolanguage codes for which this row is the default member (`ara`, `fas`,
  `msa`, `orm`, `swa`, ...) and other spellings (`sat_Olck`).
- `script` / `script_name`: ISO 15924 code from the FLORES code and its name.
- `family`: top-level family (Glottolog-style; Atlantic-Congo and Mande are
  separate families; Nilo-Saharan is kept as in the study's pool table;
  isolates are their own family, e.g. `Basque`; creoles are `Creole`).
- `genus`: the study pool's "family" column (mostly a genus: Germanic,
  Romance, ...) for the 65 pool languages and English; empty elsewhere.
- `joshi_class`: Joshi et al. (2020) class 0-5 for the pool and English.
- `pool65`: 1 for the 65 languages of the realignment study's pool (M3).
- `primary`: 1 for the row a bare ISO code resolves to when a language has
  several scripts (`zho` -> `zho_Hans`, `kas` -> `kas_Arab`).

Lookups accept any of: FLORES code (case-insensitive), ISO 639-3 code,
ISO 639-1 code, or an alias. The study pool's macrolanguage codes resolve to
the NLLB codes: `orm`/`gaz` -> `gaz_Latn`, `swa`/`swh` -> `swh_Latn`,
`ara` -> `arb_Arab`, `msa` -> `zsm_Latn`, `fas` -> `pes_Arab`, `aze` -> `azj_Latn`.
An unknown code raises `UnknownLanguageError` naming the closest valid codes.
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from trainer.errors import UserError

TABLE_FILE = "languages.csv"

# The pool's "family" column is mostly a genus: map each to its top-level family.
GENUS_FAMILY: dict[str, str] = {
    # Indo-European branches
    "Germanic": "Indo-European", "Romance": "Indo-European", "Italic": "Indo-European",
    "Balto-Slavic": "Indo-European", "Slavic": "Indo-European", "Baltic": "Indo-European",
    "Indo-Iranian": "Indo-European", "Indic": "Indo-European", "Iranian": "Indo-European",
    "Celtic": "Indo-European", "Hellenic": "Indo-European", "Greek": "Indo-European",
    "Albanian": "Indo-European", "Armenian": "Indo-European",
    # Afro-Asiatic branches
    "Semitic": "Afro-Asiatic", "Chadic": "Afro-Asiatic", "Cushitic": "Afro-Asiatic",
    "Berber": "Afro-Asiatic", "Omotic": "Afro-Asiatic",
    # Turkic branches
    "Oghuz": "Turkic", "Kipchak": "Turkic", "Karluk": "Turkic",
    # Uralic branches
    "Finnic": "Uralic", "Ugric": "Uralic", "Samic": "Uralic",
    # Atlantic-Congo (Niger-Congo without Mande) branches
    "Atlantic-Congo": "Atlantic-Congo", "Benue-Congo": "Atlantic-Congo", "Gur": "Atlantic-Congo",
    "Bantu": "Atlantic-Congo", "Volta-Niger": "Atlantic-Congo", "Kwa": "Atlantic-Congo",
    # Austronesian branches
    "Malayic": "Austronesian", "Javanic": "Austronesian", "Philippine": "Austronesian",
    "Oceanic": "Austronesian", "Malayo-Polynesian": "Austronesian",
    # Dravidian branches
    "Southern Dravidian": "Dravidian", "South-Central Dravidian": "Dravidian",
    "Central Dravidian": "Dravidian", "Northern Dravidian": "Dravidian",
    # families that are their own genus in the pool table
    "Mande": "Mande", "Sino-Tibetan": "Sino-Tibetan", "Nilo-Saharan": "Nilo-Saharan",
    "Kartvelian": "Kartvelian", "Japonic": "Japonic", "Koreanic": "Koreanic",
    "Kra-Dai": "Kra-Dai", "Austroasiatic": "Austroasiatic", "Basque": "Basque",
}

# Joshi et al. (2020) classes grouped as in the realignment study.
RESOURCE_GROUPS: dict[str, tuple[int, ...]] = {"low": (0, 1, 2), "mid": (3, 4), "high": (5,)}


class UnknownLanguageError(UserError, ValueError):
    """A code that no row of the language table knows; the message names the closest codes."""


@dataclass(frozen=True)
class Language:
    """One row of the language table (see the module docstring for the fields)."""

    flores: str
    iso639_3: str
    iso639_1: str | None
    macrolanguage: str | None
    aliases: tuple[str, ...]
    name: str
    script: str
    script_name: str
    family: str
    genus: str | None
    joshi_class: int | None
    pool65: bool
    primary: bool

    @property
    def resource_group(self) -> str | None:
        """`low` (Joshi 0-2), `mid` (3-4), `high` (5), or None where the class is unknown."""
        if self.joshi_class is None:
            return None
        return next(g for g, classes in RESOURCE_GROUPS.items() if self.joshi_class in classes)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every code that resolves to this row (FLORES first)."""
        out = [self.flores]
        if self.primary:
            out.append(self.iso639_3)
        if self.iso639_1:
            out.append(self.iso639_1)
        out.extend(self.aliases)
        return tuple(out)


def _parse_row(row: dict[str, str], where: str) -> Language:
    try:
        flores = row["flores"]
        iso3, script = flores.split("_")
        if iso3 != row["iso639_3"] or script != row["script"]:
            raise ValueError(f"flores {flores!r} disagrees with iso639_3/script columns")
        genus = row["genus"] or None
        family = row["family"]
        if genus is not None and genus in GENUS_FAMILY and GENUS_FAMILY[genus] != family:
            raise ValueError(f"genus {genus!r} belongs to {GENUS_FAMILY[genus]!r}, row says {family!r}")
        return Language(
            flores=flores, iso639_3=iso3, iso639_1=row["iso639_1"] or None,
            macrolanguage=row["macrolanguage"] or None, aliases=tuple(row["aliases"].split()),
            name=row["name"], script=script, script_name=row["script_name"], family=family,
            genus=genus, joshi_class=int(row["joshi_class"]) if row["joshi_class"] else None,
            pool65=row["pool65"] == "1", primary=row["primary"] == "1")
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: bad language table row {row!r}: {e}") from None


class LanguageTable:
    """Rows of `Language` with lookup by any code.

    `get(code)` -> Language; `flores(code)` -> FLORES-200 code; `in` tests a code.
    """

    def __init__(self, rows: Iterable[Language], source: str = "<rows>"):
        self.rows: list[Language] = list(rows)
        self.source = source
        self._index: dict[str, Language] = {}
        for lang in self.rows:
            for code in lang.codes:
                key = code.lower()
                other = self._index.get(key)
                if other is not None and other is not lang:
                    raise ValueError(f"{source}: code {code!r} resolves to both {other.flores} and {lang.flores}")
                self._index[key] = lang

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LanguageTable":
        """Read a table CSV (default: the one shipped in the package)."""
        if path is None:
            text = resources.files("trainer.languages").joinpath(TABLE_FILE).read_text(encoding="utf-8")
            source = f"trainer/data/{TABLE_FILE}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            source = str(path)
        reader = csv.DictReader(text.splitlines())
        return cls((_parse_row(r, f"{source}:{i + 2}") for i, r in enumerate(reader)), source)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Language]:
        return iter(self.rows)

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and code.lower() in self._index

    def closest(self, code: str, n: int = 5) -> list[Language]:
        """Rows closest to `code`, best first.

        Rows of the same language come first (the part before `_` is one of the
        row's ISO codes, aliases or macrolanguage: `ell_Latn` -> `ell_Grek`),
        then by difflib similarity to the row's codes and name; always `n` rows.
        """
        key = code.strip().lower()
        language = key.partition("_")[0]
        scored = []
        for lang in self.rows:
            own = {c.lower() for c in (lang.iso639_3, lang.iso639_1, lang.macrolanguage, *lang.aliases) if c}
            ratio = max(difflib.SequenceMatcher(None, key, c.lower()).ratio()
                        for c in (*lang.codes, lang.iso639_3, lang.name))
            scored.append((language not in own, -ratio, lang.flores, lang))
        return [lang for *_, lang in sorted(scored, key=lambda s: s[:3])[:n]]

    def get(self, code: str, field: str = "language") -> Language:
        """The row for `code` (FLORES, ISO 639-3, ISO 639-1 or alias; case-insensitive).

        `field` names the caller's setting in the error message.
        """
        if not isinstance(code, str):
            raise UnknownLanguageError(f"{field}: expected a language code string, got {code!r}")
        lang = self._index.get(code.strip().lower())
        if lang is None:
            close = self.closest(code)
            hint = ", ".join(f"{c.flores} ({c.name})" for c in close) or "none"
            raise UnknownLanguageError(
                f"{field}: unknown language code {code!r}; closest valid codes: {hint}. "
                f"Use a FLORES-200 code (xxx_Script), an ISO 639-3 or ISO 639-1 code "
                f"from {self.source}")
        return lang

    def flores(self, code: str, field: str = "language") -> str:
        """The exact FLORES-200 code for any accepted code (`orm` -> `gaz_Latn`)."""
        return self.get(code, field).flores

    def resolve(self, codes: Iterable[str], field: str = "languages") -> list[str]:
        """Codes -> FLORES codes, in order; every unknown code is reported at once; duplicates rejected."""
        out, errors = [], []
        for code in codes:
            try:
                out.append(self.flores(code, field))
            except UnknownLanguageError as e:
                errors.append(str(e))
        if errors:
            raise UnknownLanguageError("\n".join(errors))
        dupes = sorted({c for c in out if out.count(c) > 1})
        if dupes:
            raise ValueError(f"{field}: languages listed twice (after resolving codes): {', '.join(dupes)}")
        return out

    def pool(self, name: str = "pool65") -> list[Language]:
        """The languages of a named pool, sorted by FLORES code (`pool65`: the study's 65)."""
        if name != "pool65":
            raise ValueError(f"unknown pool {name!r}; valid: pool65 (or pass a list of codes)")
        return sorted((lang for lang in self.rows if lang.pool65), key=lambda lang: lang.flores)


@functools.lru_cache(maxsize=1)
def language_table() -> LanguageTable:
    """The package's language table (loaded once)."""
    return LanguageTable.load()
