"""One sequence being generated: its tokens, where its KV lives, and how far the model has computed it.

A request with n samples becomes n Sequences (index 0..n-1). The token list is prompt + output; the scheduler
computes `token_ids[num_computed_tokens:]` in the next step (one token when decoding, a chunk during prefill,
or the last sampled token plus the tokens forced after the thinking budget ran out -- the forced tokens are
appended to `token_ids` at once, so they need no queue and cost one forward), and the block manager maps
positions to KV blocks.
"""
from __future__ import annotations

import enum
import itertools

import torch

from r1kit.engine.sampling_params import SamplingParams

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, index: int, prompt_token_ids: list[int], params: SamplingParams,
                 generator: torch.Generator | None = None):
        self.seq_id = next(_ids)  # also the arrival order: larger = newer
        self.request_id = request_id
        self.index = index
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose KV is in the cache
        self.num_cached_tokens = 0  # of those, how many came from prefix-cache hits at the last admission
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.generator = generator
        self.logprobs: list = []  # one entry per output token (None for forced tokens)
        # params.prompt_logprobs: one entry per prompt token, filled during the prefill (sample 0 only; the first
        # token has no logprob: None)
        self.prompt_logprobs: list | None = [None] if params.prompt_logprobs is not None and index == 0 else None
        self.thinking_done = False  # not thinking, or the thinking-end token was produced or forced
        self.grammar = None  # params.structured_outputs: its llguidance matcher (constrains once thinking_done)
        self.num_thinking_tokens = 0  # sampled tokens before thinking ended

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Its prefill still has prompt logprobs to produce (so it cannot skip prompt blocks via the prefix cache)."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    @property
    def constrained(self) -> bool:
        """Its next token must follow its grammar (structured outputs apply to the answer only)."""
        return self.grammar is not None and self.thinking_done

    @property
    def samples(self) -> bool:
        """Whether it samples a token once its tokens are all computed (max_tokens=0 only computes the prompt)."""
        return self.params.max_tokens != 0

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    def block_tokens(self, i: int, block_size: int) -> list[int]:
        return self.token_ids[i * block_size:(i + 1) * block_size]
