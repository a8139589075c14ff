"""Chat completions, and what both generation endpoints share: request -> prompt + SamplingParams -> engine ->
JSON response or SSE stream (/v1/completions: serving_completions.py).

Reasoning models, in OpenAI's shapes:
- The chat prompt is rendered with the model's chat template from role + content only: `reasoning_content` of
  earlier assistant turns is never put back (DeepSeek's multi-turn rule; R1's template also strips "...</think>").
- `thinking: false` (or chat_template_kwargs {"thinking": false}) pre-fills an empty thinking block
  "<think>\\n\\n</think>\\n\\n" after the generation prompt, so the model answers at once; all its text is content.
- Otherwise the engine's reasoning parser splits each completion: CompletionOutput.reasoning -> reasoning_content,
  .content -> content. Both only grow, so streaming sends plain suffix diffs and never leaks one into the other.
- usage.completion_tokens_details.reasoning_tokens = generated tokens before the end of thinking.
- Tools (tool_calls.py): the template lists them; the answer is parsed into message.tool_calls.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from r1kit.engine.sampling_params import SamplingParams
from r1kit.engine.structured_output import StructuredOutputsParams
from r1kit.errors import UserError
from r1kit.server.async_engine import AsyncEngine, QueueFull, RequestAborted
from r1kit.server.errors import APIError, error_body, from_user_error
from r1kit.server.metrics import Metrics
from r1kit.server.protocol import ChatCompletionRequest, new_id, now
from r1kit.server.tool_calls import ToolCallStream, ToolPolicy, message_fields, tool_grammar, tool_policy
from r1kit.tokenizer.r1_format import TOOL_CALLS_BEGIN

EMPTY_THINKING = "<think>\n\n</think>\n\n"
_RESERVED_TEMPLATE_KWARGS = {"messages", "add_generation_prompt", "tokenize", "chat_template"}


@dataclass
class ServingContext:
    engine: AsyncEngine
    metrics: Metrics
    model_name: str
    model_names: set[str]
    reasoning: bool  # False for --reasoning-parser none: everything the model writes is content
    max_thinking_tokens: int | None
    max_model_len: int | None

    @property
    def tokenizer(self):
        return self.engine.tokenizer


def engine_max_model_len(engine) -> int | None:
    for obj in (engine, getattr(engine, "config", None)):
        value = getattr(obj, "max_model_len", None)
        if isinstance(value, int):
            return value
    return None


# ---- request -> prompt + params ----

def check_model(ctx: ServingContext, model: str | None) -> None:
    if model is not None and model not in ctx.model_names:
        raise APIError(404, f"model {model!r} not found; this server serves {ctx.model_name!r} (see GET /v1/models)",
                       param="model", code="model_not_found")


def close_thinking(prompt: str) -> str:
    """Pre-fill an empty thinking block: "...<think>\\n" -> "...<think>\\n\\n</think>\\n\\n"."""
    head = prompt.rstrip()
    return head + EMPTY_THINKING[len("<think>"):] if head.endswith("<think>") else prompt + EMPTY_THINKING


def render_chat_prompt(ctx: ServingContext, req: ChatCompletionRequest, thinking: bool,
                       add_generation_prompt: bool = True) -> list[int]:
    # role + content (+ tool calls and tool results): reasoning_content of earlier turns is dropped on purpose.
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                 "tool_calls": [c.model_dump() for c in m.tool_calls] if m.tool_calls else None,
                 "tool_call_id": m.tool_call_id, "name": m.name if m.role == "tool" else None} for m in req.messages]
    kwargs = {k: v for k, v in (req.chat_template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_KWARGS}
    if req.tools:
        kwargs["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    try:
        text = ctx.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                                 **kwargs)
    except (UserError, ValueError, TypeError, jinja2.TemplateError) as e:
        raise APIError(400, f"the chat template cannot render these messages: {e}", param="messages") from None
    if ctx.reasoning and not thinking and add_generation_prompt:
        text = close_thinking(text)
    return ctx.tokenizer.encode(text)


def sampling_params(ctx: ServingContext, req, prompt_len: int, max_tokens: int | None, logprobs: int | None,
                     thinking: bool, constraint: StructuredOutputsParams | None = None,
                     tools: ToolPolicy | None = None) -> SamplingParams:
    """`constraint` replaces the request's own structured output (a tool_choice grammar)."""
    limit = ctx.max_model_len
    if limit is not None:
        room = limit - prompt_len
        if room <= 0:
            raise APIError(400, f"the prompt has {prompt_len} tokens but this model's context is {limit} tokens",
                           param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                           code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            raise APIError(400, f"this model's context is {limit} tokens, but you asked for {prompt_len + max_tokens} "
                           f"({prompt_len} in the prompt, {max_tokens} to generate); lower max_tokens to {room} "
                           "or less", param="max_tokens", code="context_length_exceeded")
    budget = req.max_thinking_tokens if req.max_thinking_tokens is not None else ctx.max_thinking_tokens
    try:
        return SamplingParams(
            n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
            min_p=req.min_p or 0.0, seed=req.seed, max_tokens=max_tokens, min_tokens=req.min_tokens,
            stop=req.stop, stop_in_reasoning=req.stop_in_reasoning, ignore_eos=req.ignore_eos, logprobs=logprobs,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty, logit_bias=req.logit_bias,
            structured_outputs=constraint or structured_outputs(req)[0],
            # a tokenizer that marks the tool-call tokens special would drop them from the text the parser reads
            skip_special_tokens=not (tools and tools.parses and _special(ctx.tokenizer, TOOL_CALLS_BEGIN)),
            max_thinking_tokens=budget if (thinking and ctx.reasoning) else None)
    except (UserError, ValueError) as e:
        raise from_user_error(e) from None


def _special(tok, token: str) -> bool:
    token_id = tok.token_to_id(token)
    return token_id is not None and token_id in tok.all_special_ids


_STRUCTURED_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                      "guided_grammar")


