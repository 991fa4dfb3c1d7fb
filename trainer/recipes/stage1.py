"""Stage 1 of MT-LLM (M1): self-distillation on English text.

    teacher  x = phi(LLM(llm_tokens(S)))                 adapters off, no grad (the same weights)
    student  z = phi(LLM_lora(U(ENC(nllb_tokens(S)))))   frozen NLLB encoder, trained U and LoRA
    loss     MSE(x, z) in fp32; logged with the fraction of variance unexplained (FVU)

With `teacher_cache`, x is read from the teacher-target cache (`trainer.data.teacher_targets`, built by
`python -m data_prep.teacher_cache`) by each chunk's (document, chunk) key instead of recomputed.

Each optimizer step runs `optim.grad_accum` micro-batches of English text per rank (`data.files`
read into memory, or `data.manifest` streamed); the loop (`trainer.loop`) logs, checkpoints,
resumes and exports the projection and the LoRA weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trainer import distributed
from trainer.config import ConfigError, Stage1Job
from trainer.data.teacher_targets import TeacherTargets, WithTeacherTargets, padded_groups, write_meta, write_part
from trainer.data.text import teacher_chunks, text_batches, text_identity
from trainer.errors import DataError
from trainer.loop import LLM_TOKENS, Run, Sums, accumulate, train
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.mt_llm import MTLLM, build_mt_llm
from trainer.objectives.distillation import distillation_mse, fraction_of_variance_unexplained


def run(r: Run) -> dict:
    """Distil; returns the loop's summary (per-step losses, export directory)."""
    job: Stage1Job = r.job
    engine = r.engine
    model = build_mt_llm(job.model).train()
    with distributed.main_first():  # rank 0 fills the datasets cache first (data.files)
        batches = text_batches(job.data, job.optim.micro_batch_size,
                               load_llm_tokenizer(job.model.llm, job.model.cache_dir),
                               load_nllb_tokenizer(job.model.encoder, job.model.cache_dir),
                               seed=job.seed, rank=engine.rank, world_size=engine.world_size)
    if job.teacher_cache:   # teacher targets looked up by (document, chunk): no teacher forward
        try:
            batches = WithTeacherTargets(batches, TeacherTargets(job.teacher_cache, teacher_fingerprint(job, model)))
        except DataError as e:
            raise ConfigError(str(e)) from None
    return train(r, model, batches, step_function(r, batches))


def teacher_fingerprint(job: Stage1Job, model: MTLLM) -> dict:
    """What fixes the teacher's targets: the LLM (name, loaded dtype, attention direction), the pooling, the
    chunking (both tokenizers, max_length) and the text."""
    m = job.model
    return {"llm": m.llm.name_or_path, "llm_dtype": str(model.llm_dtype).removeprefix("torch."),
            "bidirectional": m.llm.bidirectional, "pooling": m.pooling, "encoder_tokenizer": m.encoder.name_or_path,
            "max_length": job.data.max_length, "text": text_identity(job.data)}


def build_teacher_targets(job: Stage1Job, folder: str | Path, parts: range | None = None,
                          device: str | None = None, batch_size: int | None = None) -> list[int]:
    """Compute and write the teacher targets of `parts` (default: every part; parts past the last text shard are
    ignored, so ranges may overshoot) of the job's text -> the parts written. Batches of `batch_size` chunks (default optim.micro_batch_size) sorted by length; progress on
    stderr. The same `MTLLM.teacher` as the live step (adapters off, no grad)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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


def step_function(r: Run, batches) -> Callable[[int], Sums]:
    """The loop's `step_fn`: one optimizer step of `optim.grad_accum` distillation micro-batches of `batches`
    (also what benchmarks/ time)."""
    return lambda step: accumulate(r, batches, partial(distil, r.engine))


def distil(engine, batch: dict, sums: Sums):
    """One stage-1 micro-batch's forward: the distillation loss; fvu and token counts added to `sums` on the
    device (no host sync). `tokens` counts both views, `llm_tokens` the LLM's (the teacher's text)."""
    out = engine(**batch)                                # pooled teacher and student vectors [b, d_llm]
    sums.add("fvu", fraction_of_variance_unexplained(out.teacher, out.student.detach()))
    llm_tokens = batch["llm_attention_mask"].sum()
    sums.count_tokens(llm_tokens + batch["nllb_attention_mask"].sum())
    sums.count_tokens(llm_tokens, LLM_TOKENS)
    return distillation_mse(out.teacher, out.student)
