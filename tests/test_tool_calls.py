"""Tool calls in DeepSeek-R1's format through the official `openai` client: the template renders tools, calls and
results; tool_choice required / named forces even a random model into well-formed calls whose arguments validate
against the tool's schema (checked with jsonschema, not with the grammar library); the streamed deltas add up to
the non-streamed message; a multi-turn loop feeds the result back; bad tool requests are 400s naming the field."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from r1kit import LLM
from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer
from r1kit.server.tool_calls import ToolCallStream, ToolPolicy, message_fields, parse_tool_calls
from r1kit.tokenizer import BOS, EOS, USER, ASSISTANT, THINK_START
from r1kit.tokenizer.r1_format import (TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_CALLS_BEGIN, TOOL_CALLS_END,
                                       TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END, TOOL_OUTPUTS_BEGIN, TOOL_OUTPUTS_END,
                                       TOOL_SEP)

from test_server_errors import request  # noqa: E402  (the tests' raw HTTP helper)

pytest.importorskip("llguidance")

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}}}
ADD = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
       "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                      "b": {"type": "integer", "minimum": -99, "maximum": 99}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def call_text(name: str, args: str) -> str:
    return f"{TOOL_CALL_BEGIN}function{TOOL_SEP}{name}\n```json\n{args}\n```{TOOL_CALL_END}"


# ---- the format: parsing, streaming, the template ----

def test_parse_content_and_calls():
    text = "Let me look.\n" + TOOL_CALLS_BEGIN + call_text("add", '{"a": 1, "b": 2}') + "\n" + \
        call_text("get_weather", '{"city": "Oslo"}') + TOOL_CALLS_END
    assert parse_tool_calls(text) == ("Let me look.\n", [("add", '{"a": 1, "b": 2}'),
                                                         ("get_weather", '{"city": "Oslo"}')])
    assert parse_tool_calls("no calls here") == ("no calls here", [])
    # cut off inside the arguments (max_tokens): the call is there with what was written
    cut = TOOL_CALLS_BEGIN + f'{TOOL_CALL_BEGIN}function{TOOL_SEP}add\n```json\n{{"a": 1\n`'
    assert parse_tool_calls(cut) == ("", [("add", '{"a": 1\n`')])
    assert parse_tool_calls(cut, final=False) == ("", [("add", '{"a": 1')])  # "\n`" may open the closing fence


@pytest.mark.parametrize("text", [
    "Sure." + TOOL_CALLS_BEGIN + call_text("add", '{"a": 1, "b": 2}') + "\n" + call_text("f", "{}") + TOOL_CALLS_END,
    "x\n``<｜tool▁calls" + "```json\n" + TOOL_CALLS_BEGIN + call_text("g", '{"s": "\\n```"}') + TOOL_CALLS_END,
    TOOL_CALLS_BEGIN + call_text("cut", '{"a": [1, 2'),
    "\n\n" + TOOL_CALLS_BEGIN + call_text("f", "{}") + TOOL_CALLS_END,  # whitespace before calls: content null
    "\n\n",  # and without calls, it is the content
    "\n\n Hi",
])
def test_streamed_deltas_add_up_to_the_message_at_every_split(text):
    message = message_fields(text, ToolPolicy([], "auto"), "stop")
    want = (message["content"] or "", [(c["function"]["name"], c["function"]["arguments"])
                                       for c in message.get("tool_calls", [])])
    for step in (1, 2, 3, 7):  # the answer arrives a few characters at a time
        s, content, calls = ToolCallStream(), "", []
        cuts = list(range(step, len(text), step)) + [len(text)]
        for cut in cuts:
            piece, deltas = s.update(text[:cut], final=cut == len(text))
            content += piece
            for d in deltas:
                if "id" in d:
                    assert d["index"] == len(calls) and d["type"] == "function"
                    calls.append([d["function"]["name"], d["function"]["arguments"]])
                else:
                    calls[d["index"]][1] += d["function"]["arguments"]
        assert (content, [tuple(c) for c in calls]) == want, step


AGENT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and 2+3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "5"},
]


def test_r1_template_renders_tools_calls_and_results(tiny_checkpoint):
    from transformers import AutoTokenizer

    from r1kit.tokenizer import load_tokenizer

    path = tiny_checkpoint("deepseek_v3")
    tok = load_tokenizer(path)
    text = tok.apply_chat_template(AGENT, tools=TOOLS)
    system, turns = text[len(BOS):].split(USER, 1)
    assert system.startswith("Be brief.\n\n## Tools") and json.dumps(TOOLS[1]["function"]) in system
    assert turns == ("Weather in Oslo and 2+3?" + ASSISTANT + TOOL_CALLS_BEGIN
                     + call_text("get_weather", '{"city": "Oslo"}') + "\n" + call_text("add", '{"a": 2, "b": 3}')
                     + TOOL_CALLS_END + EOS + TOOL_OUTPUTS_BEGIN + TOOL_OUTPUT_BEGIN + "-3 C" + TOOL_OUTPUT_END
                     + TOOL_OUTPUT_BEGIN + "5" + TOOL_OUTPUT_END + TOOL_OUTPUTS_END + ASSISTANT + THINK_START + "\n")
    # the answer after the results closes the outputs and opens a new turn; no tools: no tool section
    done = tok.apply_chat_template(AGENT + [{"role": "assistant", "content": "r</think>It is -3 C; 5."}],
                                   add_generation_prompt=False)
    assert done.endswith(TOOL_OUTPUTS_END + ASSISTANT + "It is -3 C; 5." + EOS) and "## Tools" not in done
    # transformers renders the same text with the same template
    hf = AutoTokenizer.from_pretrained(path)
    assert hf.apply_chat_template(AGENT, tools=TOOLS, tokenize=False, add_generation_prompt=True) == text


def test_tool_tokens_are_single_plain_tokens_when_asked_for(tmp_path):
    from r1kit.tokenizer import TOOL_TOKENS, build_r1_tokenizer, default_corpus

    with_tokens = build_r1_tokenizer(default_corpus(), 512, tool_tokens=True)
    assert with_tokens.vocab_size == 512 and all(len(with_tokens.encode(t)) == 1 for t in TOOL_TOKENS)
    text = "a" + TOOL_CALLS_BEGIN + call_text("f", "{}") + TOOL_CALLS_END
    assert with_tokens.decode(with_tokens.encode(text), skip_special_tokens=True) == text  # kept for the parser
    plain = build_r1_tokenizer(default_corpus(), 512)  # the default: the markers are text, several tokens each
    assert len(plain.encode(TOOL_CALLS_BEGIN)) > 1 and plain.decode(plain.encode(text)) == text


# ---- the server, through the openai client ----

@pytest.fixture(scope="module", params=["text markers", "tool tokens"])
def client(request, tiny_checkpoint, tmp_path_factory):
    """The server on the random model, with the default tokenizer (tool markers are text: the grammar spells them
    with ordinary tokens) and with one that has R1's tool tokens (the grammar names them by id)."""
    if request.param == "tool tokens":
        from r1kit.models.random_checkpoint import create_random_checkpoint

        path = create_random_checkpoint(tmp_path_factory.mktemp("tool-tokens"), tool_tokens=True)
    else:
        path = tiny_checkpoint("deepseek_v3")
    llm = LLM(str(path), device="cpu", max_model_len=2048, max_num_seqs=16)
    with BackgroundServer(create_app(llm.engine, "tiny")) as s:
        s.client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        yield s


