"""The engine against Hugging Face transformers on the same random checkpoints: greedy tokens and logprobs.

transformers' reference is its own `generate` (greedy, one prompt at a time so that padding plays no part); r1kit
runs all prompts as one continuously batched job with small KV blocks, so paged attention, chunked prefill and
mixed prefill/decode steps are all exercised.
"""
from __future__ import annotations

import pytest
import torch

from r1kit import LLM, SamplingParams

PROMPTS = [
    "Hi",
    "What is 2+2? Answer:",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again, and",
    "Please reason step by step, and put your final answer within \\boxed{}. Find 3*7-4.",
]
MAX_TOKENS = 12


def hf_greedy(path: str, prompt_ids: list[list[int]]):
    """(tokens, logprob of each chosen token) from transformers' greedy generate."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # like ignore_eos (min_new_tokens would mask eos instead)
    tokens, logprobs = [], []
    for ids in prompt_ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=MAX_TOKENS, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True, pad_token_id=0)
        new = out.sequences[0, len(ids):].tolist()
        lps = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, new)]
        tokens.append(new)
        logprobs.append(lps)
    return tokens, logprobs


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["deepseek_v3", "qwen2", "llama"])
def test_greedy_batch_matches_transformers_generate(tiny_checkpoint, model_type):
    path = tiny_checkpoint(model_type)
    llm = LLM(path, device="cpu", dtype="float32", block_size=4, num_kv_blocks=128, max_num_batched_tokens=24)
    prompt_ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompt_ids}) == len(PROMPTS)  # mixed lengths
    outs = llm.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True,
                                                   logprobs=2), use_tqdm=False)
    ref_tokens, ref_logprobs = hf_greedy(path, prompt_ids)
    for out, ids, tokens, lps in zip(outs, prompt_ids, ref_tokens, ref_logprobs):
        c = out.outputs[0]
        assert out.prompt_token_ids == ids
        assert c.token_ids == tokens
        assert c.finish_reason == "length"
        torch.testing.assert_close(torch.tensor(c.token_logprobs), torch.tensor(lps), atol=1e-4, rtol=1e-4)
        assert all(len(d) >= 2 and max(d.values()) <= 0 for d in c.logprobs)  # chosen + top-2
    assert llm.stats()["kv_blocks_used"] == 0
