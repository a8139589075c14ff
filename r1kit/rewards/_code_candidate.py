"""The candidate's side of a code test: run the program, export its names, answer the runner's requests.

Runs as `python -I -c <this source>` inside the candidate's sandbox (see `_sandbox_launch.py`), with the program in
./main.py, requests on fd 3 and answers on fd 4. Nothing here is trusted: the program shares this process and may
change anything in it (these functions, pickle, the pipes). That is fine because the runner (`_code_runner.py`)
treats every answer as data: the most a program can do by tampering is choose its functions' return values.

Values go out as plain data: exact builtins as they are, subclasses of them converted to the builtin (a namedtuple to
a tuple, an OrderedDict to a dict, an IntEnum to an int: as they compare in Python), anything else as a reference
(an id into `_objects`) that the runner can call, read attributes of, iterate or index.

Stdlib only; no imports from r1kit (the package is not inside the sandbox).
"""
import builtins
import io
import os
import pickle
import struct
import sys
import types

_PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
_HEADER = struct.Struct(">I")
_objects: dict = {}


class _Ref:
    __slots__ = ("ref", "type_name")

    def __init__(self, obj):
        self.ref = len(_objects) + 1
        self.type_name = type(obj).__name__
        _objects[self.ref] = obj


def _export(value, depth=0):
    """Plain data with _Ref for everything else; subclasses of builtins become the builtin."""
    if depth > 200:
        raise RecursionError("value nested too deeply")
    t = type(value)
    if t in (type(None), bool, int, float, complex, str, bytes):
        return value
    if t in (list, tuple, set, frozenset):
        return t(_export(v, depth + 1) for v in value)
    if t is dict:
        return {_export(k, depth + 1): _export(v, depth + 1) for k, v in value.items()}
    for base in (bool, int, float, complex, str, bytes):
        if isinstance(value, base):
            return base(value)
    for base in (tuple, list, set, frozenset):
        if isinstance(value, base):
            return base(_export(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {_export(k, depth + 1): _export(v, depth + 1) for k, v in dict.items(value)}
    return _Ref(value)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if type(obj) is _Ref:
            return ("obj", obj.ref, obj.type_name)
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return _objects[pid[1]]


def _send(fd, msg) -> None:
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(msg)
    data = _HEADER.pack(len(buf.getvalue())) + buf.getvalue()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _answer(msg):
    op, ref = msg[0], msg[1]
    obj = _objects[ref]
    if op == "call":
        return obj(*msg[2], **msg[3])
    if op == "getattr":
        return getattr(obj, msg[2])
    if op == "iter":
        return iter(obj)  # never plain data: goes back as a reference
    if op == "next":
        return next(obj)
    if op == "len":
        return len(obj)
    if op == "getitem":
        return obj[msg[2]]
    raise ValueError(f"unknown request {op!r}")


def main() -> None:
    rfd, wfd = 3, 4
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        with open("main.py", encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, "solution.py", "exec"), ns)
        exports, modules = {}, {}
        for name, value in list(ns.items()):
            if name.startswith("__"):
                continue
            if isinstance(value, types.ModuleType):
                modules[name] = value.__name__
            else:
                try:
                    exports[name] = _export(value)
                except Exception:  # e.g. a list that contains itself: by reference
                    exports[name] = _Ref(value)
        ready = ("ready", exports, modules)
    except BaseException as e:  # noqa: B036  the program failed to load: nothing to test
        ready = ("fail", f"{type(e).__name__}: {e}"[:1000])
    sys.stdout.flush()
    _send(wfd, ready)
    if ready[0] != "ready":
        return
    while True:
        try:
            (n,) = _HEADER.unpack(_read(rfd, _HEADER.size))
            msg = _Unpickler(io.BytesIO(_read(rfd, n))).load()
        except EOFError:
            return
        try:
            reply = ("ok", _export(_answer(msg)))
        except StopIteration:
            reply = ("stop",)
        except BaseException as e:  # noqa: B036  reported to the runner as the call's exception
            reply = ("err", type(e).__name__, str(e)[:1000])
        try:
            _send(wfd, reply)
        except Exception as e:  # e.g. a value pickle cannot write: the call fails, the loop goes on
            _send(wfd, ("err", type(e).__name__, str(e)[:1000]))


main()
