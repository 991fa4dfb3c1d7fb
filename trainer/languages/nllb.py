"""Which NLLB-200 language code to use for a language: its own, or a documented fallback.

The language table (`table.py`) has exactly NLLB-200's 202 FLORES-200 codes. Several benchmark
languages are not among them (AmericasNLI, NusaX, Belebele's romanized variants); the benchmark
adapters give them FLORES-style codes all the same (`bzd_Latn`). To translate them, or to tag them
for the NLLB encoder, a related language NLLB has stands in (the tag only tells NLLB what it
reads or must write; translating *into* a fallback writes the fallback language):

    nllb_language("deu_Latn")   # NllbLanguage(code='deu_Latn', nllb='deu_Latn', fallback=None)
    nllb_language("de")         # the same: any code the table resolves
    nllb_language("mad_Latn")   # NllbLanguage(code='mad_Latn', nllb='jav_Latn', fallback='Madurese: ...')
    nllb_language("deu_Latm")   # UnknownLanguageError: ... closest codes: deu_Latn (German), ...

`FALLBACKS` is the table (code -> (NLLB code, why)); docs/translation.md prints it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from trainer.languages.table import UnknownLanguageError, language_table

_NO_RELATIVE_AMERICAS = ("no language of its family in NLLB; Spanish, the region's contact language, whose "
                         "orthography its writing follows and from which AmericasNLI was translated")

# code -> (NLLB-200 code, reason). Every value is a code of the language table (a test checks).
FALLBACKS: dict[str, tuple[str, str]] = {
    # AmericasNLI (Ebrahimi et al. 2022): seven of its ten languages are not in NLLB-200
    "bzd_Latn": ("spa_Latn", f"Bribri (Chibchan): {_NO_RELATIVE_AMERICAS}"),
    "cni_Latn": ("spa_Latn", f"Asháninka (Arawakan): {_NO_RELATIVE_AMERICAS}"),
    "hch_Latn": ("spa_Latn", f"Wixarika (Uto-Aztecan): {_NO_RELATIVE_AMERICAS}"),
    "nah_Latn": ("spa_Latn", f"Nahuatl (Uto-Aztecan): {_NO_RELATIVE_AMERICAS}"),
    "oto_Latn": ("spa_Latn", f"Otomí (Oto-Manguean): {_NO_RELATIVE_AMERICAS}"),
    "shp_Latn": ("spa_Latn", f"Shipibo-Konibo (Panoan): {_NO_RELATIVE_AMERICAS}"),
    "tar_Latn": ("spa_Latn", f"Rarámuri (Uto-Aztecan): {_NO_RELATIVE_AMERICAS}"),
    # NusaX (Winata et al. 2023): Austronesian languages of Indonesia, translated from Indonesian
    "bbc_Latn": ("ind_Latn", "Toba Batak (Austronesian, Sumatra): Indonesian, the related national language "
                             "NusaX was translated from"),
    "mad_Latn": ("jav_Latn", "Madurese (Austronesian, Madura and East Java): Javanese, its neighbour with "
                             "the largest shared vocabulary"),
    "nij_Latn": ("bjn_Latn", "Ngaju (Austronesian, Central Kalimantan): Banjar, the related lingua franca of "
                             "southern Kalimantan"),
    # Belebele's romanized variants: the same language, NLLB knows it in its native script only
    "ben_Latn": ("ben_Beng", "romanized Bengali: Bengali (the tag names the language; the script differs)"),
    "hin_Latn": ("hin_Deva", "romanized Hindi: Hindi (the tag names the language; the script differs)"),
    "npi_Latn": ("npi_Deva", "romanized Nepali: Nepali (the tag names the language; the script differs)"),
    "sin_Latn": ("sin_Sinh", "romanized Sinhala: Sinhala (the tag names the language; the script differs)"),
    "urd_Latn": ("urd_Arab", "romanized Urdu: Urdu (the tag names the language; the script differs)"),
}


@dataclass(frozen=True)
class NllbLanguage:
    """A language as asked for (`code`, FLORES-style) and the NLLB-200 code that stands for it."""

    code: str
    nllb: str
    fallback: str | None = None    # why another language's code is used; None when NLLB has the language


def nllb_language(code: str, field: str = "language") -> NllbLanguage:
    """`code` (FLORES-200, ISO 639-3/1 or alias; or a fallback table key) -> its NLLB-200 code.

    Raises UnknownLanguageError naming `field`, the closest table codes and the closest fallback keys.
    """
    table = language_table()
    if isinstance(code, str) and code in table:
        flores = table.flores(code)
        return NllbLanguage(flores, flores)
    key = next((k for k in FALLBACKS if isinstance(code, str) and k.lower() == code.strip().lower()), None)
    if key is not None:
        nllb, why = FALLBACKS[key]
        return NllbLanguage(key, nllb, why)
    close = [f"{lang.flores} ({lang.name})" for lang in table.closest(str(code), 4)]
    close += [f"{k} (falls back to {FALLBACKS[k][0]})"
              for k in difflib.get_close_matches(str(code), FALLBACKS, n=2, cutoff=0.6)]
    raise UnknownLanguageError(
        f"{field}: {code!r} is neither an NLLB-200 language nor in the fallback table "
        f"(trainer/languages/nllb.py); closest codes: {', '.join(close)}")


__all__ = ["FALLBACKS", "NllbLanguage", "nllb_language"]
