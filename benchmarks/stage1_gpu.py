"""Stage-1 (M1) step throughput at the real shapes: LLM tokens/s per GPU, MFU and peak memory per setting.

    python -m benchmarks.stage1_gpu                        # every row on 1 GPU (about 5-8 minutes on an H100)
    python -m benchmarks.stage1_gpu --gpus 8 --rows baseline zero3   # ZeRO-2 vs ZeRO-3 where the traffic is real
    python -m benchmarks.stage1_gpu --tiny                 # the same code paths on CPU, tiny shapes (a test runs it)

What it does:
1. Writes random weights at the shapes written below (`LLAMA3_8B`: hidden 4096, 32 layers, 32 heads, 8 KV
   heads, intermediate 14336, vocabulary 128256; `NLLB_600M`: d_model 1024, 12 encoder layers, 16 heads, ffn
   4096, vocabulary 256206, one decoder layer, which the loader drops) in bf16 to a temporary folder:
   nothing is downloaded. `--tiny` writes tiny:llama's and tiny:nllb's shapes instead, in fp32.
2. Per row, builds a stage-1 job (LoRA r=16 alpha 32 on all linear layers, dropout 0.05, a linear projection,
   bf16 on GPU), then the project's own `Engine`, `build_mt_llm` and the stage-1 recipe's step
   (`trainer.recipes.stage1.step_function`: teacher forward, student forward and backward, optimizer step),
   on full-length micro-batches of random token ids (`--seq` tokens in each view, no padding).
3. Runs `--warmup` steps, then times `--steps` steps (each ends with the loop's one host read of its metrics)
   and prints one row per setting: LLM tokens/s per GPU (the LLM's own tokens, the target's unit), MFU, peak
   memory, seconds per step and the ratio to the baseline row measured in the same run.

Rows (one change each from the baseline: ZeRO-2, sdpa, activation checkpointing on, micro-batch 8):
`zero3`, `flash_attention_2`, `no_checkpointing`, `checkpoint_every_2nd`, `micro_batch_16`, `micro_batch_32`,
`teacher_cache` (the batches carry teacher targets, as `teacher_cache: FOLDER` makes them: no teacher forward;
the host-side lookup from the memory-mapped cache is not timed), `zero1` (ZeRO-1 with fp32 gradient
accumulation) and `study_like` (the study's 4-bit NF4 LLM and 8-bit AdamW). A row whose requirement
is missing prints `skipped: reason` (no CUDA, flash-attn not installed); a row that runs out of memory says so.
On GPUs each row runs in its own process (`--gpus N`: under torchrun), so one row's memory or ZeRO-3 state
cannot leak into the next. On one GPU, ZeRO-3 vs ZeRO-2 shows ZeRO-3's bookkeeping only; its gathers cost
traffic with 2 or more GPUs.

MFU counts the model's FLOPs per step, not the hardware's (recomputation under checkpointing is not counted):
teacher forward 2N + 4Lds per LLM token; student forward and backward 4N + 12Lds per student token (the
backward computes input gradients, 2N; frozen weights get no weight gradient; attention's backward is twice
its forward); encoder forward 2N_enc per NLLB token. N: the LLM's parameters without embeddings and LoRA.
Peak: `--peak-tflops`, or the dense bf16 figure of a known GPU (H100/H200 SXM 989, H100 PCIe 756, A100 312).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001,
                 tie_word_embeddings=False)
NLLB_600M = dict(model_type="m2m_100", vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=1,
                 encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                 max_position_embeddings=1024, scale_embedding=True, activation_function="relu", pad_token_id=1,
                 bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0)]   # dense, first match of the device name


@dataclass(frozen=True)
class Setting:
    """One row: what differs from the baseline."""

    name: str
    deepspeed: str = "zero2"
    attn: str = "sdpa"
    checkpointing: bool = True
    checkpoint_every: int = 1     # checkpoint every n-th block (model.llm.checkpoint_every_n_layers)
    micro_batch: int = 8
    teacher_cache: bool = False   # teacher targets come with the batch (stage 1's `teacher_cache`)
    study: bool = False           # the study's QLoRA (4-bit NF4 LLM) and 8-bit AdamW

    def describe(self) -> str:
        checkpointing = ("off" if not self.checkpointing else "every block" if self.checkpoint_every == 1
                         else f"every {self.checkpoint_every} blocks")
        return (f"ZeRO-{self.deepspeed[4:]}, {self.attn}, checkpointing {checkpointing}, "
                f"micro-batch {self.micro_batch}" + (", teacher cache" if self.teacher_cache else "")
                + (", 4-bit LLM + 8-bit AdamW" if self.study else ""))


BASELINE = Setting("baseline")
ROWS = [BASELINE, replace(BASELINE, name="zero3", deepspeed="zero3"),
        replace(BASELINE, name="flash_attention_2", attn="flash_attention_2"),
        replace(BASELINE, name="no_checkpointing", checkpointing=False),
        replace(BASELINE, name="checkpoint_every_2nd", checkpoint_every=2),
        replace(BASELINE, name="micro_batch_16", micro_batch=16),
        replace(BASELINE, name="micro_batch_32", micro_batch=32),
        replace(BASELINE, name="teacher_cache", teacher_cache=True),
        replace(BASELINE, name="zero1", deepspeed="zero1"),
        replace(BASELINE, name="study_like", study=True)]


# --- models ------------------------------------------------------------------------------------------

def write_random_model(config: dict, out: Path, dtype: torch.dtype, device: str) -> Path:
    """A randomly initialised base model (AutoModel: no LM head) of `config` saved to `out`, built on `device`."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config)
    cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(cfg, dtype=dtype)
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def shapes(tiny: bool, cache_dir: str) -> tuple[dict, dict]:
    """(LLM config, encoder config) as dicts: the real ones, or tiny:llama's and tiny:nllb's."""
    if not tiny:
        return LLAMA3_8B, NLLB_600M
    from transformers import AutoConfig

    from trainer.models.loading import resolve_model_path

    return tuple(AutoConfig.from_pretrained(resolve_model_path(name, cache_dir)).to_dict()
                 for name in ("tiny:llama", "tiny:nllb"))


