"""The schema walk: every field of OpenAI's chat and completions request schemas, as the installed `openai`
package defines them, is honoured, accepted as output-neutral, or refused with a 400 that names it.

The field lists come from openai.types (so a new field in the spec fails this test until it is classified here).
"honoured" fields get a check of their effect; "neutral" fields (hints and bookkeeping) must leave the output of
a seeded request unchanged; "refused" fields must answer 400 with `param` = the field.
"""
from __future__ import annotations

import json

import openai.types.chat.completion_create_params as chat_params
import openai.types.completion_create_params as completion_params
import pytest

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

from test_server_errors import request  # noqa: E402  (the tests' raw HTTP helper)

USER = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]


def spec_fields(module) -> set[str]:
    return set(module.CompletionCreateParamsBase.__annotations__) | {"stream"}


def n_choices(k):
    return lambda r: len(r["choices"]) == k


def tokens(k):
    return lambda r: r["usage"]["completion_tokens"] == k


def ok(r):
    return "choices" in r


# sampling fields both endpoints share, with the same effect checks
SAMPLING = {
    "temperature": ("honoured", 0, ok),
    "top_p": ("honoured", 0.5, ok),
    "stop": ("honoured", ["zzz"], ok),
    "seed": ("honoured", 5, ok),
    "presence_penalty": ("honoured", 1.5, ok),
    "frequency_penalty": ("honoured", 1.5, ok),
    "logit_bias": ("honoured", {"77": 100}, lambda r: r["choices"][0]["token_ids"] == [77] * 4),
}

CHAT = {  # field -> ("honoured", value, check) | ("neutral", value) | ("refused", value)
    "messages": ("honoured", USER, ok),
    "model": ("honoured", "tiny", lambda r: r["model"] == "tiny"),
    **SAMPLING,
    "n": ("honoured", 2, n_choices(2)),
    "max_tokens": ("honoured", 3, tokens(3)),
    "max_completion_tokens": ("honoured", 2, tokens(2)),
    "logprobs": ("honoured", True, lambda r: len(r["choices"][0]["logprobs"]["content"]) == 4),
    "top_logprobs": ("honoured", 2, ok),  # sent with logprobs: true (below)
    "response_format": ("honoured", {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
                        lambda r: json.loads(r["choices"][0]["message"]["content"]) in ({"a": 1}, {"a": 2})),
    "stream": ("honoured", False, ok),
    "stream_options": ("honoured", {"include_usage": True}, ok),  # sent with stream: true (below)
    "user": ("neutral", "someone"),
    "metadata": ("neutral", {"k": "v"}),
    "prompt_cache_key": ("neutral", "k"),
    "prompt_cache_options": ("neutral", {}),
    "prompt_cache_retention": ("neutral", "in-memory"),
    "safety_identifier": ("neutral", "someone"),
    "service_tier": ("neutral", "auto"),
    "prediction": ("neutral", {"type": "content", "content": "hello"}),
    "parallel_tool_calls": ("honoured", False, lambda r: len(r["choices"][0]["message"]["tool_calls"]) == 1),
    "store": ("refused", True),
    "audio": ("refused", {"voice": "alloy", "format": "wav"}),
    "modalities": ("refused", ["text", "audio"]),
    "moderation": ("refused", {"type": "auto"}),
    "reasoning_effort": ("refused", "low"),
    "verbosity": ("refused", "low"),
    "web_search_options": ("refused", {}),
    # the tool list reaches the prompt (a bare "hi" is a few tokens); tool_choice "required" forces a call of f
    "tools": ("honoured", TOOLS, lambda r: len(r["prompt_token_ids"]) > 50),
    "tool_choice": ("honoured", "required",
                    lambda r: json.loads(r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
                    in ({"a": 1}, {"a": 2})),
    "functions": ("refused", [{"name": "f", "parameters": {"type": "object"}}]),
    "function_call": ("refused", "auto"),
}

COMPLETIONS = {
    "prompt": ("honoured", ["a b", "c"], n_choices(2)),
    "model": ("honoured", "tiny", lambda r: r["model"] == "tiny"),
    **SAMPLING,
    "n": ("honoured", 3, n_choices(3)),
    "max_tokens": ("honoured", 2, tokens(2)),
    "logprobs": ("honoured", 1, lambda r: len(r["choices"][0]["logprobs"]["tokens"]) == 4),
    "echo": ("honoured", True, lambda r: r["choices"][0]["text"].startswith("Once upon")),
    "best_of": ("honoured", 2, n_choices(1)),
    "stream": ("honoured", False, ok),
    "stream_options": ("honoured", {"include_usage": True}, ok),
    "user": ("neutral", "someone"),
    "suffix": ("refused", "the end"),
}


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    engine = LLM(tiny_checkpoint("deepseek_v3"), max_model_len=1024, max_num_seqs=8).engine
    with BackgroundServer(create_app(engine, "tiny")) as s:
        yield s


def post(server, path, body):
    status, _, raw = request(server.url, "POST", path, body)
    if body.get("stream"):
        return status, raw.decode()
    return status, json.loads(raw)


def test_every_spec_field_is_classified():
    assert set(CHAT) == spec_fields(chat_params), "classify the new/removed chat fields in CHAT"
    assert set(COMPLETIONS) == spec_fields(completion_params), "classify the new/removed fields in COMPLETIONS"


def _walk(server, path, table, base):
    _, baseline = post(server, path, base)
    for field, (kind, value, *check) in table.items():
        body = {**base, field: value}
        if field == "top_logprobs":
            body["logprobs"] = True
        if field == "stream_options":
            body["stream"] = True
        if field == "response_format":
            body["max_tokens"] = 20  # room for the whole object
        if field in ("tool_choice", "parallel_tool_calls"):
            body.update(tools=TOOLS, tool_choice="required", max_tokens=150)  # room for the whole call
        status, r = post(server, path, body)
        if kind == "refused":
            assert status == 400 and r["error"]["param"] == field, (field, r)
        elif kind == "neutral":
            assert status == 200, (field, r)
            assert [c.get("token_ids") for c in r["choices"]] == [c.get("token_ids") for c in baseline["choices"]]
        elif field == "stream_options":
            assert status == 200 and '"usage": {' in r.split("data: [DONE]")[0].rsplit("data: ", 1)[-1], field
        else:
            assert status == 200 and check[0](r), (field, r)


def test_chat_schema_walk(server):
    base = {"messages": USER, "max_tokens": 4, "seed": 1, "temperature": 1.0, "return_token_ids": True,
            "ignore_eos": True, "thinking": False}
    _walk(server, "/v1/chat/completions", CHAT, base)


def test_completions_schema_walk(server):
    base = {"prompt": "Once upon a time", "max_tokens": 4, "seed": 1, "temperature": 1.0, "return_token_ids": True,
            "ignore_eos": True}
    _walk(server, "/v1/completions", COMPLETIONS, base)
