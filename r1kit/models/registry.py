"""Which model class serves which config.json `model_type`, and how a model is built from a config.

    MODELS["deepseek_v3"] -> DeepseekV3ForCausalLM   (DeepSeek-V3 / R1)
    MODELS["qwen2"]       -> Qwen2ForCausalLM        (R1-Distill-Qwen)
    MODELS["llama"]       -> LlamaForCausalLM        (R1-Distill-Llama)
    MODELS["qwen3"]       -> Qwen3ForCausalLM

Adding an architecture = one entry here. `build_model` allocates the parameters directly in the requested dtype and
device without a throwaway initialisation (a model about to be loaded from disk is not initialised at all).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from r1kit.device import resolve_device, resolve_dtype
from r1kit.errors import UserError
from r1kit.models.causal_lm import CausalLM
from r1kit.models.deepseek_v3 import DeepseekV3ForCausalLM
from r1kit.models.hf_config import HFConfig
from r1kit.models.layers import init_weights
from r1kit.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

MODELS: dict[str, type[CausalLM]] = {
    "deepseek_v3": DeepseekV3ForCausalLM,
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
}


def model_class(model_type: str | None) -> type[CausalLM]:
    try:
        return MODELS[model_type]  # type: ignore[index]
    except KeyError:
        raise UserError(f"unsupported model_type {model_type!r}; r1kit supports: {', '.join(sorted(MODELS))}") from None


def config_from_hf_dict(d: dict[str, Any]) -> HFConfig:
    """The config dataclass for a parsed config.json."""
    return model_class(d.get("model_type")).config_class.from_hf_dict(d)


def build_model(config: HFConfig, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                init: bool = True, seed: int | None = None) -> CausalLM:
    """A model for `config` on `device` in `dtype` (see r1kit.device). init=False leaves the weights uninitialised
    (for loading); init=True draws them as transformers does (N(0, initializer_range), norms 1), from `seed` if given."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cls = model_class(config.model_type)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        with torch.device("meta"):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=dev)
    model.tie_weights()
    if init:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init_weights(model, config.initializer_range, gen)
    return model


def num_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
