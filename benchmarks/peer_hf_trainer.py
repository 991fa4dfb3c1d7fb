"""The same LoRA fine-tuning through this project and through HF Trainer + peft, the tool a user would pick instead.

    python -m benchmarks.peer_hf_trainer --model data/real/models/SmolLM2-135M-Instruct   # the real LLM
    python -m benchmarks.peer_hf_trainer --model tiny:llama --steps 6                     # plumbing only

Both sides fine-tune the same causal LM with the same peft LoRA (r, alpha, dropout 0, all linear layers) on the
same prompt/answer task (the demo's English topic task: "{text} Topic:" -> " 0" / " 1" / " 2" + EOS, loss on the
answer only, built by the project's `PromptAnswerCollator` on both sides), the same micro-batches in the same order
(the project's `MicroBatches` order, given to HF Trainer as a sequential dataset), the same AdamW, warm-up then
linear decay, clipping at 1.0, fp32, one thread-count, `grad_accum` 1 (so HF's token-count normalisation over
accumulated micro-batches and the project's per-micro-batch mean are the same number):

- project: `python -m trainer.train` semantics through `run_job` (recipe `align` with `alignment.enabled: false`:
  the task-only LoRA fine-tuning of M2's recipe; DeepSpeed ZeRO-2 engine, the loop, metrics.jsonl, MLflow to a
  local SQLite store, no checkpoints, no evaluation);
- peer: `transformers.Trainer` + `peft.get_peft_model`, `train_sampling_strategy="sequential"`, no evaluation, no
  checkpoints, `report_to="none"`.

Each side runs in its own subprocess (so the peak resident memory, `ru_maxrss`, is that side's alone) one after the
other, in one run of this script. Tokens per second counts every token of the micro-batches (attention mask),
over the steps after `--warmup`; both sides process exactly the same tokens, so the ratio is the inverse ratio of
the step times. Printed: both loss curves, the first-step losses (equal: same weights, same batch, LoRA B = 0), the
project / HF tokens-per-second ratio and the project / HF peak-memory ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = "{text} Topic:"
WORDS = ["0", "1", "2"]


def job(args, out: Path) -> dict:
    """The project's job (a raw dict): align, task only, LoRA on every linear layer, fp32."""
    return {"recipe": "align", "seed": args.seed, "output_dir": str(out / "project"),
            "model": {"llm": {"name_or_path": args.model, "dtype": "float32", "attn_implementation": "sdpa"},
                      "finetune": "lora", "lora": {"r": args.r, "alpha": 2 * args.r, "dropout": 0.0},
                      "cache_dir": args.cache_dir},
            "task": {"train_files": [args.train_file], "num_labels": 3, "max_length": args.max_length,
                     "prompt_template": TEMPLATE, "label_words": WORDS, "eval_languages": []},
            "alignment": {"enabled": False},
            "optim": {"lr": args.lr, "warmup_steps": args.warmup_steps, "max_steps": args.steps,
                      "micro_batch_size": args.micro_batch, "grad_accum": 1, "weight_decay": 0.0},
            "engine": {"deepspeed": args.deepspeed, "precision": "fp32"},
            "checkpoint": {"every": 0},
            "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "experiment": "peer_hf_trainer", "export": "none",
                         "system_metrics": False, "log_every": 1}}


def micro_batch_rows(args) -> list[list[dict]]:
    """The rows of the project's first `--steps` micro-batches, in its order (`MicroBatches` with the job's seed)."""
    from trainer.data.batches import MicroBatches
    from trainer.data.task import load_task_rows

    rows = load_task_rows([args.train_file])
    order = MicroBatches(rows, args.micro_batch, collate=None, seed=args.seed)
    return [[rows[i] for i in order.indices(k)] for k in range(args.steps)]


def tokens_per_step(args) -> list[int]:
    """Tokens (attention mask) of each micro-batch, as the project's collator builds it: the same for both sides."""
    from trainer.data.task import PromptAnswerCollator
    from trainer.models.loading import load_llm_tokenizer
    from trainer.config import LLMConfig

    tokenizer = load_llm_tokenizer(LLMConfig(name_or_path=args.model), args.cache_dir)
    collate = PromptAnswerCollator(tokenizer, TEMPLATE, WORDS, args.max_length)
    return [int(collate(batch)["attention_mask"].sum()) for batch in micro_batch_rows(args)]


