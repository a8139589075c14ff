"""The official `openai` client against a real r1kit server on loopback (tiny random DeepSeek-V3 checkpoint).

The reasoning/answer split is checked independently of the engine's parser: the test decodes the returned token
ids itself and splits the text at "</think>". A thinking budget (max_thinking_tokens) makes the engine close the
thinking block early, so every response has both parts even though the model is random.
"""
from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer
from r1kit.server.protocol import ChatCompletionChunk, ChatCompletionResponse, CompletionResponse
from r1kit.tokenizer import load_tokenizer

WRAPUP = "Time is up; I will give my answer now."


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    path = tiny_checkpoint("deepseek_v3")
    engine = LLM(path, max_model_len=512, max_num_seqs=16).engine
    with BackgroundServer(create_app(engine, "tiny", max_model_len=512)) as s:
        s.path = path
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tok(server):
    return load_tokenizer(server.path)


def _ask(client, **extra):
    body = {"max_thinking_tokens": 4, "ignore_eos": True, "return_token_ids": True, **extra.pop("extra_body", {})}
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=40, seed=7,
                  temperature=1.0)
    kwargs.update(extra)
    return client.chat.completions.create(extra_body=body, **kwargs)


def test_chat_splits_reasoning_and_answer_exactly_at_think_end(client, tok):
    resp = _ask(client)
    ChatCompletionResponse.model_validate(resp.model_dump())
    choice = resp.choices[0]
    ids = choice.model_extra["token_ids"]
    full = tok.decode(ids, skip_special_tokens=True)
    thinking, sep, answer = full.partition("</think>")
    assert sep, f"the thinking budget should have closed the thinking block: {full!r}"
    assert choice.message.model_extra["reasoning_content"] == thinking.strip()
    assert choice.message.model_extra["reasoning_content"].endswith(WRAPUP)
    assert choice.message.content == answer.lstrip()
    assert "</think>" not in choice.message.content and choice.message.content
    assert choice.finish_reason == "length"
    u = resp.usage
    assert u.completion_tokens == len(ids) == 40
    assert u.prompt_tokens == len(resp.model_extra["prompt_token_ids"])
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens_details.reasoning_tokens == ids.index(tok.think_end_id)
    assert tok.decode(resp.model_extra["prompt_token_ids"]).endswith("<｜Assistant｜><think>\n")


def test_streaming_deltas_add_up_to_the_non_streaming_response(client):
    plain = _ask(client)
    stream = _ask(client, stream=True, stream_options={"include_usage": True})
    reasoning, content, finish, usage, kinds = "", "", [], None, []
    for chunk in stream:
        ChatCompletionChunk.model_validate(chunk.model_dump())
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
            continue
        (ch,) = chunk.choices
        r = (ch.delta.model_extra or {}).get("reasoning_content")
        if r:
            reasoning += r
            kinds.append("r")
        if ch.delta.content:
            content += ch.delta.content
            kinds.append("c")
        if ch.finish_reason:
            finish.append(ch.finish_reason)
    assert reasoning == plain.choices[0].message.model_extra["reasoning_content"]
    assert content == plain.choices[0].message.content
    assert "".join(kinds) == "r" * kinds.count("r") + "c" * kinds.count("c"), "reasoning and answer interleaved"
    assert finish == ["length"]
    assert usage.model_dump() == plain.usage.model_dump()


def test_thinking_false_prefills_an_empty_thinking_block_and_everything_is_answer(client, tok):
    for extra in ({"thinking": False}, {"chat_template_kwargs": {"thinking": False}}):
        resp = _ask(client, extra_body=extra)
        msg = resp.choices[0].message
        assert tok.decode(resp.model_extra["prompt_token_ids"]).endswith("<｜Assistant｜><think>\n\n</think>\n\n")
        assert msg.model_extra.get("reasoning_content") is None
        assert msg.content == tok.decode(resp.choices[0].model_extra["token_ids"], skip_special_tokens=True)
        assert resp.usage.completion_tokens_details.reasoning_tokens == 0


def test_reasoning_content_of_earlier_turns_is_not_put_back_into_the_prompt(client, tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "FIRST-ANSWER", "reasoning_content": "SECRET-THOUGHT"},
                {"role": "user", "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "one"}]}]
    resp = _ask(client, messages=messages, max_tokens=2)
    prompt = tok.decode(resp.model_extra["prompt_token_ids"])
    assert "FIRST-ANSWER" in prompt and "second one" in prompt and "Be brief." in prompt
    assert "SECRET-THOUGHT" not in prompt


def test_n_samples_and_logprobs_have_one_entry_per_sampled_token(client):
    resp = _ask(client, n=2, max_tokens=5, logprobs=True, top_logprobs=2, extra_body={"max_thinking_tokens": None})
    assert sorted(c.index for c in resp.choices) == [0, 1]
    for c in resp.choices:
        assert len(c.logprobs.content) == len(c.model_extra["token_ids"]) == 5
        for entry in c.logprobs.content:
            assert len(entry.top_logprobs) == 2
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
            assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
    assert resp.usage.completion_tokens == 10


def test_completions_with_text_and_token_id_prompts_stream_and_echo(client, tok):
    ids = tok.encode("The quick brown fox")
    a = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, seed=1,
                                  extra_body={"ignore_eos": True, "return_token_ids": True})
    b = client.completions.create(model="tiny", prompt=ids, max_tokens=6, seed=1, echo=True,
                                  extra_body={"ignore_eos": True})
    CompletionResponse.model_validate(b.model_dump())
    assert a.usage.prompt_tokens == b.usage.prompt_tokens == len(ids)
    assert a.choices[0].text == tok.decode(a.choices[0].model_extra["token_ids"], skip_special_tokens=True)
    assert b.choices[0].text == "The quick brown fox" + a.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="tiny", prompt=ids, max_tokens=6, seed=1, stream=True, extra_body={"ignore_eos": True}) if ch.choices)
    assert streamed == a.choices[0].text


def test_models_health_metrics_and_web_page(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.load(r)["status"] == "ok"
    _ask(client, max_tokens=3)
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    for name in ("r1kit_http_requests_total", "r1kit_time_to_first_token_seconds_bucket", "r1kit_kv_cache_usage_perc",
                 "r1kit_prefix_cache_hit_rate", "r1kit_num_requests_running", "r1kit_generation_tokens_total"):
        assert name in text
    count = [line for line in text.splitlines() if line.startswith("r1kit_e2e_request_latency_seconds_count")]
    assert int(count[0].split()[-1]) >= 1
    with urllib.request.urlopen(server.url + "/") as r:
        page = r.read().decode()
    assert "details" in page and "getReader()" in page and "/v1/chat/completions" in page and "tiny" in page
