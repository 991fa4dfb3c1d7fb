"""MASSIVE's slot annotations: an annotated utterance -> its words, each word's slot, the answer text.

    words, slots = annotated_words("wake me up at [time : five am] [date : this week]", by_character=False)
    # ("wake", "me", "up", "at", "five", "am", "this", "week"),
    # ("Other", "Other", "Other", "Other", "time", "time", "date", "date")
    slot_answer("wake me up at [time : five am] [date : this week]")   # "time: five am; date: this week"

The words and slots follow MASSIVE's evaluation as the middle-layer alignment study runs it
(`eval_massive.py`, after the MASSIVE release's `create_hf_dataset.py`): whitespace chunks of
`annot_utt`, a chunk `[type` opens a slot (the `:` after it is skipped) and a chunk ending in `]`
closes it; zh/ja (`by_character`) split non-ASCII chunks into characters (an ASCII chunk stays whole
and, as in the release, does not close a slot). The answer the model is trained to write is the
study's: the bracketed `type : value` parts joined by "; " with " :" made ":", or "None".
"""

from __future__ import annotations

import re

OUTSIDE = "Other"      # MASSIVE's label of a word outside every slot
NO_SLOTS = "None"      # the answer of an utterance without slots (the study's)


def slot_answer(annot_utt: str) -> str:
    """The study's target text: `[time : five am] ... [date : friday]` -> `time: five am; date: friday`."""
    parts = re.findall(r"\[(.+?)\]", annot_utt)
    return "; ".join(parts).replace(" :", ":") if parts else NO_SLOTS


def annotated_words(annot_utt: str, by_character: bool, utt: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(words, each word's slot type or "Other") of a MASSIVE `annot_utt` (see the module docstring).

    With `utt` (the plain utterance) and whitespace splitting, the words are `utt.split()` when they
    are as many as the slots (MASSIVE's evaluation matches predictions against those)."""
    words, slots = [], []
    label, after_open = OUTSIDE, False
    for chunk in annot_utt.split():
        if chunk.startswith("["):
            label, after_open = chunk.lstrip("["), True
            continue
        if chunk == ":" and after_open:
            after_open = False
            continue
        if by_character and not chunk.isascii():
            for char in chunk:
                if char == "]":
                    label = OUTSIDE
                else:
                    words.append(char)
                    slots.append(label)
            continue
        words.append(chunk.rstrip("]"))
        slots.append(label)
        if chunk.endswith("]") and not by_character:
            label = OUTSIDE
    if utt is not None and not by_character and len(utt.split()) == len(slots):
        words = utt.split()
    return tuple(words), tuple(slots)