def structured_outputs(req) -> tuple[StructuredOutputsParams | None, str | None]:
    """The request's structured-output constraint and the field that gave it (at most one may)."""
    given = [f for f in _STRUCTURED_FIELDS if getattr(req, f, None) is not None]
    given = [f for f in given if f != "response_format" or req.response_format.type != "text"]
    if not given:
        return None, None
    if len(given) > 1:
        raise APIError(400, f"{given[1]} cannot be combined with {given[0]}: give one structured output",
                       param=given[1])
    field, value = given[0], getattr(req, given[0])
    try:
        if field == "response_format":
            if value.type == "json_object":
                return StructuredOutputsParams(json_object=True), field
            if value.json_schema is None or value.json_schema.schema_ is None:
                raise APIError(400, "response_format json_schema needs json_schema.schema",
                               param="response_format.json_schema")
            return StructuredOutputsParams(json=value.json_schema.schema_), field
        if field == "structured_outputs":
            return StructuredOutputsParams(**value), field
        key = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
               "guided_grammar": "grammar"}[field]
        return StructuredOutputsParams(**{key: value}), field
    except (UserError, TypeError) as e:
        raise APIError(400, f"{field}: {e}", param=field) from None


async def submit(ctx: ServingContext, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 structured_field: str | None = None):
    try:
        return await ctx.engine.submit(request_id, prompt_ids, params)
    except QueueFull as e:
        raise APIError(429, str(e), code="queue_full", headers={"Retry-After": "1"}) from None
    except (UserError, ValueError) as e:
        err = from_user_error(e)
        if err.param == "structured_outputs" and structured_field:  # the grammar did not compile
            err.param = structured_field
        raise err from None


# ---- engine output -> OpenAI fields ----

def split_output(ctx: ServingContext, c, thinking: bool) -> tuple[str, str | None]:
    """(reasoning, content) of one CompletionOutput, as this request should report them; content is None when the
    thinking never closed (still open while streaming)."""
    if not (ctx.reasoning and thinking):
        return "", c.text
    return c.reasoning or "", c.content


def reasoning_tokens(ctx: ServingContext, c, thinking: bool) -> int:
    """Generated tokens before the end of thinking (a forced thinking-budget wrap-up counts: it is thinking too)."""
    if not (ctx.reasoning and thinking):
        return 0
    ids, end = c.token_ids, ctx.tokenizer.think_end_id
    if end is not None and end in ids:
        return ids.index(end)
    if c.content:  # the end tag came as plain-text pieces, not its token: the engine counted the sampled ones
        return c.num_reasoning_tokens
    return len(ids)


