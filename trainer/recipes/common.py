"""Pieces the recipes share: the per-step metrics file, the optimizer-step loop, data, evaluation, export.

A recipe builds its model and data, then hands `train_steps` a function that runs one optimizer
step's micro-batches on this rank; the loop does the rest the same way for every recipe (sums
over ranks, metrics.jsonl, MLflow every `log_every`, checkpoints, fault injection for the
kill-and-resume tests). No DeepSpeed or MLflow calls here: they go through `engine` and `tracker`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from trainer import distributed, faults
from trainer.checkpoint import read_trainer_state
from trainer.config import AlignmentConfig, ConfigError, JobConfig
from trainer.data.pairs import PairBatches, PairCollator, load_multiway
from trainer.data.parallel import stream_from_config
from trainer.data.task import check_labels, eval_file, load_task_rows, read_task_file
from trainer.data.text import MicroBatches
from trainer.eval.plots import plot_layer_curves, save_retrieval_plots
from trainer.eval.retrieval import RetrievalResult
from trainer.eval.sharded import retrieval_over_ranks, task_accuracy
from trainer.models.weights import save_trainable
from trainer.objectives.contrastive import info_nce, resolve_layers, two_b_candidate_loss

METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
# Evaluations made during training are stored with every checkpoint, so a resumed run reports them too.
CARRIED_PREFIX = "retrieval_"
STREAM_OF = {"align": "pairs", "task": "task"}   # objective -> the stream its micro-batches come from


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
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


# --- data ------------------------------------------------------------------------------------------

class Streams:
    """Named resumable streams checkpointed as one (the checkpointer takes one stateful object)."""

    def __init__(self, **streams):
        self.streams = {name: s for name, s in streams.items() if s is not None}

    def __getitem__(self, name: str):
        return self.streams[name]

    def state_dict(self) -> dict:
        return {name: s.state_dict() for name, s in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state) != sorted(self.streams):
            raise ValueError(f"data: the checkpoint holds streams {sorted(state)}, this run has {sorted(self.streams)}")
        for name, s in self.streams.items():
            s.load_state_dict(state[name])


def pair_batches(job: JobConfig, tokenizer, engine) -> PairBatches:
    """This rank's share of `job.parallel`'s pairs, `alignment.batch_size` pairs per micro-batch."""
    with distributed.main_first():  # hub sources: rank 0 fills the datasets cache first
        stream = stream_from_config(job.parallel, rank=engine.rank, world_size=engine.world_size)
    size = job.alignment.batch_size or job.optim.micro_batch_size
    return PairBatches(stream, size, PairCollator(tokenizer, job.alignment.max_length))


def task_batches(job: JobConfig, collate, engine) -> MicroBatches:
    """Source-language task examples, reshuffled every epoch, global micro-batch k to rank k % world."""
    rows = load_task_rows(job.task.train_files, job.task.text_column, job.task.label_column)
    check_labels(rows, job.task.num_labels, "task.train_files")
    return MicroBatches(rows, job.optim.micro_batch_size, collate, seed=job.seed,
                        rank=engine.rank, world_size=engine.world_size)


def pair_loss(cfg: AlignmentConfig, default: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The configured contrastive loss on (source, target) [B, d] (`alignment.objective`, else `default`)."""
    if (cfg.objective or default) == "two_b":
        return partial(two_b_candidate_loss, temperature=cfg.temperature)
    return partial(info_nce, temperature=cfg.temperature, symmetric=cfg.symmetric)


# --- the step loop -----------------------------------------------------------------------------------

def micro_batches(job: JobConfig, engine, data: Streams, step: int, objectives: list[str]) -> dict[str, list[float]]:
    """Run one optimizer step: micro-batch j trains `objectives[j]`; returns {metric: [sum, count]} on this rank.

    The RNG is re-seeded from (seed, step, j, rank) before each micro-batch, so dropout masks
    depend on the position in the run only (a resumed run recomputes the same steps).
    """
    sums: dict[str, list[float]] = {}
    for j, objective in enumerate(objectives):
        batch = next(data[STREAM_OF[objective]])
        index = (step * len(objectives) + j) * engine.world_size + engine.rank
        torch.manual_seed(distributed.micro_batch_seed(job.seed, index))
        out = engine(objective=objective, **engine.to_device(batch))
        engine.backward(out.loss)
        engine.step()
        for key in ("loss", f"{objective}_loss"):
            entry = sums.setdefault(key, [0.0, 0.0])
            entry[0] += out.loss.item()
            entry[1] += 1
    return sums


