"""Parallel corpora: (English, other language) sentence pairs from local files or hub datasets.

Sources, tried in order for each requested language:

1. local files (`files`): one file per language pair named `<code>-<code>.<ext>`
   with English as one of the two codes (`eng_Latn-deu_Latn.jsonl`; any code the
   language table knows works, `en-de.tsv` too):
   - `.jsonl` / `.json` (JSON lines) and `.parquet`: one pair per record, either
     one column per language keyed by a code (`{"eng_Latn": ..., "deu_Latn": ...}`,
     `{"en": ..., "de": ...}`) or a `translation` mapping with such keys (OPUS style);
   - `.tsv`: two tab-separated columns in the file name's order, no header.
2. hub datasets (`hub`), via `datasets.load_dataset(name, config, split=...)`:
   presets `opus-100` (Helsinki-NLP/opus-100, configs like `de-en`), `nllb`
   (allenai/nllb, the fallback for languages OPUS lacks), `tatoeba`
   (Helsinki-NLP/tatoeba_mt) and `flores-200` (openlanguagedata/flores_plus,
   one config per language aligned row by row; for evaluation), or any
   `HubSource`. A source "lacks" a language when its config cannot be
   formed (OPUS-100 needs an ISO 639-1 code) or loading fails.

A language found nowhere raises a `ValueError` listing what is available,
or is skipped with a warning (`on_missing: skip`).

Sampling and sharding over ranks: `trainer.data.pair_sampling`.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path


import datasets
import numpy as np
import pyarrow.parquet as pq

from trainer.data.files import read_jsonl
from trainer.data.parallel_config import HUB_PRESETS, HubSource, ParallelDataConfig
from trainer.errors import DataError, MissingDataError
from trainer.languages.table import Language, LanguageTable, language_table

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".tsv", ".jsonl", ".json", ".parquet")


class PairTable:
    """The pairs of one language: parallel lists of English and other-language sentences."""

    def __init__(self, english: list[str], other: list[str], source: str):
        if len(english) != len(other):
            raise DataError(f"{source}: {len(english)} English sentences but {len(other)} translations")
        self.english = english
        self.other = other
        self.source = source

    def __len__(self) -> int:
        return len(self.english)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.english[i], self.other[i]


@dataclass
class ParallelCorpus:
    """Pairs per language (FLORES code -> PairTable), English side `english`."""

    english: str
    tables: dict[str, PairTable]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted(self.tables)

    def sizes(self) -> dict[str, int]:
        return {lang: len(t) for lang, t in sorted(self.tables.items())}


# ----------------------------------------------------------------------------------------- local files


def _expand(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            matches = sorted(f for f in p.iterdir() if f.suffix in FILE_SUFFIXES)
        elif any(c in pattern for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(pattern) if Path(m).is_file())
        else:
            matches = [p] if p.is_file() else []
        if not matches:
            raise MissingDataError(f"parallel data files: {pattern!r} matches no file "
                                    f"(the demo data: python -m data_prep.demo_data)")
        files += matches
    return files


def file_language(path: Path, english: str, table: LanguageTable) -> tuple[str, bool]:
    """(other language's FLORES code, whether English is first) from a `<code>-<code>.<ext>` file name."""
    parts = path.stem.split("-")
    if len(parts) != 2 or path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: parallel files must be named <code>-<code>.(tsv|jsonl|json|parquet), "
                         f"e.g. {english}-deu_Latn.jsonl")
    codes = [table.flores(c, f"file name {path.name}") for c in parts]
    if english not in codes or codes[0] == codes[1]:
        raise DataError(f"{path}: one side must be {english} and the other another language (got {codes})")
    return (codes[1], True) if codes[0] == english else (codes[0], False)


def _pick(record: dict, lang: str, table: LanguageTable, path: Path) -> str:
    source = record.get("translation") if isinstance(record.get("translation"), dict) else record
    for key, value in source.items():
        if key in table and table.flores(key) == lang:
            return value
    raise DataError(f"{path}: record has no field for {lang} (fields: {', '.join(source)}); "
                     f"key each side by a language code, e.g. {{\"{lang}\": ...}}")