def usage_of(ctx: ServingContext, out, prompt_len: int, thinking: bool) -> dict:
    completion = sum(len(c.token_ids) for c in out.outputs) if out is not None else 0
    reasoning = sum(reasoning_tokens(ctx, c, thinking) for c in out.outputs) if out is not None else 0
    return {"prompt_tokens": prompt_len, "completion_tokens": completion, "total_tokens": prompt_len + completion,
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def token_str(tok, token_id: int) -> str:
    return tok.decode([token_id])


def logprob_items(c, start: int) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(chosen id, its logprob, [(top id, logprob), ...] most likely first) for output tokens start..

    The engine gives per token {token_id: logprob}: the chosen token plus the top ones; forced tokens have None.
    """
    items = []
    for token_id, entry in list(zip(c.token_ids, c.logprobs or []))[start:]:
        if entry is None:
            continue
        top = sorted(((int(k), float(v)) for k, v in entry.items()), key=lambda kv: -kv[1])
        items.append((int(token_id), float(entry[token_id]), top))
    return items


def _chat_logprobs(ctx: ServingContext, c, start: int, top_n: int) -> dict:
    tok = ctx.tokenizer
    content = []
    for token_id, lp, top in logprob_items(c, start):
        s = token_str(tok, token_id)
        content.append({"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")),
                        "top_logprobs": [{"token": (t := token_str(tok, i)), "logprob": v,
                                          "bytes": list(t.encode("utf-8"))} for i, v in top[:top_n]]})
    return {"content": content}


def token_ids_field(req, c) -> dict:
    return {"token_ids": list(c.token_ids)} if req.return_token_ids else {}


def record(ctx: ServingContext, stream, out, prompt_len: int, thinking: bool) -> None:
    m = ctx.metrics
    if out is None or not out.finished:
        m.aborted += 1
        return
    end = time.perf_counter()
    usage = usage_of(ctx, out, prompt_len, thinking)
    m.count_tokens(prompt_len, usage["completion_tokens"], usage["completion_tokens_details"]["reasoning_tokens"])
    if stream.first_token_time is not None:
        m.ttft.observe(stream.first_token_time - stream.arrival)
    m.e2e.observe(end - stream.arrival)
    for c in out.outputs:
        m.finished[c.finish_reason or "unknown"] += 1


async def collect(stream, request: Request):
    """Wait for the final output; if the client goes away first, abort the request (frees its KV blocks)."""

    async def watch_disconnect():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        stream.close()

    watcher = asyncio.create_task(watch_disconnect())
    try:
        last = None
        async for out in stream:
            last = out
        return last
    finally:
        watcher.cancel()
        stream.close()


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def chunk_writer(ctx: ServingContext, req, rid: str, created: int, obj: str):
    """(chunk(choices, **extra) -> one SSE event of a streamed response, include_usage). With
    stream_options.include_usage every chunk carries "usage": null except the last one, as OpenAI sends them."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices: list[dict], **extra: Any) -> str:
        body = {"id": rid, "object": obj, "created": created, "model": ctx.model_name, "choices": choices, **extra}
        if include_usage:
            body.setdefault("usage", None)
        return sse(body)

    return chunk, include_usage


def stream_error(e: Exception) -> str:
    return sse(error_body(500, f"generation failed: {e}", code="engine_error")) + "data: [DONE]\n\n"


# ---- /v1/chat/completions ----

async def chat_completion(ctx: ServingContext, req: ChatCompletionRequest, request: Request) -> Response:
    check_model(ctx, req.model)
    refused = req.refuse_unsupported()
    if refused:
        raise APIError(400, refused[1], param=refused[0])
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    thinking = req.thinking_enabled()
    constraint, structured_field = structured_outputs(req)
    tools = tool_policy(req, constraint, structured_field)
    if tools is not None and (grammar := tool_grammar(tools, ctx.tokenizer)) is not None:
        constraint, structured_field = grammar, "tools"  # a parameters schema that does not compile: 400 on tools
    prompt_ids = await asyncio.to_thread(render_chat_prompt, ctx, req, thinking)  # off the event loop
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    top_n = req.top_logprobs or 0
    params = sampling_params(ctx, req, len(prompt_ids), max_tokens, top_n if req.logprobs else None, thinking,
                             constraint, tools)
    rid, created = new_id("chatcmpl"), now()
    stream = await submit(ctx, rid, prompt_ids, params, structured_field)
    if req.stream:
        return StreamingResponse(_chat_events(ctx, req, stream, rid, created, len(prompt_ids), thinking, top_n, tools),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    out = None
    try:
        out = await collect(stream, request)
    except RequestAborted:
        return Response(status_code=499)  # the client is gone; nobody reads this
    finally:
        record(ctx, stream, out, len(prompt_ids), thinking)
    choices = []
    for c in out.outputs:
        reasoning, content = split_output(ctx, c, thinking)
        fields = message_fields(content, tools, c.finish_reason)
        finish_reason = fields.pop("finish_reason")
        choices.append({"index": c.index,
                        "message": {"role": "assistant", **fields,
                                    "reasoning_content": reasoning if (ctx.reasoning and thinking) else None},
                        "logprobs": _chat_logprobs(ctx, c, 0, top_n) if req.logprobs else None,
                        "finish_reason": finish_reason, **token_ids_field(req, c)})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": ctx.model_name,
                         "choices": sorted(choices, key=lambda ch: ch["index"]),
                         "usage": usage_of(ctx, out, len(prompt_ids), thinking),
                         **({"prompt_token_ids": prompt_ids} if req.return_token_ids else {})})


