"""Stop strings end the answer, not the thinking (SamplingParams.stop_in_reasoning opts back in); the engine's own
thinking wrap-up never triggers one; `content` is None (null on the wire) when the thinking never closes.

References are computed from the full output of the same greedy request without stop strings, split at
"</think>" by hand (str.partition), not by the engine's parser.
"""
from __future__ import annotations

import random

import openai
import pytest

from r1kit import LLM, SamplingParams
from r1kit.engine.detokenizer import TextState
from r1kit.engine.reasoning_parser import get_reasoning_parser
from r1kit.engine.sampling_params import DEFAULT_THINKING_WRAPUP
from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(tiny_checkpoint("deepseek_v3"), device="cpu", max_model_len=256, num_kv_blocks=128)


def greedy(**kw):
    return SamplingParams(temperature=0, **{"max_tokens": 48, "ignore_eos": True, "max_thinking_tokens": 12, **kw})


def run(llm, params):
    return llm.chat(QUESTION, params, use_tqdm=False)[0].outputs[0]


def hand_split(text: str) -> tuple[str, str]:
    thinking, sep, answer = text.partition("</think>")
    assert sep, text
    return thinking, answer.lstrip()


def shared_char(reasoning: str, answer: str) -> str:
    """A character the (random) model wrote both while thinking and in its answer."""
    common = [ch for ch in dict.fromkeys(answer) if ch in reasoning and not ch.isspace()]
    assert common, (reasoning, answer)
    return common[0]


def test_a_stop_string_in_the_thinking_does_not_end_the_request(llm):
    full = run(llm, greedy())
    thinking, answer = hand_split(full.text)
    sampled_thinking = thinking[:thinking.index(DEFAULT_THINKING_WRAPUP)]
    stop = shared_char(sampled_thinking, answer)
    out = run(llm, greedy(stop=[stop]))
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.reasoning == full.reasoning  # the whole thinking, stop characters and all
    assert out.content == answer[:answer.index(stop)]
    kept = run(llm, greedy(stop=stop, include_stop_str_in_output=True))
    assert kept.content == answer[:answer.index(stop) + 1]
    # opted in: the first occurrence in the thinking ends it, and the thinking never closed
    early = run(llm, greedy(stop=[stop], stop_in_reasoning=True))
    assert early.finish_reason == "stop"
    assert early.text == full.text[:full.text.index(stop)]
    assert early.content is None and early.reasoning == early.text.strip()


def test_the_thinking_wrap_up_never_triggers_a_stop(llm):
    full = run(llm, greedy())
    _, answer = hand_split(full.text)
    # "\n\n" starts the wrap-up and follows "</think>": neither ends the answer before it began
    for stop_in_reasoning in (False, True):
        for stop in (["\n\n"], ["Time is up"], ["\n\nTime", "my answer now.\n</think>"]):
            out = run(llm, greedy(stop=stop, stop_in_reasoning=stop_in_reasoning))
            sampled = full.text.split(DEFAULT_THINKING_WRAPUP)[0]
            if stop_in_reasoning and any(s in sampled for s in stop):
                continue  # the model wrote it itself before the wrap-up
            assert out.reasoning == full.reasoning, (stop, stop_in_reasoning)
            cut = min((i for i in (answer.find(s) for s in stop) if i >= 0), default=len(answer))
            assert out.content == answer[:cut], (stop, stop_in_reasoning)
            assert out.finish_reason == ("stop" if cut < len(answer) else "length")


def test_content_is_none_when_the_thinking_never_closes(llm):
    out = run(llm, greedy(max_thinking_tokens=None, max_tokens=6, stop=["zz"]))
    assert out.finish_reason == "length" and out.content is None
    assert out.reasoning == out.text.strip() and out.text
    closed = run(llm, greedy())
    assert isinstance(closed.content, str) and closed.content


def _feed(tok, text, stop, prefilled=True, stop_in_reasoning=False, include=False, forced_at=None):
    """Feed `text` token by token through a TextState; return (state, stop string or None)."""
    state = TextState(tok, get_reasoning_parser("r1", prefilled=prefilled), stop, include, True, stop_in_reasoning)
    ids = tok.encode(text)
    shown = ""
    for i, t in enumerate(ids):
        hit = state.add([t], forced=forced_at is not None and forced_at[0] <= i < forced_at[1])
        assert state.text.startswith(shown)  # the visible text only grows
        shown = state.text
        if hit is not None:
            return state, hit
    return state, state.finish()