def train_steps(job: JobConfig, engine, tracker, checkpoints, data, start_step: int, name: str,
                step_fn: Callable[[int], dict[str, list[float]]], carried: dict[str, float],
                after_step: Callable[[int], dict[str, float]] | None = None) -> list[float]:
    """Optimizer steps `start_step .. optim.max_steps - 1`; returns the global loss of each.

    `step_fn(step)` trains one step on this rank and returns {metric: [sum, count]}; the keys must
    be the same on every rank (they depend on the step only). The sums are added over ranks and
    logged as means with lr and grad_norm. `after_step(done)` may evaluate: its metrics are logged
    at once and added to `carried`, which every checkpoint stores.
    """
    out_dir = Path(job.output_dir)
    steps = StepLog(out_dir / METRICS_FILE, engine.is_main, start_step)
    max_steps = job.optim.max_steps
    losses: list[float] = []
    progress = tqdm(range(start_step, max_steps), desc=name, unit="step", initial=start_step,
                    total=max_steps, disable=not engine.is_main)
    start = time.perf_counter()
    for step in progress:
        local = step_fn(step)
        keys = sorted(local)
        summed = engine.reduce_sum([v for key in keys for v in local[key]])
        done = step + 1
        row = {key: summed[2 * i] / summed[2 * i + 1] for i, key in enumerate(keys) if summed[2 * i + 1] > 0}
        row |= {"lr": engine.lr, "seconds": time.perf_counter() - start}
        if engine.grad_norm is not None:
            row["grad_norm"] = engine.grad_norm
        losses.append(row["loss"])
        steps.write({"step": done, **row})
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        if done % job.tracking.log_every == 0 or done == max_steps:
            tracker.log_metrics(row, step=done)
        if after_step is not None:
            carried.update(after_step(done))
        if checkpoints.due(done, max_steps):
            checkpoints.save(done, engine, data, metrics={**row, **carried}, run_id=tracker.run_id)
        faults.maybe_kill("after_step", done)
    return losses


def start(engine, model, data: Streams, checkpoints, evaluation: "Evaluation") -> tuple[int, dict[str, float]]:
    """Prepare the engine, restore the checkpoint if any -> (first step, evaluations so far).

    A fresh run evaluates retrieval before training; a resumed run takes the evaluations stored
    with its checkpoint.
    """
    engine.prepare(model)
    start_step = checkpoints.restore(engine, data)
    if start_step == 0:
        return 0, evaluation.retrieval("before", 0)
    stored = read_trainer_state(checkpoints.resume_from).get("metrics", {})
    return start_step, {k: v for k, v in stored.items() if k.startswith(CARRIED_PREFIX)}


def finish(job: JobConfig, engine, tracker, final: dict[str, float], losses: list[float], start_step: int) -> dict:
    """Log the final metrics as one row (a sweep's last report holds them all), export, summarise."""
    tracker.log_metrics(final, step=job.optim.max_steps)
    out_dir = Path(job.output_dir)
    state = engine.gather_trainable()  # collective: every rank takes part, rank 0 receives
    export = None
    if engine.is_main:
        (out_dir / FINAL_METRICS_FILE).write_text(json.dumps(final, indent=1, sort_keys=True))
        export = save_trainable(state, out_dir / "export", job.to_yaml())
        tracker.log_artifacts(str(export), "export")
    return {"losses": losses, "start_step": start_step, "metrics": final,
            "export_dir": str(export) if export else None}


# --- evaluation ------------------------------------------------------------------------------------

def config_layers(layers, n_hidden_states: int, key: str) -> list[int]:
    """Layer indices of the config checked against the loaded model (a `ConfigError` naming `key`)."""
    try:
        return resolve_layers(layers, n_hidden_states)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


