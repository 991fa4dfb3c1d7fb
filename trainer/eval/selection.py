"""Model selection on dev sets (M1): S-DEV on the source language's dev set, T-DEV on each target language's.

    history = {100: {"eng_Latn": 0.61, "deu_Latn": 0.52}, 200: {"eng_Latn": 0.64, "deu_Latn": 0.50}}
    select_checkpoints(history, source="eng_Latn")
    # {"s_dev": 200, "t_dev": {"deu_Latn": 100, "eng_Latn": 200}}

S-DEV picks one step for every language: the best source dev score. T-DEV picks, for each language,
the step with the best dev score in that language (an oracle-like upper bound the study reports
beside S-DEV). Ties go to the earlier step; a language missing at a step, or a NaN score, does
not compete there. Scores are "higher is better" (accuracy, macro-F1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def best_step(history: Mapping[int, Mapping[str, float]], language: str) -> int | None:
    """The step with the highest finite score of `language` (the earliest on ties); None if it has none."""
    best, best_score = None, -math.inf
    for step in sorted(history):
        score = history[step].get(language)
        if score is not None and not math.isnan(score) and score > best_score:
            best, best_score = step, score
    return best


def select_checkpoints(history: Mapping[int, Mapping[str, float]], source: str) -> dict:
    """{"s_dev": the step chosen on `source`'s dev set, "t_dev": {language: its own best step}}."""
    languages = sorted({lang for scores in history.values() for lang in scores})
    if source not in languages:
        raise ValueError(f"S-DEV: no dev scores for the source language {source} (have: {', '.join(languages)})")
    return {"s_dev": best_step(history, source),
            "t_dev": {lang: step for lang in languages if (step := best_step(history, lang)) is not None}}
