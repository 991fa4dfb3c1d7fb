"""M2's generative tasks in the align recipe: training examples, greedy decoding, per-language scores.

    gen = GenerativeTask(r, tokenizer)     # r.job.task is a GenerativeTaskConfig
    gen.train_examples()                   # TaskExamples of the training languages (translation: both directions)
    gen.collate                            # prompt + answer batches, loss on the answer (causal_lm_loss)
    gen.evaluation(engine)()               # every rank: greedy decoding, scores; rank 0 writes eval/task_generation.csv

Slot filling (MASSIVE): one example per utterance, scored by MASSIVE's slot F1 (`slot_f1_<lang>`).
Translation (FLORES): one example per sentence and direction with `task.translation_pivot`, scored by
sacrebleu's BLEU and chrF (and COMET with `task.comet_model`) per direction (`bleu_deu_Latn-eng_Latn`).
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer import distributed
from trainer.config import GenerativeTaskConfig
from trainer.data.benchmarks import BENCHMARKS, TaskExample, load_benchmark
from trainer.data.prompts import ChatPrompts, GenerativeCollator
from trainer.data.translation_pairs import direction_key, translation_examples
from trainer.eval import generation_metrics as gm
from trainer.eval.generation_by_language import GenerationByLanguage
from trainer.eval.metrics import f1_from_counts
from trainer.languages.segmentation import splits_by_character
from trainer.loop import Run


def slot_scores(examples: Sequence[TaskExample], predictions: list[str]) -> dict[str, float]:
    """{"slot_f1": MASSIVE's micro slot F1 over the set} (`trainer.eval.generation_metrics`)."""
    correct = predicted = gold = 0
    for example, answer in zip(examples, predictions):
        c, p, g = gm.slot_counts(answer, example.words, example.word_slots, splits_by_character(example.language))
        correct, predicted, gold = correct + c, predicted + p, gold + g
    return {"slot_f1": f1_from_counts(correct, predicted, gold)}


def translation_scores(comet_model: str | None):
    """`score(examples, predictions)` -> {"bleu", "chrf"[, "comet"]} of one direction (sacrebleu defaults, 0-100)."""
    def score(examples: Sequence[TaskExample], predictions: list[str]) -> dict[str, float]:
        references = [e.target for e in examples]
        scores = {"bleu": gm.bleu(predictions, references), "chrf": gm.chrf(predictions, references)}
        if comet_model:
            scores["comet"] = gm.comet_score(comet_model, [e.texts[0] for e in examples], predictions, references)
        return scores
    return score


class GenerativeTask:
    def __init__(self, r: Run, tokenizer):
        self.run, self.tokenizer = r, tokenizer
        self.task: GenerativeTaskConfig = r.job.task
        t = self.task
        if t.comet_model:
            gm.require_comet()
        self.kind = BENCHMARKS[t.benchmark].task
        self.prompts = ChatPrompts(tokenizer, self.kind, t.system_prompt, t.chat_template)
        self.collate = GenerativeCollator(tokenizer, self.prompts, t.max_length)

    def examples(self, languages: list[str], split: str, limit: int | None) -> dict[str, list[TaskExample]]:
        """{language or direction: examples} of `split` (rank 0 fills the hub cache first)."""
        t = self.task
        with distributed.main_first():
            if t.is_translation:
                return translation_examples(t.benchmark, languages, t.translation_pivot, t.translation_directions,
                                            split, t.files.get(split), limit)
            return {lang: load_benchmark(t.benchmark, lang, split,
                                         [t.files[split].format(language=lang)] if split in t.files else None)[:limit]
                    for lang in languages}

    def train_examples(self) -> list[TaskExample]:
        t = self.task
        return [e for examples in self.examples(t.train_languages, "train", t.train_examples).values()
                for e in examples]

    def source_keys(self) -> set[str]:
        """The training languages' keys: the languages themselves, or their directions with the pivot."""
        t = self.task
        if not t.is_translation:
            return set(t.train_languages)
        return {direction_key(*pair) for lang in t.train_languages
                for pair in ((lang, t.translation_pivot), (t.translation_pivot, lang))}

    def evaluation(self) -> GenerationByLanguage | None:
        """Greedy decoding of `task.eval_split` for every eval language; None without eval languages."""
        t, r = self.task, self.run
        if not t.eval_languages:
            return None
        engine, collate = r.engine, self.collate
        stops, pad = collate.stop_ids(), self.tokenizer.pad_token_id

        def generate(examples: list) -> list[str]:
            batch = engine.to_device(collate.prompts_batch(examples))
            sequences = engine("generate", **batch, max_new_tokens=t.max_new_tokens, eos_token_id=stops,
                               pad_token_id=pad, synced_gpus=engine.world_size > 1).sequences
            new = sequences[:, batch["input_ids"].shape[1]:]
            return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

        score = translation_scores(t.comet_model) if t.is_translation else slot_scores
        return GenerationByLanguage(self.examples(t.eval_languages, t.eval_split, t.eval_examples), generate, score,
                                    self.source_keys(), r.out_dir / "eval", r.job.eval.batch_size, engine.rank,
                                    engine.world_size)
