"""64 concurrent streaming clients share the engine; 16 of them hang up midway.

Every stream that completes must be well formed (role first, deltas, one finish_reason, usage, [DONE]) with the
usage it asked for, every abandoned request must be aborted, and afterwards the engine holds zero KV blocks.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlparse

import pytest

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer
from r1kit.server.protocol import ChatCompletionChunk

N_CLIENTS, N_QUITTERS, MAX_TOKENS = 64, 16, 24


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    engine = LLM(tiny_checkpoint("deepseek_v3"), max_model_len=512, max_num_seqs=64).engine
    with BackgroundServer(create_app(engine, "tiny")) as s:
        yield s


def _client(url: str, i: int, quit_early: bool, results: dict) -> None:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"question number {i}"}], "stream": True,
            "stream_options": {"include_usage": True}, "seed": i, "ignore_eos": True,
            "max_tokens": 400 if quit_early else MAX_TOKENS, "max_thinking_tokens": 2 + i % 5}
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        events = []
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.decode().strip()
            if line.startswith("data:"):
                events.append(line[5:].strip())
                if quit_early and len(events) == 3:
                    break  # hang up mid-stream
        results[i] = (resp.status, events)
    except Exception as e:  # noqa: BLE001 - reported by the test
        results[i] = ("exception", repr(e))
    finally:
        conn.close()


def _check_stream(status, events) -> None:
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + MAX_TOKENS
    text = "".join(ch["delta"].get("reasoning_content", "") + ch["delta"].get("content", "")
                   for c in chunks for ch in c["choices"])
    assert text, "no text streamed"


@pytest.mark.slow
def test_64_streaming_clients_16_hang_up_all_others_complete_and_kv_blocks_are_freed(server):
    engine = server.server.config.app.state.async_engine
    quitters = set(range(0, N_CLIENTS, N_CLIENTS // N_QUITTERS))
    results: dict = {}
    threads = [threading.Thread(target=_client, args=(server.url, i, i in quitters, results)) for i in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == N_CLIENTS
    for i, (status, events) in results.items():
        if i in quitters:
            assert status == 200 and len(events) == 3
        else:
            _check_stream(status, events)
    deadline = time.time() + 30
    while engine.in_flight and time.time() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0
    stats = engine.call_threadsafe(lambda e: e.stats()).result(timeout=10)
    assert stats["kv_blocks_used"] == 0 and stats["running"] == 0 and stats["waiting"] == 0
    assert engine.num_aborted == N_QUITTERS  # each hang-up aborted its (400-token) request
    assert not engine.engine.has_unfinished_requests()


def test_a_non_streaming_client_that_hangs_up_has_its_request_aborted(server):
    engine = server.server.config.app.state.async_engine
    aborted_before = engine.num_aborted
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 480, "ignore_eos": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    deadline = time.time() + 30
    while not engine.in_flight and time.time() < deadline:
        time.sleep(0.01)
    assert engine.in_flight == 1
    conn.close()  # hang up before the 480 tokens are done
    while engine.in_flight and time.time() < deadline:
        time.sleep(0.02)
    assert engine.in_flight == 0 and engine.num_aborted == aborted_before + 1
    stats = engine.call_threadsafe(lambda e: e.stats()).result(timeout=10)
    assert stats["kv_blocks_used"] == 0 and not engine.engine.has_unfinished_requests()
