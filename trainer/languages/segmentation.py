"""Languages written without spaces between words, which MASSIVE's evaluation splits by character.

MASSIVE (`scripts/create_hf_dataset.py` of the release, and the middle-layer alignment study's
`eval_massive.py`) tokenizes zh-CN, zh-TW and ja-JP by character (ASCII chunks kept whole) and every
other locale by whitespace; the slot F1 is counted over those tokens.
"""

from __future__ import annotations

CHARACTER_SCRIPTS = ("Hans", "Hant", "Jpan")   # MASSIVE's zh-CN, zh-TW, ja-JP


def splits_by_character(flores: str) -> bool:
    """Whether a FLORES-200 code's script is one MASSIVE splits by character (`zho_Hans` -> True)."""
    return flores.rpartition("_")[2] in CHARACTER_SCRIPTS