def read_pair_file(path: Path, english: str, table: LanguageTable | None = None) -> tuple[str, list[str], list[str]]:
    """One file -> (other language, English sentences, other sentences)."""
    table = table or language_table()
    lang, english_first = file_language(path, english, table)
    if path.suffix == ".tsv":
        eng, oth = [], []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                cols = line.rstrip("\n").split("\t")
                if len(cols) != 2:
                    raise DataError(f"{path}:{n}: expected 2 tab-separated columns, got {len(cols)}")
                a, b = cols if english_first else cols[::-1]
                eng.append(a)
                oth.append(b)
        if not eng:
            raise DataError(f"{path}: no sentence pairs (an empty file)")
        return lang, eng, oth
    if path.suffix == ".parquet":
        records = pq.read_table(path).to_pylist()
    else:
        records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: no sentence pairs (an empty file)")
    return lang, [_pick(r, english, table, path) for r in records], [_pick(r, lang, table, path) for r in records]


def scan_files(patterns: list[str], english: str, table: LanguageTable | None = None) -> dict[str, list[Path]]:
    """Language -> files that provide it (from file names only; nothing is read)."""
    table = table or language_table()
    out: dict[str, list[Path]] = {}
    for path in _expand(patterns):
        lang, _ = file_language(path, english, table)
        out.setdefault(lang, []).append(path)
    return out


# ----------------------------------------------------------------------------------------------- hub


def _codes(lang: Language) -> dict[str, str | None]:
    return {"flores": lang.flores, "iso1": lang.iso639_1, "iso3": lang.iso639_3,
            "macro": lang.macrolanguage or lang.iso639_3}


def hub_placeholders(english: Language, other: Language) -> dict[str, str]:
    """Template values for a pair; ISO 639-1 entries are absent where a language has no such code."""
    e, o = _codes(english), _codes(other)
    values = {f"eng_{k}": v for k, v in e.items() if v} | {f"oth_{k}": v for k, v in o.items() if v}
    for k in ("flores", "iso1", "iso3", "macro"):
        if e[k] and o[k]:
            values[f"{k}_pair"] = "-".join(sorted([e[k], o[k]]))
    eng_first = e["macro"] <= o["macro"]
    values["eng_side"], values["oth_side"] = ("source", "target") if eng_first else ("target", "source")
    return values


