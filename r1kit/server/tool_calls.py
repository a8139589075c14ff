"""Tool calls: OpenAI's `tools` / `tool_choice` on DeepSeek-R1's tool-call format.

    request   tools -> the chat template (it lists them for the model, as the model's own template does)
              tool_choice "none" | "auto" (default with tools) | "required"
                          | {"type": "function", "function": {"name": ...}}
              messages: assistant turns with `tool_calls`, then `role: "tool"` results (in the calls' order)
    output    the answer (the text after the thinking) is parsed for R1's tool-call block; what comes before it is
              `content`, each call becomes message.tool_calls[i] = {id, type: "function", function: {name,
              arguments}} and finish_reason is "tool_calls"; streamed as OpenAI streams them (a first delta with id,
              type and name, then pieces of `arguments`)

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>
    [\\n<｜tool▁call▁begin｜>...<｜tool▁call▁end｜>]<｜tool▁calls▁end｜>

"required" and a named tool are enforced while decoding: a Lark grammar for exactly that block (one of the tools,
or the named one, with its arguments following the tool's `parameters` schema through llguidance's %json) is the
request's structured output, so it starts when the thinking ends and the request finishes when the block closes.
Even a random model therefore produces a well-formed call whose arguments validate. "auto" leaves the model free
and parses what it writes (with a response_format JSON schema / json_object / choice, the grammar allows either the
block or that answer); "none" renders the tools but parses nothing (vLLM's behaviour).

The parser is incremental by construction: `parse_tool_calls(text, final=False)` only returns what no later text
can change (a partial marker or a possible closing fence is held back), so the streamed deltas add up to exactly
the non-streamed message.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from r1kit.engine.structured_output import JSON_OPTIONS, StructuredOutputsParams
from r1kit.server.errors import APIError
from r1kit.server.protocol import ChatCompletionRequest
from r1kit.tokenizer.r1_format import (TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_SEP,
                                       TOOL_TOKENS)

FENCE = "```json\n"
ARGS_END = "\n```" + TOOL_CALL_END


@dataclass
class ToolPolicy:
    """What a chat request asks of tools: the functions, and how the model may use them."""

    functions: list[dict]  # OpenAI's function objects: name, description, parameters, strict
    choice: str  # "none" | "auto" | "required" | "named"
    name: str | None = None  # the named function
    parallel: bool = True  # parallel_tool_calls: more than one call allowed when enforced
    answer: str | None = None  # with "auto": Lark for the other answer allowed (the request's response_format)

    @property
    def parses(self) -> bool:
        """The output is read for tool calls."""
        return self.choice != "none"


def tool_policy(req: ChatCompletionRequest, structured: StructuredOutputsParams | None,
                structured_field: str | None) -> ToolPolicy | None:
    """The request's tool policy (None without tools); APIError 400 for a tool_choice the tools cannot satisfy,
    for tool results that answer no call, and for the deprecated functions / function_call.

    With a structured output (`structured`, given by `structured_field`) and tool_choice "auto", the answer is
    either tool calls or that JSON / choice (OpenAI's meaning of tools + response_format); with "required" or a
    named tool the two cannot both hold: 400."""
    for field in ("functions", "function_call"):
        if getattr(req, field) is not None:
            raise APIError(400, f"{field} is deprecated and not supported; use tools and tool_choice", param=field)
    _check_tool_messages(req)
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None
    functions = [t.function.model_dump(exclude_none=True) for t in req.tools]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise APIError(400, f"tools: two functions have the same name ({names})", param="tools")
    name = None
    if choice is None:
        choice = "auto"
    elif not isinstance(choice, str):
        name, choice = choice.function.name, "named"
        if name not in names:
            raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools ({names})",
                           param="tool_choice")
    answer = None
    if structured is not None and choice != "none":
        answer = _answer_lark(structured) if choice == "auto" else None
        if answer is None:
            raise APIError(400, f"{structured_field} cannot be combined with tools here: with tool_choice 'auto' it "
                                "may be a JSON schema, json_object or a choice (the answer is then calls or that); "
                                "with 'required' or a named tool, the answer cannot be both", param=structured_field)
    return ToolPolicy(functions, choice, name, req.parallel_tool_calls is not False, answer)


def _answer_lark(spec: StructuredOutputsParams) -> str | None:
    """The constraint as a Lark alternative to the tool calls, or None where it cannot be one (regex, grammar)."""
    if spec.choice is not None:
        return " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice)
    schema = {"type": "object"} if spec.json_object else spec.json
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            return None
    if not isinstance(schema, dict):
        return None
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)


def _check_tool_messages(req: ChatCompletionRequest) -> None:
    """A `tool` message answers a call of the latest assistant turn with tool_calls (OpenAI's rule)."""
    pending: set[str] | None = None
    for i, m in enumerate(req.messages):
        if m.role == "assistant":
            pending = {c.id for c in m.tool_calls} if m.tool_calls else None
        elif m.role == "tool":
            if pending is None:
                raise APIError(400, f"messages[{i}] has role 'tool' but does not follow an assistant message with "
                                    "tool_calls", param=f"messages.{i}.role")
            if m.tool_call_id is not None and m.tool_call_id not in pending:
                raise APIError(400, f"messages[{i}].tool_call_id {m.tool_call_id!r} answers none of the calls of "
                                    f"the assistant message before it ({sorted(pending)})",
                               param=f"messages.{i}.tool_call_id")
        elif m.role == "user":
            pending = None


def tool_grammar(policy: ToolPolicy, tokenizer) -> StructuredOutputsParams | None:
    """For tool_choice required / named: a Lark grammar for R1's tool-call block (the arguments follow each tool's
    parameters schema); for auto with a structured output: that block or the structured answer; None when the
    model is free. The markers are the tokenizer's own tokens where it has them
    (llguidance matches added tokens only by id, never by their text), else their text."""
    if policy.choice not in ("required", "named") and not (policy.choice == "auto" and policy.answer):
        return None
    functions = [f for f in policy.functions if policy.choice != "named" or f["name"] == policy.name]
    rules = []
    for i, f in enumerate(functions):
        schema = {**(f.get("parameters") or {"type": "object"}), "x-guidance": JSON_OPTIONS}
        head = TOOL_CALL_BEGIN + "function" + TOOL_SEP + f["name"] + "\n" + FENCE
        rules.append(f"call_{i}: {_lark(head, tokenizer)} args_{i} {_lark(ARGS_END, tokenizer)}")
        rules.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    more = ' ("\\n" call)*' if policy.parallel and policy.choice != "named" else ""
    block = f"calls: {_lark(TOOL_CALLS_BEGIN, tokenizer)} call{more} {_lark(TOOL_CALLS_END, tokenizer)}"
    call = "call: " + " | ".join(f"call_{i}" for i in range(len(functions)))
    top = ["start: calls | answer", f"answer: {policy.answer}"] if policy.choice == "auto" else ["start: calls"]
    return StructuredOutputsParams(grammar="\n".join([*top, block, call, *rules]))


_MARKERS = re.compile("(" + "|".join(map(re.escape, TOOL_TOKENS)) + ")")


def _lark(s: str, tokenizer) -> str:
    """Lark for the exact text s: markers the tokenizer has as tokens by id (<[id]>), the rest as string literals."""
    parts = []
    for piece in _MARKERS.split(s):
        token_id = tokenizer.token_to_id(piece) if piece in TOOL_TOKENS else None
        if token_id is not None:
            parts.append(f"<[{token_id}]>")
        elif piece:
            parts.append(json.dumps(piece, ensure_ascii=False))  # a Lark string literal (same escapes)
    return " ".join(parts)


# ---- output -> content + tool calls ----

def _held(text: str, *markers: str) -> int:
    """How many trailing characters of `text` could be the start of one of the markers (to hold back)."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


def parse_tool_calls(text: str, final: bool = True) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments), ...]) of an answer. With final=False (streaming) only what later text cannot
    change: a partial marker at the end is held back, an unfinished call has the arguments seen so far."""
    p = text.find(TOOL_CALLS_BEGIN)
    if p < 0:
        return (text if final else text[:len(text) - _held(text, TOOL_CALLS_BEGIN)]), []
    rest, calls, pos = text[p + len(TOOL_CALLS_BEGIN):], [], 0
    while True:
        if rest.startswith("\n", pos):  # between calls
            pos += 1
        if not rest.startswith(TOOL_CALL_BEGIN, pos):  # the block's end, text that is not a call, or not yet
            break
        sep = rest.find(TOOL_SEP, pos + len(TOOL_CALL_BEGIN))
        newline = rest.find("\n", sep + len(TOOL_SEP)) if sep >= 0 else -1
        if newline < 0:  # the name is not complete yet
            break
        name, body = rest[sep + len(TOOL_SEP):newline].strip(), newline + 1
        if rest.startswith(FENCE, body):
            body += len(FENCE)
        elif FENCE.startswith(rest[body:]) and not final:  # may still become the fence
            calls.append((name, ""))
            break
        end = rest.find(TOOL_CALL_END, body)
        if end < 0:  # the arguments are still coming
            args = rest[body:]
            calls.append((name, args if final else args[:len(args) - _held(args, ARGS_END, TOOL_CALL_END)]))
            break
        args = rest[body:end]
        calls.append((name, args[:-4] if args.endswith("\n```") else args))
        pos = end + len(TOOL_CALL_END)
    return text[:p], calls


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]  # OpenAI's shape


def message_fields(content: str | None, policy: ToolPolicy | None, finish_reason: str | None) -> dict:
    """The chat message's content / tool_calls and the choice's finish_reason, for a non-streamed answer."""
    if policy is None or not policy.parses or content is None:
        return {"content": content, "finish_reason": finish_reason}
    content, calls = parse_tool_calls(content)
    if not calls:
        return {"content": content, "finish_reason": finish_reason}
    return {"content": content if content.strip() else None,
            "tool_calls": [{"id": new_call_id(), "type": "function", "function": {"name": n, "arguments": a}}
                           for n, a in calls],
            "finish_reason": "tool_calls" if finish_reason == "stop" else finish_reason}


class ToolCallStream:
    """One streamed choice: turns its growing answer into content deltas and OpenAI tool-call deltas."""

    def __init__(self):
        self.content_sent = 0
        self.args_sent: list[int] = []

    def update(self, answer: str, final: bool = False) -> tuple[str, list[dict]]:
        """(new content, new tool-call deltas) since the last update."""
        content, calls = parse_tool_calls(answer, final)
        if not content.strip() and (calls or not final):
            # only whitespace so far (R1 writes "\n\n" after </think>): not content if calls follow, as in
            # message_fields; held back until that is known
            content = ""
        delta, self.content_sent = content[self.content_sent:], len(content)
        deltas = []
        for i, (name, args) in enumerate(calls):
            if i == len(self.args_sent):
                deltas.append({"index": i, "id": new_call_id(), "type": "function",
                               "function": {"name": name, "arguments": args}})
                self.args_sent.append(len(args))
            elif len(args) > self.args_sent[i]:
                deltas.append({"index": i, "function": {"arguments": args[self.args_sent[i]:]}})
                self.args_sent[i] = len(args)
        return delta, deltas

    @property
    def called(self) -> bool:
        return bool(self.args_sent)
