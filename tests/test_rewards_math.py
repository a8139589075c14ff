"""Math verification: a table of answer pairs with expected verdicts, the hard timeout, and thread safety."""
import threading
import time

import pytest

from r1kit.rewards import MathVerifier, math_reward, math_reward_batch, score_batch


def B(s):
    return "I think carefully.\n</think>\nThe answer is $\\boxed{" + s + "}$."


TABLE = [
    # (gold, completion answer, expected)
    ("1/2", B("0.5"), 1), ("\\frac{1}{2}", B("\\frac{2}{4}"), 1), ("0.5", B("\\frac12"), 1),
    ("\\frac{1}{3}", B("0.333"), 0), ("2", B("2.0"), 1), ("2", B("3"), 0), ("-3", B("-3"), 1), ("-3", B("3"), 0),
    ("\\sqrt{2}", B("2^{1/2}"), 1), ("\\sqrt{8}", B("2\\sqrt{2}"), 1), ("\\sqrt{2}", B("1.41"), 0),
    ("\\pi", B("\\pi"), 1), ("2\\pi", B("\\pi \\cdot 2"), 1), ("\\pi", B("3.14"), 0),
    ("x^2+2x+1", B("(x+1)^2"), 1), ("x^2-1", B("(x-1)(x+1)"), 1), ("x^2+1", B("(x+1)^2"), 0),
    ("\\{1,2,3\\}", B("\\{3,2,1\\}"), 1), ("\\{1,2\\}", B("\\{1,2,3\\}"), 0),
    ("(1,2]", B("(1,2]"), 1), ("(1,2]", B("[1,2]"), 0), ("[0,\\infty)", B("[0, \\infty)"), 1),
    ("(-\\infty,3)", B("(-\\infty, 3)"), 1), ("(-\\infty,3)", B("(-\\infty, 3]"), 0),
    ("50\\%", B("50\\%"), 1), ("10", B("10.000"), 1), ("1000", B("1,000"), 1), ("1000", B("100"), 0),
    ("\\frac{3}{4}", B("75/100"), 1), ("\\frac{3}{4}", B("0.75"), 1), ("\\frac{3}{4}", B("0.76"), 0),
    ("e", B("e"), 1), ("e^2", B("e \\cdot e"), 1), ("\\ln(e^3)", B("3"), 1),
    ("\\frac{\\sqrt{3}}{2}", B("\\sin(\\pi/3)"), 1), ("0", B("\\cos(\\pi/2)"), 1),
    ("2", B("\\frac{4}{2}"), 1), ("7", B("\\frac{15}{2}"), 0), ("12", "</think>\nThe answer is 12.", 1),
    ("12", "</think>\n<answer>12</answer>", 1), ("12", "</think>\n<answer>13</answer>", 0),
    ("12", "<think>I guess \\boxed{12} but I keep thinking", 0),  # reasoning never closed: no answer
    ("5", B("\\frac{10}{"), 0), ("5", B("\\sqrt{"), 0), ("5", B("}{}{"), 0), ("5", B(""), 0),
    ("5", "</think>\n", 0), ("5", "", 0), ("3", B("x = 3"), 1), ("(1, 2)", B("(1,2)"), 1),
    ("(1, 2)", B("(2,1)"), 0), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", B("\\begin{pmatrix}1\\\\2\\end{pmatrix}"), 1),
    ("1/4", B("\\dfrac{1}{4}"), 1), ("1/4", B("\\tfrac{1}{4}"), 1), ("10", B("10\\text{ cm}"), 1),
    ("\\infty", B("\\infty"), 1), ("\\infty", B("-\\infty"), 0), ("2,3", B("3, 2"), 1), ("2,3", B("2"), 0),
    ("1.5", B("\\frac{3}{2}"), 1), ("1.5", B("1\\frac{1}{2}"), 1), ("-\\frac{1}{2}", B("-0.5"), 1),
    ("-\\frac{1}{2}", B("0.5"), 0), ("3x", B("x\\cdot 3"), 1), ("a+b", B("b+a"), 1), ("a+b", B("a-b"), 0),
]


def test_table_has_at_least_fifty_pairs_with_both_verdicts():
    assert len(TABLE) >= 50
    assert {expected for _, _, expected in TABLE} == {0, 1}


def test_math_verdicts_match_table():
    examples = [{"answer": gold, "verifier": "math"} for gold, _, _ in TABLE]
    scores = math_reward_batch([completion for _, completion, _ in TABLE], examples)
    wrong = [(gold, completion, expected, got) for (gold, completion, expected), got in zip(TABLE, scores)
             if got != expected]
    assert wrong == []


def test_sympy_hanging_input_returns_zero_within_timeout_and_pool_recovers():
    # inner_timeout_s=0 turns off math-verify's own SIGALRM timeouts: only the outer kill can end this check
    verifier = MathVerifier(workers=1, timeout_s=1.5, inner_timeout_s=0)
    try:
        assert verifier.check("5", "\\boxed{5}") == 1.0  # warm the worker up (sympy import is not timed)
        start = time.monotonic()
        assert verifier.check("5", "\\boxed{9^{9^{9^{9}}}}") == 0.0
        assert time.monotonic() - start < 1.5 + 1.0
        assert verifier.check("7", "\\boxed{7}") == 1.0  # the killed worker was replaced
    finally:
        verifier.close()


def test_math_reward_works_from_non_main_threads():
    results = {}

    def work(i):
        results[i] = math_reward(B(f"\\frac{{{2 * i}}}{{2}}"), {"answer": str(i)})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 1.0 for i in range(1, 7)}


def test_score_batch_keeps_order_and_rejects_length_mismatch():
    completions = [B(str(i)) for i in range(10)]
    examples = [{"answer": str(i if i % 2 else i + 1)} for i in range(10)]
    assert score_batch(math_reward, completions, examples, workers=3) == [float(i % 2) for i in range(10)]
    with pytest.raises(ValueError):
        score_batch(math_reward, completions, examples[:3])
