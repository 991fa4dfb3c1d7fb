"""What the alignment recipes (M2 `align`, M3 `realign`) share: model, data, evaluations, the micro-batch step.

Objectives by micro-batch: `align` = the contrastive loss on a batch of translation pairs (rows
0..B-1 English, B..2B-1 the translations, pooled at `alignment.layers`); `task` = the recipe's
task loss on source-language examples. The RNG is re-seeded before global micro-batch
`(step * per_step + j) * world_size + rank`, so dropout depends on the position in the run only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from trainer import distributed
from trainer.config import AlignmentJob, ConfigError, TaskDataConfig
from trainer.data.batches import MicroBatches
from trainer.data.pairs import load_multiway, pair_batches
from trainer.data.task import eval_sets, task_batches
from trainer.eval.retrieval_by_layer import RetrievalByLayer
from trainer.eval.task_by_language import TaskByLanguage
from trainer.loop import Run, Streams, Sums, global_micro_batch, seed_micro_batch
from trainer.models.aligned import AlignedModel, TaskKind, build_aligned_model
from trainer.models.pooling import LayerIndexError, resolve_layers
from trainer.objectives.contrastive import pair_loss

log = logging.getLogger(__name__)

STREAM_OF = {"align": "pairs", "task": "task"}   # objective -> the stream its micro-batches come from
Loss = Callable[[dict], torch.Tensor]             # a device batch -> scalar loss (forward included)


def build_model(job: AlignmentJob, task: TaskKind, num_labels: int) -> AlignedModel:
    """The backbone with LoRA (or fully trainable) and the task head; a bad `alignment.layers` names the key."""
    m = job.model
    try:
        model = build_aligned_model(m.llm, m.lora, m.finetune, m.cache_dir, task, job.alignment.layers,
                                    num_labels, m.pooling, job.alignment.pooling)
    except LayerIndexError as e:
        raise ConfigError(f"alignment.layers: {e}") from None
    return model.train()


def build_data(r: Run, tokenizer, collate, pairs: bool, task: bool, task_examples: list | None = None) -> Streams:
    """The pair stream (when `pairs`) and the task stream (when `task`), checkpointed as one.

    The task stream reads `task_examples` (a benchmark's, realign) or else the rows of `task.train_files`.
    """
    job, engine = r.job, r.engine
    with distributed.main_first():  # hub sources: rank 0 fills the datasets cache first
        pair_stream = pair_batches(job.parallel, job.alignment_batch_size, tokenizer, job.alignment.max_length,
                                   engine.rank, engine.world_size) if pairs else None
    t = job.task
    if not task:
        task_stream = None
    elif task_examples is not None:
        task_stream = MicroBatches(task_examples, job.optim.micro_batch_size, collate, seed=job.seed,
                                   rank=engine.rank, world_size=engine.world_size)
    else:
        task_stream = task_batches(t.train_files, t.text_column, t.label_column, t.num_labels, collate,
                                   job.optim.micro_batch_size, job.seed, engine.rank, engine.world_size)
    return Streams(pairs=pair_stream, task=task_stream)


def temperature(r: Run, model: AlignedModel, by_family: dict[str, float], default: float) -> float:
    """`alignment.temperature`, with auto = the study's value for the backbone's family.

    The recipes report it with the evaluations before training (metric `alignment_temperature`).
    """
    chosen = r.job.alignment.temperature
    if chosen == "auto":
        chosen = by_family.get(model.model_type, default)
    log.info("alignment: temperature %s (alignment.temperature=%s, model type %s)",
             chosen, r.job.alignment.temperature, model.model_type)
    return chosen


def losses(r: Run, task_loss: Callable[[torch.Tensor, dict], torch.Tensor], tau: float) -> dict[str, Loss]:
    """{objective: batch -> loss}: the configured pair loss (temperature `tau`) on pooled embeddings,
    `task_loss(logits, batch)`."""
    a, engine = r.job.alignment, r.engine
    contrastive = pair_loss(a.objective, tau, a.query)

    def align(batch: dict) -> torch.Tensor:
        source, target = engine("embed", **batch).embeddings.chunk(2)   # [B, d] English, [B, d] translations
        return contrastive(source, target)

    def task(batch: dict) -> torch.Tensor:
        return task_loss(engine("logits", **batch).logits, batch)

    return {"align": align, "task": task}


def train_micro_batches(r: Run, data: Streams, loss_of: dict[str, Loss], step: int, objectives: list[str]) -> Sums:
    """One optimizer step: micro-batch j trains `objectives[j]`; logs `loss` and `<objective>_loss`."""
    engine, sums = r.engine, Sums()
    for j, objective in enumerate(objectives):
        batch = engine.to_device(next(data[STREAM_OF[objective]]))
        seed_micro_batch(r.job.seed, global_micro_batch(r, step, j))
        loss = loss_of[objective](batch)
        engine.backward(loss)
        engine.step()
        sums.add("loss", loss)                       # on the device: the loop reads the step once
        sums.add(f"{objective}_loss", loss)
        sums.count_tokens(batch["attention_mask"].sum())
    return sums


class Evaluations:
    """Retrieval by layer and task accuracy per language for this job; each returns {} when not configured.

    Every rank computes (the forwards are split over ranks); rank 0 writes OUTPUT_DIR/eval/ and
    attaches it to the MLflow run.
    """

    def __init__(self, r: Run, model: AlignedModel, tokenizer, collate, predict: Callable[[dict], torch.Tensor]):
        job, engine = r.job, r.engine
        self.run = r
        out_dir = r.out_dir / "eval"
        self.retrieval_eval = self.task_eval = None
        if job.eval.retrieval is not None:
            n_states = model.num_hidden_layers + 1
            try:
                layers = range(n_states) if job.eval.layers is None else resolve_layers(job.eval.layers, n_states)
            except LayerIndexError as e:
                raise ConfigError(f"eval.layers: {e}") from None
            with distributed.main_first():
                sentences = load_multiway(job.eval.retrieval, job.eval.retrieval_sentences)
            subset = [job.parallel.english, *job.parallel.languages] if job.parallel is not None else None
            self.retrieval_eval = RetrievalByLayer(
                sentences, tokenizer, model.hidden_states, layers, model.align_layers, out_dir, subset, job.eval.k,
                job.eval.batch_size, job.alignment.max_length, engine.rank, engine.world_size, job.eval.candidates,
                job.alignment.pooling)
        t = job.task
        if isinstance(t, TaskDataConfig) and t.eval_languages and job.alignment.task:   # a benchmark: tasks.py
            rows = eval_sets(t.eval_dir, t.eval_languages, t.text_column, t.label_column, t.num_labels,
                             t.eval_examples)
            self.task_eval = TaskByLanguage(rows, collate, predict, t.source_language, out_dir, t.num_labels,
                                            job.eval.batch_size, engine.rank, engine.world_size)

    def retrieval(self, tag: str) -> dict[str, float]:
        if self.retrieval_eval is None:
            return {}
        metrics = self.retrieval_eval(tag)
        self.run.log_files(self.retrieval_eval.folder(tag), f"eval/retrieval_{tag}")
        self.run.log_files(self.retrieval_eval.curves, "eval")
        return metrics

    def task(self) -> dict[str, float]:
        if self.task_eval is None:
            return {}
        metrics = self.task_eval()
        self.run.log_files(self.task_eval.table, "eval")
        return metrics
