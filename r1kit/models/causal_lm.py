"""The decoder-only skeleton every architecture shares: embeddings -> N decoder layers -> norm -> lm_head.

An architecture module (deepseek_v3.py, llama.py) supplies its config class, its decoder layer and the rope dimension;
this module owns the two calling conventions of the model contract (see r1kit/models/context.py):

    model(input_ids [B, T])                                          -> logits [B, T, V]   training / reference
    model(input_ids [T], positions [T], ctx=ctx, logits_indices=[N]) -> logits [N, V]      engine, paged KV cache

and the KV-cache binding (`kv_cache_spec`, `bind_kv_cache`). Parameter names follow the Hugging Face checkpoints
(`model.embed_tokens`, `model.layers.N....`, `model.norm`, `lm_head`) so checkpoint keys map one to one, except
where a module fuses weights and says so through `hf_tensors(prefix)`.

A decoder layer is called as `layer(h, rope, ctx, mask)` with h [B, T, D] (training) or [T, D] (engine), rope the
(cos, sin) pair [..., T, rope_dim/2] and mask None (plain causal), a `Padding` (padded batch) or a
`SharedPrefix` layout (packed GRPO groups); attention layers hand it to `r1kit.ops.attend`.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from r1kit.models.context import AttentionContext, KVCacheSpec
from r1kit.models.hf_config import HFConfig
from r1kit.models.layers import Linear, RMSNorm, RotaryEmbedding
from r1kit.ops import Padding, SharedPrefix


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] (1 = token, 0 = padding) -> bool [B, 1, T, T]: causal, no padded keys.

    Each query may always see itself, so fully padded rows stay finite (their outputs are ignored anyway).
    """
    t = attention_mask.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    return (causal & keys) | torch.eye(t, dtype=torch.bool, device=attention_mask.device)


def _right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is ones then zeros: plain causal attention already ignores the padding at the end."""
    m = attention_mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


class Backbone(nn.Module):
    """`model.*` in the checkpoint: embed_tokens, layers, norm."""

    def __init__(self, config: HFConfig, layers: list[nn.Module]):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class CausalLM(nn.Module):
    """Base class of the r1kit models; subclasses set `config_class` and build their layers."""

    config_class: ClassVar[type[HFConfig]]

    def __init__(self, config: HFConfig, layers: list[nn.Module], rope_dim: int):
        super().__init__()
        self.config = config
        self.model = Backbone(config, layers)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        self.rotary = RotaryEmbedding(rope_dim, config.rope_parameters, config.max_position_embeddings)

    def tie_weights(self) -> None:
        """With tie_word_embeddings, lm_head uses the embedding matrix (re-done after moves that copy parameters)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---- forward -------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                ctx: AttentionContext | None = None, logits_indices: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, shared_prefix: SharedPrefix | None = None
                ) -> torch.Tensor:
        """See the module docstring. `attention_mask` [B, T] (1 = token): needed for left padding; with right
        padding it only keeps the padding out of MoE balance statistics. `positions` default to 0..T-1.
        `shared_prefix` runs packed GRPO groups (r1kit/ops/attention.py; pass their `positions` [B, T]).
        In the training path `logits_indices` is [N] (the same columns of every row) or [B, N] (per row)."""
        if ctx is not None:
            if input_ids.dim() != 1 or positions is None:
                raise ValueError("with ctx, pass flat input_ids [T] and positions [T]")
            mask = None
        elif shared_prefix is not None:
            if positions is None or input_ids.shape[-1] != shared_prefix.row_len:
                raise ValueError(f"shared_prefix rows need positions and {shared_prefix.row_len} tokens each")
            mask, squeeze = shared_prefix, False
        else:
            squeeze = input_ids.dim() == 1
            if squeeze:
                input_ids = input_ids[None]
            if positions is None:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            mask = None
            if attention_mask is not None:
                mask = Padding(attention_mask, None if _right_padded(attention_mask) else padding_mask(attention_mask))
        h = self.model.embed_tokens(input_ids)  # [B, T, D] or [T, D]
        rope = self.rotary(positions, h.dtype)  # cos, sin [(B,) T, rope_dim/2]
        for layer in self.model.layers:
            h = layer(h, rope, ctx, mask)
        h = self.model.norm(h)
        if logits_indices is not None:
            if ctx is not None:
                h = h[logits_indices]
            elif logits_indices.dim() == 2:  # per-row columns [B, N]
                h = h.gather(1, logits_indices[..., None].expand(-1, -1, h.shape[-1]))
            else:
                h = h[:, logits_indices]
        logits = self.lm_head(h)
        if ctx is None and squeeze:
            logits = logits[0]
        return logits

    # ---- MoE balancing hooks (no-ops for dense models, so trainers can call them on any model) ----------------------
    def aux_loss(self) -> torch.Tensor:
        """Auxiliary balance loss of the last training forward (0 for dense models)."""
        return torch.zeros((), device=self.device)

    def update_router_bias(self, gamma: float | None = None) -> None:
        """Aux-loss-free router bias update; call after optimizer.step() (nothing to do for dense models)."""

    # ---- KV cache (engine path) -----------------------------------------------------------------------------------
    def kv_token_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def kv_cache_spec(self) -> KVCacheSpec:
        """What one token of one layer needs in the paged cache."""
        return KVCacheSpec(num_layers=self.config.num_hidden_layers, token_shape=self.kv_token_shape(),
                           dtype=self.lm_head.weight.dtype)

    def bind_kv_cache(self, cache: torch.Tensor | None) -> None:
        """cache [num_layers, num_blocks, block_size, *token_shape] (or None to drop it); layer i gets cache[i]."""
        if cache is not None:
            spec = self.kv_cache_spec()
            if cache.dim() != 3 + len(spec.token_shape) or cache.shape[0] != spec.num_layers \
                    or tuple(cache.shape[3:]) != spec.token_shape:
                raise ValueError(f"KV cache of shape {tuple(cache.shape)} does not match [num_layers="
                                 f"{spec.num_layers}, num_blocks, block_size, *{spec.token_shape}]")
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.kv_cache = None if cache is None else cache[i]

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype
