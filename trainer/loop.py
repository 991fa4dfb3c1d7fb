"""The one optimizer-step loop: every recipe builds its model and data, then hands `train` a step function.

    run = Run(job, engine, tracker, checkpoints)          # made by trainer.run for every recipe
    summary = train(run, model, data, step_fn, hooks)
    step_fn = lambda step: accumulate(run, batches, forward)   # the common step: grad_accum micro-batches

`step_fn(step)` trains one optimizer step's micro-batches on this rank and returns its `Sums`;
the loop does the rest the same way for every recipe: the sums over ranks, `metrics.jsonl`, the
progress bar, MLflow logging every `tracking.log_every`, the evaluation hooks, checkpoints, fault
injection for the kill-and-resume tests, and the export of the trained weights. No DeepSpeed or
MLflow calls here: they go through `run.engine` and `run.tracker`.

Determinism across launch shapes: a recipe's data hands out a global sequence of micro-batches
(global micro-batch k to rank k % world_size) and `seed_micro_batch` re-seeds the RNG from
(seed, k) before each, so dropout masks depend on k only. A 1-rank run with grad_accum=2 and a
2-rank run with grad_accum=1 compute the same steps, and a resumed run continues the same sequence.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from trainer import distributed, faults
from trainer.checkpoint import Checkpointer, Stateful, read_trainer_state
from trainer.errors import NonFiniteError
from trainer.fsutil import write_atomic
from trainer.models.weights import export as export_weights

METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
TOKENS = "tokens"           # `Sums.count_tokens` keys: summed over ranks, logged as KEY_per_second
LLM_TOKENS = "llm_tokens"   # the LLM's own tokens (stage 1 also feeds the encoder its view)


@dataclass
class Run:
    """The collaborators of one run, made once by `trainer.train.run_job` and passed to the recipe."""

    job: Any                    # the validated job (one of trainer.config's recipe schemas)
    engine: Any                 # trainer.engine.Engine
    tracker: Any                # trainer.tracking.Tracker
    checkpoints: Checkpointer

    @property
    def out_dir(self) -> Path:
        return Path(self.job.output_dir)

    def log_files(self, path: str | Path, artifact_dir: str) -> None:
        """Attach a file or folder (written by rank 0) to the MLflow run under `artifact_dir`."""
        if self.engine.is_main:
            path = Path(path)
            (self.tracker.log_artifacts if path.is_dir() else self.tracker.log_artifact)(str(path), artifact_dir)


def seed_micro_batch(seed: int, index: int) -> None:
    """Re-seed torch before global micro-batch `index`, so its dropout masks depend on (seed, index) only."""
    torch.manual_seed(distributed.micro_batch_seed(seed, index))


def global_micro_batch(run: Run, step: int, j: int) -> int:
    """Global index of this rank's micro-batch `j` of optimizer `step` (global k goes to rank k % world)."""
    return (step * run.job.optim.grad_accum + j) * run.engine.world_size + run.engine.rank


def accumulate(run: "Run", batches, forward: Callable[[dict, "Sums"], torch.Tensor], update: bool = True) -> "Sums":
    """One optimizer step over `optim.grad_accum` micro-batches of `batches` -> this rank's `Sums`.

    Each micro-batch is moved to the device and the RNG re-seeded from its global index
    (`batches.last_index`); `forward(batch, sums)` returns its loss (and may add metrics to `sums`);
    the loss is back-propagated, the engine steps (an optimizer step at the accumulation boundary)
    and the loss is summed under `loss` on the device (no host sync: `Sums.reduce` reads the step once).
    `update=False` only measures: the same micro-batches under no grad, no backward, no step.
    """
    sums = Sums()
    for _ in range(run.job.optim.grad_accum):
        batch = run.engine.to_device(next(batches))
        seed_micro_batch(run.job.seed, batches.last_index)
        with torch.set_grad_enabled(update and torch.is_grad_enabled()):
            loss = forward(batch, sums)
        if update:
            run.engine.backward(loss)
            run.engine.step()
        sums.add("loss", loss)
    return sums


