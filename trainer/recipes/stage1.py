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

from trainer import distributed
from trainer.config import ConfigError, Stage1Job
from trainer.data.teacher_targets import TeacherTargets, WithTeacherTargets
from trainer.data.text import text_batches, text_identity
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
