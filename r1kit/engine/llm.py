"""LLM: offline batch generation with vLLM's interface, on top of LLMEngine.

    from r1kit import LLM, SamplingParams
    llm = LLM("path/to/checkpoint")                   # or a hub id, a builtin name, or model=nn.Module + tokenizer
    outs = llm.generate(["1+1=", "2+2="], SamplingParams(temperature=0, max_tokens=32))
    outs = llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=256, max_thinking_tokens=128))

A live nn.Module (e.g. the policy being trained by GRPO) is used as is, without a copy; after its weights change
call `reset_prefix_cache()` (or `free_kv_cache()` during training, `allocate_kv_cache()` again before generating).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time

from torch import nn

from r1kit import ops
from r1kit.device import resolve_device, resolve_dtype
from r1kit.engine.llm_engine import LLMEngine
from r1kit.engine.outputs import RequestOutput
from r1kit.engine.sampling_params import SamplingParams
from r1kit.errors import UserError

_counter = itertools.count()


def _load(model, tokenizer, dtype, device, seed):
    """(nn.Module, Tokenizer) from a module, or a checkpoint directory / hub id / builtin name (models/builtin.py)."""
    from r1kit.tokenizer import Tokenizer, load_tokenizer

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise UserError("LLM(model=<nn.Module>) needs tokenizer= (a Tokenizer or a tokenizer directory)")
        return model, tokenizer
    if not isinstance(model, (str, os.PathLike)):
        raise UserError(f"model must be a checkpoint path, a hub id, a builtin name or an nn.Module, got {model!r}")
    from r1kit.models.builtin import resolve_model
    from r1kit.models.checkpoint import load_model

    path = resolve_model(model, seed)
    dev = resolve_device(device)
    module = load_model(path, dtype=resolve_dtype(dtype, dev), device=dev)
    return module.eval(), tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(path)


class LLM:
    def __init__(self, model, tokenizer=None, dtype=None, device=None, max_num_seqs: int = 64,
                 max_model_len: int | None = None, kv_cache_memory: int | None = None,
                 num_kv_blocks: int | None = None, block_size: int = 16, enable_prefix_caching: bool = True,
                 seed: int = 0, reasoning_parser: str = "r1", max_num_batched_tokens: int = 2048):
        module, tok = _load(model, tokenizer, dtype, device, seed)
        self.engine = LLMEngine(module, tok, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                kv_cache_memory=kv_cache_memory, num_kv_blocks=num_kv_blocks, block_size=block_size,
                                enable_prefix_caching=enable_prefix_caching, seed=seed,
                                reasoning_parser=reasoning_parser, max_num_batched_tokens=max_num_batched_tokens)
        self.model, self.tokenizer = module, tok

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for every prompt (a str, a list of str, or a list of token-id lists); outputs in input order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompts):
                raise ValueError(f"got {len(sampling_params)} sampling_params for {len(prompts)} prompts")
            params = sampling_params
        else:
            params = [sampling_params or SamplingParams()] * len(prompts)
        batch = next(_counter)
        ids = [f"gen{batch}-{i}" for i in range(len(prompts))]
        try:
            for rid, prompt, p in zip(ids, prompts, params):
                self.engine.add_request(rid, prompt, p)
            return self._run(ids, use_tqdm)
        finally:
            for rid in ids:  # after an error (or Ctrl-C), leave no request holding KV blocks
                self.engine.abort_request(rid)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True, **template_kwargs) -> list[RequestOutput]:
        """One conversation (a list of {'role', 'content'} dicts) or a list of them, rendered by the chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, **template_kwargs)
                   for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req", dynamic_ncols=True)
        start, n_out = time.perf_counter(), 0
        while len(done) < len(ids) and self.engine.has_unfinished_requests():
            outs = self.engine.step()
            if not outs and not self.engine.scheduler.has_unfinished():
                raise RuntimeError("the engine has unfinished requests but nothing to schedule (a bug; please report)")
            for out in outs:
                if out.finished:
                    done[out.request_id] = out
                    n_out += sum(len(c.token_ids) for c in out.outputs)
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                gen = self.engine.stats_tracker.generation_tokens_total
                bar.set_postfix_str(f"{self.engine.stats()['generation_tokens_per_s']:.1f} tok/s out, "
                                    f"{gen / max(time.perf_counter() - start, 1e-9):.1f} avg", refresh=False)
        if bar is not None:
            bar.close()
        return [done[r] for r in ids]

    # -- memory, weights, stats ---------------------------------------------------------------------------------
    def free_kv_cache(self) -> None:
        """Release the KV cache memory (e.g. while the model trains); `allocate_kv_cache()` brings it back."""
        self.engine.free_kv_cache()

    def allocate_kv_cache(self) -> None:
        """Bring the KV cache back after `free_kv_cache()` (zeroed, with an empty prefix cache)."""
        self.engine.allocate_kv_cache()

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt KV: call after the model's weights changed."""
        self.engine.reset_prefix_cache()

    @contextlib.contextmanager
    def frozen_weights(self):
        """A promise that the model's weights do not change inside (a GRPO rollout): generate() may then run over
        faster derived copies of them, made on first use and dropped on exit (on CPU, column-blocked fp32 copies:
        decode experts 1.9x and linears 1.7x faster; r1kit/ops/frozen.py). For this thread's calls only."""
        with ops.frozen_weights():
            yield

    def stats(self) -> dict:
        return self.engine.stats()

    def get_tokenizer(self):
        return self.tokenizer
