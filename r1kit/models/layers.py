"""Building blocks shared by every architecture: Linear, RMSNorm, rotary embeddings (default / linear / YaRN /
llama3), the SwiGLU MLP and random initialisation. The computations are r1kit.ops calls (linear, rms_norm, rope).

Numerics follow Hugging Face transformers 5.x so that r1kit and transformers produce the same logits on the same
weights: RMSNorm in fp32, cos/sin computed in fp32 and scaled by the rope "attention factor", and the two rotary
layouts of r1kit/ops/rope.py (`rope_interleave`: halves for Llama/Qwen, pairs for DeepSeek's weights).

Modules whose parameters are stored differently from the Hugging Face checkpoint (here the fused gate/up weight of
`SwiGLU`) define `hf_tensors(prefix) -> {hf_key: view}`; `r1kit.models.checkpoint` uses it to load and save.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from r1kit import ops


class Linear(nn.Linear):
    """nn.Linear through ops.linear (inside ops.frozen_weights() a backend may run it over a faster copy of the
    weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction `0.1 * mscale * ln(factor) + 1` (1 when the context is not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(dim: int, params: dict[str, Any], max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [dim/2] (fp32) and the attention factor that scales cos/sin, for a rope_parameters dict."""
    base = params["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    kind = params["rope_type"]
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / params["factor"], 1.0
    if kind == "llama3":
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn_frequencies(dim, params, max_position_embeddings)
    raise ValueError(f"unsupported rope_type {kind!r}")


def _yarn_frequencies(dim: int, p: dict[str, Any], max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    base = p["rope_theta"]
    orig = p["original_max_position_embeddings"]
    factor = p.get("factor") or max_position_embeddings / orig
    mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # dimension index that makes `rotations` turns over `orig` tokens
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 = high frequency, kept as is; 0 = low frequency, interpolated
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


class RotaryEmbedding:
    """cos/sin tables for positions; not a Module (nothing to save), the frequencies follow the positions' device."""

    def __init__(self, dim: int, params: dict[str, Any], max_position_embeddings: int):
        self.dim = dim
        self.inv_freq, self.attention_factor = rope_frequencies(dim, params, max_position_embeddings)
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [...] -> cos, sin [..., dim/2] in `dtype`."""
        inv = self._on.get(positions.device)
        if inv is None:
            inv = self._on[positions.device] = self.inv_freq.to(positions.device)
        freqs = positions[..., None].float() * inv
        return (freqs.cos() * self.attention_factor).to(dtype), (freqs.sin() * self.attention_factor).to(dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul; HF keys gate_proj/up_proj/down_proj."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias)  # rows: [gate; up]
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [..., I] each
        return self.down_proj(F.silu(gate) * up)

    def hf_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        i = self.intermediate_size
        out = {f"{prefix}gate_proj.weight": self.gate_up_proj.weight[:i],
               f"{prefix}up_proj.weight": self.gate_up_proj.weight[i:],
               f"{prefix}down_proj.weight": self.down_proj.weight}
        if self.gate_up_proj.bias is not None:
            out[f"{prefix}gate_proj.bias"] = self.gate_up_proj.bias[:i]
            out[f"{prefix}up_proj.bias"] = self.gate_up_proj.bias[i:]
            out[f"{prefix}down_proj.bias"] = self.down_proj.bias
        return out


@torch.no_grad()
def init_weights(model: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """Random init as transformers does it: matrices ~ N(0, std), norm weights 1, biases 0."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
