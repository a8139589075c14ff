"""Prometheus metrics for GET /metrics, written by hand in the text exposition format (no client library).

Counters and histograms are updated by the API handlers on the event loop thread; engine gauges (KV usage, prefix
cache hit rate, running/waiting) come from the engine's latest `stats()` snapshot, taken by the engine thread.
Names follow vLLM's where one exists (prefix r1kit_ instead of vllm:), so existing dashboards need only a rename.
"""
from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, name: str, help_: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_, tuple(buckets)
        self.counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.count, self.sum = 0, 0.0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.count += 1
        self.sum += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cum = 0
        for le, c in zip(self.buckets, self.counts):
            cum += c
            lines.append(f'{self.name}_bucket{{le="{le}"}} {cum}')
        lines += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum:.6f}",
                  f"{self.name}_count {self.count}"]
        return lines


class Metrics:
    def __init__(self):
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (endpoint, status) -> count
        self.finished: dict[str, int] = defaultdict(int)  # finish_reason -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.reasoning_tokens = 0
        self.aborted = 0
        self.ttft = Histogram("r1kit_time_to_first_token_seconds", "Time from request arrival to the first token.")
        self.e2e = Histogram("r1kit_e2e_request_latency_seconds", "Time from request arrival to the last token.")

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, str(status))] += 1

    def count_tokens(self, prompt: int, generation: int, reasoning: int) -> None:
        self.prompt_tokens += prompt
        self.generation_tokens += generation
        self.reasoning_tokens += reasoning

    def render(self, engine_stats: dict, in_flight: int) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]):
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            out.extend(f"{name}{labels} {_num(value)}" for labels, value in samples)

        metric("r1kit_http_requests_total", "counter", "HTTP requests by endpoint and status code.",
               [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())])
        metric("r1kit_request_success_total", "counter", "Finished completions by finish reason.",
               [(f'{{finish_reason="{r}"}}', n) for r, n in sorted(self.finished.items())])
        metric("r1kit_request_aborted_total", "counter", "Requests aborted because the client went away.",
               [("", self.aborted)])
        metric("r1kit_prompt_tokens_total", "counter", "Prompt tokens processed.", [("", self.prompt_tokens)])
        metric("r1kit_generation_tokens_total", "counter", "Tokens generated.", [("", self.generation_tokens)])
        metric("r1kit_reasoning_tokens_total", "counter", "Generated tokens inside the thinking block.",
               [("", self.reasoning_tokens)])
        out += self.ttft.render() + self.e2e.render()
        metric("r1kit_requests_in_flight", "gauge", "Requests accepted by the server and not yet finished.",
               [("", in_flight)])
        gauges = [("r1kit_num_requests_running", "running", "Sequences in the running batch."),
                  ("r1kit_num_requests_waiting", "waiting", "Sequences waiting to be scheduled."),
                  ("r1kit_kv_cache_usage_perc", "kv_usage", "Fraction of KV cache blocks in use (0..1)."),
                  ("r1kit_kv_cache_blocks_used", "kv_blocks_used", "KV cache blocks in use."),
                  ("r1kit_kv_cache_blocks_total", "kv_blocks_total", "KV cache blocks in the pool."),
                  ("r1kit_prefix_cache_hit_rate", "prefix_cache_hit_rate",
                   "Fraction of prompt tokens served from the prefix cache (0..1).")]
        for name, key, help_ in gauges:
            if engine_stats.get(key) is not None:
                metric(name, "gauge", help_, [("", engine_stats[key])])
        return "\n".join(out) + "\n"


def _num(x) -> str:
    return str(int(x)) if isinstance(x, int) or (isinstance(x, float) and x.is_integer()) else f"{x:.6g}"
