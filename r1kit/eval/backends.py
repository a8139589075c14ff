"""Where samples come from: r1kit's engine in this process, or any OpenAI-compatible server.

Both take `Job`s (one prompt and the sample indices still to generate) and report one `Generation` per sample as
it finishes. Sample j of a job is always sampled with seed `job.seed + j`: the engine seeds sample i of an n > 1
request with seed + i, so one request for samples 0..n-1 equals n single requests, and a resumed run regenerates
exactly the samples an uninterrupted one would have.

Chat samples come back as the chat API returns them (reasoning_content, content), also from the local engine,
which builds them the way `r1kit serve` does; so both backends hand the scorer the same text.

- LocalBackend submits every request to the engine at once and steps it until all are done (continuous batching:
  the scheduler keeps its running batch full as samples finish). Samples of one prompt go in one request, so they
  share the prompt's KV blocks.
- HTTPBackend keeps `concurrency` single-sample requests in flight on a thread pool, through the official `openai`
  client, which retries connection errors, timeouts, 408/409/429 and 5xx with exponential backoff (and honours
  Retry-After). Other 4xx answers stop the run with the server's message: every request would get the same one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from r1kit.errors import UserError
from r1kit.eval.config import GenerationConfig


@dataclass
class Job:
    key: Any                    # the caller's handle (a problem)
    label: str                  # for messages: "task T, problem i"
    chat: bool                  # prompt is a list of chat messages (else raw text)
    prompt: Any
    samples: list[int]          # sample indices to generate
    seed: int                   # sample j samples with seed + j


@dataclass
class Generation:
    sample: int
    text: str | None            # raw-text prompts: the completion (/v1/completions' text); else None
    reasoning: str | None       # chat: reasoning_content (None: the backend did not split the reasoning off)
    content: str | None         # chat: content (None or "": no answer, e.g. the thinking never ended)
    completion_tokens: int
    reasoning_tokens: int | None   # None: the server did not report it
    finish_reason: str | None
    start: float
    end: float


class IncompleteRun(RuntimeError):
    """Some requests failed even after retries; what finished is saved and a rerun resumes from there."""


OnResult = Callable[[Job, Generation], None]
_request_ids = itertools.count()


def _runs(indices: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]: contiguous sample indices go in one engine request."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class LocalBackend:
    def __init__(self, cfg: GenerationConfig, llm=None, clock: Callable[[], float] = time.perf_counter):
        from r1kit.engine.llm import LLM

        self.cfg, self.clock = cfg, clock
        if llm is None:
            # the engine's own seed is left alone: every request carries its seed, and for builtin random models
            # the seed picks the weights
            llm = LLM(cfg.model, dtype=cfg.dtype, device=cfg.device, max_num_seqs=cfg.concurrency or 64,
                      max_model_len=cfg.max_model_len)
        self.llm = llm
        self.engine, self.tokenizer = llm.engine, llm.tokenizer
        self.reasoning = self.engine.reasoning_parser != "none"

    def describe(self) -> dict:
        config = self.llm.model.config
        text = json.dumps(config.to_hf_dict() if hasattr(config, "to_hf_dict") else vars(config), sort_keys=True,
                          default=str)
        name = self.cfg.model if isinstance(self.cfg.model, str) else type(self.llm.model).__name__
        return {"backend": "local", "name": name, "path": str(Path(name).resolve()) if os.path.exists(name) else None,
                "config_hash": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
                "model_type": getattr(config, "model_type", None)}

    def prompt_ids(self, job: Job) -> list[int]:
        """The tokens `r1kit serve` would build for the same request (chat template; --no-thinking pre-fills an
        empty thinking block); raw-text prompts are encoded after BOS, as the trainers do."""
        from r1kit.server.openai_serving import close_thinking
        from r1kit.train.task_data import prompt_ids

        if not job.chat:
            return prompt_ids(self.tokenizer, {"prompt": job.prompt}, 1 << 30)
        text = self.tokenizer.apply_chat_template(job.prompt, add_generation_prompt=True, tokenize=False)
        if self.reasoning and not self.cfg.thinking:
            text = close_thinking(text)
        return self.tokenizer.encode(text)

    def _params(self, n: int, seed: int, chat: bool):
        from r1kit.engine.sampling_params import SamplingParams

        cfg = self.cfg
        return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, max_tokens=cfg.max_tokens,
                              stop=list(cfg.stop) or None,
                              max_thinking_tokens=cfg.max_thinking_tokens if (cfg.thinking and chat) else None)

    def _reasoning_tokens(self, c, chat: bool) -> int:
        from r1kit.server.openai_serving import reasoning_tokens

        ctx = SimpleNamespace(reasoning=self.reasoning, tokenizer=self.tokenizer)  # the server's own count
        return reasoning_tokens(ctx, c, self.cfg.thinking or not chat)

    def _fields(self, c, chat: bool) -> tuple[str | None, str | None, str | None]:
        """(text, reasoning, content) as `r1kit serve` would return them for this request (see openai_serving)."""
        if not chat:
            return c.text, None, None
        if self.reasoning and self.cfg.thinking:
            return None, c.reasoning, c.content
        return None, None, c.text

    def run(self, jobs: list[Job], on_result: OnResult) -> None:
        engine = self.engine
        pending: dict[str, tuple[Job, list[int], float, set[int]]] = {}
        try:
            for job in jobs:
                ids = self.prompt_ids(job)
                for run in _runs(job.samples):
                    rid = f"eval-{next(_request_ids)}"
                    try:
                        engine.add_request(rid, ids, self._params(len(run), job.seed + run[0], job.chat))
                    except ValueError as e:
                        raise UserError(f"{job.label}: {e}") from None
                    pending[rid] = (job, run, self.clock(), set())
            while pending:
                outs = engine.step()
                if not outs and not engine.scheduler.has_unfinished():
                    raise RuntimeError("the engine stopped with requests unfinished (a bug; please report)")
                for out in outs:
                    if out.request_id not in pending:
                        continue
                    job, run, start, done = pending[out.request_id]
                    for c in out.outputs:
                        if c.finish_reason is None or c.index in done:
                            continue
                        done.add(c.index)
                        text, reasoning, content = self._fields(c, job.chat)
                        on_result(job, Generation(
                            sample=run[c.index], text=text, reasoning=reasoning, content=content,
                            completion_tokens=len(c.token_ids), reasoning_tokens=self._reasoning_tokens(c, job.chat),
                            finish_reason=c.finish_reason, start=start, end=self.clock()))
                    if out.finished:
                        del pending[out.request_id]
        finally:
            for rid in pending:
                engine.abort_request(rid)


class HTTPBackend:
    def __init__(self, cfg: GenerationConfig, clock: Callable[[], float] = time.perf_counter):
        import openai

        self.cfg, self.clock = cfg, clock
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key or os.environ.get("OPENAI_API_KEY")
                                    or "none", max_retries=cfg.max_retries, timeout=cfg.request_timeout)
        self.model = cfg.served_model or self._first_model()

    def _first_model(self) -> str:
        import openai

        try:
            models = self.client.models.list().data
        except openai.APIError as e:
            raise UserError(f"cannot list the models of {self.cfg.base_url} ({type(e).__name__}: {e}); is the "
                            "server up, and does --base-url end in /v1? Or name the model with --served-model") \
                from None
        if not models:
            raise UserError(f"{self.cfg.base_url} serves no models")
        return models[0].id

    def describe(self) -> dict:
        return {"backend": "http", "name": self.model, "base_url": self.cfg.base_url, "config_hash": None}

    def _request(self, job: Job, sample: int) -> Generation:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"model": self.model, "n": 1, "temperature": cfg.temperature, "top_p": cfg.top_p,
                                  "seed": job.seed + sample}
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        if cfg.stop:
            kwargs["stop"] = list(cfg.stop)
        extra: dict[str, Any] = {}
        start = self.clock()
        if job.chat:
            if not cfg.thinking:
                extra["chat_template_kwargs"] = {"thinking": False, "enable_thinking": False}
            elif cfg.max_thinking_tokens is not None:
                extra["max_thinking_tokens"] = cfg.max_thinking_tokens
            r = self.client.chat.completions.create(messages=job.prompt, extra_body=extra or None, **kwargs)
            msg = r.choices[0].message
            extras = msg.model_extra or {}
            reasoning = extras.get("reasoning_content", extras.get("reasoning"))
            text, content = None, msg.content
        else:
            r = self.client.completions.create(prompt=job.prompt, **kwargs)
            text, reasoning, content = r.choices[0].text, None, None
        usage = r.usage
        details = getattr(usage, "completion_tokens_details", None) if usage is not None else None
        return Generation(sample=sample, text=text, reasoning=reasoning, content=content,
                          completion_tokens=int(usage.completion_tokens) if usage is not None else 0,
                          reasoning_tokens=getattr(details, "reasoning_tokens", None) if job.chat and details else
                          (0 if not job.chat else None),
                          finish_reason=r.choices[0].finish_reason, start=start, end=self.clock())

    def run(self, jobs: list[Job], on_result: OnResult) -> None:
        import openai

        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency or 16, thread_name_prefix="r1kit-eval") as pool:
            futures = {pool.submit(self._request, job, j): job for job in jobs for j in job.samples}
            try:
                remaining = set(futures)
                while remaining:
                    done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for f in done:
                        job = futures[f]
                        try:
                            gen = f.result()
                        except openai.APIStatusError as e:
                            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                                failures.append(f"{job.label}: HTTP {e.status_code}: {e.message}")
                                continue
                            raise UserError(f"{self.cfg.base_url} rejected a request ({job.label}): HTTP "
                                            f"{e.status_code}: {e.message}") from None
                        except (openai.APIConnectionError, openai.APITimeoutError) as e:
                            failures.append(f"{job.label}: {type(e).__name__}: {e}")
                            continue
                        on_result(job, gen)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        if failures:
            raise IncompleteRun(f"{len(failures)} request(s) failed after {self.cfg.max_retries} retries (last: "
                                f"{failures[-1]}); the finished samples are saved: run the same command again to "
                                "generate the rest")
