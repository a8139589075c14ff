"""Verifiable rewards: plain callables `(completion, example) -> float`, looked up by name.

    from r1kit.rewards import parse_reward_spec, score_batch
    reward = parse_reward_spec("accuracy:1.0,format:0.2")   # reward.parts: {"accuracy": (fn, 1.0), ...}
    totals, per_reward = reward.score_batch(completions, examples)

Registered names (REWARDS): accuracy (dispatch on example["verifier"]), math, exact, numeric, countdown, code,
reasoning_gym, format, format_answer_tags, length. Answer extraction rules live in `extract.py`.
"""
from r1kit.rewards.basic import OverlongPenalty, exact_reward, format_answer_tags_reward, format_reward, numeric_reward
from r1kit.rewards.code import code_reward
from r1kit.rewards.countdown import check_countdown, countdown_reward
from r1kit.rewards.extract import answer_text, code_answer, final_answer, last_boxed, split_reasoning
from r1kit.rewards.math_reward import MathVerifier, math_reward
from r1kit.rewards.registry import (
    REWARDS,
    VERIFIERS,
    CombinedReward,
    accuracy_reward,
    load_reward,
    math_reward_batch,
    parse_reward_spec,
    reasoning_gym_reward,
    register_reward,
    score_batch,
)
from r1kit.rewards.sandbox import SandboxLimits, TestReport, run_python, run_tests, sandbox_mode, test_program

__all__ = [
    "REWARDS", "VERIFIERS", "CombinedReward", "MathVerifier", "OverlongPenalty", "SandboxLimits",
    "accuracy_reward", "answer_text", "check_countdown", "code_answer", "code_reward", "countdown_reward",
    "exact_reward", "final_answer", "format_answer_tags_reward", "format_reward", "last_boxed", "load_reward",
    "math_reward", "math_reward_batch", "numeric_reward", "parse_reward_spec", "reasoning_gym_reward",
    "register_reward", "run_python", "run_tests", "sandbox_mode", "score_batch", "split_reasoning", "TestReport",
    "test_program",
]
