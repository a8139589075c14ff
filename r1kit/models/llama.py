"""Dense GQA decoders: Llama, Qwen2 (bias on q/k/v) and Qwen3 (RMSNorm on each q/k head) -- the R1-Distill models.

Same numerics as transformers' LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM. q/k/v are fused into one
`qkv_proj` ([Hq*d; Hkv*d; Hkv*d] rows) and gate/up into one matmul; `hf_tensors` maps them back to the checkpoint's
q_proj/k_proj/v_proj keys. The engine path caches K and V per token as [2, Hkv, head_dim] and calls
`ops.gqa_paged_attention`. Tied embeddings (`tie_word_embeddings`, used by the small Qwen models) share one tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from r1kit import ops
from r1kit.errors import UserError
from r1kit.models.causal_lm import CausalLM
from r1kit.models.context import AttentionContext
from r1kit.models.hf_config import HFConfig
from r1kit.models.layers import Linear, RMSNorm, SwiGLU
from r1kit.ops import Padding, SharedPrefix


@dataclass
class LlamaConfig(HFConfig):
    model_type = "llama"
    architecture = "LlamaForCausalLM"

    head_dim: int | None = None
    attention_bias: bool = False  # Llama: bias on q, k, v and o
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.extra.get("use_sliding_window"):
            raise UserError("sliding-window attention (use_sliding_window=true) is not supported")

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    qk_norm = False


@dataclass
class Qwen2Config(LlamaConfig):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"

    vocab_size: int = 151936
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @property
    def qkv_bias(self) -> bool:  # Qwen2 always has q/k/v bias and never an o bias
        return True

    @property
    def o_bias(self) -> bool:
        return False


@dataclass
class Qwen3Config(LlamaConfig):
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"

    vocab_size: int = 151936
    head_dim: int | None = 128
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    qk_norm = True


class GQAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, (self.hq + 2 * self.hkv) * self.d, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.hq * self.d, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.d, eps=cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, eps=cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.scale = self.d ** -0.5
        self.kv_cache: torch.Tensor | None = None  # [num_blocks, block_size, 2, Hkv, d], set by bind_kv_cache

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], ctx: AttentionContext | None,
                mask: Padding | SharedPrefix | None) -> torch.Tensor:
        lead = x.shape[:-1]  # (B, T) or (T,)
        q, k, v = self.qkv_proj(x).view(*lead, -1, self.d).split([self.hq, self.hkv, self.hkv], dim=-2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope[0].unsqueeze(-2), rope[1].unsqueeze(-2)  # [..., T, 1, d/2]
        q, k = ops.rope(q, cos, sin, False), ops.rope(k, cos, sin, False)  # [..., Hq, d], [..., Hkv, d]
        if ctx is not None:
            if self.kv_cache is None:
                raise RuntimeError("engine call without a KV cache: call model.bind_kv_cache(cache) first")
            return self.o_proj(ops.gqa_paged_attention(q, k, v, self.kv_cache, ctx, self.scale).flatten(-2))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, d]
        if self.hkv != self.hq:
            k = k.repeat_interleave(self.hq // self.hkv, dim=1)
            v = v.repeat_interleave(self.hq // self.hkv, dim=1)
        o = ops.attend(q, k, v, mask, self.scale)  # [B, Hq, T, d]
        return self.o_proj(o.transpose(1, 2).flatten(2))  # [B, T, D]

    def hf_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        sizes = [self.hq * self.d, self.hkv * self.d, self.hkv * self.d]
        out = {}
        for name, w in zip(("q_proj", "k_proj", "v_proj"), self.qkv_proj.weight.split(sizes)):
            out[f"{prefix}{name}.weight"] = w
        if self.qkv_proj.bias is not None:
            for name, b in zip(("q_proj", "k_proj", "v_proj"), self.qkv_proj.bias.split(sizes)):
                out[f"{prefix}{name}.bias"] = b
        out[f"{prefix}o_proj.weight"] = self.o_proj.weight
        if self.o_proj.bias is not None:
            out[f"{prefix}o_proj.bias"] = self.o_proj.bias
        if self.qk_norm:
            out[f"{prefix}q_norm.weight"] = self.q_norm.weight
            out[f"{prefix}k_norm.weight"] = self.k_norm.weight
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = GQAttention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, h, rope, ctx, mask):
        h = h + self.self_attn(self.input_layernorm(h), rope, ctx, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaForCausalLM(CausalLM):
    config_class = LlamaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config, [DecoderLayer(config) for _ in range(config.num_hidden_layers)],
                         rope_dim=config.head_dim)

    def kv_token_shape(self) -> tuple[int, ...]:
        return (2, self.config.num_key_value_heads, self.config.head_dim)


class Qwen2ForCausalLM(LlamaForCausalLM):
    config_class = Qwen2Config


class Qwen3ForCausalLM(LlamaForCausalLM):
    config_class = Qwen3Config
