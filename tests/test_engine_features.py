"""Engine behaviour on a random tiny DeepSeek-V3 checkpoint: stop conditions, the thinking budget, streaming,
n samples, prefix caching across requests, and that every KV block comes back."""
from __future__ import annotations

import pytest
import torch

from r1kit import LLM, SamplingParams

PROMPT = "Question: what is the sum of the first ten odd numbers? Let us think."


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(tiny_checkpoint("deepseek_v3"), device="cpu", block_size=4, num_kv_blocks=256)


def greedy(**kw):
    return SamplingParams(temperature=0, **{"max_tokens": 24, "ignore_eos": True, **kw})


def test_stop_string_cuts_text_and_ends_generation(llm):
    full = llm.generate(PROMPT, greedy(), use_tqdm=False)[0].outputs[0]
    stop = full.text[10:13]
    assert stop and full.text.find(stop) == 10
    out = llm.generate(PROMPT, greedy(stop=[stop, "never-there"]), use_tqdm=False)[0].outputs[0]
    assert out.text == full.text[:10]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert full.token_ids[:len(out.token_ids)] == out.token_ids and len(out.token_ids) < len(full.token_ids)
    kept = llm.generate(PROMPT, greedy(stop=stop, include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == full.text[:13]


def test_stop_token_id_and_eos_end_generation(llm):
    full = llm.generate(PROMPT, greedy(), use_tqdm=False)[0].outputs[0]
    target = full.token_ids[5]
    first = full.token_ids.index(target)
    out = llm.generate(PROMPT, greedy(stop_token_ids=[target]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == full.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target
    assert out.text == llm.tokenizer.decode(full.token_ids[:first], skip_special_tokens=True)
    # eos: with a model whose eos is that token, generation stops there unless ignore_eos
    llm.engine.eos_ids.add(target)
    try:
        assert llm.generate(PROMPT, greedy(ignore_eos=False), use_tqdm=False)[0].outputs[0].token_ids == out.token_ids
        assert llm.generate(PROMPT, greedy(), use_tqdm=False)[0].outputs[0].token_ids == full.token_ids
    finally:
        llm.engine.eos_ids.discard(target)


def test_thinking_budget_is_enforced_exactly_in_one_forward(llm):
    tok = llm.tokenizer
    messages = [{"role": "user", "content": "What is 2+2?"}]
    params = greedy(max_thinking_tokens=6, max_tokens=40, thinking_wrapup="\nOK, answering.\n")
    calls = []
    handle = llm.model.register_forward_hook(lambda m, args, kw_out=None: calls.append(1))
    try:
        out = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
    finally:
        handle.remove()
    forced = tok.encode(params.thinking_wrapup + params.thinking_end)
    assert tok.think_end_id not in out.token_ids[:6]
    assert out.num_reasoning_tokens == 6
    assert out.token_ids[6:6 + len(forced)] == forced
    assert out.logprobs is None and len(out.token_ids) == 40
    # the forced tokens cost no extra forward: one per sampled token
    assert len(calls) == 40 - len(forced)
    thought = tok.decode(out.token_ids[:6])
    assert out.reasoning == (thought + params.thinking_wrapup).strip()
    assert out.content == tok.decode(out.token_ids[6 + len(forced):]).lstrip() and out.content
    assert "</think>" in out.text


def test_streaming_deltas_only_grow_and_concatenate_to_final_text(llm):
    engine = llm.engine
    full = llm.generate(PROMPT, greedy(max_tokens=30), use_tqdm=False)[0].outputs[0]
    stop = full.text[15:19]
    engine.add_request("stream", llm.tokenizer.encode(PROMPT), greedy(max_tokens=30, stop=stop,
                                                                      max_thinking_tokens=8))
    streamed = {"text": "", "reasoning": "", "content": ""}
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            c = out.outputs[0]
            for field in streamed:
                now = getattr(c, field)
                assert now.startswith(streamed[field])  # cumulative: a client can send plain diffs
                streamed[field] = now
            final = out
    assert final.finished and final.outputs[0].text == streamed["text"]
    assert streamed["text"] == full.text[:15] or final.outputs[0].finish_reason == "length"


def test_n_samples_share_prompt_blocks(llm):
    before = llm.stats()["prefix_cache_hits"]
    long_prompt = PROMPT * 3
    out = llm.generate(long_prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    prompt_blocks = (len(out.prompt_token_ids) - 1) // 4
    assert llm.stats()["prefix_cache_hits"] - before >= 2 * prompt_blocks  # samples 1 and 2 reuse sample 0's
    # sample 0 finishing in the step that computed the prompt must not strand the others
    short = llm.generate(long_prompt, SamplingParams(n=2, temperature=1.0, max_tokens=1), use_tqdm=False)[0]
    assert [len(c.token_ids) for c in short.outputs] == [1, 1]


def test_prefix_cache_reuses_blocks_for_shared_system_prompt(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("deepseek_v3"), device="cpu", block_size=4, num_kv_blocks=128)
    system = [{"role": "system", "content": "You are a helpful assistant who answers in one word."}]
    first = llm.chat(system + [{"role": "user", "content": "Capital of France?"}], greedy(max_tokens=4),
                     use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    second = llm.chat(system + [{"role": "user", "content": "Largest planet?"}], greedy(max_tokens=4),
                      use_tqdm=False)[0]
    shared = next(i for i, (a, b) in enumerate(zip(first.prompt_token_ids, second.prompt_token_ids)) if a != b)
    assert second.num_cached_tokens == shared // 4 * 4 > 0
    assert llm.stats()["prefix_cache_hit_rate"] > 0


def test_every_block_is_free_after_finish_and_abort(llm):
    engine = llm.engine
    bm = engine.block_manager
    for i in range(4):
        engine.add_request(f"r{i}", PROMPT + str(i), greedy(max_tokens=50))
    for _ in range(3):
        engine.step()
    assert bm.num_free_blocks < bm.num_blocks
    engine.abort_request("r1")
    engine.abort_request("r3")
    while engine.has_unfinished_requests():
        engine.step()
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_aborting_a_request_that_finished_on_arrival_does_not_break_the_next_step(llm):
    engine = llm.engine
    engine.add_request("running", PROMPT, greedy(max_tokens=20))
    engine.step()
    # a zero thinking budget with max_tokens=1 finishes inside add_request, before any step reports it
    chat_prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
    assert chat_prompt.endswith("<think>\n")
    engine.add_request("instant", chat_prompt, greedy(max_tokens=1, max_thinking_tokens=0))
    engine.abort_request("instant")
    seen = set()
    while engine.has_unfinished_requests():
        seen |= {o.request_id for o in engine.step()}
    assert seen == {"running"}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_more_logprobs_than_the_vocabulary_are_capped_at_the_vocabulary(llm):
    vocab = llm.model.config.vocab_size
    out = llm.generate(PROMPT, greedy(max_tokens=2, logprobs=vocab + 50), use_tqdm=False)[0].outputs[0]
    assert [len(lp) for lp in out.logprobs] == [vocab, vocab]
    probs = torch.tensor(list(out.logprobs[0].values())).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-4)
    chosen_only = llm.generate(PROMPT, greedy(max_tokens=2, logprobs=0), use_tqdm=False)[0].outputs[0]
    assert [list(lp) for lp in chosen_only.logprobs] == [[t] for t in chosen_only.token_ids]


def test_bad_requests_raise_clear_errors(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[5] * 5000], greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match="token ids must be in"):
        llm.generate([[10**6]], greedy(), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()


def test_free_kv_cache_and_reallocate(llm):
    ref = llm.generate(PROMPT, greedy(max_tokens=6), use_tqdm=False)[0].outputs[0].token_ids
    llm.free_kv_cache()
    assert llm.engine.runner.kv_cache is None
    with pytest.raises(RuntimeError, match="freed"):
        llm.generate(PROMPT, greedy(max_tokens=6), use_tqdm=False)
    llm.allocate_kv_cache()
    assert llm.generate(PROMPT, greedy(max_tokens=6), use_tqdm=False)[0].outputs[0].token_ids == ref
    assert isinstance(llm.engine.runner.kv_cache, torch.Tensor)
