"""What the engine returns: one RequestOutput per request, with one CompletionOutput per sample (n).

Every field is cumulative and only grows while the request runs, so a streaming client can send plain diffs of
`text`, `reasoning` and `content` (None counts as "") between two outputs of the same request.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int  # sample number within the request (0..n-1)
    text: str = ""  # the decoded completion (stop strings cut off unless include_stop_str_in_output)
    reasoning: str = ""  # the chain of thought, as split by the reasoning parser
    # the answer after the reasoning; None while the output is still thinking, and at the end when the thinking
    # never closed (vLLM's and DeepSeek's `content: null`), "" when it closed and nothing followed
    content: str | None = ""
    token_ids: list[int] = field(default_factory=list)
    # per generated token: {token_id: logprob} holding the chosen token first, then the params.logprobs most
    # likely ones; None for tokens the engine forced (thinking-budget wrap-up). None when logprobs were not asked.
    logprobs: list[dict[int, float] | None] | None = None
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    num_reasoning_tokens: int = 0  # sampled tokens before the thinking ended (the thinking budget counts these)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def token_logprobs(self) -> list[float | None] | None:
        """The chosen token's logprob per token (None for forced tokens)."""
        if self.logprobs is None:
            return None
        return [None if lp is None else lp[t] for t, lp in zip(self.token_ids, self.logprobs)]


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    # SamplingParams.prompt_logprobs: per prompt token {token_id: logprob} (its own token first, then the top N,
    # from the model's raw distribution); the first token has none (None). Filled as the prefill goes.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: dict = field(default_factory=dict)  # arrival_time, first_token_time, finished_time (perf_counter)
