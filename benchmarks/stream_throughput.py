"""Throughput of the dual-tokenized stream (trainer.data.stream), per CPU core.

    python -m benchmarks.stream_throughput --docs 2000 --workers 0 2

What it does:
1. Generates FineWeb-like English-ish documents (500-1000 words, paragraphs,
   a Zipfian vocabulary of 60K pseudo-words built from syllables, so that a
   32K tokenizer sees a realistic ~1.2-1.5 tokens per word).
2. Trains, on that text with `tokenizers`, a 32K byte-level BPE (LLM-like, BOS
   added) and a 32K sentencepiece-style Unigram (Metaspace, NFKC; NLLB's
   `eng_Latn ... </s>` template), saves both and loads them back with
   AutoTokenizer (round trip checked).
   Cached in --work, so a re-run only measures.
3. Writes shards with data_prep.fineweb_shards, then times one epoch of
   StreamLoader (split=document, shuffling on, max_length 512, batch 8) with
   0 workers (one core: reading, tokenizing both views, chunking, collating in
   one process; torch and tokenizers limited to one thread) and with N worker
   processes. Also times the two tokenizers alone on the same documents, and
   the time to the first batch after resuming in mid-epoch.

Reports documents/s, examples/s and tokens/s (non-pad, per view) per run and
per core, as a table and as JSON (--json).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before tokenizers loads: one thread per process
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

SYLLABLES = [c + v for c in ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st",
                             "tr", "ch", "sh", "th", "pl", "gr"]
             for v in ["a", "e", "i", "o", "u", "ea", "ou", "an", "en", "in", "on", "er", "or", "al", "ing", "ed"]]
FUNCTION_WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be",
                  "by", "this", "are", "or", "at", "from", "his", "an", "have", "not", "they", "which", "you"]


def make_lexicon(size: int, rng: np.random.Generator) -> list[str]:
    """`size` distinct pseudo-words of 1-4 syllables, function words first (most frequent)."""
    words, seen = list(FUNCTION_WORDS), set(FUNCTION_WORDS)
    while len(words) < size:
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        w = "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def make_documents(n: int, seed: int, lexicon_size: int = 60_000) -> list[str]:
    """`n` documents of 500-1000 words: Zipf(1.1) word draws, sentences of 5-30 words with punctuation,
    capitals, some numbers, paragraphs of 3-8 sentences separated by blank lines."""
    rng = np.random.default_rng(seed)
    lexicon = make_lexicon(lexicon_size, np.random.default_rng(12345))
    ranks = np.arange(1, len(lexicon) + 1)
    p = 1.0 / ranks ** 1.1
    p /= p.sum()
    docs = []
    for _ in range(n):
        target = int(rng.integers(500, 1001))
        words = [lexicon[i] for i in rng.choice(len(lexicon), size=target, p=p)]
        paragraphs, sentence, para, count = [], [], [], 0
        length, per_para = int(rng.integers(5, 31)), int(rng.integers(3, 9))
        for w in words:
            if rng.random() < 0.02:
                w = str(int(rng.integers(1, 3000)))
            elif rng.random() < 0.05:
                w += ","
            sentence.append(w)
            if len(sentence) >= length:
                s = " ".join(sentence)
                para.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"]))
                sentence, length = [], int(rng.integers(5, 31))
                if len(para) >= per_para:
                    paragraphs.append(" ".join(para))
                    para, per_para = [], int(rng.integers(3, 9))
            count += 1
        if sentence:
            s = " ".join(sentence)
            para.append(s[0].upper() + s[1:] + ".")
        if para:
            paragraphs.append(" ".join(para))
        docs.append("\n\n".join(paragraphs))
    return docs


def train_tokenizers(corpus: list[str], vocab_size: int, out: Path) -> tuple[Path, Path]:
    """Train and save a byte-level BPE LLM tokenizer (Llama-3-like: BOS added) and a sentencepiece-style
    Unigram NLLB tokenizer (Metaspace, NFKC, `eng_Latn ... </s>` template); returns their folders."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    llm_dir, nllb_dir = out / "llm-tokenizer", out / "nllb-tokenizer"
    if not (llm_dir / "tokenizer_config.json").is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        special = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]
        tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special[0], eos_token=special[1],
                                pad_token=special[2], add_bos_token=True).save_pretrained(llm_dir)
    if not (nllb_dir / "tokenizer_config.json").is_file():
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        special = ["<s>", "<pad>", "</s>", "<unk>", "eng_Latn"]
        tok.train_from_iterator(corpus, trainer=trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=special, unk_token="<unk>", show_progress=False))
        tok.post_processor = processors.TemplateProcessing(  # NLLB's template: [lang] text </s>
            single="eng_Latn $A </s>", special_tokens=[("eng_Latn", tok.token_to_id("eng_Latn")),
                                                       ("</s>", tok.token_to_id("</s>"))])
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(nllb_dir)
    return llm_dir, nllb_dir


