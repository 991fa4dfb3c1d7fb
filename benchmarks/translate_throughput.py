"""Sentences per second of `data_prep.translate`'s translation function (`Translator.translate`).

    python benchmarks/translate_throughput.py                           # CPU: tiny:nllb; GPU too when there is one
    python benchmarks/translate_throughput.py --sentences 2000 --batch-sizes 32 64 128 --threads 1

Input: generated sentences of the nine demo languages (`trainer.tiny.text`, 6-13 words, about 35 NLLB
tokens with the tiny tokenizer), each translated into English, planned as the CLI plans them
(`plan_batches`: unique sentences, longest first, batches of B) and translated batch by batch, greedy.
Models have random weights, so they rarely emit `</s>`: every sentence decodes up to --max-new-tokens
(default 32, the length of a typical sentence), the same work for every model and batch size; the
table shows the tokens generated per sentence.

- CPU: `tiny:nllb` (M2M100, d=32, 2+1 layers, vocabulary 1,203), float32.
- GPU (when CUDA is available): the NLLB-200-distilled-600M shape (d=1024, 12+12 layers, 16 heads,
  FFN 4096, vocabulary 256,206), random weights in bfloat16; the tiny tokenizer makes its inputs.

Only the translation calls are timed (after one warm-up batch); prints a table and, with --json, JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data_prep.translate import plan_batches  # noqa: E402
from data_prep.translator import DecodeSettings, Translator, load_tokenizer  # noqa: E402
from trainer.models.loading import resolve_model_path  # noqa: E402
from trainer.tiny.text import DEMO_LANGUAGES, sentences  # noqa: E402

NLLB_600M = dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                 decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, vocab_size=256206,
                 max_position_embeddings=1024, scale_embedding=True)


def nllb_600m_shaped(tokenizer, device: str) -> torch.nn.Module:
    """A random-weight M2M100 of NLLB-200-distilled-600M's shape, bfloat16, on `device`."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(**NLLB_600M, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        return M2M100ForConditionalGeneration(config).to(torch.bfloat16)


def measure(translator: Translator, tokenizer, batch_size: int, per_language: int) -> dict:
    """Translate `per_language` sentences of each demo language into English; sentences/s over the timed calls,
    and the tokens generated per sentence (language tag and `</s>` excluded)."""
    batches = []
    for i, lang in enumerate(lang for lang in DEMO_LANGUAGES if lang != "eng_Latn"):
        planned, _ = plan_batches(lang, sentences(lang, per_language, seed=100 + i), tokenizer, lang, "eng_Latn",
                                  batch_size, translator.settings.max_length)
        batches += planned
    translator.translate(list(batches[0].texts), batches[0].src_lang, batches[0].tgt_lang)   # warm-up
    generate, generated = translator.model.generate, []

    def counting(*args, **kwargs):   # the generated ids: [b, 1 + tag + tokens + </s> + pad]
        ids = generate(*args, **kwargs)
        tokens = ids[:, 2:]
        generated.append(int((tokens != tokenizer.pad_token_id).sum() - (tokens == tokenizer.eos_token_id).sum()))
        return ids

    translator.model.generate = counting
    if str(translator.device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        translator.translate(list(batch.texts), batch.src_lang, batch.tgt_lang)
    if str(translator.device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del translator.model.generate
    n = sum(len(b.texts) for b in batches)
    return {"batch_size": batch_size, "sentences": n, "seconds": round(seconds, 2),
            "sentences_per_s": round(n / seconds, 1), "tokens_out_per_sentence": round(sum(generated) / n, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1000, help="sentences in all (over 9 languages)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache-dir", default=".cache/tiny-models")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU run even when CUDA is available")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path("tiny:nllb", args.cache_dir)
    tokenizer = load_tokenizer(path)
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens, dtype="float32")
    per_language = max(1, args.sentences // 9)
    runs = []
    cpu = Translator.load(path, settings, "cpu")
    for b in args.batch_sizes:
        runs.append({"model": "tiny:nllb", "device": f"cpu ({torch.get_num_threads()} threads)",
                     **measure(cpu, tokenizer, b, per_language)})
    if torch.cuda.is_available() and not args.no_gpu:
        gpu = Translator(nllb_600m_shaped(tokenizer, "cuda"), tokenizer,
                         DecodeSettings(max_new_tokens=args.max_new_tokens, dtype="bfloat16"), "cuda")
        for b in args.batch_sizes:
            runs.append({"model": "NLLB-600M shape (random, bf16)", "device": torch.cuda.get_device_name(),
                         **measure(gpu, tokenizer, b, per_language)})
    print(f"machine: {platform.machine()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
          f"max_new_tokens {args.max_new_tokens}, greedy")
    print(f"{'model':34} {'device':24} {'batch':>5} {'sentences':>9} {'seconds':>8} {'sent/s':>8} {'tokens out':>10}")
    for r in runs:
        print(f"{r['model']:34} {r['device']:24} {r['batch_size']:>5} {r['sentences']:>9} {r['seconds']:>8} "
              f"{r['sentences_per_s']:>8} {r['tokens_out_per_sentence']:>10}")
    if args.json:
        print(json.dumps(runs))
    return runs


if __name__ == "__main__":
    main()