def _get(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        value = value[part]
    return value


def _fill(template: str, values: dict[str, str], what: str) -> str:
    try:
        return template.format(**values)
    except KeyError as e:
        raise LookupError(f"no {e.args[0]} code for {what}") from None


def load_hub_pairs(source: HubSource, english: Language, other: Language,
                   split: str | None = None) -> tuple[list[str], list[str]]:
    """(English sentences, other sentences) of one language from a hub dataset.

    Raises LookupError when the source cannot serve the language (no code for
    its template, or the dataset/config does not load).
    """
    split = split or source.split
    what = f"{other.flores} in {source.name}"
    try:
        if source.layout == "paired":
            values = hub_placeholders(english, other)
            config = _fill(source.config, values, what) if source.config else None
            ds = datasets.load_dataset(source.name, config, split=split)
            ef, of = _fill(source.english_field, values, what), _fill(source.other_field, values, what)
            flat = ds.flatten()            # nested `translation.en` becomes a column of that name
            if ef in flat.column_names and of in flat.column_names:
                return list(flat[ef]), list(flat[of])
            return [_get(r, ef) for r in ds], [_get(r, of) for r in ds]
        sides = []
        for lang in (english, other):
            values = {k: v for k, v in _codes(lang).items() if v}
            config = _fill(source.config, values, what) if source.config else None
            sides.append(datasets.load_dataset(source.name, config, split=split))
        eng_ds, oth_ds = sides
        if len(eng_ds) != len(oth_ds) or (source.id_field and eng_ds[source.id_field] != oth_ds[source.id_field]):
            raise LookupError(f"{what}: the {english.flores} and {other.flores} configs are not row-aligned")
        return list(eng_ds[source.english_field]), list(oth_ds[source.other_field])
    except LookupError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure means "this source lacks the language"
        raise LookupError(f"{what}: {type(e).__name__}: {e}") from e


# -------------------------------------------------------------------------------------------- loading


def _requested_languages(cfg: ParallelDataConfig, available_files: dict[str, list[Path]]) -> list[str]:
    if cfg.subset is not None:
        from trainer.languages.subsets import load_subsets

        subsets = load_subsets(cfg.subsets_file)
        if cfg.subset not in subsets:
            raise DataError(f"subset: {cfg.subset!r} is not in {cfg.subsets_file} "
                             f"(subsets: {', '.join(sorted(subsets))})")
        return subsets[cfg.subset]
    if cfg.languages:
        return list(cfg.languages)
    if not available_files:
        raise DataError("languages: empty and no local files to take languages from; list the languages")
    return sorted(available_files)


def _clean(eng: list[str], oth: list[str], min_chars: int) -> tuple[list[str], list[str]]:
    keep = [i for i, (a, b) in enumerate(zip(eng, oth))
            if isinstance(a, str) and isinstance(b, str) and len(a.strip()) >= min_chars and len(b.strip()) >= min_chars]
    return [eng[i].strip() for i in keep], [oth[i].strip() for i in keep]


def load_parallel(cfg: ParallelDataConfig, table: LanguageTable | None = None) -> ParallelCorpus:
    """Load the configured languages' pairs (files first, then hub sources in order)."""
    table = table or language_table()
    english = table.get(cfg.english)
    by_lang = scan_files(cfg.files, english.flores, table) if cfg.files else {}
    wanted = _requested_languages(cfg, by_lang)
    hubs = [HUB_PRESETS[h] if isinstance(h, str) else h for h in cfg.hub]
    tables: dict[str, PairTable] = {}
    skipped: dict[str, str] = {}
    for code in wanted:
        lang = table.get(code)
        tried: list[str] = []
        eng: list[str] | None = None
        if lang.flores in by_lang:
            eng, oth = [], []
            for path in by_lang[lang.flores]:
                _, e, o = read_pair_file(path, english.flores, table)
                eng += e
                oth += o
            where = ", ".join(str(p) for p in by_lang[lang.flores])
        elif cfg.files:
            tried.append("local files: none named for it")
        if eng is None:
            for hub in hubs:
                try:
                    eng, oth = load_hub_pairs(hub, english, lang, cfg.split)
                    where = f"hub:{hub.name}"
                    break
                except LookupError as e:
                    tried.append(f"hub {hub.name}: {e}")
        if eng is not None:
            eng, oth = _clean(eng, oth, cfg.min_chars)
        if not eng:
            available = ", ".join(f"{c} ({len(p)} file{'s' if len(p) > 1 else ''})" for c, p in sorted(by_lang.items()))
            message = (f"no parallel data for {lang.flores} ({lang.name}); tried: {'; '.join(tried) or 'nothing'}; "
                       f"available in local files: {available or 'none'}"
                       + (f" (files: {', '.join(cfg.files)})" if cfg.files else ""))
            if cfg.on_missing == "error":
                raise DataError(message)
            log.warning("%s -- skipping it (on_missing: skip)", message)
            skipped[lang.flores] = message
            continue
        if cfg.max_pairs_per_language is not None and len(eng) > cfg.max_pairs_per_language:
            keep = np.sort(np.random.default_rng([cfg.seed, _stable(lang.flores)])
                           .choice(len(eng), cfg.max_pairs_per_language, replace=False))
            eng, oth = [eng[i] for i in keep], [oth[i] for i in keep]
        tables[lang.flores] = PairTable(eng, oth, where)
        log.info("%s: %d pairs from %s", lang.flores, len(eng), where)
    if not tables:
        raise DataError("parallel data: no language has any data " + (f"({'; '.join(skipped.values())})" if skipped else ""))
    return ParallelCorpus(english.flores, tables, skipped)
