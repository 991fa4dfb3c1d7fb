"""The MT-LLM study's task benchmarks, each mapped to one schema (`TaskExample`), from the hub or local files.

    examples = load_benchmark("xnli", "de", "validation")                       # the hub (datasets)
    examples = load_benchmark("xnli", "de", "validation", files=["de.jsonl"])   # local files, the same format
    examples[0]  # TaskExample(id="xnli/deu_Latn/validation/0", language="deu_Latn", split="validation",
                 #             texts=(premise, hypothesis), label=0, choices=())

Benchmarks (task; hub dataset; the benchmark's own language codes -> FLORES-200):

| name | task | hub | languages |
|---|---|---|---|
| `mnli` | NLI, 3 classes | `nyu-mll/glue` config `mnli` | English only (the training data) |
| `xnli` | NLI, 3 classes | `facebook/xnli`, one config per language | ar bg de el en es fr hi ru sw th tr ur vi zh |
| `americasnli` | NLI, 3 classes | `americas_nli`, one config per language (validation, test) | aym bzd cni gn hch nah oto quy shp tar |
| `kardes_nli` | NLI, 3 classes | none: the release's CSV files (`Data/<language>/xnli.<dev|test>.<code>.csv`) | az kk ky ug uz |
| `nusax_senti` | sentiment, 3 classes | `indonlp/NusaX-senti`, one config per language | ace ban bbc bjn bug eng ind jav mad min nij sun |
| `belebele` | multiple choice, 4 options | `facebook/belebele`, one config per FLORES-style code (test) | its 122 variants, e.g. eng_Latn |
| `topic` | the generated demo task, 3 classes | none: `python -m data_prep.demo_data` writes it | any FLORES code (the demo's ten) |

Label ids follow the hub datasets: NLI 0 entailment, 1 neutral, 2 contradiction (label names
in files are mapped the same way); NusaX 0 negative, 1 neutral, 2 positive; Belebele's
`correct_answer_num` "1".."4" becomes the choice index 0..3. Text fields: NLI `(premise,
hypothesis)` (Kardeş-NLU: the translated `s1_translation`, `s2_translation`), sentiment
`(text,)`, Belebele `(flores_passage, question)` with the four answers as `choices`.

Languages without an NLLB code (several AmericasNLI and NusaX languages) get a FLORES-style
`<iso639-3>_<Script>` code all the same; translation falls back as the translation issue decides.
A label or language that does not map is a DataError naming the file (or hub dataset), the row and
the value.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data.files import expand_files, read_jsonl
from trainer.errors import DataError

NLI_LABELS = ("entailment", "neutral", "contradiction")
SENTIMENT_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class TaskExample:
    """One example of any benchmark: a stable id, the texts, the label, the choices (multiple choice only)."""

    id: str                     # "<benchmark>/<FLORES code>/<split>/<the benchmark's own id or row>"
    language: str               # FLORES-200 code
    split: str                  # train | validation | test
    texts: tuple[str, ...]      # NLI (premise, hypothesis); sentiment (text,); multiple choice (passage, question)
    label: int                  # class id, or the index of the right choice
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str                                   # nli | sentiment | multiple_choice
    languages: dict[str, str]                   # the benchmark's code -> FLORES-200 code
    convert: Callable[[dict, int], tuple[str, tuple[str, ...], Any, tuple[str, ...]]]  # record, row -> raw fields
    labels: tuple[str, ...]                     # label names by id (multiple choice: the choice numbers)
    hub: str | None = None
    hub_config: Callable[[str], str | None] = lambda code: code
    splits: dict[str, str] = field(default_factory=dict)   # our split -> the hub's split name

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _nli(premise: str, hypothesis: str, label: str, id_column: str | None = None):
    def convert(record: dict, row: int):
        return str(record[id_column]) if id_column else str(row), (record[premise], record[hypothesis]), \
            record[label], ()
    return convert


def _sentiment(record: dict, row: int):
    return str(record.get("id", row)), (record["text"],), record["label"], ()


def _belebele(record: dict, row: int):
    choices = tuple(record[f"mc_answer{i}"] for i in range(1, 5))
    number = str(record["correct_answer_num"]).strip()
    label = int(number) - 1 if number in ("1", "2", "3", "4") else number   # else: reported as it is
    return f"{record['link']}#{record['question_number']}", (record["flores_passage"], record["question"]), label, \
        choices


XNLI_LANGUAGES = {"ar": "arb_Arab", "bg": "bul_Cyrl", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn",
                  "es": "spa_Latn", "fr": "fra_Latn", "hi": "hin_Deva", "ru": "rus_Cyrl", "sw": "swh_Latn",
                  "th": "tha_Thai", "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans"}
AMERICASNLI_LANGUAGES = {"aym": "ayr_Latn", "bzd": "bzd_Latn", "cni": "cni_Latn", "gn": "grn_Latn",
                         "hch": "hch_Latn", "nah": "nah_Latn", "oto": "oto_Latn", "quy": "quy_Latn",
                         "shp": "shp_Latn", "tar": "tar_Latn"}
KARDES_LANGUAGES = {"az": "azj_Latn", "kk": "kaz_Cyrl", "ky": "kir_Cyrl", "ug": "uig_Arab", "uz": "uzn_Latn"}
NUSAX_LANGUAGES = {"ace": "ace_Latn", "ban": "ban_Latn", "bbc": "bbc_Latn", "bjn": "bjn_Latn", "bug": "bug_Latn",
                   "eng": "eng_Latn", "ind": "ind_Latn", "jav": "jav_Latn", "mad": "mad_Latn", "min": "min_Latn",
                   "nij": "nij_Latn", "sun": "sun_Latn"}


class _FloresCodes(dict):
    """Languages named by FLORES-style codes already (Belebele's configs, the generated task): each maps to itself."""

    def __missing__(self, code: str) -> str:
        if len(code.split("_")) == 2 and len(code.split("_")[1]) == 4:
            return code
        raise KeyError(code)

    def __contains__(self, code: object) -> bool:
        try:
            self[code]
        except KeyError:
            return False
        return True


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("mnli", "nli", {"en": "eng_Latn"}, _nli("premise", "hypothesis", "label", "idx"), NLI_LABELS,
              hub="nyu-mll/glue", hub_config=lambda code: "mnli",
              splits={"train": "train", "validation": "validation_matched", "test": "validation_mismatched"}),
    Benchmark("xnli", "nli", XNLI_LANGUAGES, _nli("premise", "hypothesis", "label"), NLI_LABELS, hub="facebook/xnli"),
    Benchmark("americasnli", "nli", AMERICASNLI_LANGUAGES, _nli("premise", "hypothesis", "label"), NLI_LABELS,
              hub="americas_nli"),
    Benchmark("kardes_nli", "nli", KARDES_LANGUAGES,
              _nli("s1_translation", "s2_translation", "gold_label", "Unnamed: 0"), NLI_LABELS,
              splits={"validation": "dev", "test": "test"}),
    Benchmark("nusax_senti", "sentiment", NUSAX_LANGUAGES, _sentiment, SENTIMENT_LABELS, hub="indonlp/NusaX-senti"),
    Benchmark("belebele", "multiple_choice", _FloresCodes(), _belebele, ("1", "2", "3", "4"),
              hub="facebook/belebele", splits={"test": "test"}),
    Benchmark("topic", "classification", _FloresCodes(), _sentiment, ("perception", "commerce", "making")),
]}


