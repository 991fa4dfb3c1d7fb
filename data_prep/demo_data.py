"""Every file the demo jobs and the demo sweep read, generated (no downloads):

    python -m data_prep.demo_data    # -> data/demo/{shards,parallel/{train,eval},task,task_dev,task_translated,tags,qa,
                                     #               qa_translated,slots,mt,mc}

- `shards/`: stage 1's English shards and manifest (`data_prep.demo_text`);
- `parallel/train`: 2,000 (English, X) pairs per demo language (seed 0);
- `parallel/eval`: a 200-sentence multi-way parallel set for retrieval (seed 1);
- `task/`: the 3-class topic task, English training set and evaluation files per language;
- `task_dev/`: a dev set of the same task per language (model selection of `finetune`);
- `task_translated/`: the English training set rendered in every other language, row for row (the
  same ids): FLARE's stand-in for machine-translated training data (translate-train);
- `tags/`: the generated tagging task (`topic_tags`: each word's concept role, IOB2), `train/` in English,
  `dev/` and `test/` per language;
- `qa/`: the generated extractive QA task (`topic_qa`, SQuAD layout), the same three folders;
- `qa_translated/`: `qa/train`'s English set rendered in every other language, row for row (the same ids and
  answers): FLARE's translate-train data for QA;
- `slots/`: the generated slot filling task (`topic_slots`, MASSIVE's format), `train/`, `dev/` and `test/`
  in every language (M2 trains on several);
- `mt/`: generated multi-way parallel sentences (`topic_mt`, FLORES+'s `id`/`text`), the same three folders;
- `mc/`: the generated multiple-choice task (which object the passage names), small: `train/eng_Latn.jsonl` in
  RACE's format (400 questions, as the study trains Belebele's model on RACE), `dev/` and `test/` in Belebele's
  format per language (100 each).

Each part is written to a temporary folder and renamed when complete, so an interrupted run
leaves nothing half-written, and a part that exists is kept: re-running costs nothing. The
demo sweep (`jobs/demo.yaml`) runs this as its `prepare` step.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Callable

from data_prep.demo_text import write_demo_shards
from data_prep.make_parallel_data import DEFAULT_LANGUAGES, write_parallel_data
from data_prep.make_task_data import write_task_data
from trainer.fsutil import temp_dir_beside
from trainer.tiny.text import (write_belebele_files, write_qa_files, write_race_files, write_sentence_files,
                               write_slot_files, write_tagging_files, write_task_files)

TRAIN_PAIRS, EVAL_SENTENCES, TASK_TRAIN, TASK_EVAL = 2000, 200, 2000, 200
MC_TRAIN, MC_EVAL = 400, 100


def parts(languages: list[str]) -> dict[str, Callable[[Path], object]]:
    """Relative folder -> function writing that part into a given (new) folder."""
    return {
        "shards": write_english_shards,
        "parallel/train": lambda out: write_parallel_data(out, [(lang, TRAIN_PAIRS) for lang in languages], seed=0),
        "parallel/eval": lambda out: write_parallel_data(out, [(lang, EVAL_SENTENCES) for lang in languages], seed=1),
        "task": lambda out: write_task_data(out, languages, n_train=TASK_TRAIN, n_eval=TASK_EVAL, seed=0),
        "task_dev": lambda out: write_task_files(out, ["eng_Latn", *languages], TASK_EVAL, seed=2),
        "task_translated": lambda out: write_task_files(out, languages, TASK_TRAIN, seed=0),
        "tags": lambda out: write_splits(out, write_tagging_files, languages),
        "qa": lambda out: write_splits(out, write_qa_files, languages),
        "qa_translated": lambda out: write_qa_files(out, languages, TASK_TRAIN, seed=0),
        "slots": lambda out: write_splits(out, write_slot_files, languages, train=["eng_Latn", *languages]),
        "mt": lambda out: write_splits(out, write_sentence_files, languages, train=["eng_Latn", *languages]),
        "mc": lambda out: write_multiple_choice(out, languages),
    }


def write_multiple_choice(out: Path, languages: list[str]) -> None:
    """The multiple-choice demo task: English `train/` in RACE's format, `dev/` and `test/` in Belebele's."""
    write_race_files(out / "train", ["eng_Latn"], MC_TRAIN, seed=0)
    write_belebele_files(out / "dev", ["eng_Latn", *languages], MC_EVAL, seed=1)
    write_belebele_files(out / "test", ["eng_Latn", *languages], MC_EVAL, seed=2)


def write_splits(out: Path, write: Callable, languages: list[str], train: list[str] | None = None) -> None:
    """A generated task's `train/` (English, or the `train` languages) and per-language `dev/` and `test/` folders
    of `{language}.jsonl`."""
    write(out / "train", train or ["eng_Latn"], TASK_TRAIN, seed=0)
    write(out / "dev", ["eng_Latn", *languages], TASK_EVAL, seed=1)
    write(out / "test", ["eng_Latn", *languages], TASK_EVAL, seed=2)


def write_english_shards(out: Path) -> None:
    """Stage 1's shards as `out` (manifest paths are relative: the folder can be renamed)."""
    work = out.parent / (out.name + ".src")
    write_demo_shards(work, docs_per_shard=100)
    (work / "shards").rename(out)
    shutil.rmtree(work)


def write_demo_data(root: str | Path = "data/demo", languages: list[str] | None = None) -> list[str]:
    """Write the parts that are missing under `root`; returns the names of the parts written."""
    root = Path(root)
    written = []
    for name, write in parts(languages or DEFAULT_LANGUAGES).items():
        target = root / name
        if target.exists():
            continue
        tmp = temp_dir_beside(target)
        try:
            build = tmp / target.name
            write(build)
            build.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo", help="root folder (default data/demo)")
    args = parser.parse_args(argv)
    written = write_demo_data(args.out)
    print(f"demo data in {args.out}: " + (f"wrote {', '.join(written)}" if written else "complete, nothing to do"))


if __name__ == "__main__":
    main()
