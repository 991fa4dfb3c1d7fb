"""Load LLMs and the NLLB encoder by hub name, local path or `tiny:NAME`.

One code path for all three: a `tiny:` name is first built into a local
directory (see `tiny.py`), then every model goes through `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from typing import Any

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, M2M100Model, PreTrainedTokenizerBase

from trainer.config import EncoderConfig, LLMConfig, default_dtype
from trainer.errors import ModelPathError
from trainer.fsutil import temp_dir_beside
from trainer.models.bidirectional import make_bidirectional
from trainer.tiny import models as tiny

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """A config's `dtype` as a torch dtype; `auto` (a model loaded outside a job, which resolves it against
    engine.precision first: `trainer.config.resolve_dtypes`) is bfloat16 where CUDA supports it, else float32."""
    return DTYPES[default_dtype() if name == "auto" else name]


def looks_local(name_or_path: str) -> bool:
    """A path rather than a hub name: absolute, starting with `.` or `~`, or with more than one `/`
    (hub names are `name` or `org/name`)."""
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1


MODEL_NAMES = "hub names look like org/name, e.g. meta-llama/Meta-Llama-3-8B; tiny models: tiny:llama, tiny:nllb"


def local_intent(name_or_path: str) -> bool:
    """A path meant as local: `looks_local`, or `org/name` whose `org` is a folder here (`models/foo` beside a
    models/ folder): a hub name would not share its first part with a local folder by chance."""
    return looks_local(name_or_path) or ("/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir())


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike = ".cache/tiny-models") -> str:
    """`tiny:NAME` -> a built local directory (built once, atomically); a local path must exist; a hub name
    is returned unchanged (a missing local path would otherwise end, minutes later, in a hub connection error)."""
    if not name_or_path.startswith("tiny:"):
        if local_intent(name_or_path) and not Path(name_or_path).expanduser().exists():
            raise ModelPathError(f"model path {name_or_path} does not exist (a local path: "
                                 f"{Path(name_or_path).expanduser().absolute()}; {MODEL_NAMES})")
        return str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    name = name_or_path.split(":", 1)[1]
    if name not in tiny.TINY_NAMES:
        raise ValueError(f"unknown tiny model {name_or_path!r}; choose one of "
                         + ", ".join(f"tiny:{n}" for n in tiny.TINY_NAMES))
    target = Path(cache_dir) / name
    if not (target / "config.json").is_file():
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            # built now, its weights would be ZeRO-3 placeholders and save as empty tensors
            raise RuntimeError(f"{name_or_path} is not built in {cache_dir} and a ZeRO-3 engine is live: build "
                               f"tiny models first (trainer.models.loading.build_tiny_models_in)")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename, so concurrent ranks never see half a model.
        tmp = temp_dir_beside(target)
        tiny.build_tiny(name, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def check_model_paths(tree: Any) -> None:
    """Every `name_or_path` in a (config) tree: a local path must exist, a hub name must be in the local Hugging Face
    cache or known to the hub (`check_hub_name`); ModelPathError naming it, in seconds."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "name_or_path" and isinstance(value, str) and not value.startswith("tiny:"):
                if resolve_model_path(value) == value and not local_intent(value):
                    check_hub_name(value)
            else:
                check_model_paths(value)


