"""The CPU backend's shared library: the C sources of r1kit/ops/cpu/csrc, compiled on first use, and its prototypes.

The kernels are plain C (no torch headers: a build takes a few seconds), compiled together for this machine
(-march=native) into one shared library cached under $R1KIT_CACHE_DIR/kernels (default ~/.cache/r1kit/kernels),
keyed by a hash of the sources, the compiler, the flags and the CPU. The compiler is $CC, else cc. Nothing depends on
the library: without a C compiler, with R1KIT_NATIVE=0, or when a build or load fails, `load` returns None (after
one warning, except for R1KIT_NATIVE=0) and the ops run their torch reference (r1kit/ops/dispatch.py).

The boundary is declared once, in csrc/kernels.h: every .c file includes it (the compiler checks each definition
against it) and `prototypes` parses it into the ctypes argument and return types set on the library, so a call
from Python is converted to exactly the C types (tests/test_ops_boundary.py checks each call site's argument count and
that it passes an address exactly where the prototype has a pointer: ctypes takes a Python int for both).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from r1kit.cache import cache_dir

SOURCES = Path(__file__).with_name("csrc")
HEADER = SOURCES / "kernels.h"
# (compile flags, link flags), tried in order; the first that builds wins. -ffast-math + glibc's libmvec vectorize
# expf (the SwiGLU activation: a 2.3x faster kernel); the kernels have no NaN/inf checks that fast-math could fold
# (softmax's max starts from a real score, not -inf), and no intermediate may overflow to inf (fast-math divides by
# a refined reciprocal estimate, which makes x / inf NaN: the sigmoid is written with a bounded denominator).
# Objects are linked in a separate step without -ffast-math: linking with it adds crtfastmath.o, which switches the
# whole process to flush-denormals-to-zero when the library loads. Then without libmvec (macOS, musl), without
# OpenMP (Apple clang), without -march=native.
FLAG_SETS = (
    (["-O3", "-march=native", "-ffast-math", "-fopenmp"], ["-fopenmp", "-lmvec", "-lm"]),
    (["-O3", "-march=native", "-fopenmp"], ["-fopenmp", "-lm"]),
    (["-O3", "-march=native"], ["-lm"]),
    (["-O3"], ["-lm"]),
)


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


# -- the boundary: csrc/kernels.h -> ctypes ---------------------------------------------------------------------------
_SCALARS = {"int64_t": ctypes.c_int64, "int": ctypes.c_int, "float": ctypes.c_float}
_RESULTS = {"int": ctypes.c_int, "void": None}
_PROTOTYPE = re.compile(r"^(int|void)\s+(\w+)\s*\(([^)]*)\)\s*;", re.MULTILINE)


def _ctype(param: str):
    """ctypes type of one C parameter declaration ("const float *x", "int64_t n"): any pointer is an address."""
    if "*" in param:
        return ctypes.c_void_p
    words = [w for w in param.split() if w != "const"]
    if len(words) != 2 or words[0] not in _SCALARS:
        raise ValueError(f"kernels.h: parameter {param.strip()!r} is not a pointer or one of {sorted(_SCALARS)}")
    return _SCALARS[words[0]]


def prototypes(text: str | None = None) -> dict[str, tuple[object, list]]:
    """{name: (restype, argtypes)} of every function declared in csrc/kernels.h (or in `text`)."""
    text = HEADER.read_text() if text is None else text
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)  # comments
    out = {}
    for ret, name, params in _PROTOTYPE.findall(text):
        out[name] = (_RESULTS[ret], [_ctype(p) for p in params.split(",") if p.strip() not in ("", "void")])
    return out


def declare(lib: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in prototypes().items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


# -- build and load ---------------------------------------------------------------------------------------------------
def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (a shared cache across machines must not
    hand one CPU's binary to another)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    """The library for these sources, compiler and CPU: a cached one built with any of FLAG_SETS if there is one (so
    a flag set that fails here is not retried at every start), else the first that builds. Raises RuntimeError."""
    sources = sorted(SOURCES.glob("*.c"))
    text = "\0".join(f.read_text() for f in sorted(SOURCES.iterdir()) if f.suffix in (".c", ".h"))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    out_dir = kernels_dir()
    libs = [out_dir / ("r1kit_cpu-" + hashlib.sha256("\0".join([text, version, " ".join(cflags + ldflags),
                                                                   _cpu_id()]).encode()).hexdigest()[:16] + ".so")
            for cflags, ldflags in FLAG_SETS]
    for lib in libs:
        if lib.exists():
            return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    error = ""
    for (cflags, ldflags), lib in zip(FLAG_SETS, libs):
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
            objects = [str(Path(tmp) / f"{src.stem}.o") for src in sources]
            steps = [[compiler, "-c", "-fPIC", "-std=c11", *cflags, "-o", obj, str(src)]
                     for src, obj in zip(sources, objects)]
            steps.append([compiler, "-shared", "-o", f"{tmp}/lib.so", *objects, *ldflags])
            for cmd in steps:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if run.returncode != 0:
                    error = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
                    break
            else:
                os.replace(f"{tmp}/lib.so", lib)  # atomic: concurrent builds (torchrun ranks) publish whole files
                return lib
    raise RuntimeError(error)


failure: str | None = None  # why the last load() returned None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernels' shared library, built if needed; None when native kernels are off or cannot be built or
    loaded (with one warning: whatever goes wrong here, the ops fall back to their torch reference)."""
    global failure
    if os.environ.get("R1KIT_NATIVE", "1") == "0":
        failure = "switched off by R1KIT_NATIVE=0"
        return None
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        failure = f"no C compiler ({compiler!r}; set CC)"
    else:
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
            declare(lib)
            failure = None
            return lib
        except Exception as exc:  # a failed compile, an unwritable cache dir, a library that does not load
            failure = f"building them with {compiler} failed ({exc})"
    warnings.warn(f"r1kit: the native CPU kernels are unavailable: {failure}; using the slower PyTorch path",
                  RuntimeWarning, stacklevel=2)
    return None
