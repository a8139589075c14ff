"""The native boundary (r1kit/ops/cpu/csrc/kernels.h): declared once, and every side checked against it.

- C: every source includes the header (so the compiler rejects a definition that disagrees with it) and every
  exported definition has its declaration there; a changed prototype fails the build.
- Python: the ctypes types come from the header, and every call site in r1kit/ops/cpu passes as many arguments as
  the prototype has, each of the kind the prototype declares there: an address (a tensor's data_ptr(), an address
  computed from one, a ctypes array, None) for a pointer, anything else for a scalar. ctypes itself accepts extra
  arguments silently, and a Python int both where a pointer is expected and where an int64_t is: an address passed
  as a size, or a size as an address, would go through unchecked.
"""
from __future__ import annotations

import ast
import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from r1kit.ops.cpu import library

CPU = Path(library.__file__).parent
SOURCES = sorted(library.SOURCES.glob("*.c"))


def defined_functions() -> dict[str, str]:
    """{name: file} of the non-static functions defined in the C sources."""
    out = {}
    for src in SOURCES:
        for name in re.findall(r"^(?:int|void)\s+(\w+)\s*\([^)]*\)\s*\{", src.read_text(), re.MULTILINE):
            out[name] = src.name
    return out


def _is_address(node: ast.expr, addresses: set[str]) -> bool:
    """Whether a call argument is an address: None, a tensor's .data_ptr(), a ctypes array (`(c_int64 * 3)(...)`,
    or a call of a helper returning one, `_bht(t)`), a name bound to an address in this function, or an address
    plus an offset."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in addresses
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return _is_address(node.left, addresses)
    if isinstance(node, ast.Call):
        f = node.func
        return ((isinstance(f, ast.Attribute) and f.attr == "data_ptr") or isinstance(f, ast.BinOp)
                or (isinstance(f, ast.Name) and f.id in ADDRESS_HELPERS))
    return False


ADDRESS_HELPERS = {"_bht"}  # functions in r1kit/ops/cpu that return a ctypes array (checked below)


def call_site_errors(protos: dict[str, tuple[object, list]]) -> list[str]:
    """Calls in r1kit/ops/cpu/*.py of a declared C function (lib.NAME(...), or through a name bound to lib.NAME)
    whose argument count differs from its prototype, or that pass a scalar for a pointer parameter or an address
    for a scalar one; and declared functions that are never called."""
    errors, called = [], set()
    for path in sorted(CPU.glob("*.py")):
        for scope in [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]:
            bound: dict[str, set[str]] = {}  # names bound to C functions here: kernel = lib.a if half else lib.b
            addresses: set[str] = set()  # names bound to an address here: k = cache.data_ptr()
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign):
                    pairs = [(node.targets[0], node.value)]
                    if isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple):
                        pairs = list(zip(node.targets[0].elts, node.value.elts))
                    for target, value in pairs:
                        names = {n.attr for n in ast.walk(value) if isinstance(n, ast.Attribute) and n.attr in protos}
                        if names and isinstance(target, ast.Name):
                            bound.setdefault(target.id, set()).update(names)
                        if isinstance(target, ast.Name) and _is_address(value, addresses):
                            addresses.add(target.id)
            for node in ast.walk(scope):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                names = ({f.attr} if isinstance(f, ast.Attribute) and f.attr in protos
                         else bound.get(f.id, set()) if isinstance(f, ast.Name) else set())
                for name in names:
                    called.add(name)
                    want = protos[name][1]
                    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                        errors.append(f"{path.name}:{node.lineno}: {name} called with keywords or *args")
                    elif len(node.args) != len(want):
                        errors.append(f"{path.name}:{node.lineno}: {name} takes {len(want)} arguments, called with "
                                      f"{len(node.args)}")
                    else:
                        for i, (arg, ctype) in enumerate(zip(node.args, want)):
                            pointer, address = ctype is ctypes.c_void_p, _is_address(arg, addresses)
                            if pointer != address:
                                errors.append(f"{path.name}:{node.lineno}: {name} argument {i + 1} is a "
                                              f"{'pointer' if pointer else 'scalar'}, called with "
                                              f"{'a scalar' if pointer else 'an address'} ({ast.unparse(arg)})")
    errors += [f"{name} is declared in kernels.h but never called" for name in sorted(set(protos) - called)]
    return sorted(set(errors))  # (nested functions are walked twice)


def test_every_source_includes_the_header_and_every_definition_is_declared():
    assert SOURCES
    for src in SOURCES:
        assert '#include "kernels.h"' in src.read_text(), src.name
    assert set(defined_functions()) == set(library.prototypes())


def test_the_python_call_sites_agree_with_the_prototypes():
    assert call_site_errors(library.prototypes()) == []


def test_a_prototype_that_disagrees_with_a_call_site_is_caught():
    header = library.HEADER.read_text()
    fewer = header.replace("int64_t x_st, int64_t x_sh, int interleave);", "int64_t x_st, int interleave);")
    assert fewer != header
    [error] = call_site_errors(library.prototypes(fewer))
    assert re.fullmatch(r"kernels\.py:\d+: rope_f32 takes 9 arguments, called with 10", error), error


def test_a_pointer_and_a_scalar_swapped_is_caught():
    """Same count, wrong kinds: ctypes would pass a size as an address (and an address as a size) without a word."""
    header = library.HEADER.read_text()
    swapped = header.replace("float *out, int64_t t, int64_t h,", "int64_t t, float *out, int64_t h,")
    assert swapped != header
    assert [re.sub(r":\d+:", ":N:", e) for e in call_site_errors(library.prototypes(swapped))] == [
        "kernels.py:N: rope_f32 argument 4 is a scalar, called with an address (out.data_ptr())",
        "kernels.py:N: rope_f32 argument 5 is a pointer, called with a scalar (t)"]
    pointer = header.replace("int64_t x_stride, float eps);", "int64_t *x_stride, float eps);")
    assert [re.sub(r":\d+:", ":N:", e) for e in call_site_errors(library.prototypes(pointer))] == [
        "kernels.py:N: rms_norm_fwd_f32 argument 7 is a pointer, called with a scalar (stride)",
        "train_kernels.py:N: rms_norm_fwd_f32 argument 7 is a pointer, called with a scalar (stride)"]


def test_address_helpers_return_ctypes_arrays():
    import torch

    from r1kit.ops.cpu import train_kernels
    for helper in ADDRESS_HELPERS:
        assert isinstance(getattr(train_kernels, helper)(torch.zeros(2, 3, 4, 5)), ctypes.Array), helper


def test_the_header_maps_to_exact_ctypes_and_rejects_what_it_cannot_map():
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    assert library.prototypes()["rope_f32"] == (None, [ptr] * 4 + [i64] * 5 + [ctypes.c_int])
    assert library.prototypes()["router_select_f32"] == (ctypes.c_int, [ptr] * 4 + [i64] * 5 + [ctypes.c_int,
                                                                                             ctypes.c_float])
    with pytest.raises(ValueError, match="double scale"):
        library.prototypes("int f(const float *x, double scale);")


def test_the_loaded_library_carries_the_headers_types():
    lib = library.load()
    if lib is None:
        pytest.skip("no C compiler for the native CPU kernels")
    for name, (restype, argtypes) in library.prototypes().items():
        fn = getattr(lib, name)
        assert fn.restype is restype and list(fn.argtypes) == argtypes, name


def test_a_definition_that_disagrees_with_the_header_does_not_compile(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    for name in ("decode_small_ops.c", "dots.h"):
        shutil.copy(library.SOURCES / name, tmp_path / name)

    def compiles(header: str) -> bool:
        (tmp_path / "kernels.h").write_text(header)
        run = subprocess.run([cc, "-fsyntax-only", "-std=c11", str(tmp_path / "decode_small_ops.c")],
                             capture_output=True, text=True)
        return run.returncode == 0

    header = library.HEADER.read_text()
    assert compiles(header)
    assert not compiles(header.replace("int64_t x_st, int64_t x_sh, int interleave);",
                                       "int64_t x_st, int32_t x_sh, int interleave);"))
