"""SamplingParams: how one request is decoded, with vLLM's field names so vLLM users need not relearn anything.

The engine reads these per request; `r1kit.engine.sampler` applies the per-token ones (temperature, top_k, top_p,
min_p, penalties, min_tokens, logprobs, seed) to a batch of logits; the engine core applies the per-sequence ones
(max_tokens, stop, stop_token_ids, ignore_eos, max_thinking_tokens and its wrap-up text).

Stop strings end the answer, not the thinking: they are matched from the start of the content (after `</think>`
and the whitespace after it; from the first character of outputs that do not think), never inside the engine's
own thinking wrap-up text; `stop_in_reasoning=True` matches them in the thinking too. stop_token_ids and eos end
the output wherever they occur.

Every value is checked in __post_init__: a bad one raises `InvalidSamplingParam` (a UserError, hence a ValueError,
so the server answers 400) whose message names the field and says what is allowed, and whose `.param` is the field.
Normalisations: `stop` becomes a list of strings, `stop_token_ids` a list of ints, `top_k=-1`/None becomes 0
(disabled).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace

from r1kit.engine.structured_output import StructuredOutputsParams
from r1kit.errors import UserError

# Temperatures below this are greedy (argmax), as in vLLM.
GREEDY_EPS = 1e-5

DEFAULT_THINKING_WRAPUP = "\n\nTime is up; I will give my answer now.\n"


class InvalidSamplingParam(UserError):
    """A SamplingParams field holds a value that is not allowed; `.param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    n: int = 1                              # completions per prompt (they share the prompt's KV blocks)
    temperature: float = 1.0                # 0 = greedy
    top_p: float = 1.0                      # nucleus: keep the smallest set with probability >= top_p
    top_k: int = 0                          # keep the k most likely tokens; 0 or -1 = disabled
    min_p: float = 0.0                      # keep tokens with p >= min_p * p_max
    seed: int | None = None                 # per-request generator: reproducible regardless of the batch
    max_tokens: int | None = 16             # None = up to the context limit; 0 = compute the prompt only (scoring)
    min_tokens: int = 0                     # eos / stop ids cannot be sampled before this many tokens
    stop: str | list[str] | None = None     # stop strings (normalised to a list)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None             # top logprobs per token; 0 = only the chosen token's logprob
    prompt_logprobs: int | None = None      # per prompt token (the first is None): its logprob + the top N
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit before sampling, in [-100, 100]
    # the answer follows a JSON schema / regex / choice / grammar (r1kit.engine.structured_output); a dict is
    # taken as StructuredOutputsParams(**dict)
    structured_outputs: StructuredOutputsParams | None = None
    presence_penalty: float = 0.0           # OpenAI semantics, on output tokens
    frequency_penalty: float = 0.0          # OpenAI semantics, on output tokens
    repetition_penalty: float = 1.0         # HF/vLLM semantics, on prompt + output tokens
    include_stop_str_in_output: bool = False
    stop_in_reasoning: bool = False         # match stop strings in the thinking too (default: the answer only)
    skip_special_tokens: bool = True
    max_thinking_tokens: int | None = None  # thinking budget; then thinking_wrapup + thinking_end are injected
    thinking_wrapup: str = DEFAULT_THINKING_WRAPUP
    thinking_end: str = "</think>\n\n"

    def __post_init__(self):
        self.n = _int("n", self.n, lo=1)
        self.temperature = _float("temperature", self.temperature, "must be >= 0 (0 = greedy)", lambda x: x >= 0)
        self.top_p = _float("top_p", self.top_p, "must be in (0, 1]", lambda x: 0 < x <= 1)
        if self.top_k is None or self.top_k == -1:
            self.top_k = 0
        self.top_k = _int("top_k", self.top_k, lo=0, allowed="must be >= 1, or 0 or -1 to disable")
        self.min_p = _float("min_p", self.min_p, "must be in [0, 1]", lambda x: 0 <= x <= 1)
        if self.seed is not None:
            self.seed = _int("seed", self.seed, allowed="must be an integer or None")
        if self.max_tokens is not None:
            self.max_tokens = _int("max_tokens", self.max_tokens, lo=0,
                                   allowed="must be >= 0 (0 = the prompt only) or None (no limit)")
        self.min_tokens = _int("min_tokens", self.min_tokens, lo=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidSamplingParam(
                "min_tokens", f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        self.stop = _stop_list(self.stop)
        self.stop_token_ids = _id_list(self.stop_token_ids)
        if self.logprobs is not None:
            self.logprobs = _int("logprobs", self.logprobs, lo=0,
                                 allowed="must be None, 0 (chosen token only) or the number of top logprobs >= 1")
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _int("prompt_logprobs", self.prompt_logprobs, lo=0,
                                        allowed="must be None, 0 (each prompt token's own logprob) or the number of "
                                                "top logprobs >= 1")
        self.logit_bias = _bias(self.logit_bias)
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise InvalidSamplingParam("structured_outputs", "structured_outputs must be a StructuredOutputsParams "
                                                             f"or a dict, got {self.structured_outputs!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            setattr(self, name, _float(name, getattr(self, name), "must be in [-2, 2]", lambda x: -2 <= x <= 2))
        self.repetition_penalty = _float("repetition_penalty", self.repetition_penalty,
                                         "must be > 0 (1 = no penalty)", lambda x: x > 0)
        for name in ("ignore_eos", "include_stop_str_in_output", "stop_in_reasoning", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidSamplingParam(name, f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.max_thinking_tokens is not None:
            self.max_thinking_tokens = _int("max_thinking_tokens", self.max_thinking_tokens, lo=0,
                                            allowed="must be >= 0 or None (no budget)")
        if not isinstance(self.thinking_wrapup, str):
            raise InvalidSamplingParam("thinking_wrapup",
                                       f"thinking_wrapup must be a string, got {type(self.thinking_wrapup).__name__}")
        if not isinstance(self.thinking_end, str) or not self.thinking_end:
            raise InvalidSamplingParam("thinking_end",
                                       f"thinking_end must be a non-empty string, got {self.thinking_end!r}")

    @classmethod
    def greedy(cls, **kwargs) -> "SamplingParams":
        """Argmax decoding (temperature 0); other fields as given."""
        return cls(temperature=0.0, **kwargs)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    def clone(self, **changes) -> "SamplingParams":
        """A deep copy (lists are not shared), with `changes` applied and validated."""
        return replace(copy.deepcopy(self), **changes)

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(name: str, x, lo: int | None = None, allowed: str | None = None) -> int:
    allowed = allowed or (f"must be an integer >= {lo}" if lo is not None else "must be an integer")
    if not _is_int(x) or (lo is not None and x < lo):
        raise InvalidSamplingParam(name, f"{name} {allowed}, got {x!r}")
    return int(x)


def _float(name: str, x, allowed: str, ok) -> float:
    if not (_is_int(x) or isinstance(x, float)) or not math.isfinite(x) or not ok(x):
        raise InvalidSamplingParam(name, f"{name} {allowed}, got {x!r}")
    return float(x)


def _stop_list(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidSamplingParam("stop", f"stop must be a non-empty string or a list of them, got {stop!r}")
    return list(stop)


def _bias(bias) -> dict[int, float] | None:
    """{token id: bias}; JSON's string keys ("42") are accepted, as OpenAI's API sends them."""
    if bias is None or bias == {}:
        return None
    if not isinstance(bias, dict):
        raise InvalidSamplingParam("logit_bias", f"logit_bias must be a map of token id to bias, got {bias!r}")
    out = {}
    for k, v in bias.items():
        try:
            tid = int(k) if not isinstance(k, bool) and str(k).strip().lstrip("-").isdigit() else None
        except ValueError:
            tid = None
        if tid is None or tid < 0:
            raise InvalidSamplingParam("logit_bias", f"logit_bias keys must be token ids >= 0, got {k!r}")
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v) or not -100 <= v <= 100:
            raise InvalidSamplingParam("logit_bias", f"logit_bias values must be in [-100, 100], got {v!r} for {k}")
        out[tid] = float(v)
    return out


def _id_list(ids) -> list[int]:
    if ids is None:
        return []
    if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
        raise InvalidSamplingParam("stop_token_ids",
                                   f"stop_token_ids must be a list of token ids >= 0, got {ids!r}")
    return list(ids)
