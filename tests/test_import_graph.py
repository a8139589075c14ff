"""The import graph of r1kit, read from the sources: imports flow one way.

- No cycles: no module reaches itself through imports, lazy (function-level) ones included.
- r1kit/models/ calls r1kit.ops and never a backend module (r1kit.ops.cpu...) directly: backends are chosen in
  r1kit/ops/dispatch.py only.
- r1kit.ops depends on nothing else in r1kit at run time (type-only imports under TYPE_CHECKING do not count).
- transformers is never imported by r1kit (it is the tests' oracle).
- r1kit/models/ has no device branches (an if on a device or its kind): that is the dispatch's business.
"""
from __future__ import annotations

import ast
from pathlib import Path

import r1kit

ROOT = Path(r1kit.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.Module):
    """Every node, except those under `if TYPE_CHECKING:`."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """{module: r1kit modules it imports at run time}, function-level (lazy) imports included. `from pkg import x`
    counts as importing pkg.x when that is a module, else pkg."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{mod}: relative import"  # (r1kit imports absolutely)
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def is_backend(module: str) -> bool:
    """A module of a backend package (r1kit/ops/<backend>/...)."""
    parts = module.split(".")
    return parts[:2] == ["r1kit", "ops"] and len(parts) > 2 and (ROOT / "ops" / parts[2]).is_dir()


def test_models_call_ops_and_never_a_backend_module():
    graph = import_graph()
    offenders = {m: sorted(filter(is_backend, deps)) for m, deps in graph.items() if m.startswith("r1kit.models")}
    assert {m: d for m, d in offenders.items() if d} == {}
    assert is_backend("r1kit.ops.cpu.kernels") and is_backend("r1kit.ops.cpu") and not is_backend("r1kit.ops.rope")
    assert any("r1kit.ops" in deps for m, deps in graph.items() if m.startswith("r1kit.models"))


LEAVES = {"r1kit.cache"}   # imports nothing from r1kit, so the lowest layer may use it (where caches live)


def test_ops_depend_on_nothing_else_in_r1kit():
    graph = import_graph()
    outside = {m: sorted(d for d in deps if not d.startswith("r1kit.ops") and d not in LEAVES)
               for m, deps in graph.items() if m.startswith("r1kit.ops")}
    assert {m: d for m, d in outside.items() if d} == {}
    assert all(not graph[leaf] for leaf in LEAVES)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds one
    assert cycles(import_graph()) == []


def test_r1kit_never_imports_transformers_at_run_time():
    """transformers is the tests' oracle and the benchmarks' peer (the dev extra), not a run-time dependency."""
    users = []
    for path in ROOT.rglob("*.py"):
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            users += [module_name(path) for n in names if n.split(".")[0] == "transformers"]
    assert users == []


def device_branches(source: str) -> list[str]:
    """The tests of `if`s, conditional expressions and boolean operands in `source` that look at a device or a device
    kind: a tensor's/model's .device / .is_cuda / .is_cpu, or the strings "cpu", "cuda", "mps" in a comparison."""
    found = []
    for node in ast.walk(ast.parse(source)):
        tests = ([node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While)) else
                 node.values if isinstance(node, ast.BoolOp) else [])
        for test in tests:
            names = {n.attr for n in ast.walk(test) if isinstance(n, ast.Attribute)}
            strings = {n.value for n in ast.walk(test) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            if names & {"device", "is_cuda", "is_cpu", "is_mps"} or strings & {"cpu", "cuda", "mps"}:
                found.append(ast.unparse(test))
    return found


def test_models_have_no_device_branches():
    """Model code calls ops; which implementation suits a device is the dispatch's business (r1kit/ops/dispatch.py)."""
    assert device_branches("if x.device.type == 'cpu':\n    pass\ny = a if t.is_cuda else b\n") == [
        "x.device.type == 'cpu'", "t.is_cuda"]  # the finder finds them
    assert device_branches("with torch.autocast(x.device.type, enabled=False):\n    y = f(x.to(x.device))\n") == []
    offenders = {module_name(p): device_branches(p.read_text()) for p in (ROOT / "models").rglob("*.py")}
    assert {m: b for m, b in offenders.items() if b} == {}
