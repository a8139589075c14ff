"""The numbers an evaluation reports, as pure functions of scored samples (no I/O, no clock).

pass@k (Chen et al. 2021, the HumanEval paper): draw k of a problem's n samples without replacement; pass@k is the
chance that at least one of them is correct. With c correct among n, the chance that all k drawn are wrong is
C(n-c, k) / C(n, k), so pass@k = 1 - C(n-c, k) / C(n, k) per problem, averaged over problems. This is unbiased
(unlike 1 - (1 - c/n)^k) and uses all n samples for every k. pass@1 reduces to c/n: the R1 protocol's "mean
accuracy over n samples".

maj@k (cons@k): majority vote over the extracted answers of k samples; the problem counts as solved when the
winning answer is correct. Samples without an extractable answer do not vote. Ties go to the answer that appeared
first (lowest sample index), so the result never depends on dict or hash order. For k < n the n samples are cut
into n // k consecutive groups of k and maj@k is the mean over those groups (the leftover samples are unused).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct samples out of n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact integers; int / int rounds once


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the k values reported for n samples per problem."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer among `answers` (None or "" = no answer, no vote) is correct.

    Ties go to the answer seen first. A group of equal answers is as correct as its first member (equal extracted
    answers get equal scores from every verifier r1kit has)."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None or a == "":
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return False
    winner = min(counts, key=lambda a: (-counts[a], first[a]))
    return bool(correct[first[winner]])


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one problem: the mean over its n // k consecutive groups of k samples (sample order)."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    groups = n // k
    return sum(majority_vote(answers[g * k:(g + 1) * k], correct[g * k:(g + 1) * k]) for g in range(groups)) / groups


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def describe(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, median (p50) and p90 of the known values (None = not reported); all None when there are none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "median": None, "p90": None}
    return {"mean": sum(xs) / len(xs), "median": percentile(xs, 50), "p90": percentile(xs, 90)}


def task_metrics(problems: Sequence[Sequence[dict]]) -> dict:
    """Every per-task number of results.json from the task's samples, grouped by problem, each group in sample
    order and of the same size n. A sample is a dict with: correct (bool), score (float), extracted (str or None),
    format_error (bool), reasoning_tokens / answer_tokens (int or None), completion_tokens (int),
    latency_s (float), finish_reason (str), start / end (clock readings) and run (which invocation made it)."""
    if not problems:
        raise ValueError("no problems to summarize")
    n = len(problems[0])
    if n == 0 or any(len(p) != n for p in problems):
        raise ValueError("every problem needs the same, non-zero number of samples")
    samples = [s for p in problems for s in p]
    ks = ks_for(n)
    correct = [[bool(s["correct"]) for s in p] for p in problems]
    answers = [[None if s["format_error"] else s.get("extracted") for s in p] for p in problems]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "num_problems": len(problems),
        "n": n,
        "pass@1": mean([sum(c) / n for c in correct]),
        "pass@k": {str(k): mean([pass_at_k(n, sum(c), k) for c in correct]) for k in ks},
        f"maj@{n}": mean([majority_vote(a, c) for a, c in zip(answers, correct)]),
        "maj@k": {str(k): mean([maj_at_k(a, c, k) for a, c in zip(answers, correct)]) for k in ks},
        "mean_score": mean([float(s["score"]) for s in samples]),
        "format_error_rate": mean([float(bool(s["format_error"])) for s in samples]),
        "truncated_rate": mean([float(s.get("finish_reason") == "length") for s in samples]),
        "reasoning_tokens": describe(s.get("reasoning_tokens") for s in samples),
        "answer_tokens": describe(s.get("answer_tokens") for s in samples),
        "completion_tokens": describe(s.get("completion_tokens") for s in samples),
        "latency_s": describe(s.get("latency_s") for s in samples),
        "output_tokens_per_s": output_tokens_per_s(samples),
    }


def output_tokens_per_s(samples: Sequence[dict]) -> float | None:
    """Generated tokens per second of wall time while these samples were being generated: the tokens over the
    union, per run (an interrupted and resumed evaluation has several), of [first start, last end]."""
    spans: dict[int, list[float]] = {}
    tokens = 0
    for s in samples:
        if s.get("start") is None or s.get("end") is None:
            continue
        lo_hi = spans.setdefault(int(s.get("run", 0)), [s["start"], s["end"]])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], s["start"]), max(lo_hi[1], s["end"])
        tokens += int(s.get("completion_tokens") or 0)
    wall = sum(hi - lo for lo, hi in spans.values())
    return tokens / wall if wall > 0 else None


def accuracy_by_length(samples: Sequence[dict], buckets: int = 5, key: str = "reasoning_tokens") -> list[dict]:
    """Accuracy in up to `buckets` bins of about equal sample count, by `key` (does the model overthink?): one dict
    per bin with lo, hi (the key's range in the bin), count and accuracy. Equal values share a bin."""
    known = sorted((s for s in samples if s.get(key) is not None), key=lambda s: s[key])
    if not known:
        return []
    out, start = [], 0
    for b in range(1, buckets + 1):
        end = b * len(known) // buckets
        while 0 < end < len(known) and known[end][key] == known[end - 1][key]:
            end += 1  # never split equal values
        if end > start:
            part = known[start:end]
            out.append({"lo": part[0][key], "hi": part[-1][key], "count": len(part),
                        "accuracy": sum(bool(s["correct"]) for s in part) / len(part)})
            start = end
    return out
