"""Math answer checking with math-verify, in worker processes behind a hard timeout.

math-verify's own timeouts use SIGALRM (main thread only) and some sympy inputs hang regardless, so the check runs
in a pool of spawned worker processes (never a fork of the threaded parent). A call that does not answer within
`timeout_s` gets 0.0; its worker is killed and replaced. The pool is thread-safe: trainers and evaluators call
`math_reward` from any thread, and `score_batch` (in registry.py) fans a batch out over threads that each hold a worker.

Gold first: `verify(parse(gold), parse(answer))`. A gold without `$` or `\\boxed` is wrapped in `$...$` so plain
LaTeX ("\\frac{1}{2}", "[1, 2)") parses as LaTeX.
"""
from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import queue
import threading

from r1kit.rewards.extract import answer_text

_READY_TIMEOUT_S = 120.0  # importing sympy on a loaded machine can be slow; not counted against a check


def _gold_text(gold: str) -> str:
    gold = str(gold).strip()
    return gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"


def _serve(conn, inner_timeout_s) -> None:
    """Worker loop: receive (gold, answer) pairs, send back 1.0/0.0."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout and parse failure
    conn.send("ready")
    while True:
        try:
            gold, answer = conn.recv()
        except EOFError:
            return
        try:
            g = parse(_gold_text(gold), parsing_timeout=inner_timeout_s)
            p = parse(answer, parsing_timeout=inner_timeout_s)
            ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=inner_timeout_s)
            conn.send(1.0 if ok else 0.0)
        except Exception:
            conn.send(0.0)


class _Worker:
    def __init__(self, ctx, inner_timeout_s):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, inner_timeout_s), daemon=True, name="r1kit-math-verify")
        self.proc.start()
        child.close()
        self.ready = False

    def wait_ready(self) -> bool:
        if not self.ready:
            self.ready = self.conn.poll(_READY_TIMEOUT_S) and self.conn.recv() == "ready"
        return self.ready

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class MathVerifier:
    """A pool of `workers` math-verify processes; `check(gold, answer) -> 1.0 | 0.0` within `timeout_s`."""

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, inner_timeout_s: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout_s = float(timeout_s)
        # math-verify's own SIGALRM timeouts end most slow checks without a process restart
        self.inner_timeout_s = max(1, math.floor(timeout_s)) if inner_timeout_s is None else inner_timeout_s
        self._ctx = mp.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self._all: set[_Worker] = set()

    def _new_worker(self) -> _Worker:
        w = _Worker(self._ctx, self.inner_timeout_s)
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
        try:
            w.conn.send((str(gold), str(answer)))
            if w.conn.poll(self.timeout_s):
                result = w.conn.recv()
                self._idle.put(w)
                return float(result)
        except (EOFError, OSError):
            pass
        self._retire(w)
        return 0.0

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
