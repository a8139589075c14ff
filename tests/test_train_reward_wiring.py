"""GRPO's scoring hands rewards what they need: the registry's `length` reward (the overlong penalty, the one knob)
gets the completion's token count and the run's limits."""
from __future__ import annotations

import pytest

from r1kit.rewards import CombinedReward, load_reward
from r1kit.train.config import GRPOConfig
from r1kit.train.grpo import score_samples
from r1kit.train.rollout import Sample


def _sample(n_tokens: int) -> Sample:
    return Sample(group=0, example={"answer": "4"}, prompt_ids=[1, 2], completion_ids=[5] * n_tokens,
                  logprobs=None, text="x", truncated=False)


def test_length_reward_scores_token_counts_with_the_runs_completion_limit():
    cfg = GRPOConfig(max_completion_length=100, overlong_buffer=20)
    samples = [_sample(50), _sample(90), _sample(100)]
    score_samples(samples, CombinedReward({"length": (load_reward("length"), 1.0)}), cfg)
    # DAPO: 0 up to 100 - 20 tokens, then linear down to -1 at the limit
    assert [s.rewards["length"] for s in samples] == pytest.approx([0.0, -0.5, -1.0])
    assert [s.reward for s in samples] == pytest.approx([0.0, -0.5, -1.0])


def test_the_overlong_penalty_adds_to_the_reward_with_its_weight():
    cfg = GRPOConfig(max_completion_length=100, overlong_buffer=20)
    samples = [_sample(70), _sample(90)]
    score_samples(samples, CombinedReward({"const": (lambda text, ex: 1.0, 1.0),
                                           "length": (load_reward("length"), 2.0)}), cfg)
    assert [s.reward for s in samples] == pytest.approx([1.0, 0.0])
