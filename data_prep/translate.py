"""Machine-translate task data with NLLB: translate-test (each target language -> English) and
translate-train (English -> each target language), resumable, in one process or on Ray Data.

    python -m data_prep.translate --direction test --benchmark xnli --split test --languages de fr sw \\
        --model facebook/nllb-200-distilled-600M --out data/xnli-translate-test
    python -m data_prep.translate --direction train --benchmark mnli --split train --languages deu_Latn swh_Latn \\
        --model facebook/nllb-200-distilled-600M --out data/mnli-translate-train --ray
    python -m data_prep.translate --direction train --benchmark squad --split train --files squad.jsonl \\
        --languages deu_Latn --model facebook/nllb-200-distilled-600M --out data/squad-de   # extractive QA

Input: any benchmark of `trainer.data.benchmarks` (local `--files` with a {language} template, or the hub),
or `squad`: extractive QA in the Hugging Face SQuAD layout (`id`, `context`, `question`, `answers` with
`text` and `answer_start` lists; XQuAD, MLQA and TyDiQA-GoldP files share it), local files only. Every
text is translated on its own: NLI premise and hypothesis, the sentiment text, the passage, the question
and every option of a multiple-choice item; a QA context with its answer span wrapped in markers
(`data_prep.span_projection`; examples whose markers are lost or doubled are dropped and counted).

Output, in --out: one `<FLORES code>.jsonl` per language of --languages (translate-test: that language's
data in English; translate-train: the English data in that language), each row in the benchmark's own
columns with the texts translated, so `load_benchmark` (and a job's `task.files.translate_test`) reads
it and its examples keep the original ids, plus `"translation": {"id", "source_language", "language"}`
(the original example's id; the languages of the text before and after). `manifest.json` (written
last) holds the job, the counts per language, the fallback languages used, and the sha256 of every
input and output file.

Resumable: translated batches are appended (flushed and fsynced, one JSON line each) to
`--out/.work/<code>.jsonl`; a killed run started again with the same arguments skips the batches on
disk (a line cut by the kill is discarded) and computes the others in the same batches, so its output
equals an uninterrupted run's; a finished job (its manifest matches) is not run again. Sentences are
deduplicated per language, sorted by length and cut into batches of --batch-size. docs/translation.md
has every option, the fallback table and the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from trainer import faults
from trainer.data.benchmark_files import benchmark_rows
from trainer.data.benchmarks import BENCHMARKS, TaskExample, load_benchmark
from trainer.data.files import expand_files, read_jsonl
from trainer.errors import DataError, OutputExistsError, UserError, report, user_error
from trainer.fsutil import check_destination, listed_path, sha256_file, write_atomic
from trainer.languages.nllb import NllbLanguage, nllb_language
from trainer.languages.table import UnknownLanguageError, language_table

from data_prep.cli_checks import require_count
from data_prep.span_projection import MARKERS, mark_span, recover_span, span_problem
from data_prep.translator import DecodeSettings, default_device

QA = "squad"
WORK, MANIFEST, JOB_FILE = ".work", "manifest.json", "job.json"


# --- what is translated: benchmark examples or QA records -------------------------------------------------

class TaskFormat:
    """A benchmark adapter's examples: every text and every choice is one segment."""

    def __init__(self, benchmark: str):
        kind = BENCHMARKS[benchmark].task
        if kind in ("pos", "ner"):
            raise DataError(f"--benchmark {benchmark}: a tagging benchmark; its word tags would not follow the words "
                            f"through translation (the studies evaluate tagging zero-shot, untranslated)")
        if kind == "qa":
            raise DataError(f"--benchmark {benchmark}: extractive QA; translate it as --benchmark {QA} (its files "
                            f"are in the SQuAD layout), which moves the answer spans with marker tokens")
        self.name = benchmark

    def flores(self, code: str) -> str:
        """The FLORES code the benchmark gives `code` (its own code or a FLORES code)."""
        languages = BENCHMARKS[self.name].languages
        if code in languages:
            return languages[code]
        if code in languages.values():
            return code
        close = ", ".join(f"{lang.flores} ({lang.name})" for lang in language_table().closest(code, 4))
        raise UnknownLanguageError(f"--languages: {self.name} has no language {code!r} (its languages: "
                                   f"{', '.join(languages) or 'FLORES-200 codes'}); closest NLLB codes: {close}")

    def load(self, code: str, split: str, files: list[str] | None) -> list[TaskExample]:
        return load_benchmark(self.name, code, split, files)

    def segments(self, example: TaskExample) -> list[str]:
        return [*example.texts, *example.choices]

    def rows(self, examples: list[TaskExample], translated: list[list[str]]) -> tuple[list[tuple], Counter]:
        """(example, its translated record in the benchmark's columns) for every example; none is dropped."""
        out = [replace(e, texts=tuple(t[:len(e.texts)]), choices=tuple(t[len(e.texts):]))
               for e, t in zip(examples, translated)]
        return list(zip(examples, benchmark_rows(self.name, out))), Counter()