def write_models(work: Path, tiny: bool, cache_dir: str) -> tuple[Path, Path]:
    """Random weights at the benchmark's shapes in `work`/llm and `work`/nllb (kept when already there)."""
    llm_cfg, nllb_cfg = shapes(tiny, cache_dir)
    dtype, device = (torch.float32, "cpu") if tiny else (torch.bfloat16, "cuda")
    dirs = []
    for name, cfg in (("llm", llm_cfg), ("nllb", nllb_cfg)):
        out = work / name
        if not (out / "config.json").is_file():
            write_random_model(cfg, out, dtype, device)
        dirs.append(out)
    return dirs[0], dirs[1]


# --- one row -----------------------------------------------------------------------------------------

class SyntheticBatches:
    """Full-length stage-1 micro-batches of random token ids in both views, cycled (no data cost in the timing).

    Carries `last_index` (the global micro-batch index `accumulate` re-seeds dropout from).
    """

    def __init__(self, micro_batch: int, seq: int, llm_vocab: int, nllb_vocab: int, rank: int = 0,
                 world_size: int = 1, distinct: int = 4, teacher_dim: int | None = None):
        g = torch.Generator().manual_seed(rank)
        mask = torch.ones(micro_batch, seq, dtype=torch.long)
        self.batches = [{"llm_input_ids": torch.randint(3, llm_vocab, (micro_batch, seq), generator=g),
                         "llm_attention_mask": mask,
                         "nllb_input_ids": torch.randint(3, nllb_vocab, (micro_batch, seq), generator=g),
                         "nllb_attention_mask": mask} for _ in range(distinct)]
        if teacher_dim:   # what `WithTeacherTargets` adds: fp32 targets, so the step skips the teacher forward
            for batch in self.batches:
                batch["teacher_targets"] = torch.randn(micro_batch, teacher_dim, generator=g)
        self.rank, self.world_size, self.count = rank, world_size, 0
        self.last_index = -1

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        self.last_index = self.count * self.world_size + self.rank
        self.count += 1
        return self.batches[self.count % len(self.batches)]