def run_project(args, out: Path) -> dict:
    """One side: the project's run; per-step losses and step end times from metrics.jsonl."""
    from trainer.config import validate
    from trainer.loop import METRICS_FILE
    from trainer.run import run_job

    raw = job(args, out)
    run_job(validate(raw))
    rows = [json.loads(line) for line in (Path(raw["output_dir"]) / METRICS_FILE).read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    return {"losses": [r["loss"] for r in rows], "ends": [r["seconds"] for r in rows]}


def run_hf(args, out: Path) -> dict:
    """The other side: HF Trainer + peft on the same rows in the same order; losses and step end times."""
    import peft
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from trainer.config import LLMConfig
    from trainer.data.task import PromptAnswerCollator
    from trainer.models.loading import load_llm_tokenizer, resolve_model_path

    llm = LLMConfig(name_or_path=args.model)
    tokenizer = load_llm_tokenizer(llm, args.cache_dir)
    collate = PromptAnswerCollator(tokenizer, TEMPLATE, WORDS, args.max_length)
    rows = [row for batch in micro_batch_rows(args) for row in batch]
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model, args.cache_dir),
                                                 dtype=torch.float32, attn_implementation="sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0,
                                                       target_modules="all-linear", bias="none"))
    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training = TrainingArguments(
        output_dir=str(out / "hf"), per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=args.lr, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=args.warmup_steps,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=args.seed,
        train_sampling_strategy="sequential", dataloader_num_workers=0, use_cpu=True, bf16=False, fp16=False,
        remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=Dataset.from_list(rows), data_collator=collate,
                      callbacks=[Clock()])
    trainer.train()
    return {"losses": losses, "ends": ends}


def side(args) -> None:
    """Subprocess entry: run one side, write its result with this process's peak resident memory."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.work)
    result = (run_project if args.side == "project" else run_hf)(args, out)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / f"{args.side}.json").write_text(json.dumps(result))


def compare(args) -> dict:
    """Run both sides (subprocesses, one after the other) and print the comparison."""
    work = Path(args.work or tempfile.mkdtemp(prefix="peer_"))
    work.mkdir(parents=True, exist_ok=True)
    passed = [a for a in sys.argv[1:] if not a.startswith("--work")]
    results = {}
    for name in args.order.split(","):
        subprocess.run([sys.executable, "-m", "benchmarks.peer_hf_trainer", *passed, "--side", name,
                        "--work", str(work)], check=True)
        results[name] = json.loads((work / f"{name}.json").read_text())
    tokens = tokens_per_step(args)
    timed = sum(tokens[args.warmup:])
    speed, step = {}, {}
    for name, r in results.items():
        durations = [b - a for a, b in zip(r["ends"][args.warmup - 1:], r["ends"][args.warmup:])]
        speed[name] = timed / sum(durations)
        step[name] = statistics.median(durations)
    p, h = results["project"], results["hf"]
    print(f"model {args.model}, LoRA r={args.r} on all linear layers, micro-batch {args.micro_batch}, {args.steps} "
          f"steps ({args.warmup} untimed), fp32, {args.threads} thread(s), {os.cpu_count()} cores")
    print("| step | project loss | HF Trainer loss |\n|---|---|---|")
    for i, (a, b) in enumerate(zip(p["losses"], h["losses"]), 1):
        print(f"| {i} | {a:.5f} | {b:.5f} |")
    print("| side | tokens/s | median s/step | peak RSS MB |\n|---|---|---|---|")
    for name in results:
        print(f"| {name} | {speed[name]:.1f} | {step[name]:.4f} | {results[name]['peak_rss_mb']:.0f} |")
    summary = {"tokens_per_second_ratio": speed["project"] / speed["hf"],
               "peak_memory_ratio": p["peak_rss_mb"] / h["peak_rss_mb"],
               "first_step_loss": {"project": p["losses"][0], "hf": h["losses"][0]},
               "first_step_relative_difference": abs(p["losses"][0] - h["losses"][0]) / abs(h["losses"][0]),
               "tokens_per_second": speed, "median_seconds_per_step": step, "results": results}
    print(f"project / HF Trainer: tokens/s {summary['tokens_per_second_ratio']:.3f}, peak memory "
          f"{summary['peak_memory_ratio']:.3f}; first-step losses {p['losses'][0]:.6f} vs {h['losses'][0]:.6f} "
          f"(relative difference {summary['first_step_relative_difference']:.1e})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="data/real/models/SmolLM2-135M-Instruct", help="causal LM: path, hub name or tiny:NAME")
    p.add_argument("--train-file", default="data/demo/task/train/eng_Latn.jsonl",
                   help="task rows {text, label} (python -m data_prep.demo_data writes the default)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2r)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=3, help="learning-rate warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--order", default="project,hf", help="which side runs first")
    p.add_argument("--deepspeed", default="zero2", help="the project's engine.deepspeed (a ds_configs name or a JSON)")
    p.add_argument("--cache-dir", default=".cache/tiny-models")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    p.add_argument("--json", help="also write the summary here")
    p.add_argument("--side", choices=["project", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        return side(args)
    return compare(args)


if __name__ == "__main__":
    main()