class Sums:
    """One step's metrics on this rank as {key: [sum, count]}; the loop adds them over ranks and logs the means.

    A value is a float or a tensor (a 0-dim loss, a mask's sum): a tensor is detached and added on its
    device in float64, the same additions in the same order as Python floats, so nothing waits for the
    device until `reduce` reads every key of the step at once (one host sync per optimizer step).
    The keys must be the same on every rank (they may depend on the step, not on the data).
    """

    def __init__(self) -> None:
        self.values: dict[str, list[float | torch.Tensor]] = {}
        self.token_keys: set[str] = set()

    def add(self, key: str, value: float | torch.Tensor, count: float = 1.0) -> None:
        """Add `value` to `key`'s sum and `count` to its count (the logged value is sum / count over ranks)."""
        if torch.is_tensor(value):
            value = value.detach().to(torch.float64)
        entry = self.values.setdefault(key, [0.0, 0.0])
        entry[0] = entry[0] + value
        entry[1] += count

    def count_tokens(self, n: float | torch.Tensor, key: str = TOKENS) -> None:
        """Tokens processed this step, summed over ranks and logged as `<key>_per_second`.

        `tokens` (the default) counts every view a recipe feeds its models; stage 1 also counts the LLM's
        own tokens under `llm_tokens` (`llm_tokens_per_second`, the unit of LLM throughput targets).
        """
        self.token_keys.add(key)
        self.add(key, n, 0.0)

    def reduce(self, engine) -> tuple[dict[str, float], dict[str, float]]:
        """(means over every rank's micro-batches, {token key: tokens summed over ranks}). Collective.

        Every key goes into one all-reduce, read back to the host once.
        """
        keys = sorted(self.values)
        summed = engine.reduce_sum([v for key in keys for v in self.values[key]])
        means, tokens = {}, {}
        for i, key in enumerate(keys):
            total, count = summed[2 * i], summed[2 * i + 1]
            if key in self.token_keys:
                tokens[key] = total
            elif count > 0:
                means[key] = total / count
        return means, tokens


@dataclass
class Hooks:
    """Evaluations the loop runs in eval mode on every rank; each returns metrics to log and keep.

    `before()`: a fresh run, before step 0 (a resumed run takes them from its checkpoint);
    `after_step(done)`: after each optimizer step, before its checkpoint (return {} when nothing is due);
    `at_end()`: after the last step. Metrics from `before` and `after_step` are stored with every
    checkpoint, so a resumed run reports them in its final metrics too.
    """

    before: Callable[[], dict[str, float]] | None = None
    after_step: Callable[[int], dict[str, float]] | None = None
    at_end: Callable[[], dict[str, float]] | None = None


class StepLog:
    """Per-step metrics as JSON lines in OUTPUT_DIR/metrics.jsonl (rank 0), for tests and quick looks.

    On resume the lines after the resumed step are dropped (they are about to be recomputed).
    """

    def __init__(self, path: Path, enabled: bool, resumed_step: int):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if resumed_step > 0 and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                if row.get("step", 0) <= resumed_step:
                    kept.append(line)
        write_atomic(path, "".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Evaluation mode and no gradients for the duration; the model's previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def check_finite(row: dict[str, float], step: int, last_finite: tuple[int, dict[str, float]] | None,
                 skip_grad_norm: bool = False) -> None:
    """Stop the run (NonFiniteError, on every rank alike: the row is reduced) at a NaN or infinite loss or norm.

    Nothing is logged, checkpointed or exported from such a step. Under fp16 an infinite gradient
    norm is DeepSpeed's loss scaler skipping the step, not a failure, so the norm is not checked.
    """
    keys = [k for k in row if k.endswith("loss") or k == "fvu"] + ([] if skip_grad_norm else ["grad_norm"])
    bad = {k: row[k] for k in keys if k in row and not math.isfinite(row[k])}
    if not bad:
        return
    shown = ", ".join(f"{k} = {v}" for k, v in bad.items())
    before = (f"the last finite values were at step {last_finite[0]}: "
              + ", ".join(f"{k} = {last_finite[1][k]:.6g}" for k in keys if k in last_finite[1])
              if last_finite else "no step was finite")
    raise NonFiniteError(f"step {step}: {shown}; {before}. Training stopped; nothing was checkpointed or exported "
                         f"from this step. Lower optim.lr, check the data, or keep optim.max_grad_norm on")


