"""Human-translated phrase pairs with English from Unicode CLDR (through `babel`), in the project's parallel format.

    python -m data_prep.cldr_pairs --out data/real/cldr                         # 21 languages, 20% held out
    python -m data_prep.cldr_pairs --out DIR --languages deu_Latn zho_Hans srp_Cyrl --eval-fraction 0.2 --seed 0

CLDR, which `babel` ships, holds translators' names of territories, languages, scripts, currencies,
units, time zones and calendar terms in hundreds of locales. One *item* is one CLDR key
(`territory:FR`, `month:1`, `unit:length-kilometer`); its English name is the English side and the
locale's name the other. Languages are FLORES-200 codes (or any code the language table knows),
mapped to a babel locale through the table's ISO 639 codes and the script (`zho_Hans` -> `zh_Hans`,
`srp_Cyrl` -> `sr_Cyrl`, `arb_Arab` -> `ar`).

Written under `--out` (the layout `trainer.data.parallel` reads, as `data_prep.make_parallel_data`
writes it: `eng_Latn-<code>.jsonl`, one `{"eng_Latn": ..., "<code>": ...}` per line):

- `train/`: the training items each language has a name for;
- `eval/`: the held-out items each language has a name for (disjoint from `train/` *by item*: an
  item is held out for every language or for none);
- `retrieval/`: the held-out items that every listed language names, in the same order in every
  file: a multi-way parallel set for `eval.retrieval` (align / realign's retrieval by layer);
- `cldr_items.json`: the items of each split, the babel and CLDR versions and the counts below.

An item whose name in a locale is missing or equals the English one (CLDR falls back to it, or the
name is written the same, e.g. "Kenya") is dropped for that language and counted; English names that
two keys share are kept once. The output is deterministic for a seed and a babel version; the folder
is written beside `--out` and renamed when complete. docs/real.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainer.errors import UserError, report, user_error
from trainer.fsutil import check_destination, replace_dir, temp_dir_beside
from trainer.languages.table import Language, language_table

ENGLISH = "eng_Latn"
MANIFEST = "cldr_items.json"
DEFAULT_LANGUAGES = ["deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "ell_Grek", "zho_Hans", "jpn_Jpan", "kor_Hang",
                     "arb_Arab", "heb_Hebr", "hin_Deva", "ben_Beng", "tam_Taml", "tha_Thai", "kat_Geor", "amh_Ethi",
                     "tur_Latn", "fin_Latn", "vie_Latn", "swh_Latn", "yor_Latn", "zul_Latn"]


class CLDRError(UserError):
    """A language babel has no CLDR locale for, or an option out of range."""


def _flat(mapping, pick: Callable | None = None) -> dict[str, str]:
    """{str(key): name} of a babel mapping, `pick` choosing the name from a nested value (None: skip it)."""
    out = {}
    for key, value in mapping.items():
        value = pick(value) if pick else value
        if isinstance(value, str) and value.strip():
            out[str(key)] = value.strip()
    return out


def _get(value, *path):
    for part in path:
        try:
            value = value[part]
        except (KeyError, TypeError, IndexError):
            return None
    return value


# category -> the locale's names by key (what babel's Locale exposes)
CATEGORIES: dict[str, Callable] = {
    "territory": lambda loc: _flat(loc.territories),
    "language": lambda loc: _flat(loc.languages),
    "script": lambda loc: _flat(loc.scripts),
    "currency": lambda loc: _flat(loc.currencies),
    "unit": lambda loc: _flat(loc.unit_display_names, lambda v: _get(v, "long")),
    "timezone": lambda loc: _flat(loc.meta_zones, lambda v: _get(v, "long", "generic")),
    "month": lambda loc: _flat(_get(loc.months, "format", "wide") or {}),
    "day": lambda loc: _flat(_get(loc.days, "format", "wide") or {}),
    "quarter": lambda loc: _flat(_get(loc.quarters, "format", "wide") or {}),
    "era": lambda loc: _flat(_get(loc.eras, "wide") or {}),
}


def locale_names(locale) -> dict[str, str]:
    """Every item's name in a babel `Locale`: {"category:key": name}."""
    return {f"{cat}:{key}": name for cat, names in CATEGORIES.items() for key, name in names(locale).items()}


