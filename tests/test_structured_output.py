"""Structured outputs (llguidance) on a random model at temperature 1: every answer parses and validates against the
schema (checked with the jsonschema package, not with the grammar library), the thinking stays free, and the
constraint is refused with a 400 naming the field when it cannot compile."""
from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from r1kit import LLM, SamplingParams
from r1kit.engine.structured_output import StructuredOutputsParams
from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

pytest.importorskip("llguidance")

# every string, number and array is bounded, so even a random model's answer always ends inside max_tokens
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "pet": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}},
                                               "required": ["kind"], "additionalProperties": False}]},
    },
    "required": ["name", "age", "ok", "tags", "pet"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(tiny_checkpoint("deepseek_v3"), device="cpu", max_model_len=512, max_num_seqs=32)


def test_fifty_sampled_answers_validate_against_the_schema(llm):
    # ignore_eos: a random model may sample EOS while it still thinks (unconstrained), leaving no answer at all
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=300, max_thinking_tokens=6, ignore_eos=True,
                             structured_outputs=StructuredOutputsParams(json=SCHEMA)) for s in range(50)]
    outs = llm.chat([QUESTION] * 50, params, use_tqdm=False)
    free = []
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.content), SCHEMA)
        free.append(c.reasoning)
    assert len(set(free)) > 40  # the thinking is sampled freely (and differs), only the answer is constrained


def test_regex_choice_and_grammar(llm):
    def run(spec, **kw):
        p = SamplingParams(temperature=1.0, seed=3, max_tokens=40, structured_outputs=spec, **kw)
        return llm.generate(["Say something:"] * 8, p, use_tqdm=False)

    for out in run(StructuredOutputsParams(regex=r"[0-9]{3}-[a-c]{2,4}")):
        assert re.fullmatch(r"[0-9]{3}-[a-c]{2,4}", out.outputs[0].text) and out.outputs[0].finish_reason == "stop"
    seen = {out.outputs[0].text for out in run(StructuredOutputsParams(choice=["yes", "no", "maybe"]))}
    assert seen <= {"yes", "no", "maybe"}
    for out in run(StructuredOutputsParams(grammar='start: "(" NUM ("+" NUM)* ")"\nNUM: /[1-9]/')):
        assert re.fullmatch(r"\([1-9](\+[1-9])*\)", out.outputs[0].text) or out.outputs[0].finish_reason == "length"


def test_bad_constraints_are_user_errors(llm):
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["b"])
    with pytest.raises(ValueError, match="structured output"):
        llm.generate("x", SamplingParams(structured_outputs={"regex": "(unclosed"}), use_tqdm=False)


@pytest.fixture(scope="module")
def client(llm):
    with BackgroundServer(create_app(llm.engine, "tiny")) as s:
        s.client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        yield s


def test_response_format_json_schema_streaming_and_not(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        kw = dict(model="tiny", messages=QUESTION, max_tokens=300, temperature=1.0, seed=seed, response_format=fmt,
                  extra_body={"max_thinking_tokens": 6, "ignore_eos": True})
        msg = client.client.chat.completions.create(**kw).choices[0].message
        jsonschema.validate(json.loads(msg.content), SCHEMA)
        assert msg.model_extra["reasoning_content"]
        streamed = "".join(ch.choices[0].delta.content or "" for ch in
                           client.client.chat.completions.create(stream=True, **kw) if ch.choices)
        assert streamed == msg.content
    r = client.client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=20, seed=1,
                                              response_format={"type": "json_object"},
                                              extra_body={"thinking": False})
    assert r.choices[0].message.content.startswith("{")
    c = client.client.completions.create(model="tiny", prompt="Pick:", max_tokens=5, seed=2,
                                         extra_body={"guided_choice": ["alpha", "beta"]})
    assert c.choices[0].text in ("alpha", "beta")


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
     "response_format"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"structured_outputs": {"nonsense": 1}}, "structured_outputs"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
])
def test_bad_structured_outputs_are_400_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=5, extra_body=body)
    assert info.value.body["param"] == param, info.value.body