def test_text_state_rules(llm):
    tok = llm.tokenizer
    out = "a\n\nb</think>\n\nanswer\n\nmore"
    state, hit = _feed(tok, out, ["\n\n"])
    assert hit == "\n\n" and state.reasoning == "a\n\nb" and state.content == "answer"
    state, hit = _feed(tok, out, ["\n\n"], stop_in_reasoning=True)
    assert hit == "\n\n" and state.text == "a" and state.content is None
    # an output that does not think: the whole text is answer, from its first character
    state, hit = _feed(tok, "\n\nabc", ["\n\n"], prefilled=False)
    assert hit == "\n\n" and state.text == "" and state.content == ""
    state, hit = _feed(tok, "\n", ["\n"], prefilled=False)  # ended while it could still have opened <think>
    assert hit == "\n" and state.text == ""
    state, hit = _feed(tok, "<think>x y</think> y", ["y"], prefilled=False)  # it opened its own thinking
    assert hit == "y" and state.reasoning == "x y" and state.content == ""
    # forced text is never matched, and a match cannot begin inside it
    ids = tok.encode("q")
    forced = tok.encode("\n\nSTOP</think>\n\n")
    state = TextState(tok, get_reasoning_parser("r1"), ["STOP", "\n\nY"], False, True, stop_in_reasoning=True)
    assert state.add(ids) is None and state.add(forced, forced=True) is None
    assert state.add(tok.encode("Yes")) is None and state.finish() is None
    assert state.content == "Yes" and state.reasoning == "q\n\nSTOP"


@pytest.mark.parametrize("seed", range(4))
def test_streamed_stops_equal_a_one_shot_reference(llm, seed):
    """Random outputs over an alphabet rich in tags and newlines, one stop string, fed token by token."""
    rng = random.Random(seed)
    tok = llm.tokenizer
    pieces = ["a", "b", "\n", "\n\n", " ", "</think>", "<think>", "ab", "</th", "ink>"]
    for _ in range(60):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        stop = rng.choice(["\n\n", "a", "ab", "b\n", "</think>", "\na"])
        prefilled, in_reasoning = rng.random() < 0.7, rng.random() < 0.3
        decoded = tok.decode(tok.encode(text), skip_special_tokens=True)
        state, hit = _feed(tok, text, [stop], prefilled=prefilled, stop_in_reasoning=in_reasoning)
        parser = get_reasoning_parser("r1", prefilled=prefilled)
        if in_reasoning:
            start = 0
        else:  # the content's start by hand: after the first end tag (of the reasoning part) and its whitespace
            head = decoded.lstrip()
            opened = head.startswith("<think>")
            if not opened and not prefilled:
                start = 0
            else:
                body = len(decoded) - len(head) + len("<think>") if opened else 0
                end = decoded.find("</think>", body)
                rest = decoded[end + len("</think>"):] if end >= 0 else ""
                start = len(decoded) - len(rest.lstrip()) if end >= 0 and rest.strip() else None
        idx = decoded.find(stop, start) if start is not None else -1
        want = decoded[:idx] if idx >= 0 else decoded
        assert state.text == want, (text, stop, prefilled, in_reasoning)
        assert hit == (stop if idx >= 0 else None)
        assert (state.reasoning, state.content or "") == parser.split(want) or state.content is None


@pytest.fixture(scope="module")
def client(llm):
    with BackgroundServer(create_app(llm.engine, "tiny")) as s:
        yield openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)


def _ask(client, **kw):
    body = {"ignore_eos": True, **kw.pop("extra_body", {})}
    return dict(model="tiny", messages=QUESTION, temperature=0, extra_body=body, **kw)


def test_server_content_is_null_when_the_thinking_never_closes(client):
    resp = client.chat.completions.create(**_ask(client, max_tokens=5))
    msg = resp.choices[0].message
    assert msg.content is None and msg.model_extra["reasoning_content"]
    contents = [ch.choices[0].delta.content for ch in client.chat.completions.create(**_ask(client, max_tokens=5,
                                                                                          stream=True))
                if ch.choices]
    assert contents and all(c is None for c in contents)


def test_server_stops_apply_to_the_answer(client, llm):
    params = dict(max_tokens=48, extra_body={"max_thinking_tokens": 12})
    full = client.chat.completions.create(**_ask(client, **params)).choices[0].message
    reasoning, answer = full.model_extra["reasoning_content"], full.content
    stop = shared_char(reasoning.split("\n\nTime is up")[0], answer)
    for stream in (False, True):
        req = _ask(client, stop=[stop, "\n\n"], stream=stream, **params)
        if stream:
            r, c = "", ""
            for ch in client.chat.completions.create(**req):
                if ch.choices:
                    r += ch.choices[0].delta.model_extra.get("reasoning_content") or ""
                    c += ch.choices[0].delta.content or ""
        else:
            m = client.chat.completions.create(**req).choices[0].message
            r, c = m.model_extra["reasoning_content"], m.content
        cut = min(i for i in (answer.find(stop), answer.find("\n\n"), len(answer)) if i >= 0)
        assert (r, c) == (reasoning, answer[:cut])
    opted = client.chat.completions.create(**_ask(client, stop=[stop], max_tokens=48,
                                                  extra_body={"max_thinking_tokens": 12, "stop_in_reasoning": True}))
    assert opted.choices[0].message.content is None and opted.choices[0].finish_reason == "stop"
