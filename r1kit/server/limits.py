"""Resource limits of the HTTP server: body size, read timeouts, connection cap, and a prompt-size bound.

Why each exists (issue 21's probe): a 50 MB body blocked /health for 78 s and peaked at 10 GB RSS; 1,100 half-sent
requests exhausted the file descriptors and slowed /health to 5 s; a 10 MB prompt blocked the event loop while it
was tokenized. uvicorn alone does not cover these: `limit_concurrency` answers 503 only once a request's headers
are complete (a slow client never gets there) and its keep-alive timeout starts only after a first response, so a
connection that never finishes its headers is never timed out. So:

- `GuardedH11Protocol` (the HTTP/1.1 protocol, uvicorn's h11 implementation plus): a header read timeout from the
  connection's start (or the previous response) to a complete request head -> 408; a cap on open connections ->
  503 at once for the connection over it; both with OpenAI-style JSON bodies and `Connection: close`. Connections
  are closed "lingering": the response is flushed, the write side shut, and what the client still sends is read
  and dropped for a moment, so a client still uploading a rejected body reads the error instead of a reset.
- `BodyLimitMiddleware` (ASGI): a request whose Content-Length is over `max_body_bytes` gets 413 before any of the
  body is read; otherwise the body is read here (at most `max_body_bytes`, within `body_timeout_s` -> 408) and
  replayed to the app.
- `prompt_too_long(...)`: a prompt with more characters than the context can hold in tokens (context length x the
  longest token in characters) is rejected without tokenizing it; shorter prompts are tokenized in a worker thread
  (openai_serving), not on the event loop.
"""
from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from r1kit.server.errors import error_body

_LINGER_S = 1.0  # how long a closing connection's incoming bytes are read and dropped
_REASONS = {408: "Request Timeout", 413: "Content Too Large", 503: "Service Unavailable"}


@dataclass
class ServerLimits:
    max_body_bytes: int = 4 << 20  # larger request bodies get 413
    header_timeout_s: float = 10.0  # from connect (or the previous response) to a complete request head, else 408
    body_timeout_s: float = 30.0  # to receive the whole body once the head is in, else 408
    max_connections: int = 2048  # open connections; the one over it gets 503 and is closed

    def __post_init__(self):
        for name in ("max_body_bytes", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def raw_error(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response (JSON body, Connection: close), for use below the ASGI layer."""
    body = json.dumps(error_body(status, message, code=code)).encode()
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    if status == 503:
        head += "retry-after: 1\r\n"
    return (head + "\r\n").encode() + body


class _LingeringTransport:
    """Wraps the socket transport so that close() flushes, shuts the write side, and drops input for a moment."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol):
        self._t, self._p, self._closing = transport, protocol, False

    def __getattr__(self, name):
        return getattr(self._t, name)

    def is_closing(self) -> bool:
        return self._closing or self._t.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._p.discarding = True
        try:
            self._t.write_eof()
            self._t.resume_reading()
        except (OSError, RuntimeError, NotImplementedError):
            self._t.close()
            return
        self._p.loop.call_later(_LINGER_S, self._t.close)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header read timeout and a connection cap (see the module docstring)."""

    limits = ServerLimits()

    def connection_made(self, transport):
        self.discarding, self._header_timer, self._got_bytes = False, None, False
        transport = _LingeringTransport(transport, self)
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            transport.write(raw_error(503, f"the server has {len(self.connections)} open connections, its limit; "
                                           "retry shortly", "too_many_connections"))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._got_bytes = False
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        if self._got_bytes:  # a request head that never completed
            self.transport.write(raw_error(408, f"the request head did not arrive within "
                                                f"{self.limits.header_timeout_s:g} s", "request_timeout"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self._got_bytes = True
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request head on this keep-alive connection has the same deadline

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def protocol_class(limits: ServerLimits) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class BodyLimitMiddleware:
    """ASGI: 413 for a body over the limit (by Content-Length before reading, else while reading), 408 for a body
    that does not arrive in time; the body read here is replayed to the app."""

    def __init__(self, app, limits: ServerLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _reject(send, 400, "the Content-Length header is not a number", "invalid_header")
        limit = self.limits.max_body_bytes
        if length is not None and length > limit:
            return await _reject(send, 413, f"the request body is {length} bytes; the limit is {limit}",
                                 "request_too_large")
        chunks, size, first = [], 0, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await _reject(send, 408, f"the request body did not arrive within "
                                                f"{self.limits.body_timeout_s:g} s", "request_timeout")
            if message["type"] != "http.request":  # the client left: let the app see it
                first = message
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _reject(send, 413, f"the request body is over the limit of {limit} bytes",
                                     "request_too_large")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)


async def _reject(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def raise_open_file_limit(max_connections: int, reserve: int = 256) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit so `max_connections` sockets fit (plus `reserve` for
    models, logs and the engine); returns the connection cap that fits under the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + reserve
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return max(1, min(max_connections, soft - reserve))


def max_token_chars(tokenizer) -> int | None:
    """The longest token in characters (an upper bound: the byte-level vocabulary's strings are >= the text)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        return None
    return max((len(t) for t in vocab), default=None)


def prompt_too_long(chars: int, max_model_len: int | None, token_chars: int | None) -> str | None:
    """A message when `chars` characters cannot fit in `max_model_len` tokens whatever the tokenizer does."""
    if not max_model_len or not token_chars or chars <= max_model_len * token_chars:
        return None
    return (f"the prompt has {chars} characters, more than the {max_model_len}-token context can hold "
            f"(at most {token_chars} characters per token)")
