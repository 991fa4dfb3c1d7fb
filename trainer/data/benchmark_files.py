"""`TaskExample`s written back in their benchmark's own file format, so that `load_benchmark` reads them.

Machine-translated task data (`data_prep.translate`) keeps each benchmark's columns, with the texts
replaced: a translate-test file is then read like the original test file (`task.files.translate_test`),
and its examples get the original examples' own ids (the part after `<benchmark>/<code>/<split>/`):

    rows = benchmark_rows("xnli", examples)             # [{"premise", "hypothesis", "label"}, ...]
    load_benchmark("xnli", "de", "test", files=[path])  # the same ids, texts, labels and choices

Labels are written as ids (every adapter maps ids as well as names); tags as the file's own ids
(`Benchmark.native_tags`); QA answers in the SQuAD layout. Benchmarks whose own id is the row number
(XNLI, AmericasNLI, IndoNLI, Myanmar-XNLI, AfriXNLI, UDPOS, WikiANN: no id column) must be written
complete and in order; dropping a row would renumber the rest, so `benchmark_rows` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable

from trainer.data.benchmarks import BENCHMARKS, GENERATIVE, NLI_LABELS, TaskExample
from trainer.errors import DataError

ROW_NUMBERED = ("xnli", "americasnli", "indonli", "myanmar_xnli", "afrixnli", "udpos", "wikiann")   # id = 1-based row


def native_id(example: TaskExample) -> str:
    """The benchmark's own id of an example (`xnli/deu_Latn/test/7` -> `7`)."""
    parts = example.id.split("/", 3)
    if len(parts) != 4:
        raise DataError(f"example id {example.id!r} is not <benchmark>/<language>/<split>/<id>")
    return parts[3]


def _nli(premise: str, hypothesis: str, label: str, id_column: str | None = None) -> Callable[[TaskExample], dict]:
    def row(e: TaskExample) -> dict:
        record = {premise: e.texts[0], hypothesis: e.texts[1], label: e.label}
        return {id_column: native_id(e), **record} if id_column else record
    return row


def _single(e: TaskExample) -> dict:
    return {"id": native_id(e), "text": e.texts[0], "label": e.label}


def _belebele(e: TaskExample) -> dict:
    link, _, number = native_id(e).rpartition("#")
    return {"link": link, "question_number": int(number) if number.isdigit() else number,
            "flores_passage": e.texts[0], "question": e.texts[1],
            **{f"mc_answer{i + 1}": choice for i, choice in enumerate(e.choices)},
            "correct_answer_num": str(e.label + 1)}


def _myanmar_xnli(e: TaskExample) -> dict:
    code = "en" if e.language == "eng_Latn" else "my"
    return {f"sentence1_{code}": e.texts[0], f"sentence2_{code}": e.texts[1], "label": NLI_LABELS[e.label]}


def _tagging(benchmark: str, tag_column: str, id_column: bool = True) -> Callable[[TaskExample], dict]:
    def row(e: TaskExample) -> dict:
        if e.texts != (" ".join(e.words),):   # e.g. translated text: the words' tags would not follow it
            raise DataError(f"{benchmark}: {e.id} has texts other than its words; a tagging example is written as "
                            f"its words and their tags (tags cannot follow a translation)")
        b = BENCHMARKS[benchmark]
        native = b.native_tags or b.labels
        record = {"tokens": list(e.words), tag_column: [native.index(b.labels[t]) for t in e.tags]}
        return {"id": native_id(e), **record} if id_column else record
    return row


def _race(e: TaskExample) -> dict:
    example_id = native_id(e).rsplit("#", 1)[0]
    return {"example_id": example_id, "article": e.texts[0], "question": e.texts[1], "options": list(e.choices),
            "answer": "ABCD"[e.label]}


def _squad(e: TaskExample) -> dict:
    if any(e.texts[0][start:start + len(text)] != text for text, start in e.answers):
        raise DataError(f"{e.id}: an answer is not at its offset in the context (a translated context: translate QA "
                        f"with data_prep.translate --benchmark squad, which projects the answer spans)")
    return {"id": native_id(e), "context": e.texts[0], "question": e.texts[1],
            "answers": {"text": [text for text, _ in e.answers], "answer_start": [start for _, start in e.answers]}}


# benchmark -> TaskExample -> a record its adapter (`trainer.data.benchmarks`) converts back
WRITERS: dict[str, Callable[[TaskExample], dict]] = {
    "mnli": _nli("premise", "hypothesis", "label", "idx"),
    "xnli": _nli("premise", "hypothesis", "label"),
    "americasnli": _nli("premise", "hypothesis", "label"),
    "kardes_nli": _nli("s1_translation", "s2_translation", "gold_label", "Unnamed: 0"),
    "nusax_senti": _single,
    "topic": _single,
    "belebele": _belebele,
    "race": _race,
    "indonli": _nli("premise", "hypothesis", "label"),
    "myanmar_xnli": _myanmar_xnli,
    "afrixnli": _nli("premise", "hypothesis", "label"),
    "udpos": _tagging("udpos", "pos_tags", id_column=False),
    "masakhapos": _tagging("masakhapos", "upos"),
    "wikiann": _tagging("wikiann", "ner_tags", id_column=False),
    "masakhaner": _tagging("masakhaner", "ner_tags"),
    "topic_tags": _tagging("topic_tags", "tags"),
    "tydiqa": _squad,
    "topic_qa": _squad,
}


def benchmark_rows(benchmark: str, examples: list[TaskExample]) -> list[dict]:
    """One record per example in `benchmark`'s own columns (JSONL-ready), in the given order."""
    if benchmark not in WRITERS:
        why = (" (a generative task: its answers are text in one language, not translated)"
               if benchmark in BENCHMARKS and BENCHMARKS[benchmark].task in GENERATIVE else "")
        raise DataError(f"benchmark {benchmark!r}: no file writer{why} (known: {', '.join(WRITERS)})")
    translatable = {name for name, b in BENCHMARKS.items() if b.task not in GENERATIVE}
    if set(WRITERS) != translatable:   # a new classification, tagging or QA adapter needs its writer here
        raise DataError(f"benchmark file writers {sorted(WRITERS)} != adapters {sorted(translatable)}")
    if benchmark in ROW_NUMBERED:
        ids = [native_id(e) for e in examples]
        expected = [str(i) for i in range(1, len(examples) + 1)]
        if ids != expected:
            first = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
            raise DataError(f"{benchmark}: its ids are row numbers, so its examples are written complete and in "
                            f"order; row {first + 1} holds id {ids[first]!r}")
    return [WRITERS[benchmark](e) for e in examples]


__all__ = ["ROW_NUMBERED", "WRITERS", "benchmark_rows", "native_id"]
