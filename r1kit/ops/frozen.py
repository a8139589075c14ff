"""Frozen weights: a scope over which the model's weights hold still, so backends may keep derived copies of them.

A backend can sometimes run faster over a copy of a weight in another layout (the CPU backend: transposed,
column-blocked fp32 copies for decode, r1kit/ops/cpu/weight_blocks.py). Copies cost memory and go stale when the
weights change, so they exist only inside `frozen_weights()`, which the engine opens when asked for a rollout over
weights that hold still (`LLM.frozen_weights()`, used by GRPO's rollouts): the copies are made on first use, once per
scope, and dropped when it closes, before training changes the weights. A scope belongs to the thread that opens it:
an engine serving from another thread of the process never sees it. (Why not a cache keyed on tensor version
counters: fused AdamW updates parameters without bumping `_version`.)
"""
from __future__ import annotations

import contextlib
import threading

import torch

_SCOPE = threading.local()


class WeightCopies:
    """The copies of one open scope: {id(weight): (weight, copy)} (holding the weight keeps its id from being reused;
    one copy per weight) and their total size in bytes."""

    def __init__(self) -> None:
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.nbytes = 0

    def get(self, weight: torch.Tensor) -> torch.Tensor | None:
        hit = self.copies.get(id(weight))
        return hit[1] if hit is not None and hit[0] is weight else None

    def put(self, weight: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        self.copies[id(weight)] = (weight, copy)
        self.nbytes += copy.numel() * copy.element_size()
        return copy


def current() -> WeightCopies | None:
    """This thread's open scope, if any."""
    return getattr(_SCOPE, "copies", None)


@contextlib.contextmanager
def frozen_weights():
    """Inside, backends may keep a derived copy of each weight they read (made on first use) and run over it; the
    copies are dropped on exit. A weight changed inside the scope (in place, or through .data) is not seen. Scopes
    nest (the outermost owns the copies)."""
    if current() is not None:
        yield
        return
    _SCOPE.copies = WeightCopies()
    try:
        yield
    finally:
        _SCOPE.copies = None
