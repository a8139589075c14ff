"""Runs the model on one scheduled step: flat batch in, sampled tokens out; owns the paged KV cache tensor.

The KV cache is one zero-initialised tensor [num_layers, num_blocks, block_size, *token_shape] bound to the model
(`model.bind_kv_cache`); its size comes from `num_kv_blocks`, or `kv_cache_memory` bytes, or a default.
`free_kv_cache()` unbinds and drops it so training can reclaim the memory between rollout phases, and
`allocate_kv_cache()` brings it back (block ids stay valid only while nothing is running).

For each step it builds the flat inputs (the uncomputed tokens of every scheduled sequence, concatenated), their
positions, the AttentionContext, and `logits_indices`: the last new token of each sequence whose tokens are now all
computed -- only those sample a next token (a sequence in the middle of a chunked prefill does not; nor one with
max_tokens=0) -- followed by the prompt positions of sequences that asked for prompt logprobs: position p's logits
score prompt token p + 1, in the same forward that fills the KV cache (no second pass over the prompt).
"""
from __future__ import annotations

import torch

from dataclasses import dataclass, field

from r1kit.engine.sampler import Sampler, SamplerOutput, token_logprobs
from r1kit.engine.structured_output import allowed_tokens, bitmasks
from r1kit.engine.scheduler import ScheduledBatch
from r1kit.engine.sequence import Sequence
from r1kit.models.context import AttentionContext

DEFAULT_CPU_KV_BYTES = 1 << 30  # 1 GiB
DEFAULT_GPU_KV_FRACTION = 0.5  # of the free device memory after loading the model


@dataclass
class PromptLogprobs:
    """The prompt logprobs one step produced for one sequence: prompt tokens [first, first + len(token_ids))."""
    seq: Sequence
    first: int
    token_ids: list[int]
    logprobs: list[float]
    top_ids: list[list[int]] = field(default_factory=list)  # empty when params.prompt_logprobs == 0
    top_logprobs: list[list[float]] = field(default_factory=list)


