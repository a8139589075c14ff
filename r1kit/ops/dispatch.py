"""Which implementation of an op runs: the one place that chooses a backend.

Every op (r1kit/ops/*.py) has a torch reference implementation, registered as backend "torch": any device, any
dtype, differentiable. A backend may register faster implementations of some ops (r1kit/ops/cpu: C kernels for
the CPU). A call goes to the backends listed for its device, in order, and the first implementation that takes it
runs:

    device "cpu":   cpu, torch
    other devices:  torch          (a CUDA backend would register its ops and add itself to BACKENDS["cuda"])

A backend implementation takes or declines a call from what it is given -- the device and dtype of the tensors,
whether gradients are needed, the shapes -- by returning its result or None. Thresholds live with what they were
measured for, not here and not in the model code: a backend's (how many rows per expert the CPU decode kernel is
worth it for) in its implementation (r1kit/ops/cpu/backend.py), the torch formulations' per device type in the op's
module (r1kit/ops/experts.py, TUNING). The torch reference never declines, so every call has an answer.

`use_backend("torch")` runs the reference only (tests run each test both ways); `use_backend("cpu")` puts the cpu
backend first on every device, and when it is unavailable (no C compiler, R1KIT_NATIVE=0, a failed build) warns
once and runs the reference. `trace()` records which backend ran each call. Both are process-wide (not per thread).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

BACKENDS: dict[str, tuple[str, ...]] = {"cpu": ("cpu", "torch")}
_REFERENCE = ("torch",)
_IMPLS: dict[str, dict[str, Callable]] = {}
_AVAILABLE: dict[str, Callable[[], str | None]] = {"torch": lambda: None}
_forced: tuple[str, ...] | None = None
_trace: list[tuple[str, str]] | None = None


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` implements `op` for `backend` (returns None to decline a call, except in "torch")."""
    def add(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend] = fn
        return fn
    return add


def register_backend(name: str, unavailable: Callable[[], str | None]) -> None:
    """`unavailable()` -> None when the backend can run here, else why not (for use_backend's warning)."""
    _AVAILABLE[name] = unavailable


def call(op: str, *args):
    """Run `op` on the first backend that takes it; args[0] is a tensor whose device picks the backends."""
    impls = _IMPLS[op]
    for backend in _forced or BACKENDS.get(args[0].device.type, _REFERENCE):
        fn = impls.get(backend)
        if fn is not None:
            out = fn(*args)
            if out is not None:
                if _trace is not None:
                    _trace.append((op, backend))
                return out
    raise RuntimeError(f"no backend took op {op!r} (its torch reference is not registered)")


def ops() -> dict[str, tuple[str, ...]]:
    """{op: backends that implement it}."""
    return {op: tuple(impls) for op, impls in _IMPLS.items()}


@contextlib.contextmanager
def use_backend(name: str):
    """Inside, `name` runs every op it implements and takes (then the reference runs); "torch": the reference only.
    An unavailable backend gives one RuntimeWarning and the reference runs."""
    global _forced
    if name not in _AVAILABLE:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(_AVAILABLE)}")
    with warnings.catch_warnings(record=True):  # the backend's own warning (a failed build) is folded into ours
        warnings.simplefilter("always")
        why = _AVAILABLE[name]()
    if why is not None:
        warnings.warn(f"r1kit: backend {name!r} is unavailable ({why}); using the torch reference", RuntimeWarning,
                      stacklevel=3)
    before, _forced = _forced, (_REFERENCE if why is not None or name == "torch" else (name, "torch"))
    try:
        yield
    finally:
        _forced = before


@contextlib.contextmanager
def trace():
    """Inside, yields a list that collects (op, backend) for every call that ran."""
    global _trace
    before, _trace = _trace, []
    try:
        yield _trace
    finally:
        _trace = before