def check_hub_name(name: str, timeout: float = 10.0) -> None:
    """A hub name (`org/name`, no such local path) that is not in the local Hugging Face cache: ask the hub once, with
    `timeout`, whether it knows the model. Unknown, or the hub cannot be reached (offline, HF_HUB_OFFLINE): a
    ModelPathError naming it at once, not transformers' minute of retries. Any other answer lets the load decide."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return
    not_here = f"model {name} is not a local path (no {Path(name).absolute()}) and not in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise ModelPathError(f"{not_here}, and HF_HUB_OFFLINE is set; {MODEL_NAMES}")
    try:
        huggingface_hub.model_info(name, timeout=timeout)
    except GatedRepoError:
        return   # it exists; access is the load's business
    except RepositoryNotFoundError:
        raise ModelPathError(f"{not_here}, and the hub has no model {name} (or it is private: log in with hf auth "
                             f"login or set HF_TOKEN); {MODEL_NAMES}") from None
    except HfHubHTTPError:
        return   # the hub answered otherwise (rate-limited, a mirror without this API): the load decides
    except Exception as e:   # noqa: BLE001 - a connection that fails: DNS, refused, timed out (httpx or requests)
        raise ModelPathError(f"{not_here}, and the hub cannot be reached to fetch it ({type(e).__name__}: {e}); "
                             f"check the network (or HF_ENDPOINT), or give a local path; {MODEL_NAMES}") from None


def build_tiny_models_in(tree: Any, cache_dir: str | os.PathLike) -> list[str]:
    """Build every `tiny:NAME` named anywhere in a (config) tree; returns the names built or found.

    Runs before a DeepSpeed ZeRO-3 engine exists: a tiny model built while ZeRO-3 is
    active would be created partitioned and saved empty.
    """
    if isinstance(tree, dict):
        return [n for value in tree.values() for n in build_tiny_models_in(value, cache_dir)]
    if isinstance(tree, (list, tuple)):
        return [n for value in tree for n in build_tiny_models_in(value, cache_dir)]
    if isinstance(tree, str) and tree.startswith("tiny:"):
        resolve_model_path(tree, cache_dir)
        return [tree]
    return []


def attn_candidates(requested: str) -> list[str]:
    """Attention implementations to try, best first.

    `auto` -> flash_attention_2 when flash_attn imports and CUDA is present, then sdpa, then
    eager (an architecture without sdpa support, such as Gemma 2, falls through to eager).
    """
    if requested != "auto":
        return [requested]
    preferred = []
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        preferred.append("flash_attention_2")
    return preferred + ["sdpa", "eager"]


def choose_attn_implementation(requested: str) -> str:
    """The first candidate of `attn_candidates` (before asking the model what it supports)."""
    return attn_candidates(requested)[0]


def quantization(cfg: LLMConfig) -> dict:
    """`from_pretrained` arguments for `cfg.quantization`: nf4 = QLoRA's (Dettmers et al. 2023) 4-bit NormalFloat
    with double quantization, computing in the LLM's dtype, placed on this rank's GPU; none = {}."""
    if cfg.quantization == "none":
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch_dtype(cfg.dtype)),
            "device_map": {"": torch.cuda.current_device()}}


def load_llm_tokenizer(cfg: LLMConfig, cache_dir: str = ".cache/tiny-models") -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with a pad token (Llama 3 has none: reuse EOS) and the configured padding side."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.name_or_path, cache_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = cfg.padding_side
    return tok


def load_llm(cfg: LLMConfig, cache_dir: str = ".cache/tiny-models", causal_lm: bool = False) -> torch.nn.Module:
    """The frozen LLM (base model, or with its LM head if `causal_lm`), dtype and attention from config."""
    path = resolve_model_path(cfg.name_or_path, cache_dir)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    candidates = attn_candidates(cfg.attn_implementation)
    for i, attn in enumerate(candidates):
        try:
            model = auto.from_pretrained(path, dtype=torch_dtype(cfg.dtype), attn_implementation=attn,
                                         **quantization(cfg))
            break
        except (ValueError, ImportError) as e:  # raised before weights load when unsupported
            if i + 1 == len(candidates) or "support" not in str(e).lower():
                raise ValueError(f"model.llm.attn_implementation={cfg.attn_implementation!r} "
                                 f"cannot load {path}: {e}") from e
    model.requires_grad_(False)
    if cfg.bidirectional:
        make_bidirectional(model)
    if cfg.gradient_checkpointing:
        # non-reentrant: gradients reach LoRA weights inside the checkpointed blocks even though the
        # frozen embeddings' outputs need no gradient (the reentrant variant would drop them)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                              every_n_layers=cfg.checkpoint_every_n_layers)
    return model


def load_nllb_tokenizer(cfg: EncoderConfig, cache_dir: str = ".cache/tiny-models") -> PreTrainedTokenizerBase:
    """NLLB tokenizer with `src_lang` set to the config's FLORES-200 code (change it per language)."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.name_or_path, cache_dir), src_lang=cfg.source_lang)
    if cfg.source_lang not in tok.get_vocab():
        raise ValueError(f"encoder.source_lang: {cfg.source_lang!r} is not a language code of this NLLB tokenizer "
                         f"(FLORES-200 codes such as eng_Latn, ell_Grek, zho_Hans, arb_Arab)")
    return tok


def load_nllb_encoder(cfg: EncoderConfig, cache_dir: str = ".cache/tiny-models") -> torch.nn.Module:
    """The NLLB (M2M100) encoder alone, frozen and in eval mode; the decoder is dropped after loading."""
    path = resolve_model_path(cfg.name_or_path, cache_dir)
    full = M2M100Model.from_pretrained(path, dtype=torch_dtype(cfg.dtype))
    encoder = full.get_encoder()
    del full
    encoder.requires_grad_(False)
    return encoder.eval()
