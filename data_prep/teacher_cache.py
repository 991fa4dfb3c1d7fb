"""Build a teacher cache ahead of the run: `python -m data_prep.teacher_cache JOB.yaml [key=value ...]`.

A `stage1` job: the frozen teacher's pooled vector of every text chunk of `data` (the manifest's
shards, or `data.files`), written to the job's `teacher_cache` folder, one part per text shard
(`trainer.data.teacher_targets`). `--shards A:B` computes only shards A..B-1, so several processes
(one per GPU: `CUDA_VISIBLE_DEVICES=i ... --shards ...`) can share the work; every run of the
same job writes the same meta.json. Stage-1 runs and sweep trials with `teacher_cache: FOLDER`
then skip the teacher forward.

A `stage2` job: its `model.task_export` (the fine-tuned teacher), `task` (the training examples) and
`teacher_cache` (the folder; default OUTPUT_DIR/teacher_cache). The cache holds the teacher's pooled
vector of every training example with its id; a stage2 run reuses it when it matches the teacher
and the data (needed under ZeRO-3, where the run cannot load the teacher itself).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_prep.cli_checks import require_count
from trainer.config import ConfigError, load_job
from trainer.errors import report, user_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.teacher_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="a stage1 or stage2 job YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--shards", default=None, metavar="A:B",
                        help="stage1: compute text shards A..B-1 only (default: all)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="stage1: chunks per teacher forward (default: optim.micro_batch_size)")
    args = parser.parse_args(argv)
    try:
        require_count("--batch-size", args.batch_size, "the number of chunks per teacher forward")
        job = load_job(args.job, args.overrides)
        if job.recipe == "stage1":
            return stage1(job, args)
        if job.recipe != "stage2":
            raise ConfigError(f"{args.job}: recipe {job.recipe}; a teacher cache belongs to a stage1 or stage2 job")
        from trainer.recipes import tasks   # torch and the models load only for a valid job

        start = time.perf_counter()
        train = tasks.examples(job, job.task.train_benchmark or job.task.benchmark, job.task.source_language, "train")
        folder = Path(job.teacher_cache) if job.teacher_cache else Path(job.output_dir) / "teacher_cache"
        cache = tasks.build_teacher_cache(job, train, args.device)
        cache.save(folder)
    except Exception as e:   # noqa: BLE001 - a UserError or a full disk is one message; anything else a traceback
        if user_error(e) is None:
            raise
        return report(e)
    print(f"teacher cache: {len(cache.vectors)} vectors ({len(cache.ids)} examples) of dimension "
          f"{cache.vectors.shape[1]} in {folder} ({time.perf_counter() - start:.1f}s)")
    return 0


def stage1(job, args) -> int:
    """Stage 1's teacher targets of the chosen text shards, into the job's `teacher_cache`."""
    if not job.teacher_cache:
        raise ConfigError("teacher_cache: set the folder the stage-1 teacher targets go to (teacher_cache=PATH)")
    parts = None
    if args.shards:
        try:
            first, _, end = args.shards.partition(":")
            parts = range(int(first), int(end))
        except ValueError:
            raise ConfigError(f"--shards: {args.shards!r} is not A:B (e.g. 0:8)") from None
        if parts.start < 0 or parts.stop <= parts.start:
            raise ConfigError(f"--shards: {args.shards!r} selects no shard: A:B needs 0 <= A < B (e.g. 0:8)")
    start = time.perf_counter()
    done = build_teacher_targets(job, job.teacher_cache, parts, args.device, args.batch_size)
    print(f"teacher targets: {len(done)} text shard(s) in {job.teacher_cache} ({time.perf_counter() - start:.1f}s)")
    return 0


def build_teacher_targets(job, folder: str | Path, parts: range | None = None,
                          device: str | None = None, batch_size: int | None = None) -> list[int]:
    """A stage-1 job's teacher targets of text shards `parts` (default: all; parts past the last shard are ignored,
    so ranges may overshoot) written to `folder` -> the parts written. Chunks go through `MTLLM.teacher`, the
    live step's teacher (adapters off, no grad), in batches of `batch_size` (default optim.micro_batch_size)
    sorted by length; progress on stderr."""
    import torch
    from tqdm.auto import tqdm

    from trainer.config import resolve_dtypes
    from trainer.data.teacher_targets import padded_groups, write_meta, write_part
    from trainer.data.text import teacher_chunks
    from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
    from trainer.models.mt_llm import build_mt_llm
    from trainer.recipes.stage1 import teacher_fingerprint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    job = resolve_dtypes(job)   # `auto` dtypes as the run resolves them, so the fingerprints agree
    model = build_mt_llm(job.model).to(device).eval()
    llm_tok = load_llm_tokenizer(job.model.llm, job.model.cache_dir)
    all_parts, llm_ids = teacher_chunks(job.data, llm_tok, load_nllb_tokenizer(job.model.encoder, job.model.cache_dir))
    chosen = [part for part in (parts if parts is not None else range(len(all_parts))) if part < len(all_parts)]
    write_meta(folder, teacher_fingerprint(job, model), model.llm.config.hidden_size, all_parts)
    size = batch_size or job.optim.micro_batch_size
    for part in tqdm(chosen, desc="teacher targets (text shards)", unit="shard"):
        docs = llm_ids(part)
        items = [(d, c, ids) for d, chunks in enumerate(docs) for c, ids in enumerate(chunks)]
        vectors = torch.empty(len(items), model.llm.config.hidden_size)
        for positions, batch in padded_groups(items, size, llm_tok.pad_token_id, llm_tok.padding_side):
            vectors[positions] = model.teacher(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
        write_part(folder, part, [len(chunks) for chunks in docs], vectors)
    return chosen


if __name__ == "__main__":
    sys.exit(main())
