"""Training precision: autocast over float32 master weights."""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from r1kit.device import cpu_has_native_bf16, resolve_dtype
from r1kit.errors import UserError


def autocast_context(device: torch.device, dtype: str):
    """Mixed precision of the training forward: autocast over float32 master weights (optimizer state stays fp32).

    "auto" is bf16 on CUDA and fp32 on CPU. On CPU, bf16 must be asked for (dtype=bf16): it pays off on CPUs that
    multiply bf16 natively (AVX512-BF16 or AMX: 2.6x the fp32 GEMM rate on a Zen 4 EPYC, docs/benchmarks.md) and
    is emulated, i.e. slower than fp32, elsewhere (a warning says so). fp16 autocast is CUDA-only.
    """
    dt = resolve_dtype(dtype, device)
    if dt == torch.float32:
        return contextlib.nullcontext()
    if device.type == "cpu":
        if dt != torch.bfloat16:
            raise UserError(f"dtype={dtype} on CPU: fp16 autocast is CUDA-only; use dtype=bf16 or float32")
        _warn_if_emulated_bf16()
    return torch.autocast(device.type, dtype=dt)


@functools.cache
def _warn_if_emulated_bf16() -> None:
    if not cpu_has_native_bf16():
        warnings.warn("dtype=bf16 on a CPU without native bf16 matmuls (AVX512-BF16 / AMX): training will likely be "
                      "slower than with float32", stacklevel=3)