def stage1_job(llm_dir: Path, nllb_dir: Path, setting: Setting, seq: int, out: Path, precision: str, **optim):
    """The stage-1 job of one row: the paper's LoRA and projection, `setting`'s engine, attention, batch."""
    from trainer.config import validate

    dtype = {"bf16": "bfloat16", "fp32": "float32"}[precision]
    return validate({
        "recipe": "stage1", "seed": 0, "output_dir": str(out),
        "model": {"llm": {"name_or_path": str(llm_dir), "dtype": dtype, "attn_implementation": setting.attn,
                          "gradient_checkpointing": setting.checkpointing,
                          "quantization": "nf4" if setting.study else "none",
                          "checkpoint_every_n_layers": setting.checkpoint_every},
                  "encoder": {"name_or_path": str(nllb_dir), "dtype": dtype},
                  "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, "pooling": "mean"},
        "data": {"files": ["synthetic (benchmarks.stage1_gpu)"], "max_length": seq},
        "optim": {"micro_batch_size": setting.micro_batch, "grad_accum": 1, "max_steps": 10_000, "lr": 2e-4,
                  "warmup_steps": 0, "optimizer": "adamw_8bit" if setting.study else "adamw", **optim},
        "engine": {"deepspeed": setting.deepspeed, "precision": precision},
        "checkpoint": {"every": 0, "portable": False}})


def model_flops(model, llm_tokens: float, student_tokens: float, nllb_tokens: float, seq_llm: int,
                seq_student: int) -> float:
    """The model FLOPs of one step's teacher forward, student forward and backward and encoder forward."""
    def params(module, skip=("embed", "lora_", "shared")):
        return sum(getattr(p, "ds_numel", p.numel()) for n, p in module.named_parameters()
                   if not any(s in n for s in skip))

    cfg = model.llm.config
    n_llm, layers, d = params(model.llm), cfg.num_hidden_layers, cfg.hidden_size
    teacher = (2 * n_llm + 4 * layers * d * seq_llm) * llm_tokens
    student = (4 * n_llm + 12 * layers * d * seq_student) * student_tokens
    return teacher + student + 2 * params(model.encoder) * nllb_tokens


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    """Dense bf16 peak FLOP/s of the device (per GPU), or None when unknown."""
    if override_tflops:
        return override_tflops * 1e12
    return next((t * 1e12 for key, t in PEAK_BF16_TFLOPS if key in device_name), None)


def skip_reason(setting: Setting, tiny: bool) -> str | None:
    """Why a row cannot run here, or None."""
    if not tiny and not torch.cuda.is_available():
        return "no CUDA (python -m benchmarks.stage1_gpu --tiny checks the code path on CPU)"
    if setting.attn == "flash_attention_2":
        if not torch.cuda.is_available():
            return "flash_attention_2 needs CUDA"
        if importlib.util.find_spec("flash_attn") is None:
            return "flash-attn not installed (pip install -e '.[gpu]')"
    if setting.study:
        if not torch.cuda.is_available():
            return "4-bit weights and 8-bit AdamW need CUDA"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes not installed (pip install -e '.[gpu]')"
    return None


def measure(setting: Setting, llm_dir: Path, nllb_dir: Path, args) -> dict:
    """Run `setting`'s warm-up and timed steps in this process (every rank); the row as a dict (rank 0)."""
    from trainer import distributed
    from trainer.config import resolve_dtypes
    from trainer.engine import Engine
    from trainer.loop import LLM_TOKENS, Run
    from trainer.models.mt_llm import build_mt_llm
    from trainer.recipes import stage1

    cuda = torch.cuda.is_available() and not args.tiny
    precision = "bf16" if cuda else "fp32"
    with tempfile.TemporaryDirectory() as out:
        job = stage1_job(llm_dir, nllb_dir, setting, args.seq, Path(out), precision)
        torch.manual_seed(job.seed)                         # as trainer.run: the same projection and LoRA per row
        engine = Engine(job)
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            model = build_mt_llm(resolve_dtypes(job).model).train()
            engine.prepare(model)
            batches = SyntheticBatches(setting.micro_batch, args.seq, model.llm.config.vocab_size,
                                       model.encoder.config.vocab_size, engine.rank, engine.world_size,
                                       teacher_dim=model.llm.config.hidden_size if setting.teacher_cache else None)
            step = stage1.step_function(Run(job, engine, tracker=None, checkpoints=None), batches)
            for i in range(args.warmup):
                step(i).reduce(engine)
            start, llm_tokens, loss = time.perf_counter(), 0.0, float("nan")
            for i in range(args.warmup, args.warmup + args.steps):
                means, tokens = step(i).reduce(engine)          # the loop's one host read per step
                llm_tokens, loss = llm_tokens + tokens[LLM_TOKENS], means["loss"]
            seconds = time.perf_counter() - start
            world = engine.world_size
            teacher_tokens = 0.0 if setting.teacher_cache else llm_tokens    # a cached teacher costs no FLOPs
            flops = model_flops(model, teacher_tokens, llm_tokens, llm_tokens, args.seq, args.seq) / world
            peak = peak_flops(torch.cuda.get_device_name() if cuda else "cpu", args.peak_tflops)
            row = {"row": setting.name, "setting": setting.describe(), "gpus": world,
                   "llm_tokens_per_second_per_gpu": llm_tokens / seconds / world,
                   "seconds_per_step": seconds / args.steps, "loss": loss,
                   "mfu": flops / seconds / peak if peak else None,
                   "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
        finally:
            engine.close()
            del engine
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return row if distributed.is_main() else {}


def run_row(setting: Setting, llm_dir: Path, nllb_dir: Path, args) -> dict:
    """One row: skipped, measured here (`--tiny`, or `--no-isolate`), or measured in a fresh process."""
    base = {"row": setting.name, "setting": setting.describe()}
    reason = skip_reason(setting, args.tiny)
    if reason:
        return {**base, "skipped": reason}
    if not args.isolate:
        try:
            return measure(setting, llm_dir, nllb_dir, args)
        except torch.cuda.OutOfMemoryError:
            return {**base, "skipped": "out of memory"}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        inner = ["-m", "benchmarks.stage1_gpu", "--row", setting.name, "--llm-dir", str(llm_dir),
                 "--nllb-dir", str(nllb_dir), "--result", str(result), "--seq", str(args.seq),
                 "--warmup", str(args.warmup), "--steps", str(args.steps)]
        inner += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
        inner += ["--tiny"] if args.tiny else []
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}"]
               if args.gpus > 1 else [sys.executable]) + inner
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}   # a fresh world per row
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout, env=env,
                              cwd=Path(__file__).resolve().parents[1])
        if result.is_file():
            return json.loads(result.read_text())
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        oom = "out of memory" in (done.stdout + done.stderr).lower()
        return {**base, "skipped": "out of memory" if oom else f"failed (exit {done.returncode}): {' | '.join(tail)}"}


