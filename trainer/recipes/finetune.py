"""Task fine-tuning with zero-shot evaluation (M1's FT and S1+FT), model selection by S-DEV and T-DEV.

    train       English examples of `task.benchmark` (or `task.train_benchmark`), a classification head
                (NLI, sentiment: 3 classes) or a multiple-choice head (Belebele) on the pooled last
                layer; LoRA on the LLM (FT), or the stage-1 MT-LLM reading NLLB tokens (S1+FT)
    every 10%   dev and test score of the source language and of every target language
    at the end  S-DEV: the step with the best source dev score, for every language; T-DEV: for each
                language the step with its best dev score; the test table under both selections

Choice: the test sets are scored at every evaluation step, so a selection reads its step's test
scores instead of reloading a checkpoint (the same numbers, no extra checkpoints kept). Scores are
accuracy, or macro-F1 for NusaX (`task.metric`). The dev/test history is OUTPUT_DIR/eval/history.jsonl,
rewritten as a resumed run re-evaluates (the last row of a step counts).
"""

from __future__ import annotations

import json

from trainer.config import FinetuneJob
from trainer.data.batches import MicroBatches
from trainer.data.benchmarks import BENCHMARKS, load_benchmark
from trainer.data.task import TaskExampleCollator
from trainer.eval.metrics import METRICS
from trainer.eval.plots import plot_language_bars
from trainer.eval.selection import select_checkpoints
from trainer.eval.sharded import task_confusion
from trainer.fsutil import write_atomic
from trainer.loop import Hooks, Run, Sums, seed_micro_batch, train
from trainer.models.loading import load_llm_tokenizer, load_nllb_tokenizer
from trainer.models.task_model import build_task_model
from trainer.objectives.task import classification_loss


def examples(job: FinetuneJob, benchmark: str, language: str, split: str) -> list:
    t = job.task
    template = t.files.get(split)
    rows = load_benchmark(benchmark, language, split, files=[template.format(language=language)] if template else None)
    return rows if split == "train" or not t.max_eval_examples else rows[:t.max_eval_examples]


def run(r: Run) -> dict:
    job: FinetuneJob = r.job
    engine, t, out = r.engine, job.task, r.out_dir / "eval"
    benchmark = BENCHMARKS[t.benchmark]
    languages = list(dict.fromkeys([t.source_language, *t.target_languages]))
    s1 = job.model.stage1_export is not None
    tokenizer = (load_nllb_tokenizer(job.model.encoder, job.model.cache_dir) if s1
                 else load_llm_tokenizer(job.model.llm, job.model.cache_dir))
    collate = TaskExampleCollator(tokenizer, t.max_length, set_language=s1)
    model = build_task_model(job.model, benchmark.task, benchmark.num_labels).train()
    batches = MicroBatches(examples(job, t.train_benchmark or t.benchmark, t.source_language, "train"),
                           job.optim.micro_batch_size, collate, seed=job.seed, rank=engine.rank,
                           world_size=engine.world_size)
    sets = {split: {lang: examples(job, t.benchmark, lang, split) for lang in languages}
            for split in ("validation", "test")}
    metric, history = METRICS[t.resolved_metric], out / "history.jsonl"

    def step(step: int) -> Sums:
        sums = Sums()
        for _ in range(job.optim.grad_accum):
            batch = engine.to_device(next(batches))
            seed_micro_batch(job.seed, batches.last_index)
            loss = classification_loss(engine(**batch).logits, batch["labels"])
            engine.backward(loss)
            engine.step()
            sums.add("loss", loss.item())
            sums.count_tokens(float(batch["attention_mask"].sum()))
        return sums

    def evaluate(done: int) -> dict[str, float]:
        predict = lambda batch: engine(**engine.to_device(batch)).logits  # noqa: E731
        scores = {}
        for split, by_language in sets.items():
            confusion = task_confusion(predict, by_language, collate, t.eval_batch_size, benchmark.num_labels,
                                       engine.rank, engine.world_size)
            scores |= {f"{'dev' if split == 'validation' else 'test'}_{lang}": metric(c) for lang, c in confusion.items()}
        if engine.is_main:
            history.parent.mkdir(parents=True, exist_ok=True)
            with history.open("a") as f:
                f.write(json.dumps({"step": done, **scores}) + "\n")
        return scores

    every = max(1, round(t.eval_every * job.optim.max_steps)) if t.eval_every else job.optim.max_steps

    def fresh() -> dict[str, float]:
        if engine.is_main:
            history.unlink(missing_ok=True)
        return {}

    def at_end() -> dict[str, float]:
        if job.optim.max_steps % every:
            evaluate(job.optim.max_steps)
        return select_and_report(r, history, t.source_language, languages, t.resolved_metric)

    return train(r, model, batches, step, Hooks(before=fresh, after_step=lambda d: evaluate(d) if d % every == 0
                                                 else {}, at_end=at_end))


def select_and_report(r: Run, history_path, source: str, languages: list[str], metric: str) -> dict[str, float]:
    """S-DEV and T-DEV over the dev history -> per-language test scores, averages over the targets; the table
    (eval/task_test.csv) and a bar chart go to the run directory and MLflow."""
    rows = {}
    for line in history_path.read_text().splitlines():   # a step evaluated again after a resume: the last counts
        row = json.loads(line)
        rows[row["step"]] = row
    dev = {step: {lang: row[f"dev_{lang}"] for lang in languages} for step, row in rows.items()}
    chosen = select_checkpoints(dev, source)
    s_dev = {lang: rows[chosen["s_dev"]][f"test_{lang}"] for lang in languages}
    t_dev = {lang: rows[chosen["t_dev"][lang]][f"test_{lang}"] for lang in languages}
    targets = [lang for lang in languages if lang != source]
    final = {f"test_sdev_{lang}": s_dev[lang] for lang in languages} | {f"test_tdev_{lang}": t_dev[lang]
                                                                        for lang in languages}
    final |= {"s_dev_step": chosen["s_dev"], "source_test": s_dev[source]}
    if targets:
        final |= {"target_mean_sdev": sum(s_dev[lang] for lang in targets) / len(targets),
                  "target_mean_tdev": sum(t_dev[lang] for lang in targets) / len(targets)}
    if r.engine.is_main:
        out = history_path.parent
        table = "language,s_dev_step,s_dev_test,t_dev_step,t_dev_test\n" + "".join(
            f"{lang},{chosen['s_dev']},{s_dev[lang]:.6f},{chosen['t_dev'][lang]},{t_dev[lang]:.6f}\n"
            for lang in languages)
        if targets:
            table += f"target_mean,,{final['target_mean_sdev']:.6f},,{final['target_mean_tdev']:.6f}\n"
        write_atomic(out / "task_test.csv", table)
        plot_language_bars({"S-DEV": s_dev, "T-DEV": t_dev}, out / "task_test.png", f"test {metric}")
    r.log_files(history_path.parent / "task_test.csv", "eval")
    r.log_files(history_path.parent / "task_test.png", "eval")
    return final
