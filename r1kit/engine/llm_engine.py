"""LLMEngine: the streaming core that the LLM class, the server and the trainers drive.

    engine.add_request(request_id, prompt, params)   # str (tokenized here) or token ids
    while engine.has_unfinished_requests():
        for out in engine.step(): ...                 # RequestOutputs of requests that progressed (cumulative)
    engine.abort_request(request_id)                  # frees its KV blocks at once

Each step: the scheduler picks sequences and token counts, the model runner runs one forward and samples, then
every sequence that sampled gets its token, and the per-sequence rules run here: stop token ids / eos, stop
strings (TextState: in the answer only, unless stop_in_reasoning), max_tokens, max_model_len, and the thinking
budget (after `max_thinking_tokens` sampled tokens without `</think>`, the tokens of `thinking_wrapup +
thinking_end` are appended at once and computed as one chunk in the next forward). A request with n > 1 samples
runs sample 0 first; the others join once its prompt is in the KV cache and share those blocks through prefix
caching.
"""
from __future__ import annotations

import time

import torch

from r1kit.engine.block_manager import BlockManager
from r1kit.engine.detokenizer import TextState
from r1kit.engine.model_runner import ModelRunner
from r1kit.engine.outputs import CompletionOutput, RequestOutput
from r1kit.engine.reasoning_parser import get_reasoning_parser
from r1kit.engine.sampler import Sampler, make_generator
from r1kit.engine.sampling_params import InvalidSamplingParam, SamplingParams
from r1kit.engine.scheduler import Scheduler
from r1kit.engine.sequence import Sequence
from r1kit.engine.stats import EngineStats
from r1kit.engine.structured_output import GrammarCompiler


class _Request:
    def __init__(self, request_id, prompt, prompt_ids, params):
        self.request_id, self.prompt, self.prompt_ids, self.params = request_id, prompt, prompt_ids, params
        self.seqs: list[Sequence] = []
        self.texts: list[TextState] = []
        self.pending: list[Sequence] = []  # samples 1..n-1 waiting for sample 0's prompt KV
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None


class LLMEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, max_num_seqs: int = 64, max_model_len: int | None = None,
                 kv_cache_memory: int | None = None, num_kv_blocks: int | None = None, block_size: int = 16,
                 enable_prefix_caching: bool = True, seed: int = 0, reasoning_parser: str = "r1",
                 max_num_batched_tokens: int = 2048):
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        limit = getattr(cfg, "max_position_embeddings", None) or 1 << 20
        self.max_model_len = min(max_model_len or limit, limit)
        eos = getattr(cfg, "eos_token_id", None)
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {e for e in list(eos) + [tokenizer.eos_token_id] if e is not None}
        self.sampler = Sampler(eos_token_ids=sorted(self.eos_ids), seed=seed)
        self.runner = ModelRunner(model, self.sampler, block_size, num_kv_blocks, kv_cache_memory,
                                  max_tokens_hint=max_num_seqs * self.max_model_len)
        # a single sequence must always fit, or preemption could never make progress
        self.max_model_len = min(self.max_model_len, self.runner.num_blocks * block_size)
        self.block_manager = BlockManager(self.runner.num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max(max_num_batched_tokens, 1))
        self.reasoning_parser = reasoning_parser
        get_reasoning_parser(reasoning_parser)  # unknown names fail here, not at the first request
        self.think_start, self.think_end = tokenizer.think_start_id, tokenizer.think_end_id
        self.seed = seed
        self.grammars = GrammarCompiler(tokenizer, cfg.vocab_size, sorted(self.eos_ids))
        self.requests: dict[str, _Request] = {}
        self._dirty: set[str] = set()  # requests with news outside a forward (finished when added)
        self.stats_tracker = EngineStats()

    # -- requests ----------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if not ids:
            raise ValueError("the prompt is empty; give at least one token")
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but max_model_len is {self.max_model_len}: "
                             "no room to generate; shorten the prompt or raise max_model_len")
        if params.max_thinking_tokens is not None and self.think_end is None:
            raise ValueError("max_thinking_tokens needs a tokenizer with a </think> token")
        bad = [t for t in (params.logit_bias or {}) if t >= vocab]
        if bad:
            raise InvalidSamplingParam("logit_bias", f"logit_bias has token id {bad[0]} outside the vocabulary "
                                                     f"[0, {vocab})")
        grammar = self.grammars.matcher(params.structured_outputs) if params.structured_outputs else None
        req = _Request(request_id, prompt if isinstance(prompt, str) else None, ids, params)
        prefilled = self._prefilled(ids)
        for i in range(params.n):
            gen = make_generator(params.seed, i, self.runner.device) if params.seed is not None else None
            seq = Sequence(request_id, i, ids, params, gen)
            if grammar is not None:
                seq.grammar = grammar if i == 0 else grammar.deep_copy()
            seq.thinking_done = not prefilled
            parser = get_reasoning_parser(self.reasoning_parser, prefilled=prefilled)
            req.seqs.append(seq)
            req.texts.append(TextState(self.tokenizer, parser, params.stop, params.include_stop_str_in_output,
                                       params.skip_special_tokens, params.stop_in_reasoning))
            if params.max_thinking_tokens == 0 and prefilled and seq.samples:
                self._force_thinking_end(req, seq)
        share = params.n > 1 and self.block_manager.enable_prefix_caching and len(ids) > self.block_manager.block_size
        for seq in req.seqs:
            if seq.is_finished:
                continue
            if share and seq.index > 0:
                req.pending.append(seq)
            else:
                self.scheduler.add(seq)
        self.requests[request_id] = req
        if any(s.is_finished for s in req.seqs):
            self._dirty.add(request_id)

    def _prefilled(self, ids: list[int]) -> bool:
        """The prompt opens a thinking block that it does not close (R1's template ends with '<think>\\n')."""
        if self.think_start is None or self.think_start not in ids:
            return False
        last_start = len(ids) - 1 - ids[::-1].index(self.think_start)
        return self.think_end not in ids[last_start:]

    def abort_request(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        self._dirty.discard(request_id)  # it may have finished inside add_request and be waiting to report
        if req is None:
            return
        for seq, text in zip(req.seqs, req.texts):
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
                text.finish()

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        touched, self._dirty = self._dirty, set()
        if not batch.seqs:
            return self._outputs(touched)
        prompt_tokens = sum(max(0, min(n, s.num_prompt_tokens - s.num_computed_tokens))
                            for s, n in zip(batch.seqs, batch.num_new_tokens))
        step = self.runner.run(batch)
        seqs, out = step.seqs, step.sampled
        self.scheduler.postprocess(batch)
        touched |= {s.request_id for s in batch.seqs}
        for pl in step.prompt_logprobs:
            self._add_prompt_logprobs(pl)
        for seq in batch.seqs:  # max_tokens=0: done once the prompt is computed (and scored)
            if not seq.samples and not seq.is_finished and seq.num_computed_tokens >= len(seq):
                self._finish(seq, self.requests[seq.request_id].texts[seq.index], "length")
        if seqs:
            token_ids = out.token_ids.tolist()
            lps = out.logprobs.tolist() if out.logprobs is not None else None
            top_ids = out.top_ids.tolist() if out.top_ids is not None else None
            top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
            for i, seq in enumerate(seqs):
                lp = None
                if seq.params.logprobs is not None:
                    lp = {token_ids[i]: lps[i]}
                    for j in range(min(seq.params.logprobs, len(top_ids[i]) if top_ids else 0)):
                        lp.setdefault(top_ids[i][j], top_lps[i][j])
                self._append(self.requests[seq.request_id], seq, token_ids[i], lp)
        for rid in touched:
            req = self.requests[rid]
            first = req.seqs[0]  # its prompt blocks stay cached after it finished, too
            if req.pending and (first.is_finished or first.num_computed_tokens >= len(req.prompt_ids)):
                for seq in req.pending:
                    self.scheduler.add(seq)
                req.pending = []
        self.stats_tracker.record(prompt_tokens, len(seqs))
        return self._outputs(touched)

    @staticmethod
    def _add_prompt_logprobs(pl) -> None:
        """Per prompt token {token_id: logprob}: the prompt's own token first, then the params.prompt_logprobs
        most likely ones."""
        seq = pl.seq
        assert pl.first == len(seq.prompt_logprobs), "prompt logprobs must arrive in order"
        for j, (token, lp) in enumerate(zip(pl.token_ids, pl.logprobs)):
            entry = {token: lp}
            if pl.top_ids:
                for t, v in zip(pl.top_ids[j], pl.top_logprobs[j]):
                    entry.setdefault(t, v)
            seq.prompt_logprobs.append(entry)

    def _outputs(self, touched: set[str]) -> list[RequestOutput]:
        outputs = [self._output(self.requests[rid]) for rid in touched if rid in self.requests]
        for o in outputs:
            if o.finished:
                del self.requests[o.request_id]
        return outputs

    def _append(self, req: _Request, seq: Sequence, token: int, lp: dict | None) -> None:
        p, text = seq.params, req.texts[seq.index]
        constrained = seq.constrained
        if constrained and not seq.grammar.consume_token(token):  # cannot happen with the mask; be safe
            seq.token_ids.append(token)
            seq.logprobs.append(lp)
            return self._finish(seq, text, "stop", "structured_output_error")
        seq.token_ids.append(token)
        seq.logprobs.append(lp)
        if req.first_token_time is None:
            req.first_token_time = time.perf_counter()
        if token in p.stop_token_ids:
            return self._finish(seq, text, "stop", token)
        if token in self.eos_ids and not p.ignore_eos:
            return self._finish(seq, text, "stop", token)
        stop = text.add([token])
        if stop is not None:
            return self._finish(seq, text, "stop", stop, flush=False)
        if not seq.thinking_done:
            if token == self.think_end:
                seq.thinking_done = True
            else:
                seq.num_thinking_tokens += 1
        elif token == self.think_start and seq.num_thinking_tokens == 0 and self.think_end not in seq.output_token_ids:
            seq.thinking_done = False  # the model opened its own thinking block
        if constrained and seq.grammar.is_stopped():  # the structured answer is complete
            return self._finish(seq, text, "stop")
        if self._out_of_room(seq):
            return self._finish(seq, text, "length")
        budget = p.max_thinking_tokens
        if not seq.thinking_done and budget is not None and seq.num_thinking_tokens >= budget:
            self._force_thinking_end(req, seq)

    def _out_of_room(self, seq: Sequence) -> bool:
        max_tokens = seq.params.max_tokens
        return (max_tokens is not None and seq.num_output_tokens >= max_tokens) or len(seq) >= self.max_model_len

    def _force_thinking_end(self, req: _Request, seq: Sequence) -> None:
        """Append the wrap-up and the end-of-thinking tokens; the next forward computes them as one chunk."""
        p, text = seq.params, req.texts[seq.index]
        forced = self.tokenizer.encode(p.thinking_wrapup + p.thinking_end)
        room = self.max_model_len - len(seq)
        if p.max_tokens is not None:
            room = min(room, p.max_tokens - seq.num_output_tokens)
        forced = forced[:max(room, 0)]
        seq.token_ids.extend(forced)
        seq.logprobs.extend([None] * len(forced))
        seq.thinking_done = True
        stop = text.add(forced, forced=True)
        if stop is not None:
            return self._finish(seq, text, "stop", stop, flush=False)
        if self._out_of_room(seq):
            self._finish(seq, text, "length")

    def _finish(self, seq: Sequence, text: TextState, reason: str, stop_reason=None, flush: bool = True) -> None:
        held_stop = text.finish(flush=flush)  # the held-back text may complete a stop string after all
        if held_stop is not None:
            reason, stop_reason = "stop", held_stop
        self.scheduler.finish(seq, reason)
        seq.stop_reason = stop_reason

    def _output(self, req: _Request) -> RequestOutput:
        outs = []
        for seq, text in zip(req.seqs, req.texts):
            want_lp = seq.params.logprobs is not None
            outs.append(CompletionOutput(
                index=seq.index, text=text.text, reasoning=text.reasoning, content=text.content,
                token_ids=seq.output_token_ids, logprobs=list(seq.logprobs) if want_lp else None,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
                num_reasoning_tokens=seq.num_thinking_tokens))
        first = req.seqs[0]
        return RequestOutput(
            request_id=req.request_id, prompt=req.prompt, prompt_token_ids=req.prompt_ids, outputs=outs,
            prompt_logprobs=list(first.prompt_logprobs) if first.prompt_logprobs is not None else None,
            finished=all(s.is_finished for s in req.seqs), num_cached_tokens=req.seqs[0].num_cached_tokens,
            metrics={"arrival_time": req.arrival_time, "first_token_time": req.first_token_time})

    # -- memory and stats --------------------------------------------------------------------------------------
    def free_kv_cache(self) -> None:
        """Release the KV memory (e.g. while training); only when nothing is running."""
        if self.has_unfinished_requests():
            raise RuntimeError("cannot free the KV cache while requests are running; abort or finish them first")
        self.runner.free_kv_cache()
        self.block_manager.reset_prefix_cache()

    def allocate_kv_cache(self) -> None:
        self.runner.allocate_kv_cache()

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (call after the model's weights changed)."""
        self.block_manager.reset_prefix_cache()

    def stats(self) -> dict:
        return self.stats_tracker.snapshot(self.scheduler, self.block_manager, self.runner.spec.bytes_per_token)
