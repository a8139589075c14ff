"""The same requests give the same tokens however the engine runs them: alone, in a batch, after prefix-cache
hits, in small prefill chunks, and under a KV budget so small that sequences get preempted and recomputed."""
from __future__ import annotations

import pytest

from r1kit import LLM, SamplingParams

SYSTEM = "You are a careful assistant. Think step by step and check every result twice before answering. "
PROMPTS = [SYSTEM + q for q in ("What is 12*12?", "Name a prime above 50.", "Sort 3 1 2.", "Hi")] + ["Short one"]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module", params=["deepseek_v3", "qwen2"])
def setup(request, tiny_checkpoint):
    path = tiny_checkpoint(request.param)
    solo = LLM(path, device="cpu", block_size=4, num_kv_blocks=256, enable_prefix_caching=False)
    reference = [tokens(solo.generate([p], GREEDY, use_tqdm=False))[0] for p in PROMPTS]
    return path, reference


def test_batch_and_prefix_cache_hits_give_same_tokens(setup):
    path, reference = setup
    llm = LLM(path, device="cpu", block_size=4, num_kv_blocks=256)
    assert tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    hits_before = llm.stats()["prefix_cache_hits"]
    again = llm.generate(PROMPTS, GREEDY, use_tqdm=False)  # every prompt's full blocks are cached now
    assert tokens(again) == reference
    assert llm.stats()["prefix_cache_hits"] > hits_before
    assert all(o.num_cached_tokens >= len(o.prompt_token_ids) - 4 for o in again)


def test_chunked_prefill_and_preemption_give_same_tokens(setup):
    path, reference = setup
    # 8-token steps force chunked prefill; 30 blocks of 4 (120 tokens) hold one 53-94 token sequence, not five
    llm = LLM(path, device="cpu", block_size=4, num_kv_blocks=30, max_num_batched_tokens=8)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert tokens(outs) == reference
    stats = llm.stats()
    assert stats["num_preemptions"] > 0
    assert stats["kv_blocks_used"] == 0 and stats["kv_blocks_free"] == 30


def test_seeded_sampling_is_reproducible_regardless_of_batch(setup):
    path, _ = setup
    llm = LLM(path, device="cpu", block_size=4, num_kv_blocks=256)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = tokens(llm.generate([PROMPTS[0]], params, use_tqdm=False))[0]
    others = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(PROMPTS, [params] + [others] * (len(PROMPTS) - 1), use_tqdm=False)
    assert tokens(batch)[0] == alone
    assert tokens(llm.generate([PROMPTS[0]], params.clone(seed=99), use_tqdm=False))[0] != alone