async def _chat_events(ctx: ServingContext, req: ChatCompletionRequest, stream, rid: str, created: int,
                       prompt_len: int, thinking: bool, top_n: int, tools: ToolPolicy | None):
    chunk, include_usage = chunk_writer(ctx, req, rid, created, "chat.completion.chunk")
    sent = [[0, 0, 0] for _ in range(req.n)]  # per choice: reasoning chars, content chars, tokens with logprobs
    calls = [ToolCallStream() for _ in range(req.n)] if tools is not None and tools.parses else None
    done = [False] * req.n
    out = None
    try:
        # a thinking request gets no content until the thinking closes (null if it never does)
        role = {"role": "assistant"} if (ctx.reasoning and thinking) else {"role": "assistant", "content": ""}
        yield chunk([{"index": i, "delta": role, "logprobs": None, "finish_reason": None} for i in range(req.n)])
        async for out in stream:
            for c in out.outputs:
                if done[c.index]:
                    continue
                s = sent[c.index]
                reasoning, content = split_output(ctx, c, thinking)
                content = content or ""
                delta = {}
                if len(reasoning) > s[0]:
                    delta["reasoning_content"], s[0] = reasoning[s[0]:], len(reasoning)
                if calls is not None:  # content up to the tool-call block, then the calls
                    text, tool_deltas = calls[c.index].update(content, final=c.finish_reason is not None)
                    if text:
                        delta["content"] = text
                    if tool_deltas:
                        delta["tool_calls"] = tool_deltas
                elif len(content) > s[1]:
                    delta["content"], s[1] = content[s[1]:], len(content)
                logprobs = None
                if req.logprobs and len(c.token_ids) > s[2]:
                    logprobs, s[2] = _chat_logprobs(ctx, c, s[2], top_n), len(c.token_ids)
                if delta or logprobs:
                    yield chunk([{"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}])
                if c.finish_reason is not None:
                    done[c.index] = True
                    finish = c.finish_reason
                    if finish == "stop" and calls is not None and calls[c.index].called:
                        finish = "tool_calls"
                    yield chunk([{"index": c.index, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if include_usage:
            yield chunk([], usage=usage_of(ctx, out, prompt_len, thinking))
        yield "data: [DONE]\n\n"
    except RequestAborted:
        return
    except Exception as e:  # the engine failed mid-stream: tell the client in-band, the status line is gone
        yield stream_error(e)
    finally:
        stream.close()
        record(ctx, stream, out, prompt_len, thinking)
