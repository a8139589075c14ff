"""/v1/completions: plain prompts, batches of them, echo with prompt logprobs (scoring), best_of.

- `prompt` is a text, a list of token ids, or a batch: a list of texts or of token-id lists. Each prompt is one
  engine request with n samples; the choices come back in vLLM's order, `index = prompt_number * n + sample`.
- `echo: true` puts the prompt's text in front of each choice's text and, with `logprobs: N`, the prompt tokens'
  logprobs in front of the generated ones (the first prompt token's is null, as there is nothing before it). The
  engine computes them in the prefill (SamplingParams.prompt_logprobs), not in a second pass. `max_tokens: 0` with
  echo scores the prompt without generating: this is how lm-evaluation-harness's loglikelihood tasks ask.
- `logprobs: N` lists, per token, the N most likely tokens plus the token itself (as vLLM does; so N = 0 still
  names the chosen token).
- `best_of: B` (>= n) generates B samples per prompt and returns the n with the highest sum of token logprobs
  (of the sampled, temperature-scaled distribution); it cannot be streamed.
- `suffix` (fill-in-the-middle) is refused with a 400: no r1kit model is trained for it.
"""
from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from r1kit.server.async_engine import RequestAborted
from r1kit.server.errors import APIError
from r1kit.server.openai_serving import (ServingContext, check_model, chunk_writer, logprob_items, record,
                                         sampling_params, stream_error, structured_outputs, submit, token_ids_field,
                                         token_str)
from r1kit.server.protocol import CompletionRequest, new_id, now


def _prompt_ids(ctx: ServingContext, req: CompletionRequest) -> list[list[int]]:
    vocab = ctx.tokenizer.vocab_size
    batch = []
    for i, prompt in enumerate(req.prompts()):
        param = "prompt" if not isinstance(req.prompt, list) or isinstance(req.prompt[0], int) else f"prompt.{i}"
        if isinstance(prompt, str):
            ids = ctx.tokenizer.encode(prompt)
            if not ids:
                raise APIError(400, "prompt is empty", param=param)
        else:
            ids = list(prompt)
            bad = next((t for t in ids if t >= vocab), None)
            if bad is not None:
                raise APIError(400, f"prompt token id {bad} is out of range: ids must be in [0, {vocab})",
                               param=param)
        batch.append(ids)
    return batch


def _check_fields(req: CompletionRequest) -> int:
    """Refuse what cannot be honoured; return best_of (the samples generated per prompt)."""
    if req.suffix is not None:
        raise APIError(400, "suffix is not supported: r1kit's models are not trained for fill-in-the-middle",
                       param="suffix")
    best_of = req.best_of if req.best_of is not None else req.n
    if best_of < req.n:
        raise APIError(400, f"best_of ({best_of}) must be >= n ({req.n})", param="best_of")
    if best_of > req.n and req.stream:
        raise APIError(400, "best_of > n cannot be streamed (the best samples are known only at the end)",
                       param="best_of")
    if req.max_tokens == 0 and req.stream:
        raise APIError(400, "max_tokens 0 (scoring only) is not available with stream: true", param="max_tokens")
    return best_of


async def completion(ctx: ServingContext, req: CompletionRequest, request: Request) -> Response:
    check_model(ctx, req.model)
    best_of = _check_fields(req)
    batch = await asyncio.to_thread(_prompt_ids, ctx, req)  # off the event loop
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    ranked = best_of > req.n
    want_prompt_lp = req.echo and req.logprobs is not None
    params = []
    for ids in batch:
        p = sampling_params(ctx, req, len(ids), max_tokens, req.logprobs if not ranked else req.logprobs or 0,
                            thinking=False)
        params.append(p.clone(n=best_of, prompt_logprobs=req.logprobs if want_prompt_lp else None))
    rid, created = new_id("cmpl"), now()
    streams = []
    try:
        for i, (ids, p) in enumerate(zip(batch, params)):
            streams.append(await submit(ctx, f"{rid}-{i}", ids, p, structured_outputs(req)[1]))
    except BaseException:
        for s in streams:
            s.close()
        raise
    if req.stream:
        return StreamingResponse(_events(ctx, req, streams, batch, rid, created),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    outs = [None] * len(streams)
    try:
        outs = await _collect_all(streams, request)
    except RequestAborted:
        return Response(status_code=499)  # the client is gone; nobody reads this
    finally:
        for s, out, ids in zip(streams, outs, batch):
            record(ctx, s, out, len(ids), False)
    choices = []
    for i, (out, ids) in enumerate(zip(outs, batch)):
        echo = ctx.tokenizer.decode(ids) if req.echo else ""
        for j, c in enumerate(_best(out.outputs, req.n) if ranked else out.outputs):
            lp = None
            if req.logprobs is not None:
                lp, _ = _logprobs(ctx, _prompt_items(ids, out.prompt_logprobs) if req.echo else [], c, 0,
                                  req.logprobs, 0)
            choices.append({"index": i * req.n + (j if ranked else c.index), "text": echo + c.text, "logprobs": lp,
                            "finish_reason": c.finish_reason, **token_ids_field(req, c)})
    prompt_tokens = sum(len(ids) for ids in batch)
    completion_tokens = sum(len(c.token_ids) for out in outs for c in out.outputs)
    body = {"id": rid, "object": "text_completion", "created": created, "model": ctx.model_name,
            "choices": sorted(choices, key=lambda ch: ch["index"]),
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "completion_tokens_details": {"reasoning_tokens": 0}}}
    if req.return_token_ids:
        body["prompt_token_ids"] = batch[0] if len(batch) == 1 else batch
    return JSONResponse(body)


