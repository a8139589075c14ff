"""Rollouts for GRPO: G sampled completions per prompt from r1kit's engine running the LIVE policy module.

The engine is built once over the very nn.Module being trained (no weight copy, no sync): after an optimizer step
the next rollout already sees the new weights. Between phases the engine's KV cache is released so that training
can use that memory, and re-allocated (with an empty prefix cache, since cached KV of old weights is stale) before
the next rollout. Every group gets its own sampling seed, derived by the trainer from (seed, the prompt's global
position in the prompt stream), and completion i of a group samples with seed + i; a group's completions therefore
do not depend on which rank generates it or on what else is in the batch, so rollouts are reproducible, a resumed
run samples exactly what the uninterrupted run would, and N processes sample what 1 process would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sample:
    """One completion of one prompt."""
    group: int                         # index of its prompt within the step
    example: dict[str, Any]            # the task example (answer, tests, ...) the rewards check against
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] | None       # rollout-time logprob of each completion token (temperature-scaled)
    text: str
    truncated: bool                    # stopped by max_completion_length, not by EOS/stop
    rewards: dict[str, float] = field(default_factory=dict)
    reward: float = 0.0


class EngineRollout:
    """Thin adapter over `r1kit.engine.llm.LLM` for GRPO's needs."""

    def __init__(self, policy: torch.nn.Module, tokenizer, max_model_len: int, max_num_seqs: int,
                 kv_cache_memory_gb: float = 0.0):
        from r1kit.engine.llm import LLM

        self.policy = policy
        # By default the KV cache holds exactly one step's rollouts at full length (it is re-allocated, i.e.
        # re-zeroed, before every rollout, so a large default would cost time for nothing).
        block_size = 16
        blocks = None if kv_cache_memory_gb > 0 else max_num_seqs * (-(-max_model_len // block_size) + 1) + 8
        self.llm = LLM(model=policy, tokenizer=tokenizer, max_model_len=max_model_len,
                       max_num_seqs=max(max_num_seqs, 1), block_size=block_size, num_kv_blocks=blocks,
                       kv_cache_memory=int(kv_cache_memory_gb * (1 << 30)) if kv_cache_memory_gb > 0 else None)
        self.llm.free_kv_cache()                 # allocated on demand by generate()
        self.tokenizer = tokenizer

    def generate(self, prompts: list[list[int]], examples: list[dict[str, Any]], group_ids: list[int],
                 num_generations: int, seeds: list[int], max_tokens: int, temperature: float,
                 top_p: float) -> list[list[Sample]]:
        from r1kit.engine.sampling_params import SamplingParams

        params = [SamplingParams(n=num_generations, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                 logprobs=0, seed=s, skip_special_tokens=False) for s in seeds]
        was_training = self.policy.training
        self.policy.eval()                       # no MoE load counting / dropout during rollouts
        try:
            with self.llm.frozen_weights():  # the weights hold still for the rollout: the engine's fast path
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
        finally:
            self.policy.train(was_training)
        groups = []
        for g, ex, p_ids, out in zip(group_ids, examples, prompts, outputs):
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                lps = c.token_logprobs
                samples.append(Sample(group=g, example=ex, prompt_ids=list(p_ids), completion_ids=list(c.token_ids),
                                      logprobs=None if lps is None or any(x is None for x in lps) else list(lps),
                                      text=c.text, truncated=c.finish_reason == "length"))
            groups.append(samples)
        return groups

    def allocate_kv_cache(self) -> None:
        """Before a rollout: KV memory back, with an empty prefix cache (its KV came from older weights)."""
        self.llm.allocate_kv_cache()
        self.llm.reset_prefix_cache()

    def free_kv_cache(self) -> None:
        """Before the training phase: free the KV cache so training can use that memory."""
        self.llm.free_kv_cache()
