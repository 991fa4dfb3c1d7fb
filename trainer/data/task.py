"""Task data: labelled examples per language for fine-tuning and zero-shot evaluation.

Files are JSONL/parquet with a text column and an integer label column, one
file per language (`{lang}.jsonl`, FLORES-200 code as the name). Real jobs
point at prepared XNLI/NusaX/SIB-style files; tests and demos use the
generated task below.

Generated task (`synthetic_task`): 3-way classification of what the sentence's
verb does (perception/commerce/making); the same concept sequences rendered in
every language, so a model fine-tuned on English can only transfer through
cross-lingual alignment of the pseudo-words.

Collators: `ClassificationCollator` (text -> ids + class label, for a classification head) and
`PromptAnswerCollator` (M2's causal LM task: prompt = template(text), answer = the label's word
plus EOS, loss on the answer only; `choices=True` expands each example into one row per candidate
answer for evaluation by answer likelihood).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data import synthetic
from trainer.data.text import expand_files
from trainer.objectives.task import build_prompt_answer_batch

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


def load_task_rows(patterns: list[str], text_column: str = "text", label_column: str = "label",
                   what: str = "task.train_files") -> list[dict]:
    """Rows {"text", "label"} of every file the patterns (files or globs) match, in sorted order."""
    rows: list[dict] = []
    for pattern in patterns:
        try:
            files = expand_files([pattern])
        except FileNotFoundError:
            raise FileNotFoundError(f"{what}: {pattern!r} matches no file "
                                    f"(generated demo data: python -m data_prep.make_task_data --out DIR)") from None
        for path in files:
            rows += read_task_file(path, text_column, label_column)
    return rows


def eval_file(eval_dir: str | Path, lang: str) -> Path:
    """`eval_dir/<lang>.jsonl` or `.parquet`; the error lists what the directory holds."""
    folder = Path(eval_dir)
    for suffix in (".jsonl", ".parquet"):
        if (folder / f"{lang}{suffix}").is_file():
            return folder / f"{lang}{suffix}"
    held = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise FileNotFoundError(f"task.eval_dir: no {lang}.jsonl or {lang}.parquet in {folder} "
                            f"(holds: {', '.join(held) or 'nothing'})")


def check_labels(rows: list[dict], num_labels: int, what: str) -> None:
    bad = sorted({r["label"] for r in rows if not 0 <= r["label"] < num_labels})
    if bad:
        raise ValueError(f"{what}: labels {bad[:5]} outside 0..{num_labels - 1} (task.num_labels={num_labels})")


class ClassificationCollator:
    """Rows {"text", "label"} -> input_ids, attention_mask [b, s] and labels [b] (class ids)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([r["text"] for r in rows], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long)}


class PromptAnswerCollator:
    """Rows {"text", "label"} -> a prompt/answer causal LM batch (labels -100 outside the answer).

    Prompt: `template.format(text=...)` tokenized with the tokenizer's special tokens (BOS);
    answer: `" " + label_words[label]` without special tokens, then EOS (the model learns to stop).
    Prompts longer than `max_length` lose their beginning. `choices=True`: every example becomes
    `len(label_words)` rows, one per candidate answer (example-major), for likelihood scoring.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str, label_words: list[str],
                 max_length: int, choices: bool = False):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.choices = choices
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.answers = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] + eos for w in label_words]
        if len({tuple(a) for a in self.answers}) != len(self.answers):
            raise ValueError(f"task.label_words: two labels tokenize to the same answer ({label_words})")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = self.tokenizer([self.template.format(text=r["text"]) for r in rows])["input_ids"]
        if self.choices:
            prompts = [p for p in prompts for _ in self.answers]
            answers = [a for _ in rows for a in self.answers]
        else:
            answers = [self.answers[r["label"]] for r in rows]
        batch = build_prompt_answer_batch(prompts, answers, pad_id=self.tokenizer.pad_token_id,
                                          padding_side=self.tokenizer.padding_side, max_length=self.max_length)
        if self.choices:
            batch["gold"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return batch
