"""Shared fixtures: small random checkpoints in the Hugging Face layout, created once per test session."""
from __future__ import annotations

import os

import pytest
import torch

# Tests are sized for 2 cores; a fixed thread count keeps timings and numerics steady.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint("deepseek_v3" | "qwen2" | "llama") -> path of a random checkpoint with an R1 tokenizer."""
    from r1kit.models.random_checkpoint import create_random_checkpoint

    made: dict[str, str] = {}

    def make(model_type: str = "deepseek_v3") -> str:
        if model_type not in made:
            out = tmp_path_factory.mktemp(f"ckpt-{model_type}")
            create_random_checkpoint(out, model_type=model_type, preset="tiny", seed=0)
            made[model_type] = str(out)
        return made[model_type]

    return make


@pytest.fixture(params=["native", "torch"])
def cpu_kernels(request, monkeypatch):
    """Runs a test with r1kit's cpu backend (the C kernels of r1kit/ops/cpu) and again with the torch reference
    only (r1kit/ops/dispatch.py), so both the C kernels and the PyTorch paths they replace stay covered."""
    from r1kit.ops import use_backend
    from r1kit.ops.cpu import library

    if request.param == "native" and library.load() is None:
        pytest.skip("no C compiler for the native CPU kernels")
    with use_backend("cpu" if request.param == "native" else "torch"):
        yield request.param
