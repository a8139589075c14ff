"""Engine statistics for logs, the tqdm bar and the server's /metrics.

`EngineStats.record(step)` keeps a short window of (time, prompt tokens, generated tokens) so rates reflect the
recent load; `snapshot()` adds the cache and queue gauges. Keys match what r1kit/server/metrics.py reads.
"""
from __future__ import annotations

import time
from collections import deque


class EngineStats:
    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.events: deque[tuple[float, int, int]] = deque()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_steps = 0

    def record(self, prompt_tokens: int, generation_tokens: int) -> None:
        now = time.perf_counter()
        self.events.append((now, prompt_tokens, generation_tokens))
        self.prompt_tokens_total += prompt_tokens
        self.generation_tokens_total += generation_tokens
        self.num_steps += 1
        while self.events and now - self.events[0][0] > self.window_s:
            self.events.popleft()

    def rates(self) -> tuple[float, float]:
        """(prompt tokens/s, generation tokens/s) over the window."""
        if len(self.events) < 2:
            return 0.0, 0.0
        span = max(self.events[-1][0] - self.events[0][0], 1e-9)
        prompt = sum(e[1] for e in list(self.events)[1:])
        gen = sum(e[2] for e in list(self.events)[1:])
        return prompt / span, gen / span

    def snapshot(self, scheduler, block_manager, bytes_per_token: int) -> dict:
        used = block_manager.num_blocks - block_manager.num_free_blocks
        prompt_rate, gen_rate = self.rates()
        return {
            "running": len(scheduler.running),
            "waiting": len(scheduler.waiting),
            "kv_blocks_used": used,
            "kv_blocks_free": block_manager.num_free_blocks,
            "kv_blocks_total": block_manager.num_blocks,
            "kv_usage": used / block_manager.num_blocks,
            "kv_block_size": block_manager.block_size,
            "kv_bytes_per_token": bytes_per_token,
            "prefix_cache_hit_rate": block_manager.hit_rate(),
            "prefix_cache_hits": block_manager.prefix_hits,
            "prefix_cache_queries": block_manager.prefix_queries,
            "num_preemptions": scheduler.num_preemptions,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "prompt_tokens_per_s": prompt_rate,
            "generation_tokens_per_s": gen_rate,
        }
