"""Task data: labelled examples per language for fine-tuning and zero-shot evaluation.

Files are JSONL/parquet with a text column and an integer label column, one
file per language (`{lang}.jsonl`, FLORES-200 code as the name). Real jobs
point at prepared XNLI/NusaX/SIB-style files; tests and demos use the
generated task below.

The generated demo task lives with the other generated data (`trainer.tiny.text.synthetic_task`).

Collators: `ClassificationCollator` (text -> ids + class label, for a classification head) and
`PromptAnswerCollator` (M2's causal LM task: prompt = template(text), answer = the label's word
plus EOS, loss on the answer only; `choices=True` expands each example into one row per candidate
answer for evaluation by answer likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.batches import MicroBatches
from trainer.data.files import expand_files, read_jsonl
from trainer.errors import DataError, MissingDataError

IGNORE_INDEX = -100   # label of tokens outside the answer: PyTorch's cross_entropy ignore_index


def read_task_file(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[dict]:
    """Rows of a JSONL or parquet task file as {"text", "label"}; errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"task file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: no examples (an empty file)")
    rows = []
    for n, record in enumerate(records, 1):
        where = f"{path}:{n}" if path.suffix != ".parquet" else f"{path}: row {n}"
        for column in (text_column, label_column):
            if column not in record:
                raise DataError(f"{where}: no column {column!r} (columns: {', '.join(record)})")
        label = record[label_column]
        if isinstance(label, bool) or not isinstance(label, int) and not (isinstance(label, str) and label.isdigit()):
            raise DataError(f"{where}: label {label!r} in column {label_column!r} is not an integer class id")
        rows.append({"text": record[text_column], "label": int(label)})
    return rows


def load_task_rows(patterns: list[str], text_column: str = "text", label_column: str = "label",
                   what: str = "task.train_files") -> list[dict]:
    """Rows {"text", "label"} of every file the patterns (files or globs) match, in sorted order."""
    rows: list[dict] = []
    for path in expand_files(patterns, what):
        rows += read_task_file(path, text_column, label_column)
    return rows


def eval_file(eval_dir: str | Path, lang: str) -> Path:
    """`eval_dir/<lang>.jsonl` or `.parquet`; the error lists what the directory holds."""
    folder = Path(eval_dir)
    for suffix in (".jsonl", ".parquet"):
        if (folder / f"{lang}{suffix}").is_file():
            return folder / f"{lang}{suffix}"
    held = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise MissingDataError(f"task.eval_dir: no {lang}.jsonl or {lang}.parquet in {folder} "
                            f"(holds: {', '.join(held) or 'nothing'})")


def check_labels(rows: list[dict], num_labels: int, what: str) -> None:
    bad = sorted({r["label"] for r in rows if not 0 <= r["label"] < num_labels})
    if bad:
        raise DataError(f"{what}: labels {bad[:5]} outside 0..{num_labels - 1} (task.num_labels={num_labels})")


def prompt_answer_example(prompt: Sequence[int], answer: Sequence[int],
                          max_length: int | None = None) -> tuple[list[int], list[int]]:
    """One example -> (input_ids, labels), labels = -100 on the prompt, the answer ids on the answer.

    With `max_length`, the prompt is cut from the left (its end, next to the answer, is kept);
    if the answer alone is longer, it is cut from the right and no prompt token is kept.
    """
    if not answer:
        raise DataError("empty answer: nothing to train on")
    prompt, answer = list(prompt), list(answer)
    if max_length is not None:
        answer = answer[:max_length]
        keep = max_length - len(answer)
        prompt = prompt[max(0, len(prompt) - keep):] if keep > 0 else []
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def build_prompt_answer_batch(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int,
                              padding_side: str = "right", max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Token lists -> padded `input_ids`, `attention_mask`, `labels`, each [batch, seq] int64.

    `labels` is -100 on prompt tokens and on padding (either side), the token id on answer tokens;
    `labels` is aligned with `input_ids` (no shift here: `causal_lm_loss` shifts). Pass the
    attention mask to `run_llm`, which computes position ids right for left padding too.
    """
    if len(prompts) != len(answers) or not prompts:
        raise DataError(f"need equally many prompts and answers (got {len(prompts)} and {len(answers)})")
    if padding_side not in ("left", "right"):
        raise DataError(f"padding_side must be left or right, got {padding_side!r}")
    examples = [prompt_answer_example(p, a, max_length) for p, a in zip(prompts, answers)]
    seq = max(len(ids) for ids, _ in examples)
    rows_ids, rows_mask, rows_labels = [], [], []
    for ids, labels in examples:
        pad = seq - len(ids)
        if padding_side == "right":
            rows_ids.append(ids + [pad_id] * pad)
            rows_mask.append([1] * len(ids) + [0] * pad)
            rows_labels.append(labels + [IGNORE_INDEX] * pad)
        else:
            rows_ids.append([pad_id] * pad + ids)
            rows_mask.append([0] * pad + [1] * len(ids))
            rows_labels.append([IGNORE_INDEX] * pad + labels)
    return {"input_ids": torch.tensor(rows_ids, dtype=torch.long),
            "attention_mask": torch.tensor(rows_mask, dtype=torch.long),
            "labels": torch.tensor(rows_labels, dtype=torch.long)}


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
            raise DataError(f"task.label_words: two labels tokenize to the same answer ({label_words})")

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


def task_batches(train_files: list[str], text_column: str, label_column: str, num_labels: int,
                 collate, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> MicroBatches:
    """Source-language task examples reshuffled every epoch; global micro-batch k goes to rank k % world_size."""
    rows = load_task_rows(train_files, text_column, label_column)
    check_labels(rows, num_labels, "task.train_files")
    return MicroBatches(rows, batch_size, collate, seed=seed, rank=rank, world_size=world_size)


def eval_sets(eval_dir: str, languages: list[str], text_column: str, label_column: str, num_labels: int,
              max_examples: int | None = None) -> dict[str, list[dict]]:
    """{language: rows} of `eval_dir/<language>.jsonl|parquet`, the first `max_examples` of each."""
    sets = {}
    for lang in languages:
        rows = read_task_file(eval_file(eval_dir, lang), text_column, label_column)
        rows = rows[:max_examples] if max_examples else rows
        check_labels(rows, num_labels, f"task.eval_dir {lang}")
        sets[lang] = rows
    return sets


class TaskExampleCollator:
    """`TaskExample`s (`trainer.data.benchmarks`) -> a batch for a classification or multiple-choice head.

    Classification (NLI, sentiment): one row per example; two texts are a tokenizer text pair
    (premise and hypothesis embedded jointly, the tokenizer's own separator), one text a single
    sequence -> input_ids, attention_mask [b, s], labels [b]. Multiple choice: one row per
    (example, choice), example-major: `(passage, question + " " + choice_i)` as a text pair ->
    input_ids, attention_mask [b * C, s], labels [b] (the right choice), choice_mask [b, C]
    (0 where an example has fewer than C choices; its rows repeat its last choice); `ids` lists the
    example ids (strings). Texts that do
    not fit `max_length` lose the end of the first text (the passage or premise) first. With
    `set_language` (an NLLB tokenizer, S1+FT) the tokenizer's `src_lang` is the batch's language.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, set_language: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.set_language = set_language   # NLLB: `src_lang` = the examples' language (one language a batch)

    def _encode(self, first: list[str], second: list[str] | None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(first, second, padding=True, truncation="only_first" if second else True,
                             max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, examples: list) -> dict[str, torch.Tensor]:
        if self.set_language:
            languages = {e.language for e in examples}
            if len(languages) != 1:
                raise DataError(f"an NLLB batch holds one language (its src_lang); got {sorted(languages)}")
            self.tokenizer.src_lang = languages.pop()
        labels = torch.tensor([e.label for e in examples], dtype=torch.long)
        ids = [e.id for e in examples]   # stage 2 looks its teacher vectors up by id
        if not any(e.choices for e in examples):
            pairs = all(len(e.texts) == 2 for e in examples)
            batch = self._encode([e.texts[0] for e in examples], [e.texts[1] for e in examples] if pairs else None)
            return {**batch, "labels": labels, "ids": ids}
        width = max(len(e.choices) for e in examples)
        first, second, mask = [], [], []
        for e in examples:
            choices = list(e.choices) + [e.choices[-1]] * (width - len(e.choices))
            first += [e.texts[0]] * width
            second += [f"{e.texts[1]} {choice}" if len(e.texts) > 1 else choice for choice in choices]
            mask.append([1] * len(e.choices) + [0] * (width - len(e.choices)))
        return {**self._encode(first, second), "labels": labels, "choice_mask": torch.tensor(mask), "ids": ids}
