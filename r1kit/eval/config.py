"""The options of `r1kit eval` and `r1kit distill`: dataclasses filled by `r1kit.config.build_config`.

Each field's `help` metadata is what `--help` prints, so the command line and the Python API describe one set of
options. Generation options (what is sampled, from which model, how) are shared by both commands; an evaluation
directory remembers them and refuses to resume with different ones (see `GENERATION_KEYS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1kit.config import option
from r1kit.device import DTYPE_NAMES


@dataclass
class GenerationConfig:
    """Which model answers, on which tasks, sampled how."""
    model: str | None = option(None, "local model: checkpoint directory, hub id or builtin name "
                                     "(e.g. random-deepseek_v3-tiny); runs r1kit's engine in this process")
    base_url: str | None = option(None, "OpenAI-compatible server instead of a local model, e.g. "
                                        "http://127.0.0.1:8000/v1 (r1kit serve, vLLM, SGLang, a hosted API)")
    api_key: str | None = option(None, "API key for --base-url (default: $OPENAI_API_KEY, else none)")
    served_model: str | None = option(None, "model name to request from --base-url (default: the first of GET /models)")
    tasks: list[str] = option([], "task spec, repeatable: arithmetic?digits=3&n=100, countdown?numbers=4, "
                                  "reasoning_gym:NAME, humaneval, path/to/data.jsonl (see docs/rewards_and_tasks.md)")
    n: int = option(8, "samples per problem (pass@1 is their mean accuracy; pass@k and maj@k use all of them)")
    temperature: float = option(0.6, "sampling temperature (0 = greedy); R1's protocol uses 0.6")
    top_p: float = option(0.95, "nucleus sampling mass in (0, 1]; R1's protocol uses 0.95")
    max_tokens: int | None = option(None, "tokens to generate per sample, thinking included "
                                          "(default: up to the model's context length)")
    max_thinking_tokens: int | None = option(None, "thinking budget: after this many reasoning tokens the model is "
                                                   "told to answer (r1kit engines and servers; default: none)")
    thinking: bool = option(True, "let the model think first; --no-thinking pre-fills an empty thinking block so it "
                                  "answers at once (chat tasks)")
    stop: list[str] = option([], "stop string for the answer, repeatable (\\n and \\t are understood); as lm-eval's "
                                 "`until`")
    concurrency: int | None = option(None, "samples generated at once: requests in flight for --base-url (default "
                                           "16), the engine's running batch for --model (default 64)")
    limit: int = option(0, "use only the first N problems of each task (0 = all)")
    seed: int = option(0, "base seed; sample j of a problem uses a seed derived from (seed, task, problem) plus j, so "
                          "any sample can be regenerated alone")
    max_retries: int = option(5, "retries of a failed or timed-out request to --base-url (exponential backoff)")
    request_timeout: float = option(600.0, "seconds before a request to --base-url times out (then it is retried)")
    dtype: str = option("auto", f"local model weights and compute dtype: {', '.join(DTYPE_NAMES)}")
    device: str = option("auto", "local model device: cpu, cuda, cuda:N or auto")
    max_model_len: int | None = option(None, "local model context limit in tokens (default: the model's)")

    def __post_init__(self):
        if (self.model is None) == (self.base_url is None):
            raise ValueError("give exactly one of a local model (--model, --teacher) or a server "
                             "(--base-url, --teacher-url)")
        self.tasks = list(self.tasks)
        if not self.tasks:
            raise ValueError("give at least one --task, e.g. --task 'arithmetic?digits=3&n=50'")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"a task is given twice: {self.tasks}")
        _check(self.n >= 1, "n must be >= 1")
        _check(self.temperature >= 0, "temperature must be >= 0")
        _check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1")
        _check(self.max_thinking_tokens is None or self.max_thinking_tokens >= 0, "max_thinking_tokens must be >= 0")
        _check(self.concurrency is None or self.concurrency >= 1, "concurrency must be >= 1")
        _check(self.limit >= 0, "limit must be >= 0")
        _check(self.max_retries >= 0, "max_retries must be >= 0")
        _check(self.request_timeout > 0, "request_timeout must be > 0")
        _check(str(self.dtype).lower() in DTYPE_NAMES, f"dtype must be one of {', '.join(DTYPE_NAMES)}")
        self.stop = [s for s in self.stop]
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty")


# What a sample depends on: resuming a run directory with any of these changed would mix incomparable samples.
GENERATION_KEYS = ("model", "base_url", "served_model", "tasks", "temperature", "top_p", "max_tokens",
                   "max_thinking_tokens", "thinking", "stop", "seed")


@dataclass
class EvalConfig(GenerationConfig):
    out: str | None = option(None, "run directory: results.json, samples.jsonl, report.md, plots (default: "
                                   "runs/eval/<model name>); an interrupted run resumes from it")


@dataclass
class DistillConfig(GenerationConfig):
    n: int = option(4, "samples per prompt from the teacher (--samples-per-prompt)")
    keep: Literal["all", "shortest", "first"] = option("all", "which verified samples of a prompt become traces: all, "
                                                              "the shortest (fewest generated tokens) or the first")
    out: str = option("traces.jsonl", "output JSONL of {\"messages\": [...]} (append-only, resumable); its samples "
                                      "and statistics go next to it as OUT.samples.jsonl and OUT.stats.json")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