def _label_id(value: Any, labels: tuple[str, ...], where: str) -> int:
    """An integer id in range, or a label name -> its id; anything else names `where` and the value."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) and 0 <= value < len(labels):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and 0 <= int(text) < len(labels):
            return int(text)
        if text.lower() in labels:
            return labels.index(text.lower())
    raise DataError(f"{where}: label {value!r} does not map to {', '.join(f'{i} {n}' for i, n in enumerate(labels))}")


def _read_records(path: str) -> list[dict]:
    if path.endswith(".jsonl") or path.endswith(".json"):
        return read_jsonl(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.endswith((".csv", ".tsv")):
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))
    raise DataError(f"{path}: a benchmark file is .jsonl, .parquet, .csv or .tsv")


def _hub_records(benchmark: Benchmark, code: str, split: str) -> Iterable[dict]:
    import datasets

    return datasets.load_dataset(benchmark.hub, benchmark.hub_config(code), split=benchmark.splits.get(split, split))


def load_benchmark(name: str, language: str, split: str, files: list[str] | None = None) -> list[TaskExample]:
    """Every example of benchmark `name` in `language` (the benchmark's code or its FLORES code) and `split`.

    `files`: local files or globs in the benchmark's own format; without them the hub dataset is
    loaded through `datasets` (the benchmark's hub name and config).
    """
    if name not in BENCHMARKS:
        raise DataError(f"benchmark {name!r} is unknown; choose one of {', '.join(BENCHMARKS)}")
    benchmark = BENCHMARKS[name]
    codes = {flores: code for code, flores in benchmark.languages.items()}
    code = codes.get(language, language)
    if code not in benchmark.languages:
        raise DataError(f"{name}: language {language!r} is not one of its languages "
                        f"({', '.join(benchmark.languages) or 'FLORES-style codes such as eng_Latn'})")
    flores = benchmark.languages[code]
    if files:
        sources = [(path, _read_records(path)) for path in expand_files(files, what=f"{name} files")]
    elif benchmark.hub is None:
        raise DataError(f"{name}: not on the hub; give its files (e.g. Data/<language>/xnli.dev.<code>.csv of the "
                        f"release)")
    else:
        sources = [(f"{benchmark.hub} ({benchmark.hub_config(code)}, {split})", _hub_records(benchmark, code, split))]
    examples = []
    for source, records in sources:
        for row, record in enumerate(records, 1):
            where = f"{source}: row {row}"
            try:
                native_id, texts, label, choices = benchmark.convert(record, row)
            except KeyError as e:
                raise DataError(f"{where}: no column {e.args[0]!r} (columns: {', '.join(record)})") from None
            examples.append(TaskExample(f"{name}/{flores}/{split}/{native_id}", flores, split,
                                        tuple(str(t) for t in texts), _label_id(label, benchmark.labels, where),
                                        tuple(str(c) for c in choices)))
    if not examples:
        raise DataError(f"{name} {language} {split}: no examples")
    return examples
