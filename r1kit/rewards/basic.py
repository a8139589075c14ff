"""Rule rewards that need no sandbox or sympy: exact and numeric answers, R1 format, DAPO's overlong penalty."""
from __future__ import annotations

import math
import re

from r1kit.rewards.extract import THINK_CLOSE, THINK_OPEN, final_answer, last_number, split_reasoning


def normalize_text(s: str) -> str:
    """Case-folded, whitespace-collapsed, without surrounding $ or a trailing period: 'exact' compares these."""
    s = str(s).strip().rstrip(".").strip().strip("$").strip()
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    return re.sub(r"\s+", " ", s).rstrip(".").strip().casefold()


def exact_reward(completion: str, example: dict) -> float:
    """1.0 if the final answer equals example["answer"] after `normalize_text`."""
    return float(normalize_text(final_answer(completion)) == normalize_text(example["answer"]))


def numeric_reward(completion: str, example: dict) -> float:
    """1.0 if the last number of the final answer is within tolerance of example["answer"].

    Tolerance: example["rel_tol"] (default 1e-6) relative, example["abs_tol"] (default 1e-9) absolute.
    """
    got = last_number(final_answer(completion))
    gold = last_number(str(example["answer"]))
    if got is None or gold is None:
        return 0.0
    return float(math.isclose(got, gold, rel_tol=example.get("rel_tol", 1e-6), abs_tol=example.get("abs_tol", 1e-9)))


_ANSWER_TAGS = re.compile(r"^<answer>(.*)</answer>$", re.DOTALL)


def format_reward(completion: str, example: dict | None = None) -> float:
    """1.0 for R1 structure: `[<think>] reasoning </think> answer` with a non-empty answer.

    The opening tag is optional (the chat template prefills `<think>\\n`) but, if written, only at the start; each
    tag appears once. If the answer uses <answer> tags (R1-Zero template) they must wrap the whole, non-empty answer.
    """
    text = completion.lstrip()
    if text.count(THINK_CLOSE) != 1 or text.count(THINK_OPEN) > 1:
        return 0.0
    if THINK_OPEN in text and not text.startswith(THINK_OPEN):
        return 0.0
    answer = split_reasoning(text)[1]
    if "<answer>" in answer or "</answer>" in answer:
        m = _ANSWER_TAGS.match(answer)
        if not m or "<answer>" in m.group(1) or not m.group(1).strip():
            return 0.0
    return float(bool(answer))


def format_answer_tags_reward(completion: str, example: dict | None = None) -> float:
    """R1-Zero format: like `format_reward` but the answer must be inside <answer>...</answer>."""
    answer = split_reasoning(completion.lstrip())[1]
    return format_reward(completion) if answer.startswith("<answer>") else 0.0


class OverlongPenalty:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a reward in [-1, 0].

    With L = completion length in tokens: 0 if L <= L_max - L_cache; ((L_max - L_cache) - L) / L_cache inside the
    last L_cache tokens; -1 beyond L_max. The trainer passes the token count as example["completion_tokens"];
    example["max_completion_tokens"] / example["overlong_cache_tokens"] override L_max / L_cache.
    """

    def __init__(self, max_tokens: int = 20480, cache_tokens: int = 4096):
        if not 0 < cache_tokens <= max_tokens:
            raise ValueError(f"need 0 < cache_tokens <= max_tokens, got {cache_tokens} and {max_tokens}")
        self.max_tokens, self.cache_tokens = max_tokens, cache_tokens

    def __call__(self, completion: str, example: dict) -> float:
        if "completion_tokens" not in example:
            raise ValueError("the length reward needs example['completion_tokens'] (the completion's token count)")
        n = int(example["completion_tokens"])
        l_max = int(example.get("max_completion_tokens", self.max_tokens))
        l_cache = int(example.get("overlong_cache_tokens", self.cache_tokens))
        if n <= l_max - l_cache:
            return 0.0
        if n <= l_max:
            return ((l_max - l_cache) - n) / l_cache
        return -1.0
