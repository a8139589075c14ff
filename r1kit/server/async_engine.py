"""AsyncEngine: many asyncio handlers share one LLMEngine through continuous batching.

The LLMEngine is synchronous and not thread-safe, so exactly one background thread owns it: it applies the
commands handlers send it (add, abort, call), steps the engine while any request is unfinished and sleeps
otherwise. Each request gets an asyncio queue; the engine thread feeds it every RequestOutput (cumulative text, so
a slow reader just skips to the newest one) with `loop.call_soon_threadsafe`.

    stream = await async_engine.submit(request_id, prompt, params)   # raises the engine's ValueError, or QueueFull
    try:
        async for out in stream: ...                                   # RequestOutput, last one has .finished
    finally:
        stream.close()                                                 # aborts if unfinished: frees its KV blocks

A client that disconnects cancels its handler; the `finally` aborts the request on the engine thread.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("r1kit.server")


class QueueFull(Exception):
    """More requests are in flight than --max-queue allows; the client should retry later (HTTP 429)."""


class RequestAborted(Exception):
    """The request was closed (its client went away) before it finished."""


class RequestStream:
    """The outputs of one engine request, as an async iterator; `close()` aborts it if it has not finished."""

    def __init__(self, owner: "AsyncEngine", request_id: str, loop: asyncio.AbstractEventLoop):
        self.owner, self.request_id, self.loop = owner, request_id, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.accepted: asyncio.Future = loop.create_future()
        self.finished = False
        self.closed = False
        self.arrival = time.perf_counter()
        self.first_token_time: float | None = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        item = await self.queue.get()
        while not self.queue.empty() and not isinstance(item, BaseException) and not item.finished:
            item = self.queue.get_nowait()  # outputs are cumulative: the newest one says everything
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if self.first_token_time is None and any(c.token_ids for c in item.outputs):
            self.first_token_time = time.perf_counter()
        self.finished = item.finished
        return item

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner._release(self)


class AsyncEngine:
    def __init__(self, engine, max_queue: int = 512):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_queue = max_queue
        self.in_flight = 0  # submitted and not yet closed; touched only on the event loop thread
        self.num_aborted = 0
        self.stats: dict[str, Any] = {}  # latest engine.stats(), refreshed by the engine thread
        self._streams: dict[str, RequestStream] = {}  # engine-thread owned
        self._commands: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="r1kit-engine", daemon=True)
        self._thread.start()

    # ---- called from the event loop ----
    async def submit(self, request_id: str, prompt: str | list[int], params) -> RequestStream:
        if self.in_flight >= self.max_queue:
            raise QueueFull(f"the server already has {self.in_flight} requests in flight (--max-queue "
                            f"{self.max_queue}); retry later")
        stream = RequestStream(self, request_id, asyncio.get_running_loop())
        self.in_flight += 1
        self._send(("add", stream, prompt, params))
        try:
            await stream.accepted
        except BaseException:
            acc = stream.accepted
            # rejected by the engine: nothing to abort; cancelled while waiting: the add still happens, abort it
            stream.finished = acc.done() and not acc.cancelled() and acc.exception() is not None
            stream.close()
            raise
        return stream

    def _release(self, stream: RequestStream) -> None:
        self.in_flight -= 1
        if not stream.finished:
            self.num_aborted += 1
            stream.queue.put_nowait(RequestAborted(stream.request_id))  # wakes a reader still waiting
            self._send(("abort", stream.request_id))

    def call_threadsafe(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future:
        """Run fn(engine) on the engine thread between steps (safe access to engine state); from any thread."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._send(("call", fn, fut))
        return fut

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        return await asyncio.wrap_future(self.call_threadsafe(fn))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    def _send(self, command: tuple) -> None:
        self._commands.append(command)
        self._wake.set()

    # ---- the engine thread ----
    def _loop(self) -> None:
        self._refresh_stats()
        while not self._stop:
            self._apply_commands()
            if self.engine.has_unfinished_requests():
                self._step()
            else:
                self._refresh_stats()
                self._wake.wait()
                self._wake.clear()

    def _apply_commands(self) -> None:
        while self._commands:
            cmd = self._commands.popleft()
            if cmd[0] == "add":
                _, stream, prompt, params = cmd
                if stream.closed:  # its client left while the request was queued: never start it
                    continue
                try:
                    self.engine.add_request(stream.request_id, prompt, params)
                except BaseException as e:  # a bad request: the handler answers 400
                    stream.loop.call_soon_threadsafe(_set_exception, stream.accepted, e)
                    continue
                self._streams[stream.request_id] = stream
                stream.loop.call_soon_threadsafe(_set_result, stream.accepted, None)
            elif cmd[0] == "abort":
                if self._streams.pop(cmd[1], None) is not None:
                    self.engine.abort_request(cmd[1])
            elif cmd[0] == "call":
                _, fn, fut = cmd
                try:
                    fut.set_result(fn(self.engine))
                except BaseException as e:
                    fut.set_exception(e)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # an engine bug: fail every request rather than hang them, keep serving
            log.exception("engine step failed; aborting %d requests", len(self._streams))
            for rid, stream in list(self._streams.items()):
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, RuntimeError(f"engine error: {e}"))
                self._streams.pop(rid)
                try:
                    self.engine.abort_request(rid)
                except Exception:
                    log.exception("abort of %s failed", rid)
            return
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del self._streams[out.request_id]
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, out)
        self._refresh_stats()

    def _refresh_stats(self) -> None:
        try:
            self.stats = normalize_stats(self.engine.stats())
        except Exception:
            log.exception("engine.stats() failed")


def _set_result(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)


def normalize_stats(stats) -> dict[str, Any]:
    """The engine's stats() as the flat dict metrics.py reads (running, waiting, kv_usage, kv_blocks_used, ...)."""
    return dict(stats) if isinstance(stats, dict) else dict(vars(stats))
