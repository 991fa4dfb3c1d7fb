"""Tiny random-weight models with tokenizers trained on the spot.

Tests and demos cannot download anything, so these builders write a real
model directory (config, safetensors, tokenizer files) that the ordinary
`from_pretrained` path then loads, exactly as it would load a hub model.
A job names one as `tiny:llama`, `tiny:qwen2`, `tiny:gpt2`, `tiny:gemma2`, `tiny:nllb` or
`tiny:nllb-aligned` (words shared across languages: see `build_tiny_nllb_aligned`); `loading.resolve_model_path` builds it once into a cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    M2M100Config,
    M2M100ForConditionalGeneration,
    NllbTokenizer,
    PreTrainedTokenizerFast,
)

from trainer.tiny import text as synthetic

TINY_LLMS = ("llama", "qwen2", "gpt2", "gemma2")
TINY_ENCODERS = ("xlmr",)  # XLM-R-like bidirectional encoder (realignment with encoder models)
TINY_NAMES = TINY_LLMS + TINY_ENCODERS + ("nllb", "nllb-aligned")

# Small but real: several layers so "middle layer" and per-layer retrieval mean something.
_LLM_CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   max_position_embeddings=512, sliding_window=256),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_positions=512),
    "xlmr": dict(model_type="xlm-roberta", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, max_position_embeddings=520),
}


def tokenizer_corpus(n_per_language: int = 200) -> list[str]:
    """A few hundred generated sentences per demo language, every script included."""
    corpus = []
    for i, lang in enumerate(synthetic.DEMO_LANGUAGES):
        corpus += synthetic.sentences(lang, n_per_language, seed=i)
    corpus += synthetic.english_documents(n_per_language, seed=99)
    return corpus


def _alphabet() -> list[str]:
    chars = set("".join(synthetic.SCRIPT_ALPHABETS.values()))
    chars |= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()。")
    return sorted(chars)


def train_llm_tokenizer(vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2/Llama 3 style) trained on the generated corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special[0], eos_token=special[1],
                                   pad_token=special[2], add_bos_token=True)


def train_nllb_tokenizer(vocab_size: int = 1000) -> NllbTokenizer:
    """NLLB-style Metaspace BPE with the 200+ FLORES-200 language-code tokens."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=_alphabet() + ["▁"], show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = tok.model
    vocab = tok.get_vocab()
    merges = _bpe_merges(tok)
    del model
    return NllbTokenizer(vocab=vocab, merges=merges)


def _bpe_merges(tok: Tokenizer) -> list[tuple[str, str]]:
    import json
    state = json.loads(tok.to_str())
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]


def build_tiny_llm(kind: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random LLM of architecture `kind` and its tokenizer to `out_dir`."""
    if kind not in _LLM_CONFIGS:
        raise ValueError(f"unknown tiny LLM {kind!r}; choose one of {', '.join(TINY_LLMS + TINY_ENCODERS)}")
    out = Path(out_dir)
    tokenizer = train_llm_tokenizer()
    spec = dict(_LLM_CONFIGS[kind])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer),
                                  bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, **spec)
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM
    model = (AutoModel if kind in TINY_ENCODERS else AutoModelForCausalLM).from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_nllb(out_dir: str | os.PathLike, seed: int = 0, d_model: int = 32) -> Path:
    """Write a tiny random M2M100 (NLLB architecture) model and NLLB tokenizer to `out_dir`."""
    out = Path(out_dir)
    tokenizer = train_nllb_tokenizer()
    config = M2M100Config(vocab_size=len(tokenizer), d_model=d_model, encoder_layers=2,
                          decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                          scale_embedding=True)
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_nllb_aligned(out_dir: str | os.PathLike, seed: int = 0, d_model: int = 32) -> Path:
    """`build_tiny_nllb` whose words are shared across the demo languages: a stand-in for NLLB's cross-lingual encoder.

    Every demo language's word for a concept (`trainer.tiny.text.lexicon`, lower- and upper-case) becomes
    one token, and all of a concept's tokens share one embedding row, as do the language codes and the
    full stops: a generated sentence and its translation then encode alike (cosine ~1; Chinese, written
    without spaces, ~0.98). The random `tiny:nllb` carries no cross-lingual signal, so a stage-1 MT-LLM
    built on it cannot transfer; on this one the zero-shot path of M1 can be tested end to end.
    """
    out = build_tiny_nllb(out_dir, seed, d_model)
    tokenizer = NllbTokenizer.from_pretrained(out)
    model = M2M100ForConditionalGeneration.from_pretrained(out)
    groups = [list(dict.fromkeys(f for lang in synthetic.DEMO_LANGUAGES
                                 for word in [synthetic.lexicon(lang)[concept]] for f in (word, word[0].upper() + word[1:])))
              for concept in synthetic.CONCEPTS]
    tokenizer.add_tokens(sorted({f for group in groups for f in group}, key=len, reverse=True))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for group in groups + [list(synthetic.DEMO_LANGUAGES), [".", "。"]]:
            ids = tokenizer.convert_tokens_to_ids(group)
            embeddings[ids] = embeddings[ids[0]].clone()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny(name: str, out_dir: str | os.PathLike) -> Path:
    """Build the tiny model called `name` (one of TINY_NAMES) into `out_dir`."""
    if name == "nllb":
        return build_tiny_nllb(out_dir)
    if name == "nllb-aligned":
        return build_tiny_nllb_aligned(out_dir)
    return build_tiny_llm(name, out_dir)


__all__ = ["TINY_NAMES", "TINY_LLMS", "TINY_ENCODERS", "build_tiny", "build_tiny_llm", "build_tiny_nllb",
           "build_tiny_nllb_aligned",
           "train_llm_tokenizer", "train_nllb_tokenizer"]
