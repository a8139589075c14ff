"""r1kit.eval.metrics against brute force and hand-computed values, and the statistics of a whole evaluation on a
fake backend with a fake clock (latency, tokens, tokens/s, format errors)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from r1kit.eval.backends import Generation
from r1kit.eval.metrics import (accuracy_by_length, describe, ks_for, maj_at_k, majority_vote, output_tokens_per_s,
                                pass_at_k, percentile, task_metrics)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_equals_the_fraction_of_k_subsets_holding_a_correct_sample(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_exact_for_large_n_and_rejects_bad_arguments():
    # 1 - C(190, 10) / C(200, 10), with exact integers
    from fractions import Fraction
    from math import comb

    assert pass_at_k(200, 10, 10) == pytest.approx(float(1 - Fraction(comb(190, 10), comb(200, 10))), rel=1e-15)
    assert pass_at_k(200, 0, 10) == 0.0 and pass_at_k(200, 191, 10) == 1.0
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_ks_are_powers_of_two_and_n():
    assert ks_for(1) == [1]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(6) == [1, 2, 4, 6]


def test_majority_vote_ties_go_to_the_answer_seen_first_and_empty_answers_do_not_vote():
    # "7" and "8" both appear twice: "8" came first, so the vote is "8" (wrong here)
    assert majority_vote(["8", "7", "7", "8"], [False, True, True, False]) is False
    assert majority_vote(["7", "8", "7", "8"], [True, False, True, False]) is True
    # three empty answers do not outvote one real answer
    assert majority_vote([None, "", None, "5"], [False, False, False, True]) is True
    assert majority_vote([None, None], [False, False]) is False
    # a clear majority wins whatever the order
    assert majority_vote(["1", "2", "2", "2", "1"], [True, False, False, False, True]) is False


def test_maj_at_k_averages_over_consecutive_groups():
    answers = ["a", "a", "b", "b", "a", "c"]
    correct = [True, True, False, False, True, False]
    assert maj_at_k(answers, correct, 6) == 1.0                    # a: 3 votes
    assert maj_at_k(answers, correct, 2) == pytest.approx(2 / 3)   # [a,a]=1 [b,b]=0 [a,c]=1 (tie -> first)
    assert maj_at_k(answers, correct, 4) == 1.0                    # one group [a,a,b,b]: tie -> a; rest unused
    assert maj_at_k(answers, correct, 1) == pytest.approx(3 / 6)


def test_percentiles_and_describe_match_numpy():
    rng = np.random.default_rng(0)
    xs = list(rng.exponential(size=37))
    for q in (0, 10, 50, 90, 100):
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    d = describe(xs + [None])
    assert d == pytest.approx({"mean": np.mean(xs), "median": np.median(xs), "p90": np.percentile(xs, 90)})
    assert describe([None]) == {"mean": None, "median": None, "p90": None}


def _sample(correct, extracted="x", fmt=False, reasoning=10, answer=2, latency=1.0):
    return {"correct": correct, "score": float(correct), "extracted": extracted, "format_error": fmt,
            "reasoning_tokens": reasoning, "answer_tokens": answer, "completion_tokens": reasoning + answer,
            "latency_s": latency, "finish_reason": "stop"}


def test_task_metrics_by_hand():
    problems = [
        [_sample(True, "4"), _sample(False, "5"), _sample(True, "4"), _sample(False, "", fmt=True)],
        [_sample(False, "1"), _sample(False, "2"), _sample(False, "2"), _sample(True, "3")],
    ]
    m = task_metrics(problems)
    assert m["n"] == 4 and m["num_problems"] == 2
    assert m["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["pass@k"]["2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6)) / 2)  # C(2,2)/C(4,2), C(3,2)/C(4,2)
    assert m["pass@k"]["4"] == 1.0
    assert m["maj@4"] == pytest.approx(0.5)  # "4" wins problem 1; "2" (wrong) wins problem 2
    assert m["format_error_rate"] == pytest.approx(1 / 8)
    with pytest.raises(ValueError):
        task_metrics([[_sample(True)], [_sample(True), _sample(False)]])


def test_accuracy_by_length_keeps_equal_lengths_in_one_bucket():
    samples = [_sample(i % 2 == 0, reasoning=r) for i, r in enumerate([5, 5, 5, 5, 9, 9, 20, 30, 40, 50])]
    b = accuracy_by_length(samples, buckets=5)
    assert sum(x["count"] for x in b) == 10
    assert all(x["lo"] <= x["hi"] for x in b) and all(b[i]["hi"] < b[i + 1]["lo"] for i in range(len(b) - 1))
    assert b[0] == {"lo": 5, "hi": 5, "count": 4, "accuracy": 0.5}


def test_output_tokens_per_s_adds_the_spans_of_each_run():
    s = [{"start": 0.0, "end": 2.0, "completion_tokens": 10, "run": 1},
         {"start": 1.0, "end": 4.0, "completion_tokens": 30, "run": 1},
         {"start": 100.0, "end": 101.0, "completion_tokens": 10, "run": 2}]
    assert output_tokens_per_s(s) == pytest.approx(50 / (4 + 1))


# ---- a whole evaluation on a fake backend and a fake clock ----

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeBackend:
    """Answers 'Compute a + b.' problems: sample j of problem i is right when (i + j) % 3 != 0, has no answer when
    (i + j) % 5 == 4, and takes (1 + j) seconds and 10 * (j + 1) tokens, of which 2 are the answer."""

    def __init__(self, clock, fail_after=None):
        self.clock, self.fail_after, self.calls = clock, fail_after, []

    def describe(self):
        return {"backend": "fake", "name": "fake", "config_hash": None}

    def run(self, jobs, on_result):
        for job in jobs:
            p = job.key
            a, b = p.example["metadata"]["a"], p.example["metadata"]["b"]
            for j in job.samples:
                if self.fail_after is not None and len(self.calls) >= self.fail_after:
                    raise KeyboardInterrupt
                self.calls.append((p.index, j))
                start = self.clock.t
                self.clock.t += 1 + j
                i = p.index
                value = a + b if (i + j) % 3 else a + b + 1
                content = "" if (i + j) % 5 == 4 else f"The answer is $\\boxed{{{value}}}$."
                tokens = 10 * (j + 1)
                on_result(job, Generation(sample=j, text=None, reasoning=f"{a} + {b} = {value}", content=content,
                                          completion_tokens=tokens, reasoning_tokens=tokens - 2,
                                          finish_reason="stop", start=start, end=self.clock.t))


TASK = "arithmetic?digits=2&ops=+&n=6&seed=3"


def _evaluate(tmp_path, backend, clock, **kw):
    from r1kit.eval.evaluate import evaluate

    return evaluate(model="fake-model", tasks=[TASK], n=4, out=str(tmp_path / "run"), backend=backend, clock=clock,
                    progress=False, **kw)


def test_statistics_of_an_evaluation_on_a_fake_clock(tmp_path):
    clock = FakeClock()
    res = _evaluate(tmp_path, FakeBackend(clock), clock)
    t = res["tasks"][TASK]
    ij = [(i, j) for i in range(6) for j in range(4)]
    correct = [(i + j) % 3 != 0 and (i + j) % 5 != 4 for i, j in ij]
    assert t["pass@1"] == pytest.approx(sum(correct) / 24)
    assert t["format_error_rate"] == pytest.approx(sum((i + j) % 5 == 4 for i, j in ij) / 24)
    latencies = [1 + j for _, j in ij]
    assert t["latency_s"] == pytest.approx({"mean": np.mean(latencies), "median": np.median(latencies),
                                            "p90": np.percentile(latencies, 90)})
    tokens = [10 * (j + 1) for _, j in ij]
    assert t["reasoning_tokens"]["mean"] == pytest.approx(np.mean(tokens) - 2)
    assert t["answer_tokens"] == {"mean": 2.0, "median": 2.0, "p90": 2.0}
    # one sample after another: the span is the sum of the latencies
    assert t["output_tokens_per_s"] == pytest.approx(sum(tokens) / sum(latencies))
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["tasks"][TASK]["pass@1"] == t["pass@1"]
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "pass_at_k.png").is_file()
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 24
    rec = json.loads(lines[0])
    assert rec["completion"].startswith(rec["reasoning"]) and "</think>" in rec["completion"] or rec["format_error"]