@dataclass(frozen=True)
class QaExample:
    id: str          # squad/<FLORES code>/<split>/<the record's id>
    language: str
    record: dict     # the input record (id, context, question, answers, any other column)


class QaFormat:
    """Extractive QA in the SQuAD layout: the context with its (first) answer span marked, and the question."""

    name = QA

    def __init__(self, markers: tuple[str, str] = MARKERS):
        self.markers = markers

    def flores(self, code: str) -> str:
        return nllb_language(code, "--languages").code

    def load(self, code: str, split: str, files: list[str] | None) -> list[QaExample]:
        if not files:
            raise DataError(f"{QA}: give the files (--files, SQuAD layout: id, context, question, answers)")
        flores = self.flores(code)
        examples = []
        for path in expand_files(files, "--files"):
            if path.endswith(".parquet"):
                import pyarrow.parquet as pq

                records = pq.read_table(path).to_pylist()
            else:
                records = read_jsonl(path)
            for row, record in enumerate(records, 1):
                missing = [c for c in ("id", "context", "question", "answers") if c not in record]
                answers = record.get("answers")
                if not missing and not (isinstance(answers, dict) and {"text", "answer_start"} <= set(answers)):
                    missing = ["answers.text", "answers.answer_start"]
                if missing:
                    raise DataError(f"{path}: row {row}: no field {', '.join(missing)} "
                                    f"(fields: {', '.join(record)}; SQuAD layout expected)")
                examples.append(QaExample(f"{QA}/{flores}/{split}/{record['id']}", flores, record))
        if not examples:
            raise DataError(f"{QA} {code} {split}: no examples in {', '.join(files)}")
        return examples

    def segments(self, example: QaExample) -> list[str] | str:
        """[context with the first answer marked, question]; a string (the reason) when it cannot be marked."""
        record = example.record
        answers = record["answers"]
        if not answers["text"]:
            return [record["context"], record["question"]]   # unanswerable: nothing to mark
        try:
            marked = mark_span(record["context"], int(answers["answer_start"][0]), answers["text"][0], self.markers)
        except ValueError:
            return "unmarkable"
        return [marked, record["question"]]

    def rows(self, examples: list[QaExample], translated: list[list[str]]) -> tuple[list[tuple], Counter]:
        """(example, translated record) for the examples whose span is recovered; the others counted by reason."""
        rows, dropped = [], Counter()
        for e, (context, question) in zip(examples, translated):
            record = {**e.record, "question": question}
            if e.record["answers"]["text"]:
                span = recover_span(context, self.markers)
                if span is None:
                    dropped[span_problem(context, self.markers)] += 1
                    continue
                record |= {"context": span.context, "answers": {"text": [span.text], "answer_start": [span.start]}}
            else:
                record["context"] = context
            rows.append((e, record))
        return rows, dropped


# --- the plan: per output language, its examples, unique sentences and fixed batches ------------------------

@dataclass(frozen=True)
class Batch:
    language: str          # the output file's FLORES code
    index: int
    texts: tuple[str, ...]
    src_lang: str          # NLLB codes
    tgt_lang: str

    @property
    def key(self) -> str:
        return f"{self.language}/{self.index}"


@dataclass
class Part:
    """One output language: where its text comes from and goes, its examples and its batches."""

    language: str
    source: NllbLanguage
    target: NllbLanguage
    examples: list
    segments: list                      # per example: its segments, or the reason it was dropped before translating
    batches: list[Batch]
    truncated: int = 0