def ask(client, **kw):
    body = dict(model="tiny", messages=QUESTION, tools=TOOLS, max_tokens=400, temperature=1.0,
                extra_body={"max_thinking_tokens": 4, "ignore_eos": True})
    body.update(kw)
    return client.client.chat.completions.create(**body)


def stream_message(client, **kw):
    """The streamed chunks folded back into (content, [(name, arguments)], finish_reason)."""
    content, calls, finish = "", [], None
    for ch in ask(client, stream=True, **kw):
        for c in ch.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                if d.id is not None:
                    assert d.index == len(calls) and d.type == "function" and d.id.startswith("call_")
                    calls.append([d.function.name, d.function.arguments or ""])
                else:
                    calls[d.index][1] += d.function.arguments
            finish = c.finish_reason or finish
    return content or None, [tuple(c) for c in calls], finish


def check_calls(choice):
    """Every complete call names a tool and its arguments validate against that tool's schema (a call cut by
    max_tokens, the last one when finish_reason is "length", is only checked for its name)."""
    calls = choice.message.tool_calls
    assert calls and choice.message.content is None, choice
    assert choice.finish_reason in ("tool_calls", "length"), choice
    for i, call in enumerate(calls):
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in SCHEMAS
        if choice.finish_reason == "tool_calls" or i < len(calls) - 1:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return [(t.function.name, t.function.arguments) for t in calls]


