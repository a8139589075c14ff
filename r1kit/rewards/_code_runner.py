"""The trusted side of a code test: runs the tests and counts the passes where the candidate cannot reach.

Runs inside the sandbox launcher after it forked the candidate (see `_sandbox_launch.py`): in another process,
outside the candidate's PID namespace, as a uid without privileges. The candidate's program runs in its own process
(`_code_candidate.py`) and exports its module's names; here they become:

- plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset; subclasses arrive
  converted to these) copied as values;
- anything else (functions, classes, instances, generators) as `CandidateObject` references: calling one, reading
  an attribute, iterating or indexing sends a request through a pipe and the answer comes back the same way.

Answers are decoded by a pickle unpickler that can build nothing but plain data and references (no class lookups
except `complex`), so a candidate's value can never carry its own `__eq__`: `add(1, 2) == 3` compares a real int,
and a reference compares equal only to itself, has no truth value, no ordering and no arithmetic. Whatever the
candidate writes to the pipe is only ever "the value its function returned".

The namespace the tests run in: the builtins (a candidate cannot shadow them), then the example's code prefix run
here (trusted: a HumanEval prompt's imports and helpers such as `poly` or `encode_cyclic`; only its stub functions,
whose bodies are docstrings, pass, ... and imports, are left for the candidate to define), then the candidate's
other names. Modules the candidate imported are imported here from the standard library instead, and so is a
standard module's name that the candidate bound to an object of its own (`math = Fake()`). Each test is exec'd in
that namespace; a test passes when it finishes without an exception. One line per test goes to the report stream
("ok I" or "fail I reason"), flushed at once, so a run cut short keeps the passes it had.

Stdlib only (imported by the launcher, run with `python -I -S`).
"""
import ast
import builtins
import importlib
import io
import os
import pickle
import select
import struct
import sys
import time

PLAIN_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset})
MAX_MESSAGE = 32 << 20  # bytes of one answer
_HEADER = struct.Struct(">I")
_NO_IMPORT = frozenset({"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter"})


class CandidateError(Exception):
    """The candidate's code raised (the message names its exception), or its process stopped answering."""


class Channel:
    """Request/answer over two pipes to the candidate, with the run's deadline on every wait."""

    def __init__(self, rfd: int, wfd: int, deadline: float):
        self.rfd, self.wfd, self.deadline, self.broken = rfd, wfd, deadline, None
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)

    def _wait(self, fd: int, write: bool) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CandidateError("time limit reached")
        r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], left)
        if not (r or w):
            raise CandidateError("time limit reached")

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._wait(self.rfd, False)
            chunk = os.read(self.rfd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise CandidateError("the candidate's process ended")
            buf += chunk
        return bytes(buf)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.wfd, True)
            try:
                view = view[os.write(self.wfd, view):]
            except BrokenPipeError:
                raise CandidateError("the candidate's process ended") from None

    def receive(self):
        (n,) = _HEADER.unpack(self._read(_HEADER.size))
        if n > MAX_MESSAGE:
            raise CandidateError(f"answer of {n} bytes is over the {MAX_MESSAGE}-byte limit")
        return decode(self._read(n), self)

    def request(self, *msg):
        if self.broken:
            raise CandidateError(self.broken)
        try:
            self._write(encode(msg))
            answer = self.receive()
        except CandidateError as e:  # the stream cannot be trusted to be in step any more
            self.broken = str(e)
            raise
        if type(answer) is tuple and answer[:1] == ("ok",) and len(answer) == 2:
            return answer[1]
        if type(answer) is tuple and answer[:1] == ("stop",) and msg[0] == "next":  # only a candidate iterator's
            raise StopIteration                                                  # end, never a call's
        if type(answer) is tuple and len(answer) == 3 and answer[0] == "err":
            raise _exception(answer[1], answer[2])
        self.broken = "malformed answer"
        raise CandidateError(self.broken)


_CONTROL_FLOW = (StopIteration, StopAsyncIteration)  # would end a map()/all() over the candidate's calls early


def _exception(name, message) -> Exception:
    """The candidate's exception as a builtin Exception subclass of the same name, else a CandidateError."""
    cls = getattr(builtins, name, None) if type(name) is str else None
    text = message if type(message) is str else ""
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins" \
            and not issubclass(cls, _CONTROL_FLOW):
        try:
            return cls(text)
        except Exception:
            pass
    return CandidateError(f"{name}: {text}" if type(name) is str else text)


class CandidateObject:
    """A reference to an object living in the candidate's process (equal only to itself)."""

    __slots__ = ("_ch", "_id", "_type", "_armed")

    def __init__(self, ch: Channel, ref: int, type_name: str):
        object.__setattr__(self, "_ch", ch)
        object.__setattr__(self, "_id", ref)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_armed", False)  # inert while its message is still being decoded

    def __getattr__(self, name):
        if name.startswith("__") or not self._armed:
            raise AttributeError(name)
        return self._ch.request("getattr", self._id, name)

    def __setattr__(self, name, value):
        raise AttributeError("objects of the candidate's program are read-only here")

    def __call__(self, *args, **kwargs):
        if not self._armed:
            raise TypeError("not callable while decoding")
        return self._ch.request("call", self._id, args, kwargs)

    def __iter__(self):
        it = self._ch.request("iter", self._id)
        if not isinstance(it, CandidateObject):
            raise CandidateError("iter() of a candidate object gave plain data")
        return _CandidateIterator(it)

    def __len__(self):
        n = self._ch.request("len", self._id)
        if type(n) is not int or n < 0:
            raise CandidateError("len() of a candidate object is not a non-negative int")
        return n

    def __getitem__(self, key):
        return self._ch.request("getitem", self._id, key)

    def __eq__(self, other):
        return isinstance(other, CandidateObject) and other._ch is self._ch and other._id == self._id

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("candidate object", self._id))

    def __bool__(self):
        raise CandidateError(f"the candidate gave a {self._type} object, not plain data: it has no truth value")

    def __repr__(self):
        return f"<candidate {self._type} object #{self._id}>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol):
        raise TypeError("candidate objects travel by reference only")