# CLDR's likely script of a locale that covers the table's script: Korean is Kore (Hangul + Hanja), NLLB's Hang
SCRIPT_COVERS = {"Hang": {"Kore"}}


def _likely_script(identifier: str) -> str | None:
    from babel.core import get_global

    likely = get_global("likely_subtags").get(identifier)
    parts = likely.split("_") if likely else []
    return next((p for p in parts[1:] if len(p) == 4 and p.istitle()), None)


def babel_locale_id(lang: Language) -> str | None:
    """The babel locale identifier of a language-table row, or None when CLDR has none in its script.

    Codes tried: ISO 639-1, ISO 639-3, the macrolanguage, then CLDR's aliases of these; first each with the script
    (`zh_Hant`), then bare, a bare code only when its likely script (CLDR's likely subtags) is the row's script.
    """
    from babel import localedata
    from babel.core import get_global

    codes = [c for c in (lang.iso639_1, lang.iso639_3, lang.macrolanguage) if c]
    aliases = get_global("language_aliases")   # CLDR's own ISO 639-3 -> locale language (zho -> zh, swh -> sw)
    codes += [aliases[c] for c in codes if isinstance(aliases.get(c), str) and aliases[c] not in codes]
    for code in codes:
        if localedata.exists(f"{code}_{lang.script}"):
            return f"{code}_{lang.script}"
    for code in codes:
        if localedata.exists(code) and _likely_script(code) in {lang.script, None, *SCRIPT_COVERS.get(lang.script, ())}:
            return code
    return None


def covered_languages() -> list[str]:
    """FLORES codes of the language table that babel has a CLDR locale for."""
    return [lang.flores for lang in language_table() if babel_locale_id(lang) and lang.flores != ENGLISH]


def resolve_languages(codes: list[str]) -> dict[str, str]:
    """FLORES code -> babel locale id for each requested code; CLDRError naming a language babel lacks."""
    table = language_table()
    out: dict[str, str] = {}
    for code in codes:
        lang = table.get(code, "--languages")
        if lang.flores == ENGLISH:
            raise CLDRError(f"--languages: {ENGLISH} is the English side; list the other languages")
        locale = babel_locale_id(lang)
        if locale is None:
            tried = ", ".join(c for c in (lang.iso639_1, lang.iso639_3, lang.macrolanguage) if c)
            raise CLDRError(f"--languages: {lang.flores} ({lang.name}) has no CLDR locale in babel in the "
                            f"{lang.script_name} script (tried {tried}); languages babel covers: "
                            f"{' '.join(covered_languages())}")
        if lang.flores in out:
            raise CLDRError(f"--languages: {lang.flores} is listed twice")
        out[lang.flores] = locale
    return out


@dataclass
class Counts:
    """One language's items: kept per split, dropped (name equal to English) and missing (no name)."""

    locale: str
    train: int = 0
    eval: int = 0
    same: int = 0
    missing: int = 0

    @property
    def kept(self) -> int:
        return self.train + self.eval

    @property
    def dropped(self) -> int:
        return self.same + self.missing


def english_items() -> dict[str, str]:
    """Item -> English name, in sorted item order, each English name once (the first key wins)."""
    from babel import Locale

    seen, out = set(), {}
    for item, name in sorted(locale_names(Locale("en")).items()):
        if name.casefold() not in seen:
            seen.add(name.casefold())
            out[item] = name
    return out