def test_required_forces_valid_calls_streamed_and_not(client):
    names = set()
    for seed in range(6):
        for parallel in (False, True):  # one call, or as many as the model chains (a random one may not stop)
            kw = dict(tool_choice="required", seed=seed, parallel_tool_calls=parallel)
            c = ask(client, **kw).choices[0]
            calls = check_calls(c)
            assert c.message.model_extra["reasoning_content"]  # it still thought first
            if not parallel:
                assert len(calls) == 1 and c.finish_reason == "tool_calls"
            names |= {name for name, _ in calls}
            assert stream_message(client, **kw) == (None, calls, c.finish_reason)
    assert names == {"get_weather", "add"}  # either tool may be chosen


def test_named_tool_and_parallel_tool_calls_false(client):
    for seed in range(4):
        r = ask(client, tool_choice={"type": "function", "function": {"name": "add"}}, seed=seed,
                extra_body={"thinking": False, "ignore_eos": True})
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "add" and r.choices[0].message.content is None
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, ADD)
        one = ask(client, tool_choice="required", parallel_tool_calls=False, seed=seed, n=3)
        assert all(len(ch.message.tool_calls) == 1 for ch in one.choices)


def test_agent_loop_feeds_the_result_back(client):
    messages = list(QUESTION)
    r = ask(client, messages=messages, tool_choice={"type": "function", "function": {"name": "get_weather"}}, seed=1)
    msg = r.choices[0].message
    messages.append(msg.model_dump(include={"role", "content", "tool_calls"}))
    for call in msg.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    final = ask(client, messages=messages, tool_choice="none", max_tokens=8, seed=2,
                extra_body={"return_token_ids": True, "thinking": False})
    assert final.choices[0].message.tool_calls is None and final.choices[0].finish_reason == "length"
    _, _, raw = request(client.url, "POST", "/detokenize", {"tokens": final.model_extra["prompt_token_ids"]})
    prompt = json.loads(raw)["prompt"]
    _, _, raw = request(client.url, "POST", "/tokenize", {"messages": messages, "tools": TOOLS, "thinking": False})
    assert json.loads(raw)["tokens"] == final.model_extra["prompt_token_ids"]  # vLLM's /tokenize renders tools too
    assert (TOOL_CALL_BEGIN + "function" + TOOL_SEP + "get_weather\n```json\n" + msg.tool_calls[0].function.arguments
            in prompt)
    assert prompt.endswith(TOOL_OUTPUT_BEGIN + "sunny, 21 C" + TOOL_OUTPUT_END + TOOL_OUTPUTS_END + ASSISTANT
                           + "<think>\n\n</think>\n\n")


def test_tool_choice_none_and_auto_leave_the_model_free(client):
    seeded = dict(seed=3, max_tokens=12, extra_body={"thinking": False, "ignore_eos": True, "return_token_ids": True})
    none = ask(client, tool_choice="none", **seeded).choices[0]
    auto = ask(client, **seeded).choices[0]
    assert none.model_extra["token_ids"] == auto.model_extra["token_ids"]  # no constraint in either
    assert none.finish_reason == "length" and none.message.tool_calls is None


def test_auto_with_response_format_answers_calls_or_that_json(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "sum", "schema": ADD}}
    kinds = set()
    for seed in range(8):
        c = ask(client, response_format=fmt, seed=seed, parallel_tool_calls=False).choices[0]  # bounded
        if c.message.tool_calls:
            kinds.add("calls")
            assert c.finish_reason == "tool_calls" and c.message.content is None
            for call in c.message.tool_calls:
                jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        else:
            kinds.add("json")
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.message.content), ADD)
    assert kinds == {"calls", "json"}  # the model was free to take either


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}],
      "tool_choice": "required"}, "tools"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"guided_regex": "[0-9]+"}, "guided_regex"),  # auto + a regex: not expressible as an alternative here
    ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}, "tool_choice"),
    ({"messages": QUESTION + [{"role": "tool", "tool_call_id": "c", "content": "1"}]}, "messages.1.role"),
    ({"messages": QUESTION + [AGENT[2], {"role": "tool", "tool_call_id": "zzz", "content": "1"}]},
     "messages.2.tool_call_id"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
])
def test_bad_tool_requests_are_400_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, max_tokens=5, extra_body=body)
    assert info.value.body["param"] == param, info.value.body