class _CandidateIterator:
    __slots__ = ("_it",)

    def __init__(self, it: CandidateObject):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        return self._it._ch.request("next", self._it._id)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if type(obj) is CandidateObject:
            return ("obj", obj._id, "")
        if type(obj) in PLAIN_TYPES or obj is complex:
            return None
        raise TypeError(f"only plain data and the candidate's own objects can be passed to its code, "
                        f"not {type(obj).__name__}")


def encode(msg) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(msg)
    data = buf.getvalue()
    return _HEADER.pack(len(data)) + data


class _Unpickler(pickle.Unpickler):
    """Builds plain data and CandidateObjects only: every class lookup except `complex` is refused."""

    def __init__(self, data: bytes, ch: Channel):
        super().__init__(io.BytesIO(data))
        self.ch, self.made = ch, []

    def find_class(self, module, name):
        if (module, name) == ("builtins", "complex"):
            return complex
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")

    def persistent_load(self, pid):
        if type(pid) is tuple and len(pid) == 3 and pid[0] == "obj" and type(pid[1]) is int \
                and type(pid[2]) is str:
            obj = CandidateObject(self.ch, pid[1], pid[2][:100])
            self.made.append(obj)
            return obj
        raise pickle.UnpicklingError("bad reference")


def decode(data: bytes, ch: Channel):
    unpickler = _Unpickler(data, ch)
    try:
        value = unpickler.load()
    except Exception as e:
        raise CandidateError(f"undecodable answer ({type(e).__name__})") from None
    for obj in unpickler.made:
        object.__setattr__(obj, "_armed", True)
    return value


def stub_names(prefix: str) -> set[str]:
    """Top-level functions (and classes of only such methods) of the prefix whose bodies are placeholders."""
    def placeholder(stmt) -> bool:
        if isinstance(stmt, (ast.Pass, ast.Import, ast.ImportFrom)):  # HumanEval/115's stub imports math
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return isinstance(stmt.value.value, str) or stmt.value.value is Ellipsis
        return False

    def is_stub(node) -> bool:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return all(placeholder(s) for s in node.body)
        if isinstance(node, ast.ClassDef):
            return all(placeholder(s) or is_stub(s) for s in node.body)
        return False

    return {node.name for node in ast.parse(prefix).body if is_stub(node)}


def _import_stdlib(name: str):
    top = name.partition(".")[0]
    if top in _NO_IMPORT or top not in getattr(sys, "stdlib_module_names", ()):
        return None
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def build_namespace(prefix: str, exports: dict, modules: dict) -> dict:
    """The tests' globals: builtins, the trusted prefix, then the candidate's exports (see the module docstring)."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    stubs: set[str] = set()
    if prefix:
        exec(compile(prefix, "prefix.py", "exec"), ns)
        stubs = stub_names(prefix)
    trusted = set(ns) - stubs
    for name, value in exports.items():
        if type(name) is not str or name.startswith("__") or name in trusted:
            continue
        if hasattr(builtins, name) and name not in stubs:
            continue
        if type(value) is CandidateObject and name not in stubs:  # `math = Fake()`: the tests get the real math
            module = _import_stdlib(name)
            if module is not None:
                ns[name] = module
                continue
        ns[name] = value
    for name, module_name in modules.items():
        if type(name) is str and type(module_name) is str and name not in ns and not name.startswith("__"):
            module = _import_stdlib(module_name)
            if module is not None:
                ns[name] = module
    return ns


def run(cfg: dict, rfd: int, wfd: int, deadline: float, report) -> None:
    tests = cfg["tests"]

    def say(line: str) -> None:  # one line, whatever a reason holds (\r, \u2028, ... would split it elsewhere)
        report.write("".join(ch if ch.isprintable() else " " for ch in line[:500]) + "\n")
        report.flush()

    ch = Channel(rfd, wfd, deadline)
    try:
        ready = ch.receive()
        if not (type(ready) is tuple and len(ready) == 3 and ready[0] == "ready"
                and type(ready[1]) is dict and type(ready[2]) is dict):
            raise CandidateError(f"the program did not load: {ready[1] if type(ready) is tuple else ready!r}"[:300])
        ns = build_namespace(cfg.get("prefix", ""), ready[1], ready[2])
    except BaseException as e:
        say(f"error {type(e).__name__}: {e}")
        return
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}.py", "exec"), ns)
        except BaseException as e:  # noqa: B036  (SystemExit and friends from a test are failures too)
            say(f"fail {i} {type(e).__name__}: {e}")
        else:
            say(f"ok {i}")
    say("done")