def inner_row(args) -> None:
    """`--row NAME`: measure one row in this process (every rank); rank 0 writes it to `--result`."""
    setting = next(s for s in ROWS if s.name == args.row)
    try:
        row = measure(setting, Path(args.llm_dir), Path(args.nllb_dir), args)
    except torch.cuda.OutOfMemoryError:
        row = {"row": setting.name, "setting": setting.describe(), "skipped": "out of memory"}
    if row:
        Path(args.result).write_text(json.dumps(row))


# --- the table ---------------------------------------------------------------------------------------

def with_ratios(rows: list[dict]) -> list[dict]:
    """Each measured row's tokens/s over the baseline's (None when the baseline did not run)."""
    base = next((r.get("llm_tokens_per_second_per_gpu") for r in rows if r["row"] == BASELINE.name), None)
    return [r | {"vs_baseline": r["llm_tokens_per_second_per_gpu"] / base}
            if base and "llm_tokens_per_second_per_gpu" in r else r for r in rows]


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (skipped rows say why)."""
    lines = ["| row | setting | LLM tokens/s per GPU | MFU | peak memory GiB | vs baseline | s/step |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['row']} | {r['setting']} | skipped: {r['skipped']} | | | | |")
            continue
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {r['row']} | {r['setting']} | {r['llm_tokens_per_second_per_gpu']:,.0f} | "
                     f"{fmt(r['mfu'], '.1%')} | {fmt(r['peak_memory_gib'], '.1f')} | "
                     f"{fmt(r.get('vs_baseline'), '.2f')} | {r['seconds_per_step']:.3f} |")
    return "\n".join(lines)


def header(args) -> str:
    device = (f"{args.gpus} x {torch.cuda.get_device_name()}" if torch.cuda.is_available() and not args.tiny
              else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    shape = "tiny:llama + tiny:nllb shapes, fp32" if args.tiny else "Llama-3-8B + NLLB-600M encoder shapes, bf16"
    return (f"stage-1 step: {shape}, random weights, LoRA r=16 on all linear layers, {args.seq} tokens per view, "
            f"{args.warmup} warm-up + {args.steps} timed steps per row; {device}; torch {torch.__version__}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny:llama / tiny:nllb shapes on CPU, fp32 (a check)")
    p.add_argument("--rows", nargs="+", choices=[s.name for s in ROWS], help="rows to run (default: all)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per row (torchrun); tokens/s is per GPU")
    p.add_argument("--seq", type=int, help="tokens per view (default 512; --tiny: 32)")
    p.add_argument("--warmup", type=int, help="untimed steps per row (default 2; --tiny: 1)")
    p.add_argument("--steps", type=int, help="timed steps per row (default 4; --tiny: 2)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--work", help="folder for the random weights (default: a temporary folder, removed after)")
    p.add_argument("--cache-dir", default=".cache/tiny-models", help="where tiny:* models are built (--tiny)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each row in its own process (default: on GPUs yes, with --tiny no)")
    p.add_argument("--row-timeout", type=float, default=600, help="seconds before an isolated row is given up")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    for internal in ("--row", "--llm-dir", "--nllb-dir", "--result"):
        p.add_argument(internal, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = (32, 1, 2) if args.tiny else (512, 2, 4)
    args.seq, args.warmup, args.steps = (v if v is not None else d
                                         for v, d in zip((args.seq, args.warmup, args.steps), defaults))
    if args.isolate is None:
        args.isolate = not args.tiny or args.gpus > 1
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Write the weights, run every row, print the table; returns the rows."""
    args = parse_args(argv)
    if args.row:
        inner_row(args)
        return []
    settings = [s for s in ROWS if not args.rows or s.name in args.rows]
    if not args.tiny and not torch.cuda.is_available():
        rows = [{"row": s.name, "setting": s.describe(), "skipped": skip_reason(s, False)} for s in settings]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work or tmp)
            llm_dir, nllb_dir = write_models(work, args.tiny, args.cache_dir)
            rows = [run_row(s, llm_dir, nllb_dir, args) for s in settings]
    rows = with_ratios(rows)
    print(header(args))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
