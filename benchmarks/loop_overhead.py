"""CPU overhead of the project's loop and engine: the same stage-1 steps through `run_job` vs a bare PyTorch loop.

    python -m benchmarks.loop_overhead                      # small model, 40 steps each, bare / project / bare
    python -m benchmarks.loop_overhead --hidden 512 --steps 60 --json overhead.json

Both sides train the same model (`build_mt_llm`, seeded alike: a random Llama-like LLM of `--hidden` width
and `--layers` blocks, a small NLLB encoder, LoRA r=16 on all linear layers, dropout off so that no reseeding
is needed for equal losses) on the same micro-batches (`text_batches` over generated English text) with the same
optimizer (AdamW, the same hyper-parameters, warm-up then linear decay, clipping at 1.0), in one process:

- project: `trainer.run.run_job` (the engine on DeepSpeed ZeRO-2, the loop with its per-step metrics reduce,
  metrics.jsonl, progress bar, MLflow logging every step to a local SQLite store; no checkpoints);
- bare: `for step: for micro-batch: loss.backward(); clip; AdamW.step(); schedule.step(); loss.item()`.

Per side, each step after `--warmup` is timed (the project's from its metrics.jsonl `seconds`, the clock the
loop logs), and the ratio project / bare of the median step is reported (medians, because other jobs share the
machine: a step they slow down does not move them much), with the ratio of the means beside it; bare runs
bracket the project runs. The per-step losses of both sides are compared as a check
that both did the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.stage1_gpu import write_random_model


def small_models(work: Path, cache_dir: str, hidden: int, layers: int) -> tuple[Path, Path]:
    """A random Llama-like LLM (`hidden` wide, `layers` blocks) and a small NLLB encoder with the tiny tokenizers."""
    from transformers import AutoConfig

    from trainer.models.loading import resolve_model_path

    heads = max(1, hidden // 32)
    changes = {"llm": ("tiny:llama", dict(hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                                          num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads)),
               "nllb": ("tiny:nllb", dict(d_model=128, encoder_layers=2, encoder_ffn_dim=512,
                                          encoder_attention_heads=4))}
    dirs = []
    for name, (base, change) in changes.items():
        out = work / name
        if not out.exists():
            src = resolve_model_path(base, cache_dir)
            shutil.copytree(src, out)            # the tokenizer; the weights are replaced below
            write_random_model(AutoConfig.from_pretrained(src).to_dict() | change, out, torch.float32, "cpu")
        dirs.append(out)
    return dirs[0], dirs[1]


def overhead_job(work: Path, llm: Path, nllb: Path, args, name: str) -> dict:
    """The job both sides train (as a raw dict)."""
    docs = work / "docs.jsonl"
    if not docs.exists():
        from trainer.tiny.text import english_documents

        docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in english_documents(400, seed=0)))
    return {"recipe": "stage1", "seed": 0, "output_dir": str(work / name),
            "model": {"llm": {"name_or_path": str(llm), "attn_implementation": "sdpa"},
                      "encoder": {"name_or_path": str(nllb)}, "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                      "cache_dir": args.cache_dir},
            "data": {"files": [str(docs)], "max_length": args.seq},
            "optim": {"lr": 2e-4, "warmup_steps": 2, "max_steps": args.warmup + args.steps,
                      "micro_batch_size": args.micro_batch, "grad_accum": args.grad_accum},
            "engine": {"deepspeed": args.deepspeed},
            "checkpoint": {"every": 0},
            "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "loop_overhead", "export": "none",
                         "system_metrics": False}}


def project(job_raw: dict, warmup: int) -> dict:
    """The job through `run_job`; per-step losses and the seconds of the steps after `warmup`."""
    from trainer.config import validate
    from trainer.loop import METRICS_FILE
    from trainer.run import run_job

    out = Path(job_raw["output_dir"])
    shutil.rmtree(out, ignore_errors=True)
    summary = run_job(validate(job_raw))
    ends = [json.loads(line)["seconds"] for line in (out / METRICS_FILE).read_text().splitlines()]
    return timed(summary["losses"], ends, warmup)


def bare(job_raw: dict, warmup: int) -> dict:
    """The same steps in plain PyTorch: the same model, batches, AdamW, schedule and clipping; no engine or loop."""
    from trainer.config import resolve_dtypes, validate
    from trainer.data.text import text_batches
    from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
    from trainer.models.mt_llm import build_mt_llm
    from trainer.objectives.distillation import distillation_mse

    job = resolve_dtypes(validate(job_raw))
    o = job.optim
    torch.manual_seed(job.seed)
    model = build_mt_llm(job.model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / o.warmup_steps if s < o.warmup_steps
                                                 else max(0.0, (o.max_steps - s) / (o.max_steps - o.warmup_steps)))
    batches = text_batches(job.data, o.micro_batch_size, load_llm_tokenizer(job.model.llm, job.model.cache_dir),
                           load_nllb_tokenizer(job.model.encoder, job.model.cache_dir), seed=job.seed)
    losses, ends = [], []
    start = time.perf_counter()
    for _ in range(o.max_steps):
        total = 0.0
        for _ in range(o.grad_accum):
            out = model(**next(batches))
            loss = distillation_mse(out.teacher, out.student)
            (loss / o.grad_accum).backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total.item() / o.grad_accum)
        ends.append(time.perf_counter() - start)
    return timed(losses, ends, warmup)


def timed(losses: list[float], ends: list[float], warmup: int) -> dict:
    """Losses, and the durations of the steps after `warmup` from each step's end time."""
    return {"losses": losses, "steps": [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])]}


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (the machine is shared)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    """Run bare, project, bare (x `--repeats`) and print the ratio; returns the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--hidden", type=int, default=256, help="LLM width")
    p.add_argument("--layers", type=int, default=4, help="LLM blocks")
    p.add_argument("--seq", type=int, default=64, help="tokens per view (max_length)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="project runs, each bracketed by bare runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one keeps a shared machine's noise down)")
    p.add_argument("--cache-dir", default=".cache/tiny-models")
    p.add_argument("--deepspeed", default="zero2", help="the project's engine.deepspeed (single: one process, no "
                                                         "ZeRO gradient hooks)")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        llm, nllb = small_models(work, args.cache_dir, args.hidden, args.layers)
        job = overhead_job(work, llm, nllb, args, "project")
        runs = [("bare", bare(job, args.warmup), load_average())]
        for _ in range(args.repeats):
            runs.append(("project", project(job, args.warmup), load_average()))
            runs.append(("bare", bare(job, args.warmup), load_average()))
    steps = {kind: [d for k, r, _ in runs if k == kind for d in r["steps"]] for kind in ("bare", "project")}
    median = {kind: statistics.median(d) for kind, d in steps.items()}
    mean = {kind: statistics.fmean(d) for kind, d in steps.items()}
    reference = runs[0][1]["losses"]
    max_diff = max(abs(a - b) / abs(b) for _, r, _ in runs for a, b in zip(r["losses"], reference))
    print(f"stage-1 steps (project on engine.deepspeed={args.deepspeed}), LLM hidden {args.hidden} x {args.layers} "
          f"blocks, {args.seq} tokens per view, micro-batch {args.micro_batch} x grad_accum {args.grad_accum}, "
          f"{args.steps} timed steps after {args.warmup}; "
          f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores")
    print("| run | median s/step | mean s/step | load average after (1, 5, 15 min) |\n|---|---|---|---|")
    for kind, r, load in runs:
        print(f"| {kind} | {statistics.median(r['steps']):.4f} | {statistics.fmean(r['steps']):.4f} | {load} |")
    ratio = median["project"] / median["bare"]
    print(f"project / bare: {ratio:.3f} (medians of every timed step), {mean['project'] / mean['bare']:.3f} (means); "
          f"per-step losses agree to {max_diff:.1e} (relative)")
    result = {"ratio": ratio, "ratio_of_means": mean["project"] / mean["bare"], "max_relative_loss_difference": max_diff,
              "args": vars(args), "runs": [{"kind": k, "median_seconds_per_step": statistics.median(r["steps"]),
                                           "mean_seconds_per_step": statistics.fmean(r["steps"]), "load": load}
                                          for k, r, load in runs]}
    if args.json:
        Path(args.json).write_text(yaml.safe_dump(result) if args.json.endswith(".yaml") else json.dumps(result))
    return result


if __name__ == "__main__":
    main()
