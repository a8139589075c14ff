"""Answer extraction, format/length/exact/numeric/countdown rewards, the code reward, and the reward registry."""
from fractions import Fraction

import pytest

from r1kit.errors import UserError
from r1kit.rewards import (
    REWARDS,
    OverlongPenalty,
    accuracy_reward,
    answer_text,
    check_countdown,
    code_answer,
    code_reward,
    countdown_reward,
    exact_reward,
    final_answer,
    format_answer_tags_reward,
    format_reward,
    last_boxed,
    load_reward,
    numeric_reward,
    parse_reward_spec,
    split_reasoning,
)
from r1kit.rewards.countdown import evaluate

# --- extraction ---------------------------------------------------------------------------------------------


def test_split_reasoning_handles_prefilled_and_explicit_think_tags():
    assert split_reasoning("steps\n</think>\n\nanswer") == ("steps", "answer")
    assert split_reasoning("<think>steps</think>answer") == ("steps", "answer")
    assert split_reasoning("<think>still thinking") == ("still thinking", "")
    assert split_reasoning("no closing tag: \\boxed{4}") == ("no closing tag: \\boxed{4}", "")  # prefilled


def test_answer_text_prefers_last_answer_block():
    assert answer_text("r</think> <answer>1</answer> then <answer> 2 </answer>") == "2"
    assert answer_text("r</think> no tags") == "no tags"


def test_last_boxed_balances_nested_braces_and_takes_the_last():
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed 5 dollars") == "5"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("nothing") is None


def test_final_answer_uses_boxed_inside_answer_part_only():
    assert final_answer("maybe \\boxed{3}</think>so \\boxed{4}") == "4"
    assert final_answer("maybe \\boxed{3}</think>it is 4") == "it is 4"
    assert final_answer("maybe \\boxed{3}") == ""  # unfinished reasoning has no answer


def test_code_answer_keeps_indentation_and_prefers_fenced_blocks():
    assert code_answer("plan</think>\n    return 1\n") == "    return 1"
    assert code_answer("    return 1\n") == ""  # no </think>: no answer
    assert code_answer("think</think>\n```python\ndef f():\n    return 2\n```\ntext") == "def f():\n    return 2\n"
    assert code_answer("<think>unfinished ```python\nx=1\n```") == ""


# --- format and length --------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion,expected", [
    ("reasoning\n</think>\n\nThe answer is 4.", 1.0),  # prefilled <think>
    ("<think>reasoning</think> 4", 1.0),
    ("<think>\n\n</think>\n\n4", 1.0),  # empty reasoning is allowed (R1 does this)
    ("reasoning</think><answer>4</answer>", 1.0),
    ("reasoning</think>", 0.0),  # no answer
    ("reasoning</think>   \n", 0.0),
    ("no tags at all", 0.0),
    ("<think>never closed", 0.0),
    ("a</think>b</think>c", 0.0),  # two closings
    ("x <think>a</think>b", 0.0),  # opening tag not at the start
    ("r</think><answer>4</answer> trailing", 0.0),
    ("r</think><answer></answer>", 0.0),
    ("r</think><answer>4", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion, {}) == expected


def test_format_answer_tags_requires_answer_tags():
    assert format_answer_tags_reward("<think>r</think> <answer>4</answer>", {}) == 1.0
    assert format_answer_tags_reward("<think>r</think> 4", {}) == 0.0


def test_overlong_penalty_matches_dapo_formula():
    pen = OverlongPenalty(max_tokens=100, cache_tokens=20)
    assert pen("", {"completion_tokens": 80}) == 0.0
    assert pen("", {"completion_tokens": 90}) == pytest.approx(-10 / 20)
    assert pen("", {"completion_tokens": 100}) == pytest.approx(-1.0)
    assert pen("", {"completion_tokens": 101}) == -1.0
    assert pen("", {"completion_tokens": 90, "max_completion_tokens": 200}) == 0.0
    with pytest.raises(ValueError, match="completion_tokens"):
        pen("text", {})
    with pytest.raises(ValueError):
        OverlongPenalty(max_tokens=10, cache_tokens=20)


# --- exact and numeric --------------------------------------------------------------------------------------


def test_exact_reward_normalizes_case_space_and_dollars():
    ex = {"answer": "Paris"}
    assert exact_reward("r</think>\\boxed{ paris }", ex) == 1.0
    assert exact_reward("r</think>$Paris$.", ex) == 1.0
    assert exact_reward("r</think>London", ex) == 0.0


def test_numeric_reward_tolerance_and_separators():
    assert numeric_reward("r</think>The total is 1,234.", {"answer": "1234"}) == 1.0
    assert numeric_reward("r</think>\\boxed{3.1416}", {"answer": "3.14159", "rel_tol": 1e-4}) == 1.0
    assert numeric_reward("r</think>\\boxed{3.1416}", {"answer": "3.14159"}) == 0.0
    assert numeric_reward("r</think>no number", {"answer": "3"}) == 0.0
    assert numeric_reward("r</think>-7", {"answer": "-7"}) == 1.0


# --- countdown ----------------------------------------------------------------------------------------------


def test_countdown_parser_is_exact():
    assert evaluate("(6 / 4) * 8")[0] == Fraction(12)
    assert evaluate("1 - 2 - 3")[0] == -4  # left-associative
    assert evaluate("2 * (3 + 4)") == (Fraction(14), [2, 3, 4])


