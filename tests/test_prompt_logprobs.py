"""Prompt logprobs (SamplingParams.prompt_logprobs, /v1/completions echo + logprobs), max_tokens=0 scoring,
batched prompts in vLLM's index order, logit_bias, best_of and the tokenizer endpoints.

References are computed directly: one full causal forward of the model over the prompt, log_softmax'ed.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
import torch

from r1kit import LLM, SamplingParams
from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

TEXT = "The quick brown fox jumps over the lazy dog; then it naps under an old oak tree until noon."


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    # small blocks and a small token budget: prompts are prefilled in several chunks, and shared blocks get cached
    return LLM(tiny_checkpoint("deepseek_v3"), device="cpu", block_size=4, num_kv_blocks=512,
               max_num_batched_tokens=16, max_model_len=256)


def reference(llm, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1, V]: logprobs of the next token at each prompt position, from one full forward."""
    with torch.inference_mode():
        logits = llm.model(torch.tensor(ids)[None]).float()[0]
    return torch.log_softmax(logits, dim=-1)[:-1]


def check_prompt_logprobs(entries, ids, ref, k, tol=1e-4):
    assert len(entries) == len(ids) and entries[0] is None
    for i in range(1, len(ids)):
        entry = entries[i]
        assert abs(entry[ids[i]] - ref[i - 1, ids[i]].item()) < tol
        top = ref[i - 1].topk(k) if k else None
        if k:
            for t, v in zip(top.indices.tolist(), top.values.tolist()):
                assert abs(entry[t] - v) < tol
        assert len(entry) <= k + 1


def test_prompt_logprobs_equal_a_full_forward_across_chunks_and_the_prefix_cache(llm):
    ids = llm.tokenizer.encode(TEXT)
    assert len(ids) > 40  # several prefill chunks of 16
    ref = reference(llm, ids)
    params = [SamplingParams(max_tokens=0, prompt_logprobs=3), SamplingParams(max_tokens=3, prompt_logprobs=0),
              SamplingParams(max_tokens=0, prompt_logprobs=5, n=2)]
    # twice: the second time every full block of the prompt is in the prefix cache
    for _ in range(2):
        outs = llm.generate([ids] * 3, params, use_tqdm=False)
        for out, p in zip(outs, params):
            check_prompt_logprobs(out.prompt_logprobs, ids, ref, p.prompt_logprobs)
        assert outs[0].outputs[0].token_ids == [] and outs[0].outputs[0].finish_reason == "length"
        assert len(outs[1].outputs[0].token_ids) == 3
        assert [c.token_ids for c in outs[2].outputs] == [[], []]
    plain = llm.generate(ids, SamplingParams(max_tokens=1), use_tqdm=False)[0]
    assert plain.prompt_logprobs is None


def test_prompt_logprobs_survive_preemption(tiny_checkpoint):
    # 12 blocks of 4 tokens: two long prompts cannot both stay, so the newer one is preempted and recomputed
    small = LLM(tiny_checkpoint("deepseek_v3"), device="cpu", block_size=4, num_kv_blocks=24,
                max_num_batched_tokens=8, max_model_len=96)
    ids = small.tokenizer.encode(TEXT)[:40]
    ref = reference(small, ids)
    outs = small.generate([ids, ids[::-1]], SamplingParams(max_tokens=40, prompt_logprobs=2, ignore_eos=True,
                                                           temperature=0), use_tqdm=False)
    assert small.engine.scheduler.num_preemptions > 0
    check_prompt_logprobs(outs[0].prompt_logprobs, ids, ref, 2)
    check_prompt_logprobs(outs[1].prompt_logprobs, ids[::-1], reference(small, ids[::-1]), 2)


def test_logit_bias_is_applied_and_checked(llm):
    ids = llm.tokenizer.encode(TEXT)
    greedy = llm.generate(ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    first = greedy[0].outputs[0].token_ids[0]
    banned = llm.generate(ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                              logit_bias={first: -100}), use_tqdm=False)[0].outputs[0]
    assert first not in banned.token_ids
    forced = llm.generate(ids, SamplingParams(temperature=1.0, seed=3, max_tokens=6, ignore_eos=True,
                                              logit_bias={"77": 100}), use_tqdm=False)[0].outputs[0]
    assert forced.token_ids == [77] * 6
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate(ids, SamplingParams(logit_bias={10**6: 1.0}), use_tqdm=False)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={1: 101})


# ---- over HTTP, with the official client ----

@pytest.fixture(scope="module")
def server(llm):
    with BackgroundServer(create_app(llm.engine, "tiny", api_key="k")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=60)


