import math

import pytest
import torch

from r1kit.engine.sampler import Sampler, apply_penalties, make_generator, padded_ids, token_counts
from r1kit.engine.sampling_params import SamplingParams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Upper 0.1% points of the chi-square distribution, df = 1..15 (standard tables; e.g. scipy.stats.chi2.ppf(0.999, df)).
CHI2_999 = [10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588,
            31.264, 32.909, 34.528, 36.123, 37.697]

# A fixed logit vector with distinct values, deliberately not sorted by token id.
LOGITS = [0.3, 2.0, -1.0, 1.5, -0.5, 1.0, -3.0, 0.7, 0.0, -2.0]
N = 20000


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def reference_distribution(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Truncated, renormalised distribution computed independently (float64, plain Python)."""
    p = softmax([x / temperature for x in logits])
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep = set(order[:top_k] if top_k > 0 else order)
    if top_p < 1:
        z = sum(p[i] for i in keep)
        kept, mass = set(), 0.0
        for i in order:
            if i in keep and mass < top_p:
                kept.add(i)
                mass += p[i] / z
        keep = kept
    pmax = max(p)
    keep = {i for i in keep if p[i] >= min_p * pmax}
    z = sum(p[i] for i in keep)
    return [p[i] / z if i in keep else 0.0 for i in range(len(p))]


def chi_square(counts, probs):
    """Statistic and degrees of freedom over the bins with p > 0, pooling bins expected below 5 counts."""
    n = sum(counts)
    stat, df, pool_obs, pool_exp = 0.0, -1, 0, 0.0
    for c, p in zip(counts, probs):
        if p == 0:
            continue
        if n * p < 5:
            pool_obs, pool_exp = pool_obs + c, pool_exp + n * p
            continue
        stat += (c - n * p) ** 2 / (n * p)
        df += 1
    if pool_exp > 0:
        stat += (pool_obs - pool_exp) ** 2 / pool_exp
        df += 1
    return stat, df


def sample_counts(params_list, device="cpu", seed=0):
    """Sample N tokens for each params in params_list in ONE batched call (rows interleaved); counts per params."""
    k = len(params_list)
    logits = torch.tensor(LOGITS, device=device).repeat(N * k, 1)
    params = [params_list[i % k] for i in range(N * k)]
    tokens = Sampler(seed=seed)(logits, params).token_ids.cpu()
    return [torch.bincount(tokens[i::k], minlength=len(LOGITS)).tolist() for i in range(k)]


def assert_matches(counts, probs):
    outside = sum(c for c, p in zip(counts, probs) if p == 0)
    assert outside == 0, f"{outside} draws fell outside the kept set"
    stat, df = chi_square(counts, probs)
    assert 1 <= df <= len(CHI2_999)
    assert stat < CHI2_999[df - 1], f"chi-square {stat:.1f} >= {CHI2_999[df - 1]} (df={df})"


TRUNCATIONS = {
    "top_k": dict(top_k=3),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.1),
    "top_k+top_p+min_p+temperature": dict(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05),
}


@pytest.mark.parametrize("device", DEVICES)
def test_truncated_sampling_matches_renormalised_distribution_in_one_heterogeneous_batch(device):
    configs = list(TRUNCATIONS.values()) + [dict(temperature=0.5), dict(temperature=2.0)]
    all_counts = sample_counts([SamplingParams(**c) for c in configs], device)
    for cfg, counts in zip(configs, all_counts):
        probs = reference_distribution(LOGITS, **cfg)
        assert 0 < sum(p > 0 for p in probs), cfg
        assert_matches(counts, probs)


def test_reference_truncations_keep_the_expected_sets():
    # Guards the reference itself: these sets are what each rule must keep for LOGITS.
    kept = {name: {i for i, p in enumerate(reference_distribution(LOGITS, **cfg)) if p > 0}
            for name, cfg in TRUNCATIONS.items()}
    assert kept["top_k"] == {1, 3, 5}
    assert kept["top_p"] == {1, 3, 5, 7}            # cumulative 0.37, 0.59, 0.73, then 0.83 >= 0.8
    assert kept["min_p"] == {0, 1, 3, 5, 7, 8}      # p / p_max = exp(l - 2) >= 0.1  <=>  l >= -0.30


def test_chi_square_check_rejects_the_untruncated_distribution():
    # The goodness-of-fit check has power: top_p draws, or draws at T = 0.9, do not fit the plain softmax.
    counts = sample_counts([SamplingParams(**TRUNCATIONS["top_p"])])[0]
    stat, df = chi_square(counts, reference_distribution(LOGITS))
    assert stat > CHI2_999[df - 1]
    counts = sample_counts([SamplingParams(temperature=0.9)])[0]  # and T = 0.9 does not fit T = 1
    stat, df = chi_square(counts, reference_distribution(LOGITS))
    assert stat > CHI2_999[df - 1]


def test_temperature_scales_logits_before_softmax():
    cold, hot = sample_counts([SamplingParams(temperature=0.5), SamplingParams(temperature=2.0)])
    assert_matches(cold, softmax([x / 0.5 for x in LOGITS]))
    assert_matches(hot, softmax([x / 2.0 for x in LOGITS]))
    assert cold[1] > hot[1]  # the most likely token gains mass as T falls


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_rows_take_the_argmax(device):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)).to(device)
    params = [SamplingParams.greedy(), SamplingParams(temperature=1.0, top_k=5)] * 3
    out = Sampler()(logits, params)
    assert torch.equal(out.token_ids[0::2], logits[0::2].argmax(-1))
    all_greedy = Sampler()(logits, [SamplingParams.greedy(top_k=1, top_p=0.1)] * 6)
    assert torch.equal(all_greedy.token_ids, logits.argmax(-1)) and all_greedy.logprobs is None


def _draws(sampler, rows, seeded_pos, steps=8, V=40):
    """Tokens drawn for row `seeded_pos` over `steps` calls; rows = [(params, generator or None)]."""
    step_logits = torch.randn(steps, V, generator=torch.Generator().manual_seed(7)) * 0.5  # flat-ish: many choices
    tokens = []
    for t in range(steps):
        logits = torch.randn(len(rows), V)
        logits[seeded_pos] = step_logits[t]
        out = sampler(logits, [p for p, _ in rows], [g for _, g in rows], [[1, 2]] * len(rows), [[3]] * len(rows))
        tokens.append(int(out.token_ids[seeded_pos]))
    return tokens


def test_seeded_draws_do_not_depend_on_batch_composition_or_position():
    p = SamplingParams(seed=1234, temperature=0.9, top_p=0.95)
    alone = _draws(Sampler(seed=0), [(p, make_generator(1234))], 0)
    others = [(SamplingParams(seed=99, top_k=4), make_generator(99)), (SamplingParams(), None),
              (SamplingParams.greedy(logprobs=2), None), (SamplingParams(presence_penalty=1.0), None)]
    batch = others[:2] + [(p, make_generator(1234))] + others[2:]
    assert _draws(Sampler(seed=5), batch, 2) == alone
    assert _draws(Sampler(seed=0), [(p.clone(seed=4321), make_generator(4321))], 0) != alone


def test_unseeded_rows_are_reproducible_from_the_engine_seed():
    params = [SamplingParams()] * 16
    logits = torch.zeros(16, 100)
    a, b, c = (Sampler(seed=s)(logits, params).token_ids for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_samples_of_one_seeded_request_get_distinct_generators():
    logits = torch.zeros(1, 1000)
    p = [SamplingParams(seed=11)]
    draws = [int(Sampler()(logits, p, [make_generator(11, i)]).token_ids) for i in range(4)]
    assert len(set(draws)) == 4
    assert draws[0] == int(Sampler()(logits, p, [make_generator(11, 0)]).token_ids)


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_are_log_softmax_of_temperature_scaled_logits_before_truncation(device):
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(1)).to(device)
    params = [SamplingParams(temperature=0.7, top_p=0.5, logprobs=3), SamplingParams(logprobs=0, top_k=2),
              SamplingParams.greedy(logprobs=5)]
    out = Sampler()(logits, params)
    temps = torch.tensor([0.7, 1.0, 1.0], device=device)[:, None]
    ref = torch.log_softmax(logits.double() / temps, dim=-1)
    chosen = ref.gather(1, out.token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs.double(), chosen, rtol=0, atol=1e-5)
    ref_top, ref_ids = ref.topk(5, dim=-1)
    assert out.top_ids.shape == (3, 5) and torch.equal(out.top_ids, ref_ids)
    torch.testing.assert_close(out.top_logprobs.double(), ref_top, rtol=0, atol=1e-5)
    assert Sampler()(logits, [SamplingParams()] * 3).logprobs is None


def test_penalties_match_hand_computed_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    # prompt {0, 1}, output 3, 3, 2. Repetition (prompt+output): 2/2, -1*2, 0.5/2, 3/2; then output-only
    # frequency (0.5 * count) and presence (0.25): token 2: 0.25-0.5-0.25, token 3: 1.5-1.0-0.25. Token 4 untouched.
    expected = torch.tensor([[1.0, -2.0, -0.5, 0.25, -2.0]])
    torch.testing.assert_close(apply_penalties(logits, [p], [[0, 1]], [[3, 3, 2]]), expected)

    # Through the sampler: greedy now picks token 0 (token 3 without penalties); logprob from the penalised logits.
    batch = torch.cat([logits, logits])
    out = Sampler()(batch, [p.clone(temperature=0, logprobs=0), SamplingParams.greedy(logprobs=0)],
                    prompt_ids=[[0, 1], [0, 1]], output_ids=[[3, 3, 2], [3, 3, 2]])
    assert out.token_ids.tolist() == [0, 3]
    torch.testing.assert_close(out.logprobs[0], torch.log_softmax(expected[0], -1)[0])
    torch.testing.assert_close(out.logprobs[1], torch.log_softmax(logits[0], -1)[3])  # unpenalised row untouched
    assert batch[0, 3] == 3.0  # the caller's logits are not modified


def test_negative_presence_penalty_encourages_seen_tokens_and_prompt_is_not_counted():
    logits = torch.zeros(1, 4)
    p = SamplingParams(presence_penalty=-1.0, frequency_penalty=0.0)
    out = apply_penalties(logits, [p], [[0, 0, 0]], [[2]])
    assert out.tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_token_counts_scatter_padded_sequences():
    ids = padded_ids([[1, 1, 4], [], [0, 9]], pad=5, device="cpu")  # 9 is out of vocabulary: treated as padding
    assert ids.tolist() == [[1, 1, 4], [5, 5, 5], [0, 5, 5]]
    assert token_counts(ids, vocab_size=5)[:, :5].tolist() == [[0, 2, 0, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert padded_ids([[], []], pad=5, device="cpu").shape == (2, 0)


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    eos, stop = 0, 4
    logits = torch.tensor([[5.0, 1.0, 0.0, 2.0, 4.0]])
    sampler = Sampler(eos_token_ids=[eos])
    p = SamplingParams.greedy(min_tokens=3, stop_token_ids=[stop], logprobs=0)
    early = sampler(logits, [p], output_ids=[[1, 1]], prompt_ids=[[]])
    assert int(early.token_ids) == 3  # eos and the stop id are masked
    assert sampler(logits, [p], output_ids=[[1, 1, 1]]).token_ids.tolist() == [eos]
    ignore = sampler(logits, [p.clone(ignore_eos=True)], output_ids=[[1]])
    assert int(ignore.token_ids) == eos  # ignore_eos: eos is not a stop token, so it is not masked
    masked = sampler(logits.repeat(2, 1), [p.clone(logprobs=5), p.clone(stop_token_ids=[])],
                     output_ids=[[], []])
    assert masked.top_logprobs[0, -2:].isinf().all()  # eos and the stop id carry -inf logprobs
    assert int(masked.token_ids[1]) == stop


def test_sampler_asks_for_history_when_penalties_need_it():
    with pytest.raises(ValueError, match="output_ids"):
        Sampler()(torch.zeros(1, 5), [SamplingParams(frequency_penalty=1.0)])
    with pytest.raises(ValueError, match="prompt_ids"):
        Sampler()(torch.zeros(1, 5), [SamplingParams(repetition_penalty=1.2)], output_ids=[[1]])


@pytest.mark.parametrize("V", [40, 3000])
def test_candidate_top_k_top_p_cut_equals_full_sort(V):
    from r1kit.engine.sampler import _top_k_top_p, _top_k_top_p_sorted

    g = torch.Generator().manual_seed(V)
    R = 48
    scale = torch.tensor([0.01, 0.3, 1.0, 4.0, 10.0, 30.0]).repeat(R // 6)[:, None]  # flat ... peaked rows
    x = torch.randn(R, V, generator=g) * scale
    top_k = torch.tensor([V, 1, 7, V, 300, V, V, 50] * (R // 8)).clamp(max=V)
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.99, 0.95, 1.0, 0.3, 0.8, 0.7, 0.999, 1.0, 0.6] * (R // 12))
    fast = _top_k_top_p(x, top_k, top_p, max_k=max([k for k in top_k.tolist() if k < V], default=0))
    torch.testing.assert_close(fast, _top_k_top_p_sorted(x, top_k, top_p), rtol=0, atol=0)
    kept = fast.isfinite().sum(-1)
    assert (kept >= 1).all() and (kept <= top_k).all()
    if V > 256:
        assert ((top_p < 1) & (top_k == V) & (kept > 256)).any()  # the full-sort fallback was exercised


def test_oversized_top_k_and_logprobs_are_clamped_to_the_vocabulary_and_half_logits_work():
    logits = torch.tensor([[0.0, 3.0, 1.0]], dtype=torch.bfloat16)
    out = Sampler()(logits, [SamplingParams(top_k=50, logprobs=20, seed=1)], [make_generator(1)])
    assert out.top_ids.tolist() == [[1, 2, 0]] and out.top_logprobs.dtype == torch.float32
    assert int(out.token_ids) in (0, 1, 2)
