"""Stage 1 of MT-LLM (M1): self-distillation on English text.

Build the engine, the model and the data; resume if there is state to resume;
loop over optimizer steps (each `grad_accum` micro-batches per rank); log loss /
FVU / lr / tokens per second; checkpoint; export the trainable weights. The
engine (DeepSpeed), the tracker (MLflow) and the checkpointer come from outside
or from their modules: this file calls their methods only.

Determinism across launch shapes: the data stream hands out a global sequence
of micro-batches (global micro-batch k to rank k % world_size), and the RNG is
re-seeded from (seed, k) before each micro-batch, so dropout masks too depend
only on k. A 1-rank run with grad_accum=2 and a 2-rank run with grad_accum=1
therefore compute the same steps, and a resumed run continues the same sequence.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from trainer import distributed, faults
from trainer.checkpoint import Checkpointer
from trainer.config import JobConfig
from trainer.data.text import text_batches
from trainer.engine import Engine
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.mt_llm import build_mt_llm
from trainer.models.weights import save_trainable
from trainer.recipes.common import METRICS_FILE, StepLog  # noqa: F401 - METRICS_FILE re-exported
from trainer.tracking import Tracker


def run(job: JobConfig, tracker: Tracker, checkpoints: Checkpointer) -> dict:
    """Train; returns a summary with this process's per-step losses and the export directory."""
    torch.manual_seed(job.seed)
    engine = Engine(job)  # before the model: under ZeRO-3 the frozen models load partitioned
    try:
        model = build_mt_llm(job.model).train()
        with distributed.main_first():  # rank 0 fills the datasets cache first (data.files)
            batches = text_batches(job.data, job.optim.micro_batch_size,
                                   load_llm_tokenizer(job.model.llm, job.model.cache_dir),
                                   load_nllb_tokenizer(job.model.encoder, job.model.cache_dir),
                                   seed=job.seed, rank=engine.rank, world_size=engine.world_size)
        engine.prepare(model)
        start_step = checkpoints.restore(engine, batches)
        return _train(job, engine, model, batches, tracker, checkpoints, start_step)
    finally:
        engine.close()


def _train(job, engine, model, batches, tracker, checkpoints, start_step: int) -> dict:
    out_dir = Path(job.output_dir)
    steps = StepLog(out_dir / METRICS_FILE, engine.is_main, start_step)
    accum, max_steps = job.optim.grad_accum, job.optim.max_steps
    losses: list[float] = []
    progress = tqdm(range(start_step, max_steps), desc="stage1", unit="step", initial=start_step,
                    total=max_steps, disable=not engine.is_main)
    start = time.perf_counter()
    tokens = 0.0
    for step in progress:
        local = [0.0, 0.0, 0.0]  # loss sum, fvu sum, tokens over this rank's micro-batches
        for _ in range(accum):
            batch = next(batches)
            torch.manual_seed(distributed.micro_batch_seed(job.seed, batches.last_index))
            out = engine(**engine.to_device(batch))
            engine.backward(out.loss)
            engine.step()
            local[0] += out.loss.item()
            local[1] += out.fvu.item()
            local[2] += float(batch["llm_attention_mask"].sum() + batch["nllb_attention_mask"].sum())
        loss_sum, fvu_sum, step_tokens = engine.reduce_sum(local)
        n = accum * engine.world_size
        step_loss, step_fvu = loss_sum / n, fvu_sum / n
        tokens += step_tokens
        done = step + 1
        losses.append(step_loss)
        row = {"step": done, "loss": step_loss, "fvu": step_fvu, "lr": engine.lr,
               "tokens_per_second": tokens / (time.perf_counter() - start)}
        if engine.grad_norm is not None:
            row["grad_norm"] = engine.grad_norm
        steps.write(row)
        progress.set_postfix(loss=f"{step_loss:.4f}", fvu=f"{step_fvu:.3f}")
        if done % job.tracking.log_every == 0 or done == max_steps:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=done)
        if checkpoints.due(done, max_steps):
            checkpoints.save(done, engine, batches, metrics={"loss": step_loss, "fvu": step_fvu},
                             run_id=tracker.run_id)
        faults.maybe_kill("after_step", done)

    state = engine.gather_trainable()  # collective: every rank takes part, rank 0 receives
    export = None
    if engine.is_main:
        export = save_trainable(state, out_dir / "export", job.to_yaml())
        tracker.log_artifacts(str(export), "export")
    return {"losses": losses, "start_step": start_step, "export_dir": str(export) if export else None}