def _best(outputs, n: int):
    """The n samples with the highest cumulative logprob (best_of), best first."""
    return sorted(outputs, key=lambda c: -sum(lp for lp in c.token_logprobs if lp is not None))[:n]


def _prompt_items(ids: list[int], prompt_logprobs) -> list:
    """logprob_items-shaped entries for the prompt tokens: (id, None, None) for the first one."""
    items = []
    for t, entry in zip(ids, prompt_logprobs or [None] * len(ids)):
        if entry is None:
            items.append((t, None, None))
        else:
            items.append((t, float(entry[t]), sorted(entry.items(), key=lambda kv: -kv[1])))
    return items


def _logprobs(ctx: ServingContext, prompt_items: list, c, start: int, top_n: int, offset: int) -> tuple[dict, int]:
    """OpenAI's completions logprobs for the prompt items (echo) then the output tokens from `start`, with text
    offsets from `offset`; and the offset after them. Each top_logprobs entry holds the top_n most likely tokens
    and the token itself."""
    tok = ctx.tokenizer
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, lp, top in prompt_items + (logprob_items(c, start) if c is not None else []):
        s = token_str(tok, token_id)
        out["tokens"].append(s)
        out["token_logprobs"].append(lp)
        if top is None:
            out["top_logprobs"].append(None)
        else:
            entry = {token_str(tok, i): v for i, v in top[:top_n]}
            entry.setdefault(s, lp)
            out["top_logprobs"].append(entry)
        out["text_offset"].append(offset)
        offset += len(s)
    return out, offset


async def _collect_all(streams, request: Request) -> list:
    """The final output of every stream; if the client goes away first, abort them all (frees their KV blocks)."""

    async def watch_disconnect():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for s in streams:
            s.close()

    async def last(stream):
        out = None
        async for out in stream:
            pass
        return out

    watcher = asyncio.create_task(watch_disconnect())
    try:
        return list(await asyncio.gather(*(last(s) for s in streams)))
    finally:
        watcher.cancel()
        for s in streams:
            s.close()


async def _merged(streams):
    """(prompt number, RequestOutput) from all streams, as they come; an error or abort is raised."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, stream):
        try:
            async for out in stream:
                await queue.put((i, out))
        except BaseException as e:
            await queue.put((i, e))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            i, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


async def _events(ctx: ServingContext, req: CompletionRequest, streams, batch, rid: str, created: int):
    chunk, include_usage = chunk_writer(ctx, req, rid, created, "text_completion")
    n = req.n
    sent = [[0, 0, 0] for _ in range(len(batch) * n)]  # per choice: text chars, tokens with logprobs, text offset
    echoed = [False] * (len(batch) * n)
    done = [False] * (len(batch) * n)
    finals = [None] * len(batch)
    echo = [ctx.tokenizer.decode(ids) if req.echo else "" for ids in batch]
    try:
        async for i, out in _merged(streams):
            finals[i] = out
            for c in out.outputs:
                k = i * n + c.index
                if done[k]:
                    continue
                s = sent[k]
                text, logprobs, prompt_items = "", None, []
                if req.echo and not echoed[k]:
                    if req.logprobs is not None and len(out.prompt_logprobs or []) < len(batch[i]):
                        continue  # the echo goes out with the prompt's logprobs, once the prefill has them
                    echoed[k], text = True, echo[i]
                    if req.logprobs is not None:
                        prompt_items = _prompt_items(batch[i], out.prompt_logprobs)
                if len(c.text) > s[0]:
                    text, s[0] = text + c.text[s[0]:], len(c.text)
                if req.logprobs is not None and (prompt_items or len(c.token_ids) > s[1]):
                    logprobs, s[2] = _logprobs(ctx, prompt_items, c, s[1], req.logprobs, s[2])
                    s[1] = len(c.token_ids)
                if text or logprobs or c.finish_reason is not None:
                    done[k] = c.finish_reason is not None
                    yield chunk([{"index": k, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason}])
        if include_usage:
            prompt_tokens = sum(len(ids) for ids in batch)
            completion_tokens = sum(len(c.token_ids) for out in finals if out for c in out.outputs)
            yield chunk([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens,
                                   "completion_tokens_details": {"reasoning_tokens": 0}})
        yield "data: [DONE]\n\n"
    except RequestAborted:
        return
    except Exception as e:  # the engine failed mid-stream: tell the client in-band, the status line is gone
        yield stream_error(e)
    finally:
        for s, out, ids in zip(streams, finals, batch):
            s.close()
            record(ctx, s, out, len(ids), False)
