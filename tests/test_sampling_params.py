import pytest

from r1kit.engine.sampling_params import InvalidSamplingParam, SamplingParams
from r1kit.errors import UserError


def test_defaults_match_vllm_names_and_values():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p, p.max_tokens) == (1, 1.0, 1.0, 0, 0.0, 16)
    assert p.stop == [] and p.stop_token_ids == [] and p.logprobs is None and p.seed is None
    assert p.repetition_penalty == 1.0 and not p.has_penalties and not p.is_greedy
    assert p.thinking_end == "</think>\n\n" and p.thinking_wrapup.strip()


def test_stop_string_is_normalised_to_a_list():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


@pytest.mark.parametrize("top_k", [0, -1, None])
def test_top_k_zero_minus_one_and_none_all_mean_disabled(top_k):
    assert SamplingParams(top_k=top_k).top_k == 0


def test_greedy_constructor_and_zero_temperature_are_greedy():
    assert SamplingParams.greedy(max_tokens=5).is_greedy
    assert SamplingParams.greedy(max_tokens=5).max_tokens == 5
    assert SamplingParams(temperature=0).is_greedy
    assert not SamplingParams(temperature=0.01).is_greedy


def test_clone_copies_lists_and_validates_changes():
    p = SamplingParams(stop=["x"], stop_token_ids=[3])
    q = p.clone(temperature=0.5)
    q.stop.append("y")
    q.stop_token_ids.append(4)
    assert p.stop == ["x"] and p.stop_token_ids == [3] and q.temperature == 0.5 and p.temperature == 1.0
    with pytest.raises(ValueError, match="top_p"):
        p.clone(top_p=0.0)


def test_none_max_tokens_means_no_limit():
    assert SamplingParams(max_tokens=None).max_tokens is None


INVALID = [
    ("n", 0), ("n", 1.5), ("n", True),
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", "1"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", -0.2),
    ("top_k", -2), ("top_k", 2.5),
    ("min_p", -0.1), ("min_p", 1.01),
    ("seed", 1.5), ("seed", "7"),
    ("max_tokens", -1), ("max_tokens", -3), ("max_tokens", 2.0),
    ("min_tokens", -1),
    ("stop", ""), ("stop", ["ok", ""]), ("stop", 5), ("stop", ["a", 3]),
    ("stop_token_ids", [1, -1]), ("stop_token_ids", "12"), ("stop_token_ids", [1.0]),
    ("ignore_eos", "yes"),
    ("logprobs", -1), ("logprobs", True), ("logprobs", 2.5),
    ("prompt_logprobs", -1), ("logit_bias", [1]), ("stop_in_reasoning", "no"),
    ("presence_penalty", 2.5), ("presence_penalty", -2.01),
    ("frequency_penalty", 3.0), ("frequency_penalty", float("nan")),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("include_stop_str_in_output", 1),
    ("skip_special_tokens", None),
    ("max_thinking_tokens", -1), ("max_thinking_tokens", 1.5),
    ("thinking_wrapup", None),
    ("thinking_end", ""), ("thinking_end", 7),
]


@pytest.mark.parametrize("field,value", INVALID)
def test_invalid_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field) as info:
        SamplingParams(**{field: value})
    assert isinstance(info.value, UserError) and isinstance(info.value, InvalidSamplingParam)
    assert info.value.param == field
    assert repr(value) in str(info.value)  # the message shows what was given


@pytest.mark.parametrize("bias, shown", [({1: 200}, "200"), ({"x": 1.0}, "'x'"), ({-2: 1.0}, "-2"),
                                         ({"3": float("inf")}, "inf")])
def test_bad_logit_bias_entries_are_named(bias, shown):
    with pytest.raises(InvalidSamplingParam, match="logit_bias") as info:
        SamplingParams(logit_bias=bias)
    assert info.value.param == "logit_bias" and shown in str(info.value)


def test_logit_bias_keys_may_be_json_strings():
    assert SamplingParams(logit_bias={"5": 1, 7: -2.5}).logit_bias == {5: 1.0, 7: -2.5}
    assert SamplingParams(logit_bias={}).logit_bias is None


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ValueError, match="min_tokens must be <= max_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)
    assert SamplingParams(min_tokens=10, max_tokens=None).min_tokens == 10


def test_error_message_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        SamplingParams(top_p=1.5)


def test_boundary_values_are_accepted():
    p = SamplingParams(top_p=1.0, min_p=1.0, presence_penalty=-2, frequency_penalty=2, logprobs=0, seed=-5,
                       max_thinking_tokens=0, thinking_wrapup="", top_k=1, temperature=0)
    assert p.presence_penalty == -2.0 and isinstance(p.presence_penalty, float) and p.logprobs == 0
