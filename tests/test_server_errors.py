"""Error contract of the server: OpenAI-style bodies, the right status codes, and never a 5xx for a client mistake.

Includes a hypothesis-driven fuzzer over the request schemas (random and malformed JSON bodies, params, paths and
methods against every endpoint): zero 5xx responses, every error body well formed, the server alive afterwards.
"""
from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlparse

import openai
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer


def _start(path, max_model_len=64, **app_kwargs):
    from r1kit.engine.llm import LLM

    engine = LLM(path, max_model_len=max_model_len, max_num_seqs=8).engine
    return BackgroundServer(create_app(engine, "fuzz", **app_kwargs)).start()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    s = _start(tiny_checkpoint("deepseek_v3"))
    yield s
    s.stop()


def request(url: str, method: str, path: str, body: bytes | str | dict | None = None,
            headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_error(status: int, body: bytes, want_status: int, param: str | None = "?", code: str | None = "?") -> dict:
    assert status == want_status, body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    if param != "?":
        assert err["param"] == param, err
    if code != "?":
        assert err["code"] == code, err
    return err


def chat(url, body, **kw):
    return request(url, "POST", "/v1/chat/completions", body, **kw)


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, param", [
    ("{not json", None),
    ("[1, 2]", None),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "temperature": 2.5}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "n": 0}, "n"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "stop": ""}, "stop"),
    ({"messages": USER, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": USER, "min_tokens": 9, "max_tokens": 3}, "min_tokens"),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.role"),  # answers no tool call
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    ('{"model": "\\udcff", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
])
def test_invalid_chat_parameters_are_400_with_an_openai_error_body(server, body, param):
    status, _, raw = chat(server.url, body)
    err = assert_error(status, raw, 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_unknown_model_route_and_method_are_404_404_405(server):
    status, _, raw = chat(server.url, {"model": "gpt-9", "messages": USER})
    assert_error(status, raw, 404, param="model", code="model_not_found")
    assert_error(*chat(server.url, '{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}')[::2], 404)
    status, _, raw = request(server.url, "POST", "/v1/completions", {"model": "gpt-9", "prompt": "x"})
    assert_error(status, raw, 404, param="model")
    status, _, raw = request(server.url, "GET", "/v1/models/gpt-9")
    assert_error(status, raw, 404)
    status, _, raw = request(server.url, "GET", "/v1/nothing-here")
    assert_error(status, raw, 404)
    status, _, raw = request(server.url, "GET", "/v1/chat/completions")
    assert_error(status, raw, 405)


def test_prompt_longer_than_the_context_is_400_context_length_exceeded(server):
    status, _, raw = request(server.url, "POST", "/v1/completions", {"prompt": [5] * 80, "max_tokens": 1})
    assert_error(status, raw, 400, param="prompt", code="context_length_exceeded")
    status, _, raw = chat(server.url, {"messages": [{"role": "user", "content": "word " * 100}]})
    assert_error(status, raw, 400, param="messages", code="context_length_exceeded")
    status, _, raw = chat(server.url, {"messages": USER, "max_tokens": 1000})
    assert_error(status, raw, 400, param="max_tokens", code="context_length_exceeded")
    status, _, raw = request(server.url, "POST", "/v1/completions", {"prompt": [10**6], "max_tokens": 1})
    assert_error(status, raw, 400, param="prompt")


def test_api_key_is_required_on_v1_and_compared_exactly(tiny_checkpoint):
    s = _start(tiny_checkpoint("deepseek_v3"), api_key="s3cret")
    try:
        body = {"messages": USER, "max_tokens": 2}
        assert_error(*chat(s.url, body)[::2], 401, code="invalid_api_key")
        assert_error(*chat(s.url, body, headers={"Authorization": "Bearer s3cre"})[::2], 401)
        assert_error(*chat(s.url, body, headers={"Authorization": "Bearer s3cret2"})[::2], 401)
        assert_error(*request(s.url, "GET", "/v1/models", headers={"Authorization": "Basic s3cret"})[::2], 401)
        # the key is checked before the body: an unauthenticated bad body is still a 401
        assert_error(*chat(s.url, "{garbage", headers={})[::2], 401)
        assert chat(s.url, body, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert request(s.url, "GET", "/health")[0] == 200  # health and the page stay open
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == "fuzz"
    finally:
        s.stop()


def test_a_full_queue_answers_429_and_the_server_recovers(tiny_checkpoint):
    s = _start(tiny_checkpoint("deepseek_v3"), max_model_len=1024, max_queue=1)
    try:
        u = urlparse(s.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"messages": USER, "stream": True, "ignore_eos": True, "max_tokens": 1000}),
            {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.readline()  # the first event: the request is in flight
        status, headers, raw = chat(s.url, {"messages": USER, "max_tokens": 2})
        assert_error(status, raw, 429, code="queue_full")
        assert headers.get("retry-after") == "1"
        conn.close()  # the client goes away: its request is aborted and the queue frees up
        deadline = time.time() + 30
        while (status := chat(s.url, {"messages": USER, "max_tokens": 2})[0]) == 429 and time.time() < deadline:
            time.sleep(0.05)
        assert status == 200
    finally:
        s.stop()


# ---- fuzzing ----

any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
# Valid bodies, then 0-2 fields replaced by arbitrary JSON: most requests reach the engine, many are subtly wrong.
valid_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer"]),
     "content": st.text(max_size=20) | any_text},
    optional={"reasoning_content": st.text(max_size=10)})
common = {
    "model": st.just("fuzz"), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 50),
    "min_p": st.floats(0, 1), "max_tokens": st.integers(1, 12), "n": st.integers(1, 3), "seed": st.integers(0, 2**32),
    "stop": st.text(min_size=1, max_size=2) | st.lists(st.text(min_size=1, max_size=2), max_size=3),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2), "repetition_penalty": st.floats(0.5, 2),
    "min_tokens": st.integers(0, 2), "ignore_eos": st.booleans(), "max_thinking_tokens": st.integers(0, 8),
    "return_token_ids": st.booleans(),
}
chat_valid = st.fixed_dictionaries({"messages": st.lists(valid_message, min_size=1, max_size=3)}, optional={
    **common, "logprobs": st.booleans(), "max_completion_tokens": st.integers(1, 12), "thinking": st.booleans(),
    "chat_template_kwargs": st.fixed_dictionaries({"thinking": st.booleans()})})
completion_valid = st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30) | st.lists(
    st.integers(0, 300), min_size=1, max_size=8)}, optional={**common, "logprobs": st.integers(0, 5),
                                                             "echo": st.booleans()})


@st.composite
def mutated(draw, valid, keys):
    body = draw(valid)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            body[key] = draw(json_values)
        else:
            body.pop(key, None)
    return body


chat_bodies = mutated(chat_valid, ["messages", "unknown", *common, "logprobs", "top_logprobs", "thinking",
                                   "chat_template_kwargs", "max_completion_tokens"])
completion_bodies = mutated(completion_valid, ["prompt", "echo", "logprobs", *common])
KNOWN = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/fuzz", "/health", "/metrics", "/",
         "/v1", "/docs", "/openapi.json"]
cases = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/chat/completions"), chat_bodies.map(json.dumps)),
    st.tuples(st.just("POST"), st.just("/v1/completions"), completion_bodies.map(json.dumps)),
    st.tuples(st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
              st.sampled_from(KNOWN),
              st.none() | json_values.map(json.dumps) | st.binary(max_size=40) | st.text(max_size=40)),
    st.tuples(st.sampled_from(["GET", "POST"]),
              st.text("abcdefghijklmnopqrstuvwxyz0123456789/_.-%", min_size=1, max_size=30).map(lambda p: "/" + p),
              st.none()),
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: a hang must fail fast
@given(case=cases)
def test_fuzzed_requests_never_get_a_5xx(server, case):
    method, path, body = case
    status, headers, raw = request(server.url, method, path, body, timeout=30)
    event(f"{method} {path if path in KNOWN else 'other'} -> {status}")
    assert status < 500, (status, raw[:500])
    if status >= 400 and method != "HEAD":
        assert_error(status, raw, status)
    if status == 200 and headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]
        assert events[-1] == "[DONE]" and all("error" not in json.loads(e) for e in events[:-1]), raw[:500]


def test_n_samples_finish_when_sample_0_stops_after_its_first_token(server):
    # found by the fuzzer: samples 1..n-1 wait for sample 0's prompt KV, and once hung when sample 0 finished first
    long_prompt = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]
    try:  # a hang shows as a timeout; closing the connection then aborts the stuck request
        status, _, raw = chat(server.url, {"messages": long_prompt, "n": 2, "max_tokens": 1}, timeout=15)
    except TimeoutError:
        pytest.fail("the request never finished")
    assert status == 200 and len(json.loads(raw)["choices"]) == 2


def test_server_is_alive_and_holds_no_kv_blocks_after_the_fuzzing(server):
    status, _, raw = chat(server.url, {"messages": USER, "max_tokens": 3})
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] >= 1
    assert request(server.url, "GET", "/health")[0] == 200
    engine = server.server.config.app.state.async_engine
    deadline = time.time() + 10
    while engine.in_flight and time.time() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0
    assert engine.call_threadsafe(lambda e: e.stats()["kv_blocks_used"]).result(timeout=10) == 0
    assert not engine.engine.has_unfinished_requests()