def _post(server, path, body, key="k"):
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_echo_returns_prompt_logprobs_for_text_and_token_prompts(client, llm):
    ids = llm.tokenizer.encode(TEXT)
    ref = reference(llm, ids)
    for prompt in (TEXT, ids):
        for max_tokens in (0, 2):
            r = client.completions.create(model="tiny", prompt=prompt, echo=True, logprobs=2, max_tokens=max_tokens,
                                          temperature=0, extra_body={"ignore_eos": True})
            c = r.choices[0]
            lp = c.logprobs
            assert c.text.startswith(TEXT) and len(lp.tokens) == len(ids) + max_tokens
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
            for i in range(1, len(ids)):
                assert abs(lp.token_logprobs[i] - ref[i - 1, ids[i]].item()) < 1e-4
                assert lp.tokens[i] == llm.tokenizer.decode([ids[i]])
                assert lp.tokens[i] in lp.top_logprobs[i] and len(lp.top_logprobs[i]) <= 3
            assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == max_tokens
            assert lp.text_offset[1] == len(lp.tokens[0])
    streamed = [ch for ch in client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=1, max_tokens=2,
                                                      temperature=0, stream=True) if ch.choices]
    assert streamed[0].choices[0].text.startswith(TEXT)
    lp = [t for ch in streamed if ch.choices[0].logprobs for t in ch.choices[0].logprobs.token_logprobs]
    assert len(lp) == len(ids) + 2 and lp[0] is None
    assert abs(lp[5] - ref[4, ids[5]].item()) < 1e-4


def test_logprobs_0_names_the_chosen_token(client):
    r = client.completions.create(model="tiny", prompt=TEXT, logprobs=0, max_tokens=3, temperature=0)
    lp = r.choices[0].logprobs
    assert [list(d) for d in lp.top_logprobs] == [[t] for t in lp.tokens]
    assert [d[t] for d, t in zip(lp.top_logprobs, lp.tokens)] == lp.token_logprobs


def test_batched_prompts_come_back_in_vllm_index_order(client, llm):
    texts = ["One two three", "Four five six seven", "Eight"]
    kw = dict(model="tiny", max_tokens=4, temperature=1.0, seed=11, n=2, extra_body={"ignore_eos": True})
    alone = [client.completions.create(prompt=t, **kw) for t in texts]
    for prompt in (texts, [llm.tokenizer.encode(t) for t in texts]):
        batch = client.completions.create(prompt=prompt, **kw)
        assert [c.index for c in batch.choices] == list(range(6))
        for i in range(3):
            for j in range(2):
                assert batch.choices[i * 2 + j].text == alone[i].choices[j].text
        assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
        assert batch.usage.completion_tokens == 24
    chunks = [ch for ch in client.completions.create(prompt=texts, stream=True, **kw) if ch.choices]
    text = {}
    for ch in chunks:
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + c.text
    assert text == {i * 2 + j: alone[i].choices[j].text for i in range(3) for j in range(2)}


def test_best_of_returns_the_most_likely_samples(client):
    kw = dict(model="tiny", prompt=TEXT, max_tokens=5, temperature=1.0, seed=5, extra_body={"ignore_eos": True})
    every = client.completions.create(n=4, logprobs=0, **kw).choices
    score = {c.text: sum(c.logprobs.token_logprobs) for c in every}
    best = client.completions.create(n=2, best_of=4, **kw).choices
    assert [c.index for c in best] == [0, 1] and best[0].logprobs is None
    assert [c.text for c in best] == sorted(score, key=lambda t: -score[t])[:2]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"),
    ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
    ({"prompt": "x", "logit_bias": {"999999": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"1": 300}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
    ({"prompt": ["x", ""]}, "prompt.1"),
    ({"prompt": [[1, 2], [999999]]}, "prompt.1"),
    ({"prompt": []}, "prompt"),
])
def test_fields_that_cannot_be_honoured_are_400_naming_them(server, body, param):
    status, err = _post(server, "/v1/completions", body)
    assert status == 400 and err["error"]["param"] == param, err


def test_chat_logit_bias(client, llm):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       logit_bias={"77": 100}, extra_body={"return_token_ids": True})
    assert r.choices[0].model_extra["token_ids"] == [77] * 4


def test_tokenize_detokenize_and_tokenizer_info(server, llm):
    tok = llm.tokenizer
    status, r = _post(server, "/tokenize", {"prompt": TEXT, "return_token_strs": True})
    assert status == 200 and r["tokens"] == tok.encode(TEXT) and r["count"] == len(r["tokens"])
    assert r["token_strs"] == [tok.id_to_token(i) for i in r["tokens"]] and r["max_model_len"] == 256
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    status, r = _post(server, "/tokenize", {"messages": messages})
    assert r["tokens"] == tok.apply_chat_template(messages, tokenize=True)
    status, r = _post(server, "/detokenize", {"tokens": tok.encode(TEXT)})
    assert status == 200 and r == {"prompt": TEXT}
    status, r = _post(server, "/detokenize", {"tokens": [10**6]})
    assert status == 400 and r["error"]["param"] == "tokens"
    req = urllib.request.Request(server.url + "/tokenizer_info", headers={"Authorization": "Bearer k"})
    with urllib.request.urlopen(req) as resp:
        info = json.load(resp)
    assert info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    assert _post(server, "/tokenize", {"prompt": "x"}, key="wrong")[0] == 401
