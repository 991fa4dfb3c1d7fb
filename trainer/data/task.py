"""Task data: labelled examples per language for fine-tuning and zero-shot evaluation.

Files are JSONL/parquet with a text column and an integer label column, one
file per language (`{lang}.jsonl`, FLORES-200 code as the name). Real jobs
point at prepared XNLI/NusaX/SIB-style files; tests and demos use the
generated task below.

Generated task (`synthetic_task`): 3-way classification of what the sentence's
verb does (perception/commerce/making); the same concept sequences rendered in
every language, so a model fine-tuned on English can only transfer through
cross-lingual alignment of the pseudo-words.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.data import synthetic

VERB_CLASSES = {
    0: ["sees", "finds", "reads", "loves"],
    1: ["buys", "sells", "carries", "opens"],
    2: ["paints", "cooks", "builds", "washes"],
}
LABEL_OF_VERB = {verb: label for label, verbs in VERB_CLASSES.items() for verb in verbs}


def synthetic_task(lang: str, n: int, seed: int) -> list[dict]:
    """`n` examples {"text", "label"} in `lang`; the same seed gives translations across languages."""
    rows = []
    for concepts in synthetic.concept_sentences(n, seed):
        rows.append({"text": synthetic.render(concepts, lang), "label": LABEL_OF_VERB[concepts[1]]})
    return rows


def write_task_files(out_dir: str | Path, languages: list[str], n: int, seed: int) -> dict[str, Path]:
    """Write `{lang}.jsonl` for each language; returns lang -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang in languages:
        path = out / f"{lang}.jsonl"
        with path.open("w") as f:
            for row in synthetic_task(lang, n, seed):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[lang] = path
    return paths


def read_task_file(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[dict]:
    """Rows of a JSONL or parquet task file as {"text", "label"}; errors name the file and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        records = table.to_pylist()
    else:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for column in (text_column, label_column):
        if records and column not in records[0]:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(records[0])})")
    return [{"text": r[text_column], "label": int(r[label_column])} for r in records]
