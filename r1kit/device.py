"""Device and dtype selection shared by every part of r1kit.

The device is chosen automatically (CUDA when available, else CPU) and can always be overridden by name.
One function for each so that the engine, trainers and CLI agree on what "auto" means.
"""
from __future__ import annotations

import functools

import torch

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


DTYPE_NAMES = ("auto", *_DTYPES)  # every name resolve_dtype accepts


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto" -> cuda if available else cpu; anything else is passed to torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX; read from /proc/cpuinfo, so Linux only).
    Elsewhere torch emulates bf16 matmuls, slower than fp32, which is why "auto" never picks bf16 on CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    """`None` or "auto" -> bfloat16 on CUDA, float32 on CPU (CPU bf16 matmuls are slow on most machines)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(set(_DTYPES))} or 'auto'") from None