def train(run: Run, model: torch.nn.Module, data: Stateful, step_fn: Callable[[int], Sums],
          hooks: Hooks | None = None, name: str | None = None) -> dict:
    """Optimizer steps from the resumed step (or 0) to `optim.max_steps`, then the final evaluation and export.

    Returns {"losses": this run's global loss per step, "start_step", "metrics": final metrics,
    "export_dir"}. `data` is checkpointed with the engine (one stateful object: see `Streams`).
    """
    job, engine, tracker, checkpoints = run.job, run.engine, run.tracker, run.checkpoints
    hooks = hooks or Hooks()

    def evaluate(fn: Callable[..., dict[str, float]] | None, *args, step: int) -> dict[str, float]:
        if fn is None:
            return {}
        with eval_mode(model):
            metrics = fn(*args)
        if metrics:
            tracker.log_metrics(metrics, step=step)
        return metrics

    engine.prepare(model)
    tracker.set_tags(run_environment(engine, model))
    start_step = checkpoints.restore(engine, data)
    if start_step == 0:
        kept = evaluate(hooks.before, step=0)
    else:
        kept = dict(read_trainer_state(checkpoints.resume_from).get("evaluations", {}))

    max_steps = job.optim.max_steps
    steps = StepLog(run.out_dir / METRICS_FILE, engine.is_main, start_step)
    progress = tqdm(range(start_step, max_steps), desc=name or job.recipe, unit="step", initial=start_step,
                    total=max_steps, disable=not engine.is_main)
    losses: list[float] = []
    start, tokens = time.perf_counter(), {}
    last_finite: tuple[int, dict[str, float]] | None = None
    for step in progress:
        row, step_tokens = step_fn(step).reduce(engine)   # the step's one host sync
        done = step + 1
        if engine.grad_norm is not None:
            row["grad_norm"] = engine.grad_norm
        check_finite(row, done, last_finite, skip_grad_norm=engine.precision == "fp16")
        last_finite = (done, row)
        elapsed = time.perf_counter() - start
        row |= {"lr": engine.lr, "seconds": elapsed}
        for key, n in step_tokens.items():
            tokens[key] = tokens.get(key, 0.0) + n
        row |= {f"{key}_per_second": n / elapsed for key, n in tokens.items() if n}
        losses.append(row["loss"])
        steps.write({"step": done, **row})
        progress.set_postfix({k: f"{row[k]:.4f}" for k in ("loss", "fvu") if k in row}, refresh=False)
        if done % job.tracking.log_every == 0 or done == max_steps:
            tracker.log_metrics(row, step=done)
        kept |= evaluate(hooks.after_step, done, step=done)
        if checkpoints.due(done, max_steps):
            tracker.flush()   # the steps a resume skips are in the store
            checkpoints.save(done, engine, data, metrics={**row, **kept}, evaluations=kept, run_id=tracker.run_id)
        faults.maybe_kill("after_step", done)

    final = kept | evaluate(hooks.at_end, step=max_steps)
    return finish(run, final, losses, start_step)


def run_environment(engine, model: torch.nn.Module) -> dict[str, str]:
    """What a run ran on, as MLflow tags: world size, devices, precision, ZeRO stage, the dtype gradients
    accumulate in, attention implementation."""
    attention = sorted({m.config._attn_implementation for m in model.modules()       # every model inside
                        if getattr(getattr(m, "config", None), "_attn_implementation", None)})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"world_size": str(engine.world_size), "devices": f"{engine.world_size} x {device}",
            "precision": engine.precision, "zero_stage": str(engine.zero_stage),
            "grad_accum_dtype": str(engine.gradient_accumulation_dtype).removeprefix("torch."),
            "attn_implementation": ",".join(attention) or "unknown"}


def finish(run: Run, final: dict[str, float], losses: list[float], start_step: int) -> dict:
    """Log the final metrics as one row (a sweep's last report holds them all), export the trained weights
    (`trainer.models.weights.export`; uploaded as `tracking.export` says)."""
    job, engine = run.job, run.engine
    if final:
        run.tracker.log_metrics(final, step=job.optim.max_steps)
    state = engine.gather_trainable()  # collective: every rank takes part, rank 0 receives
    frozen = engine.gather_frozen() if job.tracking.export == "all" else None
    export = None
    if engine.is_main:
        write_atomic(run.out_dir / FINAL_METRICS_FILE, json.dumps(final, indent=1, sort_keys=True))
        header = (f"# config_sha256: {run.checkpoints.config_hash}   (trainer.run.training_hash of the job as "
                  f"written)\n" if run.checkpoints.config_hash else "")   # what trained this export
        export = export_weights(state, run.out_dir / "export", header + job.to_yaml(), engine.module, frozen)
        if job.tracking.export != "none":
            run.tracker.log_artifacts(str(export), "export")
    return {"losses": losses, "start_step": start_step, "metrics": final,
            "export_dir": str(export) if export else None}


class Streams:
    """Named resumable streams checkpointed as one (the checkpointer takes one stateful object).

    A stream given as None is left out (an objective that is switched off reads no data).
    """

    def __init__(self, **streams):
        self.streams = {name: s for name, s in streams.items() if s is not None}

    def __getitem__(self, name: str):
        return self.streams[name]

    def state_dict(self) -> dict:
        return {name: s.state_dict() for name, s in self.streams.items()}

    def restart_at(self, done: int) -> None:
        for name, s in self.streams.items():
            if not hasattr(s, "restart_at"):
                raise RuntimeError(f"data: the {name} stream ({type(s).__name__}) resumes only on the number of "
                                   f"ranks that wrote the checkpoint")
            s.restart_at(done)

    def load_state_dict(self, state: dict) -> None:
        if sorted(state) != sorted(self.streams):
            raise ValueError(f"data: the checkpoint holds streams {sorted(state)}, this run has {sorted(self.streams)}")
        for name, s in self.streams.items():
            s.load_state_dict(state[name])