@contextmanager
def eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Evaluation:
    """Retrieval by layer and task accuracy per language; every rank computes, rank 0 writes and logs.

    `aligned` are the aligned hidden_states indices: `retrieval_<tag>` is the mean accuracy over
    all ordered language pairs at them (averaged over them when several), `retrieval_<tag>_layer<i>`
    the mean at each evaluated layer, `retrieval_<tag>_subset` the mean over the ordered pairs of
    English and the aligned languages (`parallel.languages`) that the retrieval set holds. Task metrics: `accuracy_<lang>` per evaluated language,
    `source_accuracy` (the training language) and `zero_shot_accuracy` (mean over the others).
    """

    def __init__(self, job: JobConfig, engine, model, tokenizer, tracker, eval_collate):
        self.job, self.engine, self.model, self.tokenizer, self.tracker = job, engine, model, tokenizer, tracker
        self.eval_collate = eval_collate
        self.out_dir = Path(job.output_dir) / "eval"
        self.results: dict[str, RetrievalResult] = {}
        n_states = model.num_hidden_layers + 1
        self.aligned = config_layers(model.align_layers, n_states, "alignment.layers")
        wanted = range(n_states) if job.eval.layers is None else config_layers(job.eval.layers, n_states, "eval.layers")
        self.layers = sorted(set(wanted) | set(self.aligned))
        self.sentences = None
        self.subset = [job.parallel.english, *job.parallel.languages] if job.parallel is not None else None
        if job.eval.retrieval is not None:
            with distributed.main_first():
                self.sentences = load_multiway(job.eval.retrieval, job.eval.retrieval_sentences)
        task = job.task
        self.task_sets = {}
        if task.eval_languages and job.alignment.task:
            for lang in task.eval_languages:
                rows = read_task_file(eval_file(task.eval_dir, lang), task.text_column, task.label_column)
                rows = rows[:task.eval_examples] if task.eval_examples else rows
                check_labels(rows, task.num_labels, f"task.eval_dir {lang}")
                self.task_sets[lang] = rows

    def retrieval(self, tag: str, step: int) -> dict[str, float]:
        """Retrieval accuracy now, labelled `tag` (before / after / final); {} without a retrieval set."""
        if self.sentences is None:
            return {}
        job = self.job
        with eval_mode(self.model):
            result = retrieval_over_ranks(self.model.body(), self.tokenizer, self.sentences, self.layers,
                                          job.eval.k, job.eval.batch_size, job.alignment.max_length,
                                          self.engine.rank, self.engine.world_size)
        self.results[tag] = result
        means = dict(zip(result.layers, result.mean_per_layer().tolist()))
        metrics = {f"retrieval_{tag}": sum(means[i] for i in self.aligned) / len(self.aligned)}
        metrics |= {f"retrieval_{tag}_layer{i}": means[i] for i in result.layers}
        if self.subset is not None:
            subset = [result.languages.index(lang) for lang in self.subset if lang in result.languages]
            if len(subset) >= 2:
                index = torch.tensor(subset)
                within = [result.matrix(i)[index][:, index].nanmean().item() for i in self.aligned]
                metrics[f"retrieval_{tag}_subset"] = sum(within) / len(within)
        if self.engine.is_main:
            folder = self.out_dir / f"retrieval_{tag}"
            result.write_csv(folder)
            save_retrieval_plots(result, folder, layer=self.aligned[0])
            plot_layer_curves(self.results, self.out_dir / "retrieval_layers.png")
            self.tracker.log_artifacts(str(folder), f"eval/retrieval_{tag}")
            self.tracker.log_artifact(str(self.out_dir / "retrieval_layers.png"), "eval")
        self.tracker.log_metrics(metrics, step=step)
        return metrics

    def task(self) -> dict[str, float]:
        """Accuracy per evaluated language (argmax of the model's `score` logits); {} without eval languages."""
        if not self.task_sets:
            return {}
        engine = self.engine

        def predict(batch: dict) -> torch.Tensor:
            return engine(objective="score", **engine.to_device(batch)).logits

        with eval_mode(self.model):
            accuracy = task_accuracy(predict, self.task_sets, self.eval_collate, self.job.eval.batch_size,
                                     engine.rank, engine.world_size)
        source = self.job.task.source_language
        metrics = {f"accuracy_{lang}": acc for lang, acc in accuracy.items()}
        if source in accuracy:
            metrics["source_accuracy"] = accuracy[source]
        targets = [acc for lang, acc in accuracy.items() if lang != source]
        if targets:
            metrics["zero_shot_accuracy"] = sum(targets) / len(targets)
        if engine.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            table = self.out_dir / "task_accuracy.csv"
            table.write_text("language,accuracy,examples\n" + "".join(
                f"{lang},{acc:.6f},{len(self.task_sets[lang])}\n" for lang, acc in accuracy.items()))
            self.tracker.log_artifact(str(table), "eval")
        return metrics
