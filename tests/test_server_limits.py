"""Server limits (issue 21): huge bodies, slow clients, too many connections, huge prompts, and who may read the
operator pages. Every refusal is an OpenAI-style JSON error, and /health keeps answering while they happen."""
from __future__ import annotations

import json
import resource
import socket
import statistics
import threading
import time
import urllib.request
from urllib.parse import urlparse

import pytest

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer
from r1kit.server.limits import ServerLimits

HEALTH_BUDGET_S = 0.1


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    return LLM(tiny_checkpoint("deepseek_v3"), max_model_len=64, max_num_seqs=4).engine


@pytest.fixture(scope="module")
def server(engine):
    limits = ServerLimits(header_timeout_s=1.0, body_timeout_s=1.0)
    with BackgroundServer(create_app(engine, "tiny", limits=limits)) as s:
        yield s


def _addr(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname, u.port


def _health_latency(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        assert r.status == 200
    return time.perf_counter() - start


def _read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one HTTP response read from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


def _assert_openai_error(body: dict, code: str) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["code"] == code


def test_a_50_mb_body_gets_413_at_once_and_health_stays_fast(server):
    sock = socket.create_connection(_addr(server.url))
    size = 50 << 20
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {size}\r\n\r\n".encode())
    start = time.perf_counter()

    def upload():  # the client keeps sending, as a real one would, until the server closes
        try:
            block = b"x" * (1 << 20)
            for _ in range(50):
                sock.sendall(block)
        except OSError:
            pass

    latencies: list[float] = []
    uploader = threading.Thread(target=upload, daemon=True)
    checker = threading.Thread(target=lambda: latencies.extend(_health_latency(server.url) for _ in range(5)))
    uploader.start()
    checker.start()
    status, headers, body = _read_response(sock)
    elapsed = time.perf_counter() - start
    checker.join(timeout=30)
    sock.close()
    uploader.join(timeout=10)
    assert status == 413 and headers.get("connection") == "close"
    _assert_openai_error(body, "request_too_large")
    assert elapsed < 1.0, elapsed
    assert statistics.median(latencies) < HEALTH_BUDGET_S, latencies


def test_a_chunked_body_over_the_limit_gets_413(server, engine):
    limits = ServerLimits(max_body_bytes=1000)
    with BackgroundServer(create_app(engine, "tiny", limits=limits)) as s:
        sock = socket.create_connection(_addr(s.url))
        chunk = b"x" * 600
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
        status, _, body = _read_response(sock)
        sock.close()
    assert status == 413
    _assert_openai_error(body, "request_too_large")


def test_a_body_that_stops_arriving_gets_408(server):
    sock = socket.create_connection(_addr(server.url))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
    status, _, body = _read_response(sock, timeout=5)
    sock.close()
    assert status == 408
    _assert_openai_error(body, "request_timeout")


def test_1100_slow_connections_do_not_stop_health_and_are_closed_after_the_header_timeout(server):
    n = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * n + 512  # both ends of every connection live in this process
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the open-file hard limit ({hard}) is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    socks = []
    try:
        for i in range(n):  # a request head that never finishes (slowloris)
            s = socket.create_connection(_addr(server.url))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + str(i).encode())
            socks.append(s)
        opened = time.perf_counter()
        latencies = [_health_latency(server.url) for _ in range(5)]
        assert statistics.median(latencies) < HEALTH_BUDGET_S, latencies
        closed = 0
        for s in socks:  # each gets a 408 and EOF shortly after the 1 s header timeout
            s.settimeout(max(0.1, opened + 10 - time.perf_counter()))
            try:
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                closed += data.startswith(b"HTTP/1.1 408")
            except OSError:
                pass
        assert closed == n
        assert time.perf_counter() - opened < 10
        assert _health_latency(server.url) < 1.0
    finally:
        for s in socks:
            s.close()


def test_connections_over_the_cap_get_503(engine):
    limits = ServerLimits(max_connections=8)
    with BackgroundServer(create_app(engine, "tiny", limits=limits)) as s:
        idle = [socket.create_connection(_addr(s.url)) for _ in range(8)]
        try:
            time.sleep(0.2)
            extra = socket.create_connection(_addr(s.url))
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = _read_response(extra)
            extra.close()
            assert status == 503 and headers.get("retry-after") == "1"
            _assert_openai_error(body, "too_many_connections")
        finally:
            for c in idle:
                c.close()
        time.sleep(0.2)
        assert _health_latency(s.url) < 1.0  # the cap frees up again


def test_a_prompt_too_long_for_any_tokenization_is_refused_without_tokenizing(server, monkeypatch):
    tok = server.server.config.app.state.async_engine.tokenizer
    calls = []
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    body = json.dumps({"prompt": "a" * 2_000_000, "max_tokens": 1}).encode()
    req = urllib.request.Request(server.url + "/v1/completions", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    _assert_openai_error(json.loads(e.value.read()), "context_length_exceeded")
    assert calls == []


def test_tokenizing_does_not_block_the_event_loop(server, monkeypatch):
    tok = server.server.config.app.state.async_engine.tokenizer
    real = tok.encode

    def slow_encode(*a, **k):
        time.sleep(1.5)  # a long prompt's tokenization, made slow on purpose
        return real(*a, **k)

    monkeypatch.setattr(tok, "encode", slow_encode)
    body = json.dumps({"prompt": "hello", "max_tokens": 1}).encode()
    req = urllib.request.Request(server.url + "/v1/completions", body, {"Content-Type": "application/json"})
    worker = threading.Thread(target=lambda: urllib.request.urlopen(req, timeout=30).read())
    worker.start()
    time.sleep(0.3)
    latency = _health_latency(server.url)
    worker.join()
    assert latency < 1.0, latency


def test_api_key_covers_metrics_and_docs_unless_public_metrics(engine):
    def get(url, path, key=None):
        req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    with BackgroundServer(create_app(engine, "tiny", api_key="k3y")) as s:
        for path in ("/metrics", "/docs", "/openapi.json", "/v1/models"):
            assert get(s.url, path)[0] == 401, path
            assert get(s.url, path, "k3y")[0] == 200, path
        assert get(s.url, "/health")[0] == 200 and get(s.url, "/")[0] == 200
        status, page = get(s.url, "/docs", "k3y")
        assert "/v1/chat/completions" in page and "ChatCompletionRequest" in page
        assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere: works offline
        assert get(s.url, "/redoc", "k3y")[0] == 404
    with BackgroundServer(create_app(engine, "tiny", api_key="k3y", public_metrics=True)) as s:
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert get(s.url, path)[0] == 200, path
        assert get(s.url, "/v1/models")[0] == 401