def split_items(items: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, eval) items: a seeded shuffle of the sorted items, the first `eval_fraction` held out."""
    order = sorted(items)
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * eval_fraction)
    return order[n_eval:], order[:n_eval]


def _write_pairs(path: Path, code: str, pairs: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for en, other in pairs:
            f.write(json.dumps({ENGLISH: en, code: other}, ensure_ascii=False) + "\n")


def write_cldr_pairs(out: str | Path, languages: list[str] | None = None, eval_fraction: float = 0.2, seed: int = 0,
                     overwrite: bool = False) -> dict[str, Counts]:
    """Write `train/`, `eval/`, `retrieval/` and the manifest under `out` (atomically); returns the counts per
    language. `out` must be new, empty, an earlier output of this command, or `overwrite` given."""
    import babel
    from babel import Locale
    from babel.core import get_cldr_version

    if not 0.0 < eval_fraction < 1.0:
        raise CLDRError(f"--eval-fraction: {eval_fraction} must be between 0 and 1 (e.g. 0.2)")
    out = check_destination(out, [], overwrite, written_by=MANIFEST)
    locales = resolve_languages(languages or DEFAULT_LANGUAGES)
    english = english_items()
    train_items, eval_items = split_items(list(english), eval_fraction, seed)
    held_out = set(eval_items)
    counts: dict[str, Counts] = {}
    names: dict[str, dict[str, str]] = {}
    for code, locale_id in locales.items():
        theirs = locale_names(Locale.parse(locale_id))
        c = counts[code] = Counts(locale_id)
        kept = {}
        for item, en in english.items():
            name = theirs.get(item)
            if name is None:
                c.missing += 1
            elif name.casefold() == en.casefold():
                c.same += 1
            else:
                kept[item] = name
                if item in held_out:
                    c.eval += 1
                else:
                    c.train += 1
        names[code] = kept
    retrieval = [item for item in eval_items if all(item in kept for kept in names.values())]
    tmp = temp_dir_beside(out)
    try:
        build = tmp / "cldr"
        for split, items in (("train", train_items), ("eval", eval_items), ("retrieval", retrieval)):
            (build / split).mkdir(parents=True)
            for code, kept in names.items():
                _write_pairs(build / split / f"{ENGLISH}-{code}.jsonl", code,
                             [(english[i], kept[i]) for i in items if i in kept])
        manifest = {"source": "Unicode CLDR via babel", "babel": babel.__version__, "cldr": get_cldr_version(),
                    "seed": seed, "eval_fraction": eval_fraction, "english": ENGLISH,
                    "categories": sorted(CATEGORIES),
                    "locales": locales,
                    "counts": {code: {"kept_train": c.train, "kept_eval": c.eval, "dropped_same_as_english": c.same,
                                      "dropped_missing": c.missing} for code, c in counts.items()},
                    "retrieval_size": len(retrieval),
                    "items": {"train": train_items, "eval": eval_items, "retrieval": retrieval}}
        (build / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        replace_dir(build, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def format_table(counts: dict[str, Counts], n_items: int, retrieval: int) -> str:
    """The per-language table the command prints: kept (train / eval) and dropped (same as English / missing)."""
    rows = [f"{'language':<10} {'locale':<8} {'kept':>5} {'train':>5} {'eval':>5} {'dropped':>7} {'same':>5} "
            f"{'missing':>7}"]
    for code, c in counts.items():
        rows.append(f"{code:<10} {c.locale:<8} {c.kept:>5} {c.train:>5} {c.eval:>5} {c.dropped:>7} {c.same:>5} "
                    f"{c.missing:>7}")
    rows.append(f"{n_items} English items; retrieval set: {retrieval} held-out items named in every language")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Counts]:
    """The command line: write the pairs and print the per-language table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (new, empty or an earlier output; see --overwrite)")
    parser.add_argument("--languages", nargs="+", default=DEFAULT_LANGUAGES,
                        help=f"FLORES-200 (or ISO 639) codes (default: {' '.join(DEFAULT_LANGUAGES)})")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="share of items held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/eval split (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out this command did not write")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        counts = write_cldr_pairs(args.out, args.languages, args.eval_fraction, args.seed, args.overwrite)
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e, args.out) is None:
            raise
        sys.exit(report(e, args.debug, where=args.out))
    manifest = json.loads((Path(args.out) / MANIFEST).read_text(encoding="utf-8"))
    print(format_table(counts, len(manifest["items"]["train"]) + len(manifest["items"]["eval"]),
                       manifest["retrieval_size"]))
    print(f"written to {args.out}/{{train,eval,retrieval}}")
    return counts


if __name__ == "__main__":
    main()
