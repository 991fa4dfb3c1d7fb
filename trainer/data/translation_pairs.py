"""Translation examples from a parallel-text benchmark: two languages' sentences joined by their id.

    pairs = translation_examples("flores", ["deu_Latn"], "eng_Latn", ["to_pivot", "from_pivot"], "test")
    pairs["deu_Latn-eng_Latn"][0]   # TaskExample(texts=(German sentence,), target=English sentence,
                                    #             language="deu_Latn", target_language="eng_Latn")

FLORES is multi-way parallel: sentence `id` k of every language translates sentence k of every other, so
a direction X -> Y is X's sentence as the source and Y's with the same id as the reference. Each
language is paired with one `pivot` (English in the study); `to_pivot` gives X -> pivot,
`from_pivot` pivot -> X. The key of a direction is `<source>-<target>` (FLORES codes).
"""

from __future__ import annotations

from trainer.data.benchmarks import TaskExample, load_benchmark
from trainer.errors import DataError

DIRECTIONS = ("to_pivot", "from_pivot")


def native_id(example: TaskExample) -> str:
    """The benchmark's own id of an example (the part of `id` after `<benchmark>/<language>/<split>/`)."""
    return example.id.split("/", 3)[3]


def direction_key(source: str, target: str) -> str:
    return f"{source}-{target}"


def translation_examples(name: str, languages: list[str], pivot: str, directions: list[str], split: str,
                         file_template: str | None = None, limit: int | None = None) -> dict[str, list[TaskExample]]:
    """{"<source>-<target>": examples} for every language x direction (see the module docstring).

    `file_template`: a local file per language with `{language}` (the FLORES code); else the hub.
    `limit`: the first N sentences of each language. A sentence id missing on the other side is a
    DataError naming both languages.
    """
    unknown = sorted(set(directions) - set(DIRECTIONS))
    if unknown:
        raise DataError(f"translation directions {unknown}: choose {', '.join(DIRECTIONS)}")

    def sentences(lang: str) -> list[TaskExample]:
        files = [file_template.format(language=lang)] if file_template else None
        return load_benchmark(name, lang, split, files)[:limit] if limit else load_benchmark(name, lang, split, files)

    pivot_by_id = {native_id(e): e for e in sentences(pivot)}
    out: dict[str, list[TaskExample]] = {}
    for lang in languages:
        if lang == pivot:
            continue
        own = sentences(lang)
        missing = [native_id(e) for e in own if native_id(e) not in pivot_by_id]
        if missing:
            raise DataError(f"{name} {split}: {len(missing)} {lang} sentence ids (first {missing[0]!r}) have no "
                            f"{pivot} sentence; the two files are not parallel")
        for direction in directions:
            source, target = (lang, pivot) if direction == "to_pivot" else (pivot, lang)
            key = direction_key(source, target)
            out[key] = []
            for example in own:
                sid = native_id(example)
                src, ref = (example, pivot_by_id[sid]) if direction == "to_pivot" else (pivot_by_id[sid], example)
                out[key].append(TaskExample(f"{name}/{key}/{split}/{sid}", source, split, src.texts, -1,
                                            target=ref.texts[0], target_language=target))
    return out