def check_round_trip(docs: list[str], llm, nllb) -> None:
    """A tokenizer that maps text to <unk> is no tokenizer: both must give the text back."""
    for name, tok in (("llm", llm), ("nllb", nllb)):
        for doc in docs:
            ids = tok(doc)["input_ids"]
            if tok.unk_token_id in ids or " ".join(tok.decode(ids, skip_special_tokens=True).split()) != \
                    " ".join(doc.split()):
                raise RuntimeError(f"the {name} tokenizer does not round-trip the generated text")


def time_stream(cfg, llm, nllb, batch_size: int) -> dict:
    from trainer.data.stream import StreamLoader

    loader = StreamLoader(cfg, llm, nllb, batch_size=batch_size)
    examples = llm_tokens = nllb_tokens = llm_cells = 0
    start = time.perf_counter()
    for batch in loader:
        examples += batch["llm_input_ids"].shape[0]
        llm_tokens += int(batch["llm_attention_mask"].sum())
        nllb_tokens += int(batch["nllb_attention_mask"].sum())
        llm_cells += batch["llm_attention_mask"].numel()
    seconds = time.perf_counter() - start
    docs = loader.num_documents
    return {"seconds": seconds, "documents": docs, "examples": examples, "llm_tokens": llm_tokens,
            "nllb_tokens": nllb_tokens, "docs_per_s": docs / seconds, "examples_per_s": examples / seconds,
            "llm_tokens_per_s": llm_tokens / seconds, "nllb_tokens_per_s": nllb_tokens / seconds,
            "llm_padding_fraction": 1 - llm_tokens / llm_cells}


def time_resume(cfg, llm, nllb, batch_size: int, at: int) -> dict:
    """Seconds to the first batch: from the start, and after load_state_dict at batch `at`."""
    from trainer.data.stream import StreamLoader

    loader = StreamLoader(cfg, llm, nllb, batch_size=batch_size)
    it = iter(loader)
    start = time.perf_counter()
    next(it)
    fresh = time.perf_counter() - start
    for _ in range(at - 1):
        next(it)
    state = loader.state_dict()
    resumed = StreamLoader(cfg, llm, nllb, batch_size=batch_size)
    resumed.load_state_dict(state)
    start = time.perf_counter()
    next(iter(resumed))
    return {"first_batch_s": fresh, "first_batch_after_resume_s": time.perf_counter() - start, "resumed_at": at}


def time_tokenizers(docs: list[str], llm, nllb) -> dict:
    """Both tokenizers alone (fast backend, batches of 8 documents, offsets computed), one thread."""
    out = {}
    for name, tok in (("llm", llm), ("nllb", nllb)):
        backend = tok.backend_tokenizer
        start = time.perf_counter()
        n = sum(len(e.ids) for i in range(0, len(docs), 8)
                for e in backend.encode_batch(docs[i:i + 8], add_special_tokens=False))
        seconds = time.perf_counter() - start
        out[name] = {"tokens": n, "tokens_per_s": n / seconds, "docs_per_s": len(docs) / seconds}
    return out


