"""`r1kit chat`: talk to a reasoning model in the terminal.

    r1kit chat "What is 12 + 30?"                 one-shot with the default model, in-process
    r1kit chat --model ./ckpt                      interactive (multi-turn; /reset, /exit)
    r1kit chat --url http://127.0.0.1:8000 "Hi"    any OpenAI-compatible server (r1kit serve, vLLM, ...)

The thinking streams dimmed (ANSI, only on a terminal; elsewhere under a "[thinking]" header), the answer plainly,
then a line with the token count and speed on stderr. Earlier answers go back into the conversation, earlier
thinking does not (the R1 multi-turn rule). The HTTP client is plain urllib: no extra dependency.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

from r1kit.errors import UserError

DIM, RESET = "\x1b[2m", "\x1b[0m"


class LocalBackend:
    """An in-process LLMEngine, stepped synchronously."""

    def __init__(self, model: str, args: argparse.Namespace):
        from r1kit.server.cli import build_engine

        self.engine = build_engine(model, args)
        self.reasoning = args.reasoning_parser != "none"
        self.name = model
        self._n = 0

    def stream(self, messages: list[dict], opts: dict) -> Iterator[tuple[str, str, dict | None]]:
        from r1kit.engine.sampling_params import SamplingParams
        from r1kit.server.openai_serving import close_thinking

        tok = self.engine.tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        thinking = self.reasoning and opts["thinking"]
        if self.reasoning and not thinking:
            text = close_thinking(text)
        prompt = tok.encode(text)
        params = SamplingParams(temperature=opts["temperature"], top_p=opts["top_p"], seed=opts["seed"],
                                max_tokens=opts["max_tokens"],
                                max_thinking_tokens=opts["max_thinking_tokens"] if thinking else None)
        self._n += 1
        rid = f"chat-{self._n}"
        self.engine.add_request(rid, prompt, params)
        sent_r = sent_c = 0
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.request_id != rid:
                        continue
                    c = out.outputs[0]
                    reasoning, content = (c.reasoning, c.content or "") if thinking else ("", c.text)
                    yield reasoning[sent_r:], content[sent_c:], None
                    sent_r, sent_c = len(reasoning), len(content)
                    if out.finished:
                        yield "", "", {"completion_tokens": len(c.token_ids), "finish_reason": c.finish_reason}
                        return
        finally:
            if self.engine.has_unfinished_requests():
                self.engine.abort_request(rid)


class HTTPBackend:
    """Any OpenAI-compatible server, streaming over SSE with urllib."""

    def __init__(self, url: str, api_key: str | None, model: str | None):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"--url {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000")
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.name = model or self._first_model()

    def _open(self, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=self.headers,
                                     method="POST" if data else "GET")
        try:
            return urllib.request.urlopen(req, timeout=600)
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except Exception:
                message = e.reason
            raise UserError(f"{self.base}{path}: HTTP {e.code}: {message}") from None
        except urllib.error.URLError as e:
            raise UserError(f"cannot reach {self.base}: {e.reason}") from None

    def _first_model(self) -> str:
        with self._open("/models") as r:
            models = json.load(r).get("data") or []
        if not models:
            raise UserError(f"{self.base}/models lists no model")
        return models[0]["id"]

    def stream(self, messages: list[dict], opts: dict) -> Iterator[tuple[str, str, dict | None]]:
        body = {"model": self.name, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                "temperature": opts["temperature"], "top_p": opts["top_p"]}
        for key in ("max_tokens", "seed", "max_thinking_tokens"):
            if opts[key] is not None:
                body[key] = opts[key]
        if not opts["thinking"]:
            body["chat_template_kwargs"] = {"thinking": False, "enable_thinking": False}
        finish = None
        with self._open("/chat/completions", body) as r:
            for raw in r:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise UserError(f"server error: {event['error'].get('message')}")
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    finish = choice.get("finish_reason") or finish
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                    if reasoning or delta.get("content"):
                        yield reasoning, delta.get("content") or "", None
                if event.get("usage"):
                    yield "", "", {**event["usage"], "finish_reason": finish}


def _turn(backend, messages: list[dict], opts: dict, out=sys.stdout) -> str:
    """Stream one answer; return the answer text (what goes back into the conversation)."""
    tty = out.isatty()
    t0 = time.perf_counter()
    answer, state, stats = [], None, None  # state: None, "thinking", "answer"
    for reasoning, content, final in backend.stream(messages, opts):
        if reasoning:
            if state is None:
                out.write(DIM + "Thinking: " if tty else "[thinking]\n")
                state = "thinking"
            out.write(reasoning)
        if content:
            if state != "answer":
                out.write((RESET + "\n\n" if tty else "\n[answer]\n") if state else ("" if tty else "[answer]\n"))
                state = "answer"
            out.write(content)
            answer.append(content)
        out.flush()
        stats = final or stats
    if tty and state == "thinking":
        out.write(RESET)
    out.write("\n")
    out.flush()
    dt = time.perf_counter() - t0
    if stats:
        n = stats.get("completion_tokens", 0)
        line = f"[{n} tokens in {dt:.2f}s, {n / dt:.1f} tokens/s, finish_reason={stats.get('finish_reason')}]"
        print(DIM + line + RESET if sys.stderr.isatty() else line, file=sys.stderr, flush=True)
    return "".join(answer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1kit.server.cli import add_engine_arguments

    parser.add_argument("prompt", nargs="?", help="ask this once and exit; without it, chat interactively")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model", default=None, help="run this model in-process: a checkpoint directory, hub id or builtin name (default: r1kit-tiny)")
    where.add_argument("--url", default=None, help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None, help="API key for --url")
    parser.add_argument("--served-model", default=None, help="model id to request from --url (default: its first)")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--temperature", type=float, default=0.6, help="(default: %(default)s, as R1 recommends)")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--no-thinking", action="store_true", help="answer without thinking")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.url:
        backend = HTTPBackend(args.url, args.api_key, args.served_model)
    else:
        from r1kit.server.cli import default_model

        backend = LocalBackend(args.model or default_model(), args)
    opts = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "max_tokens": args.max_tokens,
            "max_thinking_tokens": args.max_thinking_tokens, "thinking": not args.no_thinking}
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        _turn(backend, system + [{"role": "user", "content": args.prompt}], opts)
        return 0
    print(f"chatting with {backend.name}; /reset starts over, /exit (or Ctrl-D) quits", file=sys.stderr)
    history = list(system)
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = _turn(backend, history, opts)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})