@dataclass
class StepOutput:
    seqs: list[Sequence]  # the sequences that sampled, in sampler-row order
    sampled: SamplerOutput | None
    prompt_logprobs: list[PromptLogprobs]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, sampler: Sampler, block_size: int = 16,
                 num_kv_blocks: int | None = None, kv_cache_memory: int | None = None, max_tokens_hint: int = 0):
        self.model = model
        self.sampler = sampler
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.spec = model.kv_cache_spec()
        self.bytes_per_block = self.spec.bytes_per_token * block_size
        self.num_blocks = self._num_blocks(num_kv_blocks, kv_cache_memory, max_tokens_hint)
        self.kv_cache: torch.Tensor | None = None
        self.allocate_kv_cache()

    def _num_blocks(self, num_kv_blocks, kv_cache_memory, max_tokens_hint) -> int:
        if num_kv_blocks is not None:
            n = int(num_kv_blocks)
        else:
            if kv_cache_memory is None:
                if self.device.type == "cuda":
                    free, _ = torch.cuda.mem_get_info(self.device)
                    kv_cache_memory = int(free * DEFAULT_GPU_KV_FRACTION)
                else:  # enough for the hinted token count, at most 1 GiB
                    want = max_tokens_hint * self.spec.bytes_per_token + self.bytes_per_block
                    kv_cache_memory = min(DEFAULT_CPU_KV_BYTES, want) if max_tokens_hint else DEFAULT_CPU_KV_BYTES
            n = int(kv_cache_memory) // self.bytes_per_block
        if n < 1:
            raise ValueError(f"KV cache too small: one block of {self.block_size} tokens needs {self.bytes_per_block} "
                             f"bytes; got num_kv_blocks={num_kv_blocks}, kv_cache_memory={kv_cache_memory}")
        return n

    def allocate_kv_cache(self) -> None:
        if self.kv_cache is None:
            shape = (self.spec.num_layers, self.num_blocks, self.block_size, *self.spec.token_shape)
            self.kv_cache = torch.zeros(shape, dtype=self.spec.dtype, device=self.device)
            self.model.bind_kv_cache(self.kv_cache)

    def free_kv_cache(self) -> None:
        self.model.bind_kv_cache(None)
        self.kv_cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def prepare(self, batch: ScheduledBatch):
        """Flat inputs for the step, the sequences that sample (in logits order), and the prompt-logprob rows
        (appended to logits_indices after the sampling rows): [(seq, first prompt token scored, count)]."""
        bs = self.block_size
        ids, pos, slots, seq_lens, tables, qlens, logit_rows, samplers = [], [], [], [], [], [], [], []
        prompt_rows, prompt_spans = [], []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            if seq.needs_prompt_logprobs:  # positions [lo, hi) score prompt tokens lo + 1 .. hi
                lo, hi = max(start, len(seq.prompt_logprobs) - 1), min(end, seq.num_prompt_tokens - 1)
                if hi > lo:
                    prompt_rows += range(len(ids) + lo - start, len(ids) + hi - start)
                    prompt_spans.append((seq, lo + 1, hi - lo))
            ids += seq.token_ids[start:end]
            pos += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            seq_lens.append(end)
            qlens.append(n)
            tables.append(table[:(end + bs - 1) // bs])
            if end == len(seq) and seq.samples:
                logit_rows.append(len(ids) - 1)
                samplers.append(seq)
        width = max(len(t) for t in tables)
        dev = self.device
        qsl = [0]
        for n in qlens:
            qsl.append(qsl[-1] + n)
        ctx = AttentionContext(
            query_start_loc=torch.tensor(qsl, device=dev), seq_lens=torch.tensor(seq_lens, device=dev),
            slot_mapping=torch.tensor(slots, device=dev),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev),
            query_lens=qlens, seq_lens_list=seq_lens, block_size=bs)
        return (torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), ctx,
                torch.tensor(logit_rows + prompt_rows, dtype=torch.long, device=dev), samplers, prompt_spans)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepOutput:
        """One forward over the batch: the sequences that sampled, their sampler output, and prompt logprobs."""
        if self.kv_cache is None:
            raise RuntimeError("the KV cache was freed; call allocate_kv_cache() before generating")
        input_ids, positions, ctx, logits_indices, seqs, prompt_spans = self.prepare(batch)
        logits = self.model(input_ids, positions, ctx=ctx, logits_indices=logits_indices)
        prompt_lps = self._prompt_logprobs(logits[len(seqs):], prompt_spans) if prompt_spans else []
        if not seqs:
            return StepOutput([], None, prompt_lps)
        logits = logits[:len(seqs)]
        params = [s.params for s in seqs]
        need_ids = any(p.has_penalties or p.min_tokens > 0 for p in params)
        rows = [i for i, s in enumerate(seqs) if s.constrained]
        allowed = None
        if rows:  # structured outputs: each constrained row's grammar says which tokens may come next
            V = logits.shape[1]
            allowed = (rows, allowed_tokens(bitmasks([seqs[i].grammar for i in rows], V), V))
        out = self.sampler(logits, params, [s.generator for s in seqs],
                           prompt_ids=[s.token_ids[:s.num_prompt_tokens] for s in seqs] if need_ids else None,
                           output_ids=[s.output_token_ids for s in seqs] if need_ids else None, allowed=allowed)
        return StepOutput(seqs, out, prompt_lps)

    def _prompt_logprobs(self, logits: torch.Tensor, spans) -> list[PromptLogprobs]:
        targets = [t for seq, first, count in spans for t in seq.token_ids[first:first + count]]
        k = max(seq.params.prompt_logprobs for seq, _, _ in spans)
        chosen, top_lp, top_ids = token_logprobs(logits, torch.tensor(targets, device=logits.device), k)
        chosen = chosen.tolist()
        top_lp = top_lp.tolist() if top_lp is not None else None
        top_ids = top_ids.tolist() if top_ids is not None else None
        out, row = [], 0
        for seq, first, count in spans:
            k_seq = seq.params.prompt_logprobs
            rows = slice(row, row + count)
            out.append(PromptLogprobs(seq, first, targets[rows], chosen[rows],
                                      [r[:k_seq] for r in top_ids[rows]] if k_seq else [],
                                      [r[:k_seq] for r in top_lp[rows]] if k_seq else []))
            row += count
        return out