def machine() -> str:
    """CPU model (from /proc/cpuinfo), usable cores (nproc), Python and torch versions."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (StopIteration, OSError):
        model = platform.processor() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, nproc {cores}, Python {platform.python_version()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="documents to stream")
    parser.add_argument("--train-docs", type=int, default=3000, help="documents to train the tokenizers on")
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to time")
    parser.add_argument("--work", default=".cache/stream-benchmark", help="folder for tokenizers and shards")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from data_prep.fineweb_shards import PrepParams, prepare_shards
    from trainer.data.stream import StreamConfig

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    llm_dir, nllb_dir = train_tokenizers(make_documents(args.train_docs, seed=1), args.vocab, work)
    llm = AutoTokenizer.from_pretrained(llm_dir)
    nllb = AutoTokenizer.from_pretrained(nllb_dir)
    check_round_trip(make_documents(20, seed=3), llm, nllb)
    print(f"tokenizers ready ({time.perf_counter() - t0:.0f}s): llm vocab {len(llm)}, nllb vocab {len(nllb)}")

    docs = make_documents(args.docs, seed=2)
    (work / "input").mkdir(exist_ok=True)
    pq.write_table(pa.table({"text": docs}), work / "input" / "docs.parquet")
    prepare_shards(PrepParams(input=str(work / "input"), docs_per_shard=500), work / "shards", overwrite=True,
                   progress=False)
    words = sum(len(d.split()) for d in docs)
    print(f"{len(docs)} documents, {words / len(docs):.0f} words each on average")

    tok = time_tokenizers(docs, llm, nllb)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "documents": len(docs),
               "words_per_doc": words / len(docs), "llm_tokens_per_word": tok["llm"]["tokens"] / words,
               "nllb_tokens_per_word": tok["nllb"]["tokens"] / words, "tokenizers_alone": tok, "stream": {}}
    cfg = StreamConfig(manifest=str(work / "shards"), max_length=args.max_length, epochs=1)
    for workers in args.workers:
        r = time_stream(cfg.model_copy(update={"num_workers": workers}), llm, nllb, args.batch_size)
        cores = max(1, workers)
        r["cores"] = cores
        r["llm_tokens_per_s_per_core"] = r["llm_tokens_per_s"] / cores
        r["docs_per_s_per_core"] = r["docs_per_s"] / cores
        results["stream"][f"workers={workers}"] = r
    results["resume"] = time_resume(cfg.model_copy(update={"epochs": None}), llm, nllb, args.batch_size, at=50)

    print(f"\nmachine: {results['machine']}")
    print(f"tokens per word: llm {results['llm_tokens_per_word']:.2f}, nllb {results['nllb_tokens_per_word']:.2f}")
    for name, r in tok.items():
        print(f"{name} tokenizer alone (1 thread): {r['tokens_per_s']:,.0f} tokens/s, {r['docs_per_s']:,.1f} docs/s")
    print(f"\n{'run':<11}{'cores':>6}{'docs/s':>9}{'examples/s':>12}{'LLM tok/s':>12}{'NLLB tok/s':>12}"
          f"{'LLM tok/s/core':>16}{'docs/s/core':>13}{'pad':>6}")
    for name, r in results["stream"].items():
        print(f"{name:<11}{r['cores']:>6}{r['docs_per_s']:>9.1f}{r['examples_per_s']:>12.1f}"
              f"{r['llm_tokens_per_s']:>12,.0f}{r['nllb_tokens_per_s']:>12,.0f}"
              f"{r['llm_tokens_per_s_per_core']:>16,.0f}{r['docs_per_s_per_core']:>13.1f}"
              f"{r['llm_padding_fraction']:>6.1%}")
    res = results["resume"]
    print(f"\nfirst batch: {res['first_batch_s']:.2f}s fresh, {res['first_batch_after_resume_s']:.2f}s after "
          f"resuming at batch {res['resumed_at']}")
    per_core = min(r["llm_tokens_per_s_per_core"] for r in results["stream"].values())
    print(f"a GPU consuming 10,000 LLM tokens/s needs {10_000 / per_core:.2f} cores of this machine")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