def plan_batches(language: str, segments: Iterable[str], tokenizer, src_lang: str, tgt_lang: str, batch_size: int,
                 max_length: int) -> tuple[list[Batch], int]:
    """Unique non-empty sentences, longest first (ties by text), cut into batches of `batch_size`.

    The plan depends only on the inputs and the settings, so a resumed run recomputes the same batches.
    Returns the batches and how many sentences exceed `max_length` tokens (they are cut).
    """
    unique = sorted({s for s in segments if s.strip()})
    if not unique:
        return [], 0
    tokenizer.src_lang = src_lang
    lengths = [len(ids) for ids in tokenizer(unique, add_special_tokens=True)["input_ids"]]
    order = sorted(range(len(unique)), key=lambda i: (-min(lengths[i], max_length), unique[i]))
    texts = [unique[i] for i in order]
    batches = [Batch(language, k, tuple(texts[i:i + batch_size]), src_lang, tgt_lang)
               for k, i in enumerate(range(0, len(texts), batch_size))]
    return batches, sum(n > max_length for n in lengths)


# --- resumable parts -------------------------------------------------------------------------------------

def part_sha256(part: dict) -> str:
    """SHA-256 of a translated batch's content (`batch`, `texts`, `translations`), stored on its line."""
    content = {"batch": part["batch"], "texts": part["texts"], "translations": part["translations"]}
    return hashlib.sha256(json.dumps(content, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def read_parts(path: Path) -> dict[int, dict]:
    """Batches on disk (`{"batch", "texts", "translations", "sha256"}` per line) by index; a last line cut by a
    kill is removed from the file (it is computed again); a line whose content does not match its sha256 is a
    DataError naming the file and line (lines written before parts carried checksums have none)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    done: dict[int, dict] = {}
    text = data[:end].decode("utf-8", errors="replace")   # a flipped byte: no sha256 match, named below
    for n, line in enumerate(text.split("\n")[:-1], 1):    # not splitlines(): U+2028 may be inside a translation
        try:
            part = json.loads(line)
            index = int(part["batch"])
            if len(part["texts"]) != len(part["translations"]):
                raise ValueError("texts and translations differ in length")
            stored = part.pop("sha256", None)
            actual = part_sha256(part)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{n}: not a translated batch ({e}); delete {path.parent} to start over") from None
        if stored is not None and stored != actual:
            raise DataError(f"{path}:{n}: batch {index} does not match its sha256 (corrupt); delete {path} to "
                            f"translate its batches again")
        if index in done and done[index] != part:
            raise DataError(f"{path}:{n}: batch {index} is on disk twice with different content")
        done[index] = part
    return done


class PartWriter:
    """Appends each finished batch as one JSON line, flushed and fsynced before the next batch starts."""

    def __init__(self, folder: Path):
        self.folder, self.files, self.written = folder, {}, 0

    def append(self, batch: Batch, translations: list[str]) -> None:
        if len(translations) != len(batch.texts):
            raise RuntimeError(f"batch {batch.key}: {len(batch.texts)} texts but {len(translations)} translations")
        part = {"batch": batch.index, "texts": list(batch.texts), "translations": list(translations)}
        line = (json.dumps({**part, "sha256": part_sha256(part)}, ensure_ascii=False) + "\n").encode("utf-8")
        if batch.language not in self.files:
            self.files[batch.language] = (self.folder / f"{batch.language}.jsonl").open("ab")
        f = self.files[batch.language]
        self.written += 1
        f.write(line[:len(line) // 2])
        f.flush()
        faults.maybe_kill("in_batch", self.written)     # tests: killed with half a line on disk
        f.write(line[len(line) // 2:])
        f.flush()
        os.fsync(f.fileno())
        faults.maybe_kill("after_batch", self.written)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# --- executors: the same translate function in this process or on Ray Data -------------------------------

def translate_here(path: str, settings: DecodeSettings, device: str | None,
                   pending: list[Batch]) -> Iterable[tuple[Batch, list[str]]]:
    from data_prep.translator import Translator

    translator = Translator.load(path, settings, device)
    for batch in pending:
        yield batch, translator.translate(list(batch.texts), batch.src_lang, batch.tgt_lang)


def translate_on_ray(path: str, settings: DecodeSettings, pending: list[Batch], actors: int | None,
                     address: str | None) -> Iterable[tuple[Batch, list[str]]]:
    """Ray Data `map_batches` over the planned batches, one model-holding actor per GPU (or CPU actors)."""
    import torch

    from data_prep.translator import TranslatorActor
    from trainer.tune import map_with_actors

    gpu = torch.cuda.is_available()
    actors = actors or (torch.cuda.device_count() if gpu else 1)
    by_key = {b.key: b for b in pending}
    rows = [{"key": b.key, "texts": list(b.texts), "src_lang": b.src_lang, "tgt_lang": b.tgt_lang} for b in pending]
    for row in map_with_actors(rows, TranslatorActor, {"path": path, "settings": asdict(settings)}, actors,
                               gpus_per_actor=1 if gpu else 0, address=address):
        yield by_key[row["key"]], [str(t) for t in row["translations"]]


# --- the job ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep.translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direction", choices=["test", "train"], required=True,
                   help="test: each --languages language -> English; train: English -> each --languages language")
    p.add_argument("--benchmark", required=True, help=f"{', '.join(BENCHMARKS)}, or {QA} (extractive QA files)")
    p.add_argument("--split", required=True, help="the split read (train, validation, test)")
    p.add_argument("--languages", nargs="+", required=True,
                   help="target languages (the benchmark's codes or FLORES-200 codes); one output file each")
    p.add_argument("--files", default=None, help="local input file template with {language} (else the hub)")
    p.add_argument("--english", default="eng_Latn", help="the English side's code (default eng_Latn)")
    p.add_argument("--model", required=True, help="NLLB model: hub name, local directory or tiny:nllb")
    p.add_argument("--out", required=True, help="output folder (new, or this command's own)")
    p.add_argument("--beams", type=int, default=1, help="1 = greedy decoding (default, the paper's), N = beam search")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--max-length", type=int, default=512, help="source tokens kept per sentence (default 512)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generated tokens per sentence at most (default: 2 x the batch's longest source + 10)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads in this process (default: torch's; 1 is best on cores other jobs share)")
    p.add_argument("--max-examples", type=int, default=None, help="translate the first N examples of each input")
    p.add_argument("--markers", nargs=2, default=list(MARKERS), metavar=("OPEN", "CLOSE"),
                   help=f"{QA}: the answer span markers (default [ ])")
    p.add_argument("--ray", action="store_true", help="map the batches over Ray Data, one model per actor")
    p.add_argument("--ray-actors", type=int, default=None, help="Ray actors (default: one per GPU, or 1 on CPU)")
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default $RAY_ADDRESS, else local)")
    p.add_argument("--cache-dir", default=".cache/tiny-models", help="where tiny:nllb is built")
    p.add_argument("--overwrite", action="store_true", help="replace another job's output or unfinished work in --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def check_markers(tokenizer, markers: tuple[str, str], model: str) -> None:
    """Each span marker must be text the model can read and write (not `<unk>`), and the two must differ."""
    for marker in markers:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if not marker.strip() or not ids or tokenizer.unk_token_id in ids:
            raise UserError(f"--markers: {marker!r} is not in the vocabulary of --model {model} (it tokenizes to "
                            f"{tokenizer.convert_ids_to_tokens(ids)}); choose markers it has, e.g. [ ] or ( )")
    if markers[0] == markers[1]:
        raise UserError(f"--markers: the opening and the closing marker must differ (got {markers})")


def build_format(args) -> TaskFormat | QaFormat:
    if args.benchmark == QA:
        return QaFormat(tuple(args.markers))
    if args.benchmark not in BENCHMARKS:
        raise DataError(f"--benchmark {args.benchmark!r}: choose one of {', '.join(BENCHMARKS)}, {QA}")
    return TaskFormat(args.benchmark)


def resolve_languages(args, fmt) -> list[tuple[str, str, NllbLanguage, NllbLanguage]]:
    """Per --languages code: (the code the input is read with, the output's FLORES code, source, target)."""
    english = nllb_language(args.english, "--english")
    out = []
    for code in args.languages:
        if args.direction == "test":
            flores = fmt.flores(code)
            pair = (code, flores, nllb_language(flores, "--languages"), english)
        else:
            flores = nllb_language(code, "--languages").code
            pair = (args.english, flores, english, nllb_language(flores, "--languages"))
        if flores == english.code:
            raise DataError(f"--languages: {code} is the English side (--english {args.english}); list the others")
        out.append(pair)
    flores = [o[1] for o in out]
    if len(set(flores)) != len(flores):
        raise DataError(f"--languages: a language is listed twice ({', '.join(flores)})")
    return out


def input_files(args, code: str) -> list[str] | None:
    return expand_files([args.files.format(language=code)], "--files") if args.files else None


def job_spec(args, languages, settings: DecodeSettings) -> dict[str, Any]:
    """Everything the output depends on: a resumed or repeated run must match it."""
    inputs = {}
    for code, *_ in languages:
        files = input_files(args, code)
        inputs[code] = {path: sha256_file(path) for path in files} if files else f"hub {args.benchmark} {code}"
    return {"direction": args.direction, "benchmark": args.benchmark, "split": args.split,
            "languages": [flores for _, flores, *_ in languages], "english": nllb_language(args.english).code,
            "files": args.files, "model": args.model, "decoding": asdict(settings), "batch_size": args.batch_size,
            "max_examples": args.max_examples, "markers": list(args.markers) if args.benchmark == QA else None,
            "inputs": inputs}


def differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys)[:600]


def finished(out: Path, job: dict) -> dict | None:
    """The manifest of this very job when its outputs are intact, else None."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("job") != job:
        return None
    entries = [(listed_path(out, info.get("file"), path), info) for info in manifest["languages"].values()]
    for file, info in entries:
        if not file.is_file() or sha256_file(file) != info["sha256"]:
            return None
    return manifest


def prepare_out(out: Path, job: dict, inputs: list[str], overwrite: bool) -> None:
    """Refuse a folder holding something else; keep this job's unfinished work, clear another's when allowed."""
    work = out / WORK
    ours = (out / MANIFEST).is_file() or (work / JOB_FILE).is_file()
    check_destination(out, inputs, overwrite=overwrite or ours, key="--out")
    if (out / MANIFEST).is_file():
        old = json.loads((out / MANIFEST).read_text())
        if not overwrite and old.get("job") == job:
            raise OutputExistsError(f"--out {out}: the output files of this finished job changed or are gone (their "
                                    f"sha256 differ from manifest.json); pass --overwrite to translate again")
        if not overwrite:
            raise OutputExistsError(f"--out {out} holds another translation job (differs in: "
                                    f"{differences(old.get('job', {}), job)}); choose another --out, or pass --overwrite")
        # only the files the manifest lists inside --out: every entry is checked before anything is deleted
        listed = [listed_path(out, info.get("file") if isinstance(info, dict) else info, out / MANIFEST)
                  for info in (old.get("languages") or {}).values()]
        (out / MANIFEST).unlink()
        for file in listed:
            if file.is_file() or file.is_symlink():
                file.unlink()
    if (work / JOB_FILE).is_file():
        old = json.loads((work / JOB_FILE).read_text())
        if old == job:
            return
        if not overwrite:
            raise OutputExistsError(f"--out {out} holds the unfinished work of another translation job (differs in: "
                                    f"{differences(old, job)}); pass --overwrite to discard it")
    if work.exists():
        shutil.rmtree(work)
    write_atomic(work / JOB_FILE, json.dumps(job, indent=1, ensure_ascii=False))


def build_parts(args, fmt, languages, tokenizer, settings: DecodeSettings) -> list[Part]:
    """Load the inputs (each once) and plan every output language's batches."""
    loaded: dict[str, list] = {}
    parts = []
    for code, flores, source, target in languages:
        if code not in loaded:
            examples = fmt.load(code, args.split, input_files(args, code))
            loaded[code] = examples[:args.max_examples] if args.max_examples else examples
        examples = loaded[code]
        segments = [fmt.segments(e) for e in examples]
        batches, truncated = plan_batches(flores, (s for segs in segments if not isinstance(segs, str) for s in segs),
                                          tokenizer, source.nllb, target.nllb, args.batch_size, settings.max_length)
        parts.append(Part(flores, source, target, examples, segments, batches, truncated))
    return parts


def assemble(out: Path, fmt, part: Part, done: dict[int, dict]) -> dict[str, Any]:
    """Write `<language>.jsonl` from the translated batches; returns its manifest entry."""
    table = {}
    for batch in part.batches:
        stored = done[batch.index]
        if tuple(stored["texts"]) != batch.texts:
            raise DataError(f"{out / WORK / part.language}.jsonl: batch {batch.index} holds other sentences than "
                            f"planned (the inputs or the tokenizer changed); pass --overwrite to start over")
        table |= dict(zip(stored["texts"], stored["translations"]))
    kept = [(e, segs) for e, segs in zip(part.examples, part.segments) if not isinstance(segs, str)]
    dropped = Counter(segs for segs in part.segments if isinstance(segs, str))
    translated = [[table[s] if s.strip() else s for s in segs] for _, segs in kept]
    pairs, lost = fmt.rows([e for e, _ in kept], translated)
    dropped += lost
    rows = [{**row, "translation": {"id": example.id, "source_language": part.source.code,
                                    "language": part.target.code}} for example, row in pairs]
    path = write_atomic(out / f"{part.language}.jsonl",
                        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return {"file": path.name, "sha256": sha256_file(path), "examples": len(part.examples), "rows": len(rows),
            "dropped": dict(sorted(dropped.items())), "segments": sum(len(b.texts) for b in part.batches),
            "batches": len(part.batches), "truncated": part.truncated,
            "source_language": part.source.code, "target_language": part.target.code,
            "nllb_source": part.source.nllb, "nllb_target": part.target.nllb}


def run(args) -> dict[str, Any]:
    """Translate (or resume, or find done) the job the arguments describe; returns its manifest."""
    from trainer.models.loading import resolve_model_path
    from data_prep.translator import check_language_codes, load_tokenizer

    start = time.perf_counter()
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: at least 1")
    require_count("--max-examples", args.max_examples, "the number of examples translated per input")
    require_count("--threads", args.threads, "the number of CPU threads")
    require_count("--ray-actors", args.ray_actors, "the number of Ray actors")
    settings = DecodeSettings(args.beams, args.max_length, args.max_new_tokens, args.dtype)
    fmt = build_format(args)
    languages = resolve_languages(args, fmt)
    job = job_spec(args, languages, settings)
    out = Path(args.out)
    manifest = finished(out, job)
    if manifest is not None:
        print(f"{out}: this translation job is finished (manifest.json); nothing to do")
        return manifest
    path = resolve_model_path(args.model, args.cache_dir)
    tokenizer = load_tokenizer(path)
    check_language_codes(tokenizer, sorted({x.nllb for _, _, s, t in languages for x in (s, t)}), args.model)
    if isinstance(fmt, QaFormat):
        check_markers(tokenizer, fmt.markers, args.model)
    inputs = [p for files in job["inputs"].values() if isinstance(files, dict) for p in files]
    prepare_out(out, job, inputs, args.overwrite)
    parts = build_parts(args, fmt, languages, tokenizer, settings)
    for part in parts:
        for lang in (part.source, part.target):
            if lang.fallback:
                print(f"note: NLLB has no {lang.code}; {lang.nllb} stands in ({lang.fallback})", file=sys.stderr)
    work = out / WORK
    done = {part.language: read_parts(work / f"{part.language}.jsonl") for part in parts}
    pending = [b for part in parts for b in part.batches if b.index not in done[part.language]]
    total = sum(len(part.batches) for part in parts)
    resumed = total - len(pending)
    if resumed:
        print(f"resuming: {resumed} of {total} batches are on disk in {work}")
    if pending:
        from tqdm import tqdm

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        results = (translate_on_ray(path, settings, pending, args.ray_actors, args.ray_address) if args.ray
                   else translate_here(path, settings, args.device, pending))
        writer = PartWriter(work)
        try:
            with tqdm(total=total, initial=resumed, unit="batch", desc="translate", dynamic_ncols=True) as bar:
                for batch, translations in results:
                    writer.append(batch, translations)
                    done[batch.language][batch.index] = {"texts": list(batch.texts), "translations": translations}
                    bar.update()
        finally:
            writer.close()
    manifest = {"tool": "python -m data_prep.translate", "job": job,
                "languages": {part.language: assemble(out, fmt, part, done[part.language]) for part in parts},
                "fallbacks": {lang.code: {"nllb": lang.nllb, "reason": lang.fallback}
                              for part in parts for lang in (part.source, part.target) if lang.fallback},
                "run": {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "seconds": round(time.perf_counter() - start, 2), "batches_resumed": resumed,
                        "batches_translated": len(pending), "ray": args.ray,
                        "device": "ray actors" if args.ray else (args.device or default_device())}}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
    shutil.rmtree(work, ignore_errors=True)
    for lang, info in manifest["languages"].items():
        drops = f", dropped {info['dropped']}" if info["dropped"] else ""
        print(f"{lang}: {info['rows']} rows ({info['source_language']} -> {info['target_language']}){drops} "
              f"-> {out / info['file']}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e, args.out) is None:
            raise
        return report(e, args.debug, where=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Batch", "PartWriter", "QaFormat", "TaskFormat", "main", "plan_batches", "read_parts", "run"]
