"""vLLM's tokenizer endpoints, so clients can count and build prompts with the served model's own tokenizer.

    POST /tokenize        {"prompt": str} or {"messages": [...]}  -> {"count", "max_model_len", "tokens", "token_strs"}
    POST /detokenize      {"tokens": [int, ...]}                   -> {"prompt": str}
    GET  /tokenizer_info                                          -> special tokens, chat template, sizes

lm-evaluation-harness's `local-completions` looks for /tokenizer_info and /tokenize (its "remote" tokenizer) and
then sends token-id prompts, so it needs no copy of the tokenizer. `add_special_tokens` defaults to false here
because r1kit's /v1/completions encodes text prompts without them (the chat template writes its own); the count
is then exactly what a completions request with the same text costs.
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional, Union

from pydantic import Field

from r1kit.server.errors import APIError
from r1kit.server.openai_serving import ServingContext, check_model, render_chat_prompt
from r1kit.server.protocol import ChatCompletionRequest, Text, _Request


class TokenizeCompletionRequest(_Request):
    model: Optional[str] = None
    prompt: Text
    add_special_tokens: bool = False
    return_token_strs: bool = False


class TokenizeChatRequest(ChatCompletionRequest):
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: Optional[str] = None
    tokens: list[int] = Field(max_length=1 << 20)


TokenizeRequest = Union[TokenizeChatRequest, TokenizeCompletionRequest]


def _tokenize(ctx: ServingContext, req) -> list[int]:
    tok = ctx.tokenizer
    if isinstance(req, TokenizeCompletionRequest):
        return tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    return render_chat_prompt(ctx, req, req.thinking_enabled(), req.add_generation_prompt)


async def tokenize(ctx: ServingContext, req) -> dict:
    check_model(ctx, req.model)
    ids = await asyncio.to_thread(_tokenize, ctx, req)
    strs = [ctx.tokenizer.id_to_token(i) for i in ids] if req.return_token_strs else None
    return {"count": len(ids), "max_model_len": ctx.max_model_len, "tokens": ids, "token_strs": strs}


async def detokenize(ctx: ServingContext, req: DetokenizeRequest) -> dict:
    check_model(ctx, req.model)
    vocab = ctx.tokenizer.vocab_size
    bad = next((t for t in req.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is out of range: ids must be in [0, {vocab})", param="tokens")
    return {"prompt": await asyncio.to_thread(ctx.tokenizer.decode, req.tokens)}


def tokenizer_info(ctx: ServingContext) -> dict[str, Any]:
    tok = ctx.tokenizer
    return {"tokenizer_class": "PreTrainedTokenizerFast", "vocab_size": tok.vocab_size,
            "model_max_length": ctx.max_model_len, "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "pad_token": tok.pad_token, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "think_start_token": tok.think_start_token, "think_end_token": tok.think_end_token,
            "chat_template": tok.chat_template}
