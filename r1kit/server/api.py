"""The FastAPI app: `create_app(engine, ...)` serves one model over OpenAI's HTTP API.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models
    POST /tokenize   POST /detokenize   GET /tokenizer_info (vLLM's tokenizer endpoints)
    GET /health   GET /metrics (Prometheus text)   GET / (the web chat page)   GET /docs (OpenAPI)

Handlers validate (protocol.py), build the prompt and SamplingParams (openai_serving.py), hand the request to the
AsyncEngine and turn its cumulative outputs into a JSON response or an SSE stream. A pure-ASGI gate in front checks
the API key (constant-time compare) on /v1/*, and on /metrics, /docs and /openapi.json unless `public_metrics`, and
counts requests per endpoint and status for /metrics. Behind it, limits.BodyLimitMiddleware caps the body size and
read time; the connection-level limits (header timeout, connection cap) are in the protocol `uvicorn_config` sets.
/docs is a page of this server's own (the OpenAPI schema rendered in place, no scripts or styles from elsewhere).
"""
from __future__ import annotations

import contextlib
import hmac
import html
import json
import time
from importlib import resources

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from r1kit.server import openai_serving as serving
from r1kit.server import serving_completions, serving_tokenize
from r1kit.server.async_engine import AsyncEngine
from r1kit.server import limits as server_limits
from r1kit.server.errors import APIError, error_body, install_error_handlers
from r1kit.server.metrics import Metrics
from r1kit.server.protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                                   CompletionResponse, ErrorResponse, ModelCard, ModelList)

_ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/", "/tokenize",
              "/detokenize", "/tokenizer_info"}
_OPERATOR_PATHS = {"/metrics", "/docs", "/openapi.json"}  # behind the key too, unless public_metrics
_TOKENIZER_PATHS = {"/tokenize", "/detokenize", "/tokenizer_info"}  # vLLM's, at the root; behind the key


class _Gate:
    """ASGI middleware: API key on /v1/* (and the operator pages), and per-endpoint/status request counting."""

    def __init__(self, app, api_key: str | None, metrics: Metrics, public_metrics: bool = False):
        self.app, self.metrics, self.public_metrics = app, metrics, public_metrics
        self.api_key = api_key.encode() if api_key else None

    def _protected(self, path: str) -> bool:
        return (path.startswith("/v1") or path in _TOKENIZER_PATHS
                or (not self.public_metrics and path in _OPERATOR_PATHS))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        status = [500]

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key is not None and self._protected(path) and not self._authorized(scope):
                body = error_body(401, "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                                  code="invalid_api_key")
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send_and_count)
                return
            await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.count_request(endpoint, status[0])

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
            if name == b"x-api-key":
                return hmac.compare_digest(value.strip(), self.api_key)
        return False


