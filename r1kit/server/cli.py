"""`r1kit serve`: load a model into the engine and serve it over the OpenAI-compatible HTTP API.

    r1kit serve --model ./ckpt --port 8000 --api-key KEY --max-thinking-tokens 1024

With no --model it serves r1kit-tiny, the small reasoner r1kit trains itself (shipped in the package). `--port 0` picks a free port; the line printed when the server is ready gives the
address either way.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path

from r1kit.errors import UserError
from r1kit.server.limits import ServerLimits

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MB', '1e9' or a plain number of bytes -> int."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size like 2GiB, 512MB or 1000000000, got {text!r}")
    try:
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 2GiB, 512MB or 1000000000, got {text!r}") from None


def default_model() -> str:
    """The model used when none is named: r1kit-tiny, shipped in the package (docs/r1kit-tiny.md). An installation
    without it falls back to a random, untrained demo model, and says so."""
    from r1kit.models.builtin import DEFAULT_MODEL, builtin_names

    if DEFAULT_MODEL in builtin_names():
        return DEFAULT_MODEL
    print(f"note: {DEFAULT_MODEL} is not in this installation; using random-deepseek_v3-tiny, an UNTRAINED demo "
          "model with random weights (its text is gibberish)", file=sys.stderr)
    return "random-deepseek_v3-tiny"


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine options shared by `r1kit serve` and `r1kit chat --model`."""
    g = parser.add_argument_group("engine")
    g.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto (default: auto)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto)")
    g.add_argument("--max-num-seqs", type=int, default=None, help="sequences in one running batch")
    g.add_argument("--max-model-len", type=int, default=None, help="context limit in tokens (prompt + output)")
    g.add_argument("--block-size", type=int, default=None, help="tokens per KV cache block")
    g.add_argument("--kv-cache-memory", type=parse_bytes, default=None, help="KV cache size, e.g. 2GiB")
    g.add_argument("--reasoning-parser", default="r1", choices=["r1", "think", "thought", "none"],
                   help="how the output splits into reasoning and answer (default: r1, <think>...</think>)")
    g.add_argument("--max-thinking-tokens", type=int, default=None,
                   help="default thinking budget per request (requests may set max_thinking_tokens)")


def build_engine(model: str, args: argparse.Namespace):
    """An LLMEngine for `model` from the engine options (unset options keep the engine's defaults)."""
    from r1kit.engine.llm import LLM

    options = {"dtype": args.dtype, "device": args.device, "max_num_seqs": args.max_num_seqs,
               "max_model_len": args.max_model_len, "block_size": args.block_size,
               "kv_cache_memory": args.kv_cache_memory, "reasoning_parser": args.reasoning_parser}
    return LLM(model, **{k: v for k, v in options.items() if v is not None}).engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint directory (Hugging Face layout) or hub id; default: the demo model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    parser.add_argument("--api-key", default=os.environ.get("R1KIT_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: $R1KIT_API_KEY, else none)")
    parser.add_argument("--served-model-name", default=None,
                        help="model id clients use (default: the model directory's name)")
    parser.add_argument("--max-queue", type=int, default=512,
                        help="requests in flight before new ones get HTTP 429 (default: %(default)s)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    g = parser.add_argument_group("limits (each answered with an OpenAI-style error body)")
    g.add_argument("--max-body-size", type=parse_bytes, default=ServerLimits.max_body_bytes,
                   help="largest request body; larger ones get HTTP 413 (default: 4MiB)")
    g.add_argument("--header-timeout", type=float, default=ServerLimits.header_timeout_s,
                   help="seconds for a client to send a request's headers, else HTTP 408 (default: %(default)s)")
    g.add_argument("--body-timeout", type=float, default=ServerLimits.body_timeout_s,
                   help="seconds for a client to send a request's body, else HTTP 408 (default: %(default)s)")
    g.add_argument("--max-connections", type=int, default=ServerLimits.max_connections,
                   help="open connections; the one over the limit gets HTTP 503 (default: %(default)s)")
    g.add_argument("--public-metrics", action="store_true",
                   help="with --api-key, leave /metrics, /docs and /openapi.json open (default: they need the key)")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from r1kit.server.api import create_app, uvicorn_config

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 1:
        raise UserError(f"--max-queue must be >= 1, got {args.max_queue}")
    for flag, value in (("--max-body-size", args.max_body_size), ("--max-connections", args.max_connections),
                        ("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    limits = ServerLimits(max_body_bytes=args.max_body_size, header_timeout_s=args.header_timeout,
                          body_timeout_s=args.body_timeout, max_connections=args.max_connections)
    model = args.model or default_model()
    name = args.served_model_name or Path(model.rstrip("/")).name or model
    engine = build_engine(model, args)
    app = create_app(engine, name, api_key=args.api_key, reasoning=args.reasoning_parser != "none",
                     max_thinking_tokens=args.max_thinking_tokens, max_queue=args.max_queue,
                     model_aliases=(model,), limits=limits, public_metrics=args.public_metrics)
    config = uvicorn_config(app, host=args.host, port=args.port, log_level=args.log_level)
    if limits.max_connections < args.max_connections:
        print(f"note: the open-file limit allows {limits.max_connections} connections, not {args.max_connections}",
              file=sys.stderr)
    server = uvicorn.Server(config)

    async def announce():
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"r1kit serve: model {name!r} ({model}) at http://{shown}:{port}/v1  "
              f"(web chat: http://{shown}:{port}/){'  API key required' if args.api_key else ''}", flush=True)

    async def main():
        task = asyncio.create_task(announce())
        await server.serve()
        task.cancel()

    asyncio.run(main())
    return 0 if server.started else 1
