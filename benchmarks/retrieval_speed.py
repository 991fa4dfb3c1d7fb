"""Time `trainer.eval.retrieval.retrieval_accuracy` on random embeddings (CPU by default).

    python benchmarks/retrieval_speed.py                       # 20 languages x 1,000 x 33 layers, d=4096
    python benchmarks/retrieval_speed.py --dim 1024 --layers 4 # smaller, quicker

The default shape is Llama-3-8B's: 33 hidden_states (embeddings + 32 blocks) of width 4096,
20 languages of a FLORES-sized set (1,000 sentences): all 380 ordered pairs, k=4.
Embeddings are noisy copies of one random set per layer (plus a per-language offset), so the
accuracy printed at the end is a sanity check, not the point; they are stored in bfloat16 by
default (5.4 GB instead of 10.8 GB: `embed_languages` offers the same) and scored in fp32 one
layer at a time, as `retrieval_accuracy` always does. Only the `retrieval_accuracy` call is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.eval.retrieval import DEFAULT_K, retrieval_accuracy  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def random_embeddings(n_lang: int, n_layers: int, n: int, d: int, noise: float, seed: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """[n_lang, n_layers, n, d]: per layer one random set, each language a shifted noisy copy."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n_lang, n_layers, n, d, dtype=dtype)
    for layer in range(n_layers):
        base = torch.randn(n, d, generator=g)
        for lang in range(n_lang):
            shift = 0.5 * torch.randn(1, d, generator=g)
            out[lang, layer] = (base + shift + noise * torch.randn(n, d, generator=g)).to(dtype)
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--languages", type=int, default=20)
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--layers", type=int, default=33)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--k", type=int, default=DEFAULT_K)
    p.add_argument("--noise", type=float, default=4.0,
                   help="noise scale of each language's copy (4.0 at d=4096: accuracy about 0.7)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="storage dtype of the embeddings")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    emb = random_embeddings(args.languages, args.layers, args.sentences, args.dim, args.noise, args.seed,
                            DTYPES[args.dtype])
    gen_s = time.perf_counter() - t0
    print(f"generated {tuple(emb.shape)} {args.dtype} embeddings in {gen_s:.1f}s", flush=True)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = retrieval_accuracy(emb, k=args.k)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()

    n_pairs = args.languages * (args.languages - 1)
    flops = n_pairs // 2 * args.layers * 2 * args.sentences ** 2 * args.dim  # one matmul per unordered pair
    report = {
        "command": "python benchmarks/retrieval_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": {"languages": args.languages, "layers": args.layers, "sentences": args.sentences, "dim": args.dim},
        "ordered_pairs": n_pairs, "k": args.k, "storage_dtype": args.dtype,
        "seconds": round(seconds, 1), "seconds_per_layer": round(seconds / args.layers, 2),
        "matmul_gflops": round(flops / seconds / 1e9, 1),
        "mean_accuracy": round(float(result.mean_per_layer().mean()), 4),
        "torch_threads": torch.get_num_threads(), "nproc": os.cpu_count(), "cpu": cpu_model(),
        "torch": torch.__version__,
        "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
