"""NLLB as a translator: the full encoder-decoder, one batch of sentences at a time through `generate`.

`Translator.translate(texts, src_lang, tgt_lang)` is the one translation function: `data_prep.translate`
calls it in-process, `TranslatorActor` (a Ray Data callable class holding the model) maps it over planned
batches with `--ray`, and `benchmarks/translate_throughput.py` times it. The choices (METHODS.md,
"Machine translation for data"): greedy decoding by default (`num_beams=1`, no sampling), beam search
as an option; the source language is the tokenizer's `src_lang` (its language tag leads the input),
the target language is forced as the first generated token (`forced_bos_token_id`), as NLLB was trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from trainer.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DecodeSettings:
    """How sentences are encoded and decoded (they are part of a translation job's identity)."""

    beams: int = 1                     # 1: greedy (the paper's choice); N > 1: beam search with N beams
    max_length: int = 512              # source tokens kept (language tag and </s> included); longer is cut
    max_new_tokens: int | None = None  # None: 2 x the batch's longest source + 10, within the model's positions
    dtype: str = "auto"                # auto: bfloat16 on a GPU, float32 on the CPU

    def __post_init__(self):
        if self.beams < 1 or self.max_length < 3 or (self.max_new_tokens is not None and self.max_new_tokens < 1):
            raise UserError(f"decoding settings out of range: {self} (beams >= 1, max_length >= 3, "
                            f"max_new_tokens >= 1)")
        if self.dtype not in ("auto", *DTYPES):
            raise UserError(f"--dtype {self.dtype!r}: choose auto, {', '.join(DTYPES)}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str):
    """The NLLB tokenizer of a model directory or hub name."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def check_language_codes(tokenizer, codes: list[str], model: str) -> None:
    """Every NLLB code must be one of the tokenizer's language tokens (UserError naming the model and code)."""
    vocab = tokenizer.get_vocab()
    missing = [code for code in codes if code not in vocab]
    if missing:
        raise UserError(f"--model {model}: its tokenizer has no language token {', '.join(missing)} "
                        f"(an NLLB-200 model and tokenizer are needed)")


class Translator:
    """An NLLB model (`M2M100ForConditionalGeneration`, eval mode) with its tokenizer and decoding settings."""

    def __init__(self, model: torch.nn.Module, tokenizer, settings: DecodeSettings, device: str | torch.device):
        self.model, self.tokenizer, self.settings, self.device = model.eval(), tokenizer, settings, device

    @classmethod
    def load(cls, path: str, settings: DecodeSettings, device: str | None = None) -> "Translator":
        """Load a model directory or hub name (`data_prep.translate` resolves `tiny:nllb` first)."""
        from transformers import AutoModelForSeq2SeqLM

        device = device or default_device()
        dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if device.startswith("cuda")
                                                                 else "float32")
        model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
        return cls(model, load_tokenizer(path), settings, device)

    def encode(self, texts: list[str], src_lang: str) -> dict[str, torch.Tensor]:
        """`src_lang` tag + tokens + `</s>`, right-padded: input_ids, attention_mask [b, s], s <= max_length."""
        self.tokenizer.src_lang = src_lang
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.settings.max_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def max_new_tokens(self, source_length: int) -> int:
        """The generation budget of a batch whose longest source has `source_length` tokens."""
        if self.settings.max_new_tokens is not None:
            return self.settings.max_new_tokens
        positions = getattr(self.model.config, "max_position_embeddings", 1024)
        return min(2 * source_length + 10, positions - 2)

    @torch.inference_mode()
    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translate `texts` (one batch, one language pair; NLLB codes) -> one string per text, same order.

        Greedy (or beam search with `settings.beams`) through `model.generate`, the target language
        forced as the first generated token; special tokens are dropped from the decoded text.
        """
        if not texts:
            return []
        enc = self.encode(texts, src_lang)
        out = self.model.generate(**enc, forced_bos_token_id=self.tokenizer.convert_tokens_to_ids(tgt_lang),
                                  num_beams=self.settings.beams, do_sample=False,
                                  max_new_tokens=self.max_new_tokens(enc["input_ids"].shape[1]))
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


class TranslatorActor:
    """Ray Data's callable class: one `Translator` per actor (loaded once), each input row a planned batch.

    Rows: `key`, `texts` (the batch's sentences), `src_lang`, `tgt_lang` -> rows `key`, `translations`.
    """

    def __init__(self, path: str, settings: dict[str, Any]):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.translator = Translator.load(path, DecodeSettings(**settings))

    def __call__(self, rows: dict[str, Any]) -> dict[str, list]:
        keys, translations = [], []
        for key, texts, src, tgt in zip(rows["key"], rows["texts"], rows["src_lang"], rows["tgt_lang"]):
            keys.append(str(key))
            translations.append(self.translator.translate([str(t) for t in texts], str(src), str(tgt)))
        return {"key": keys, "translations": translations}

