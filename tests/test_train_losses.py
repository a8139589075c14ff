"""The GRPO objective and advantages against hand-computed values."""
import math

import pytest
import torch

from r1kit.train.advantages import fill_informative_groups, group_advantages, informative_groups
from r1kit.train.losses import grpo_loss, k3_kl, token_logprobs


def _example():
    # ratios per token; the 3rd token of completion 1 is padding (mask 0) with a wild ratio that must not count
    ratios = torch.tensor([[1.0, 1.5, 0.5], [1.1, 0.7, 5.0]])
    logp = torch.tensor([[-1.0, -2.0, -0.3], [-0.7, -1.2, -3.0]])
    old = logp - ratios.log()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    return logp, old, mask, adv


# token losses by hand, eps_low 0.2, eps_high 0.28:
#  completion 0 (A=+1):  r=1 -> -1 ; r=1.5 clipped to 1.28 -> -1.28 ; r=0.5 (min picks 0.5) -> -0.5   sum -2.78
#  completion 1 (A=-2):  r=1.1 -> +2.2 ; r=0.7 clipped to 0.8 -> -min(-1.4,-1.6) = +1.6                 sum +3.8
@pytest.mark.parametrize("loss_type,expected", [
    ("grpo", (-2.78 / 3 + 3.8 / 2) / 2),
    ("dapo", (-2.78 + 3.8) / 5),
    ("dr_grpo", (-2.78 + 3.8) / (2 * 4)),
])
def test_each_loss_type_matches_hand_computed_value(loss_type, expected):
    logp, old, mask, adv = _example()
    out = grpo_loss(logp, adv, mask, old_logp=old, loss_type=loss_type, eps_low=0.2, eps_high=0.28,
                    max_completion_length=4)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.clip_low_frac == pytest.approx(1 / 5)      # r=0.7 < 0.8 with A<0
    assert out.clip_high_frac == pytest.approx(1 / 5)     # r=1.5 > 1.28 with A>0
    assert out.clip_frac == pytest.approx(2 / 5)


def test_micro_batches_with_global_normalisers_add_up_to_the_full_batch_loss():
    logp, old, mask, adv = _example()
    for lt in ("grpo", "dapo", "dr_grpo"):
        full = grpo_loss(logp, adv, mask, old_logp=old, loss_type=lt, max_completion_length=4).loss
        parts = sum(grpo_loss(logp[i:i + 1], adv[i:i + 1], mask[i:i + 1], old_logp=old[i:i + 1], loss_type=lt,
                              max_completion_length=4, num_sequences=2, num_tokens=5).loss for i in range(2))
        assert parts.item() == pytest.approx(full.item(), abs=1e-6), lt


def test_on_policy_gradient_is_minus_advantage_over_length():
    logp, _, mask, adv = _example()
    logp = logp.clone().requires_grad_(True)
    grpo_loss(logp, adv, mask, loss_type="grpo").loss.backward()
    # d/dlogp of -(A * exp(logp - sg(logp))) / len / B = -A / len / B on real tokens, 0 on padding
    expected = torch.tensor([[-1 / 3 / 2] * 3, [2 / 2 / 2, 2 / 2 / 2, 0.0]])
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_k3_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
    logp = torch.log_softmax(torch.randn(3, 5), -1)
    assert torch.all(k3_kl(logp, logp) == 0)
    out = grpo_loss(logp, torch.zeros(3), torch.ones(3, 5), ref_logp=logp.clone(), beta=0.1)
    assert out.kl == 0.0 and out.loss.item() == 0.0
    assert k3_kl(torch.tensor(0.0), torch.tensor(0.5)).item() == pytest.approx(math.exp(0.5) - 0.5 - 1)
    out = grpo_loss(logp, torch.zeros(3), torch.ones(3, 5), ref_logp=logp + 0.3, beta=0.5, loss_type="dapo")
    kl = math.exp(0.3) - 0.3 - 1
    assert out.kl == pytest.approx(kl, rel=1e-5) and out.loss.item() == pytest.approx(0.5 * kl, rel=1e-5)


def test_token_logprobs_and_entropy_match_softmax():
    logits = torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    logp, ent = token_logprobs(logits, targets, temperature=0.5, with_entropy=True)
    probs = torch.softmax(logits / 0.5, -1)
    assert torch.allclose(logp, probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).log(), atol=1e-5)
    assert torch.allclose(ent, -(probs * probs.log()).sum(-1), atol=1e-5)


def test_advantages_for_each_scale_rewards_variant():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    centred = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    group_std = math.sqrt(1 / 3)                    # unbiased std of [1, 0, 0, 1]
    batch_std = math.sqrt(5.5 / 7)                  # unbiased std of all eight rewards (mean 1.25)
    assert torch.allclose(group_advantages(r, 4, "none"), centred)
    assert torch.allclose(group_advantages(r, 4, "group"),
                          torch.cat([centred[:4] / (group_std + 1e-4), torch.zeros(4)]), atol=1e-6)
    assert torch.allclose(group_advantages(r, 4, "batch"), centred / (batch_std + 1e-4), atol=1e-6)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(r, 4, "median")


def test_a_group_of_equal_rewards_gets_exactly_zero_advantages():
    # the fp32 mean of eight 0.1s is not 0.1: without the exact zero, "group" scaling turns the residue into ~6e-4
    r = torch.tensor([0.1] * 8 + [0.7] * 8 + [0.0, 1.0] * 4)
    for scale in ("group", "batch", "none"):
        adv = group_advantages(r, 8, scale)
        assert torch.equal(adv[:16], torch.zeros(16)), scale
        assert adv[16:].abs().min() > 0.4, scale


def test_dynamic_sampling_refills_the_batch_with_informative_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert informative_groups(r, 2).tolist() == [False, True]
    pool = iter([[1, 1], [0, 1], [0, 0], [2, 2], [1, 0], [3, 1], [0, 2]])
    asked = []

    def draw(k):
        asked.append(k)
        return [next(pool) for _ in range(k)]

    groups, calls = fill_informative_groups(draw, 3, lambda g: g[0] != g[1])
    assert groups == [[0, 1], [1, 0], [3, 1]]
    assert asked == [3, 2, 1] and calls == 3


def test_dynamic_sampling_tops_up_with_uninformative_groups_after_max_draws():
    groups, calls = fill_informative_groups(lambda k: [[1, 1]] * k, 2, lambda g: g[0] != g[1], max_draws=2)
    assert groups == [[1, 1], [1, 1]] and calls == 2
