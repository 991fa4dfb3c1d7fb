"""Stage 1 of MT-LLM (M1): self-distillation on English text.

Build the model and data, loop over optimizer steps (each `grad_accum`
micro-batches), log loss / FVU / lr / tokens per second, export the trainable
weights. Engine and tracker come from outside: this file knows neither
DeepSpeed nor MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.config import JobConfig
from trainer.data.text import DualViewCollator, endless_batches, load_text_dataset
from trainer.engine import LocalEngine
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.mt_llm import build_mt_llm
from trainer.models.weights import save_trainable
from trainer.tracking import Tracker


def run(job: JobConfig, tracker: Tracker) -> dict:
    """Train; returns a summary with the per-step losses and the export directory."""
    torch.manual_seed(job.seed)
    model = build_mt_llm(job.model).train()
    collate = DualViewCollator(load_llm_tokenizer(job.model.llm, job.model.cache_dir),
                               load_nllb_tokenizer(job.model.encoder, job.model.cache_dir),
                               job.data.max_length, job.data.text_column)
    batches = endless_batches(load_text_dataset(job.data), job.optim.micro_batch_size, collate,
                              seed=job.seed, shuffle=job.data.shuffle)
    engine = LocalEngine(model.parameters(), job.optim)

    losses: list[float] = []
    progress = tqdm(range(job.optim.max_steps), desc="stage1", unit="step")
    start = time.perf_counter()
    tokens = 0
    for step in progress:
        step_loss, step_fvu = 0.0, 0.0
        for _ in range(job.optim.grad_accum):
            batch = next(batches)
            out = model(**batch)
            engine.backward(out.loss)
            step_loss += out.loss.item() / job.optim.grad_accum
            step_fvu += out.fvu.item() / job.optim.grad_accum
            tokens += int(batch["llm_attention_mask"].sum() + batch["nllb_attention_mask"].sum())
        engine.step()
        losses.append(step_loss)
        progress.set_postfix(loss=f"{step_loss:.4f}", fvu=f"{step_fvu:.3f}")
        if (step + 1) % job.tracking.log_every == 0 or step + 1 == job.optim.max_steps:
            elapsed = time.perf_counter() - start
            tracker.log_metrics({"loss": step_loss, "fvu": step_fvu, "lr": engine.lr,
                                 "tokens_per_second": tokens / elapsed}, step=step + 1)

    export = save_trainable(model.trainable_state_dict(), Path(job.output_dir) / "export", job.to_yaml())
    tracker.log_artifacts(str(export), "export")
    return {"losses": losses, "export_dir": str(export)}
