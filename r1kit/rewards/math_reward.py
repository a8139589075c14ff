"""Math answer checking with math-verify, in worker processes behind a hard timeout.

math-verify's own timeouts use SIGALRM (main thread only) and some sympy inputs hang regardless, so the check runs
in a pool of worker processes (fresh interpreters started with subprocess: never a fork of the threaded parent, and
unlike multiprocessing's spawn they never re-import the user's __main__). A call that does not answer within
`timeout_s` gets 0.0; its worker is killed and replaced. The pool is thread-safe: trainers and evaluators call
`math_reward` from any thread, and `score_batch` (in registry.py) fans a batch out over threads that each hold a worker.

Gold first: `verify(parse(gold), parse(answer))`. A gold without `$` or `\\boxed` is wrapped in `$...$` so plain
LaTeX ("\\frac{1}{2}", "[1, 2)") parses as LaTeX.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import queue
import select
import subprocess
import sys
import threading
import time

from r1kit.rewards.extract import answer_text

_READY_TIMEOUT_S = 120.0  # importing sympy on a loaded machine can be slow; not counted against a check


def _gold_text(gold: str) -> str:
    gold = str(gold).strip()
    return gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"


def serve(inner_timeout_s: int) -> None:
    """Worker loop of one pool process: JSON [gold, answer] lines in, "1"/"0" lines out."""
    import json
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout and parse failure
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold, answer = json.loads(line)
            g = parse(_gold_text(gold), parsing_timeout=inner_timeout_s)
            p = parse(answer, parsing_timeout=inner_timeout_s)
            ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=inner_timeout_s)
        except Exception:
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


class _Worker:
    """One math-verify process, started with subprocess (not multiprocessing: no re-import of the user's
    __main__, no fork of a threaded parent), talking JSON lines over pipes."""

    def __init__(self, inner_timeout_s: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from r1kit.rewards.math_reward import serve; serve({int(inner_timeout_s)})"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, start_new_session=True)
        self.ready = False
        self._buf = b""

    def read_line(self, timeout_s: float) -> str | None:
        """The next line from the worker, or None if none arrives in time (or it died)."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def wait_ready(self) -> bool:
        if not self.ready:
            self.ready = self.read_line(_READY_TIMEOUT_S) == "ready"
        return self.ready

    def ask(self, gold: str, answer: str, timeout_s: float) -> float | None:
        try:
            self.proc.stdin.write((json.dumps([gold, answer]) + "\n").encode())
        except OSError:
            return None
        line = self.read_line(timeout_s)
        return None if line is None else float(line == "1")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()


class MathVerifier:
    """A pool of `workers` math-verify processes; `check(gold, answer) -> 1.0 | 0.0` within `timeout_s`."""

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, inner_timeout_s: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout_s = float(timeout_s)
        # math-verify's own SIGALRM timeouts (per parse and per verify) end most slow checks before the outer
        # timeout does, which saves a process restart; 0 turns them off
        self.inner_timeout_s = max(1, math.floor(timeout_s) // 2) if inner_timeout_s is None else inner_timeout_s
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self._all: set[_Worker] = set()

    def _new_worker(self) -> _Worker:
        w = _Worker(self.inner_timeout_s)
        with self._lock:
            self._all.add(w)
        return w

    def _acquire(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._started < self.workers
            self._started += grow
        return self._new_worker() if grow else self._idle.get()

    def _retire(self, w: _Worker) -> None:
        with self._lock:
            self._all.discard(w)
        w.kill()
        self._idle.put(self._new_worker())  # keep the pool size; the replacement warms up in the background

    def check(self, gold: str, answer: str) -> float:
        if not str(answer).strip() or not str(gold).strip():
            return 0.0
        w = self._acquire()
        if not w.wait_ready():
            self._retire(w)
            return 0.0
        result = w.ask(str(gold), str(answer), self.timeout_s)
        if result is None:  # too slow or dead: kill it, start a replacement
            self._retire(w)
            return 0.0
        self._idle.put(w)
        return result

    def close(self) -> None:
        with self._lock:
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide pool (one worker per core, 5 s timeout), started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
            atexit.register(_default.close)
        return _default


def math_reward(completion: str, example: dict) -> float:
    """1.0 if the completion's final answer is mathematically equal to example["answer"] (math-verify), else 0.0."""
    return default_verifier().check(example["answer"], answer_text(completion))