def create_app(engine, served_model_name: str = "r1kit", *, api_key: str | None = None,
               reasoning: bool = True, max_thinking_tokens: int | None = None, max_queue: int = 512,
               max_model_len: int | None = None, model_aliases: tuple[str, ...] = (),
               limits: server_limits.ServerLimits | None = None, public_metrics: bool = False) -> FastAPI:
    """An app serving `engine` (an LLMEngine, or an AsyncEngine already wrapping one).

    served_model_name: the id in /v1/models and responses; requests may name it, an alias, or omit `model`.
    reasoning: False when the model does not think (--reasoning-parser none): no reasoning_content is sent.
    max_thinking_tokens: default thinking budget for requests that do not set one.
    max_model_len: context limit for the prompt-length check (default: the engine's).
    limits: body size, read timeouts and connection cap (serve with `uvicorn_config(app)` for the last two).
    public_metrics: leave /metrics, /docs and /openapi.json open when an api_key is set.
    """
    limits = limits or server_limits.ServerLimits()
    async_engine = engine if isinstance(engine, AsyncEngine) else AsyncEngine(engine, max_queue=max_queue)
    metrics = Metrics()
    ctx = serving.ServingContext(
        engine=async_engine, metrics=metrics, model_name=served_model_name,
        model_names={served_model_name, *model_aliases}, reasoning=reasoning,
        max_thinking_tokens=max_thinking_tokens,
        max_model_len=max_model_len or serving.engine_max_model_len(async_engine.engine))
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        async_engine.shutdown()

    app = FastAPI(title="r1kit", summary="OpenAI-compatible API for reasoning models", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.serving = ctx
    app.state.async_engine = async_engine
    app.state.limits = limits
    token_chars = server_limits.max_token_chars(getattr(async_engine.tokenizer, "fast", async_engine.tokenizer))

    def check_prompt_size(chars: int, param: str) -> None:
        message = server_limits.prompt_too_long(chars, ctx.max_model_len, token_chars)
        if message:
            raise APIError(400, message, param=param, code="context_length_exceeded")
    install_error_handlers(app)

    errors = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 429, 503)}

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=errors)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        """OpenAI chat completions; `stream: true` answers with server-sent events (ChatCompletionChunk)."""
        # user turns reach the prompt verbatim in every chat template: a lower bound on its length
        check_prompt_size(sum(len(m.text()) for m in req.messages if m.role == "user"), "messages")
        return await serving.chat_completion(ctx, req, request)

    @app.post("/v1/completions", response_model=CompletionResponse, responses=errors)
    async def completions(req: CompletionRequest, request: Request):
        for prompt in req.prompts():
            if isinstance(prompt, str):
                check_prompt_size(len(prompt), "prompt")
        return await serving_completions.completion(ctx, req, request)

    @app.post("/tokenize")
    async def tokenize(req: serving_tokenize.TokenizeRequest):
        """vLLM's: token ids of a text prompt, or of a chat rendered with the model's template."""
        if isinstance(req, serving_tokenize.TokenizeCompletionRequest):
            check_prompt_size(len(req.prompt), "prompt")
        else:
            check_prompt_size(sum(len(m.text()) for m in req.messages if m.role == "user"), "messages")
        return await serving_tokenize.tokenize(ctx, req)

    @app.post("/detokenize")
    async def detokenize(req: serving_tokenize.DetokenizeRequest):
        return await serving_tokenize.detokenize(ctx, req)

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return serving_tokenize.tokenizer_info(ctx)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=served_model_name, created=created, max_model_len=ctx.max_model_len)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(model_id: str):
        if model_id not in ctx.model_names:
            raise APIError(404, f"model {model_id!r} not found; this server serves {served_model_name!r}",
                           param="model", code="model_not_found")
        return ModelCard(id=served_model_name, created=created, max_model_len=ctx.max_model_len)

    @app.get("/health")
    async def health():
        if not async_engine.alive():
            raise APIError(503, "the engine thread has stopped", code="engine_dead")
        return {"status": "ok", "model": served_model_name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(async_engine.stats, async_engine.in_flight),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    page = resources.files("r1kit.server").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page.replace("{{MODEL}}", html.escape(served_model_name)))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        schema = json.dumps(app.openapi()).replace("</", "<\\/")
        return HTMLResponse(docs_page.replace("{{SCHEMA}}", schema))

    docs_page = resources.files("r1kit.server").joinpath("static/docs.html").read_text(encoding="utf-8")
    app.add_middleware(server_limits.BodyLimitMiddleware, limits=limits)
    app.add_middleware(_Gate, api_key=api_key, metrics=metrics, public_metrics=public_metrics)
    return app


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 0, **kwargs) -> uvicorn.Config:
    """The uvicorn Config that serves `app` with its connection limits (header timeout, connection cap): the h11
    protocol of limits.py. Raises this process's open-file limit so that the connection cap fits."""
    limits = getattr(getattr(app, "state", None), "limits", None) or server_limits.ServerLimits()
    cap = server_limits.raise_open_file_limit(limits.max_connections)
    if cap < limits.max_connections:
        limits.max_connections = cap
    kwargs.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, host=host, port=port, http=server_limits.protocol_class(limits), **kwargs)
