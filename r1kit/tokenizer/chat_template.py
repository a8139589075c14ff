"""Chat templates rendered as transformers' `apply_chat_template` renders them: jinja2's immutable sandbox with the
same options, filters, globals and the {% generation %} block, so any model's own template gives the same text."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from r1kit.errors import UserError


def render_chat(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                variables: dict[str, Any]) -> str:
    """The text of a conversation. Messages are dicts with "role" and "content" (keys whose value is None are
    dropped; "reasoning", "thinking" and "reasoning_content" are aliases of one another); `variables` reach the
    template (special tokens, enable_thinking=...). UserError for a malformed conversation or one the template
    rejects (raise_exception)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UserError("a conversation is a non-empty list of {'role': ..., 'content': ...} messages")
    chat = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise UserError(f"each chat message must be a dict with a 'role', got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in ("reasoning_content", "thinking", "reasoning") if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        chat.append(message)
    variables = {"tools": None, "documents": None, **variables}
    try:
        return compile_template(template).render(messages=chat, add_generation_prompt=add_generation_prompt,
                                                 **variables)
    except jinja2.TemplateError as e:  # raise_exception(...) in the template: the conversation is not allowed
        raise UserError(f"chat template rejected the conversation: {e}") from e


@lru_cache(maxsize=16)
def compile_template(template: str):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which templates do not expect.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class GenerationBlock(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; it renders as its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, GenerationBlock])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"invalid chat template (line {e.lineno}): {e.message}") from e
