"""Metrics of generated answers (M2): MASSIVE's slot F1, sacrebleu's BLEU and chrF, COMET (optional).

Slot F1 follows MASSIVE's evaluation as the middle-layer alignment study runs it (`eval_massive.py`,
MASSIVE's `eval_preds`): a generated answer "type: value; type: value" is split at "; ", each part
that splits at ": " into exactly two pieces is a (type, value) pair (any other part is malformed and
ignored, as the study's script warns and skips; so is an empty type or value); every occurrence of the
value's tokens in the utterance (case-insensitive; characters for zh/ja) gets the type, every other
token "Other"; "None" or an empty answer predicts no slot. Gold and predicted token labels become BIO
(a run of one type is one entity; `Other` is O) and entities are counted as seqeval does; F1 is micro
over the corpus (`f1_from_counts` of the summed counts), in [0, 1].

BLEU and chrF: `sacrebleu.corpus_bleu` / `corpus_chrf` with their defaults (BLEU: 13a tokenisation,
4-grams, exponential smoothing; chrF: character 6-grams, beta 2, no word n-grams), one reference per
sentence, on sacrebleu's 0-100 scale, as the study's `evaluate.load("sacrebleu")`. COMET needs
`unbabel-comet` (not a dependency): `comet_score` raises a clear error without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.eval.metrics import entity_counts

OUTSIDE = "Other"


def slot_pairs(answer: str) -> list[tuple[str, str]]:
    """A generated answer -> its well-formed (type, value) pairs (see the module docstring)."""
    text = answer.strip()
    if not text or text.lower() == "none":
        return []
    pairs = []
    for part in text.split("; "):
        pieces = part.split(": ")
        if len(pieces) == 2 and pieces[0].strip() and pieces[1].strip():
            pairs.append((pieces[0], pieces[1]))
    return pairs


def predicted_slots(answer: str, words: Sequence[str], by_character: bool) -> list[str]:
    """Each word's predicted slot type: every (case-insensitive) occurrence of a pair's value in `words` gets its
    type, later pairs overwriting earlier ones; `by_character`: the value is matched character by character."""
    labels = [OUTSIDE] * len(words)
    lowered = [w.lower() for w in words]
    for slot_type, value in slot_pairs(answer):
        pattern = [p.lower() for p in (list(value) if by_character else value.split())]
        n = len(pattern)
        for i in range(len(words) - n + 1):
            if lowered[i:i + n] == pattern:
                labels[i:i + n] = [slot_type] * n
    return labels


def to_bio(labels: Sequence[str]) -> list[str]:
    """MASSIVE's `convert_to_bio`: `Other` -> O; a label differing from the previous one starts B-, a repeat is I-."""
    tags, previous = [], None
    for label in labels:
        if label == OUTSIDE:
            tags.append("O")
        elif label != previous:
            tags.append(f"B-{label}")
        else:
            tags.append(f"I-{label}")
        previous = label
    return tags


def slot_counts(answer: str, words: Sequence[str], gold_slots: Sequence[str], by_character: bool) -> tuple[int, int, int]:
    """(slot entities predicted right, predicted, gold) of one utterance: add them up, then `f1_from_counts`."""
    return entity_counts(to_bio(gold_slots), to_bio(predicted_slots(answer, words, by_character)))


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (defaults; 0-100) of hypotheses against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (defaults: chrF2, character 6-grams; 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def require_comet() -> None:
    """Raise a clear error unless `unbabel-comet` is installed (checked before training starts)."""
    import importlib.util

    if importlib.util.find_spec("comet") is None:
        raise RuntimeError("task.comet_model is set but unbabel-comet is not installed: pip install unbabel-comet "
                           "(or set task.comet_model: null for BLEU and chrF only)")


def comet_score(model_name: str, sources: Sequence[str], hypotheses: Sequence[str], references: Sequence[str],
                batch_size: int = 16) -> float:
    """The system-level COMET score (mean of the segment scores) of `model_name`, e.g. Unbabel/wmt22-comet-da."""
    require_comet()
    from comet import download_model, load_from_checkpoint

    model = load_from_checkpoint(download_model(model_name))
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    return float(model.predict(data, batch_size=batch_size, gpus=0, progress_bar=False).system_score)