@pytest.mark.parametrize("expr,ok", [
    ("94*4 - 61 - 6", True),
    ("94 * 4 - (61 + 6)", True),
    ("(94*4 - 61 - 6) = 309", True),
    ("94 \\times 4 - 61 - 6", True),  # LaTeX multiplication as models write it in \boxed{}
    ("94*4 - 61 - 6 = 310", False),
    ("94*4 - 61 - 61", False),  # reuses 61, leaves 6 unused
    ("94*4 - 61", False),  # 6 unused (all numbers must be used)
    ("94*4 - 61 - 6 + 0", False),  # extra number
    ("94*4 - 61 - 6 + 1 - 1", False),
    ("94**1*4 - 61 - 6", False),  # power
    ("94//1*4 - 61 - 6", False),  # floor division
    ("abs(94)*4 - 61 - 6", False),  # calls/names
    ("94*4 - 61 - 6.0", False),  # decimals
    ("94*4 - 61 - -6 - 12", False),  # unary minus
    ("94*4 - 616", False),  # concatenation
    ("__import__('os')", False),
    ("94*4 - 61 - 06", False),  # leading zero
    ("", False),
    ("94*4 - (61 - 6", False),
])
def test_countdown_rules(expr, ok):
    assert check_countdown(expr, [6, 61, 94, 4], 309) is ok


def test_countdown_exact_rational_arithmetic_and_division_by_zero():
    # 1/3*3 is exactly 1 with fractions (floating point would give 0.999...)
    assert check_countdown("1/3*3 + 4", [1, 3, 3, 4], 5)
    assert not check_countdown("4 / (3 - 3) + 1", [1, 3, 3, 4], 5)
    # a number given twice may be used twice
    assert check_countdown("5 * 5 - 1", [5, 5, 1], 24)


def test_countdown_reward_reads_numbers_from_metadata():
    ex = {"metadata": {"numbers": [2, 3, 4], "target": 14}}
    assert countdown_reward("r</think>\\boxed{2 * (3 + 4)}", ex) == 1.0
    assert countdown_reward("r</think><answer>(3 + 4) * 2</answer>", ex) == 1.0
    assert countdown_reward("r</think>\\boxed{2 * 3 + 4}", ex) == 0.0


# --- code ---------------------------------------------------------------------------------------------------


def test_code_reward_fraction_and_prefix_continuation():
    ex = {"tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 1"], "code_prefix": "def add(a, b):\n"}
    assert code_reward("r</think>\n    return a + b\n", ex) == 0.5
    full = "r</think>\n```python\ndef add(a, b):\n    return a + b + (a == b == 0)\n```"
    assert code_reward(full, ex) == 1.0
    assert code_reward("", ex) == 0.0
    with pytest.raises(ValueError, match="tests"):
        code_reward("x", {})


# --- registry -----------------------------------------------------------------------------------------------


def test_accuracy_dispatches_on_verifier():
    assert accuracy_reward("r</think>\\boxed{Paris}", {"answer": "paris", "verifier": "exact"}) == 1.0
    assert accuracy_reward("r</think>\\boxed{2*3+4}", {"verifier": "countdown",
                                                       "metadata": {"numbers": [2, 3, 4], "target": 10}}) == 1.0
    assert accuracy_reward("r</think>\\boxed{0.5}", {"answer": "\\frac{1}{2}"}) == 1.0  # default: math
    with pytest.raises(UserError, match="unknown verifier"):
        accuracy_reward("x", {"answer": "1", "verifier": "nope"})


def test_registry_has_the_documented_names():
    for name in ("accuracy", "format", "format_answer_tags", "length", "math", "exact", "numeric", "countdown",
                 "code", "reasoning_gym"):
        assert callable(REWARDS[name])


def test_parse_reward_spec_weights_and_parts():
    reward = parse_reward_spec("exact:1.0, format:0.2")
    assert list(reward.parts) == ["exact", "format"]
    ex = {"answer": "4"}
    assert reward("r</think>\\boxed{4}", ex) == pytest.approx(1.2)
    assert reward("r</think>\\boxed{5}", ex) == pytest.approx(0.2)
    assert reward.score_parts("no tags 4", ex) == {"exact": 0.0, "format": 0.0}
    totals, per = reward.score_batch(["r</think>4", "r</think>5"], [ex, ex], workers=2)
    assert totals == pytest.approx([1.2, 0.2]) and per == {"exact": [1.0, 0.0], "format": [1.0, 1.0]}
    assert parse_reward_spec("format").parts["format"][1] == 1.0


def test_parse_reward_spec_errors():
    with pytest.raises(UserError, match="unknown reward"):
        parse_reward_spec("accuracy:1,nonsense:2")
    with pytest.raises(UserError, match="twice"):
        parse_reward_spec("format,format:0.5")
    with pytest.raises(UserError):
        parse_reward_spec(" , ")


def test_load_reward_from_user_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def short(completion, example):\n    return 1.0 if len(completion) < 15 else 0.0\n")
    fn = load_reward(f"{path}:short")
    assert fn("tiny", {}) == 1.0 and fn("x" * 20, {}) == 0.0
    combined = parse_reward_spec(f"format:0.5,{path}:short:2")
    assert combined("a</think>b", {}) == pytest.approx(2.5)
    with pytest.raises(UserError, match="no function"):
        load_reward(f"{path}:missing")
    with pytest.raises(UserError, match="does not exist"):
        load_reward(f"{tmp_path}/nope.py:f")
