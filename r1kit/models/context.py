"""The contract between the inference engine and the model code: one step's attention metadata and the KV cache.

Training and reference checks call a model on a padded batch `[B, T]` with no context: plain causal attention.
The engine instead runs a *flat* batch: the new tokens of B sequences concatenated into `[T]`, some sequences in
prefill (many new tokens, possibly after a cached prefix) and some in decode (one new token). It describes that
batch with an `AttentionContext`, and the attention layers read and write a paged KV cache:

    cache of one layer: [num_blocks, block_size, *token_shape]
        MLA (deepseek_v3): token_shape = (kv_lora_rank + qk_rope_head_dim,)   -- the latent c_kv and the roped k_pe
        GQA (llama/qwen2): token_shape = (2, num_key_value_heads, head_dim)    -- K and V

Token j of sequence b lives in block `block_tables[b, j // block_size]` at offset `j % block_size`; its flat slot
is `block * block_size + offset`. New tokens are written to `slot_mapping` before attention reads the context.

The model side:
    model.kv_cache_spec() -> KVCacheSpec          what one token of one layer needs
    model.bind_kv_cache(cache | None)             cache: [num_layers, num_blocks, block_size, *token_shape]
    model(input_ids [T], positions [T], ctx=ctx, logits_indices=idx) -> logits [len(idx), vocab]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCacheSpec:
    num_layers: int
    token_shape: tuple[int, ...]  # per token per layer, see module docstring
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token occupies across all layers."""
        n = 1
        for d in self.token_shape:
            n *= d
        return n * self.num_layers * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class AttentionContext:
    """One engine step over a flat batch of T new tokens from B sequences (B >= 1)."""

    query_start_loc: torch.Tensor  # [B+1] int64: new tokens of sequence b are flat[query_start_loc[b]:query_start_loc[b+1]]
    seq_lens: torch.Tensor  # [B] int64: tokens in sequence b's context after this step (cached + new)
    slot_mapping: torch.Tensor  # [T] int64: flat cache slot of each new token
    block_tables: torch.Tensor  # [B, max_blocks] int64: block ids of each sequence, padded with 0
    query_lens: list[int]  # CPU copy of the new-token counts, for per-sequence loops
    seq_lens_list: list[int]  # CPU copy of seq_lens
    block_size: int
    # per-step values derived from the fields above, built by the first attention layer and reused by the others
    # (r1kit/ops/paged_attention.py: the batched path's gather index and mask); never set it yourself
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)
