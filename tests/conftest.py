"""Shared fixtures: tiny models built once per test session into a temp cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    """A cache directory for tiny:* models shared by the whole session."""
    return str(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_path(tiny_cache):
    """tiny_path("llama") -> local directory of the built tiny model."""
    from trainer.models.loading import resolve_model_path

    return lambda name: resolve_model_path(f"tiny:{name}", tiny_cache)
