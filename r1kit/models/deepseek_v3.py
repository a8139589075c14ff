"""DeepSeek-V3 (the architecture of DeepSeek-R1): multi-head latent attention + DeepSeekMoE.

Matches transformers' `DeepseekV3ForCausalLM` on the same weights (the math: docs/architecture.md, "MLA" and "MoE
routing"):
- MLA: queries through a low-rank `q_a_proj -> q_a_layernorm -> q_b_proj` (or one `q_proj` when q_lora_rank is null);
  keys/values from the latent `c_kv = kv_a_layernorm(kv_a_proj_with_mqa(x)[:R])` expanded by `kv_b_proj`, plus ONE
  roped key `k_pe` shared by all heads (decoupled RoPE). Softmax scale (nope+rope)^-0.5 * mscale(factor,
  mscale_all_dim)^2 under YaRN. The engine path caches only [c_kv, k_pe] and calls `ops.mla_paged_attention`.
- DeepSeekMoE: fp32 sigmoid router; `e_score_correction_bias` only for choosing experts; group-limited top-k;
  weights = normalised unbiased scores * routed_scaling_factor (`ops.route`); shared experts; the first
  `first_k_dense_replace` layers are dense. Routed experts are stored stacked ([E, 2I, D] gate/up and [E, D, I] down)
  and computed by `ops.routed_swiglu` (tokens grouped by expert). Checkpoints keep the Hugging Face
  per-expert keys `mlp.experts.E.{gate,up,down}_proj.weight` through `hf_tensors`.

Training-only balancing (both off in eval mode):
- aux-loss-free bias update: forwards in training mode count expert loads; call `model.update_router_bias()` after
  the optimizer step: b_e += gamma * sign(mean_load - load_e), gamma = config.bias_update_speed (V3: 0.001).
- sequence-wise balance loss: `model.aux_loss()` after a training forward = sum over MoE layers of
  alpha * sum_e f_e * P_e (alpha = config.aux_loss_alpha, 1e-4 by default); add it to the loss yourself.
Both count real tokens only when the training forward says which are padding (`attention_mask=` gives a
`Padding.token_mask`, SFT passes it; GRPO's packed rows have `SharedPrefix.token_mask`); the trainers sum the loads
over ranks before the bias update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from r1kit import ops
from r1kit.errors import UserError
from r1kit.models.causal_lm import CausalLM
from r1kit.models.context import AttentionContext
from r1kit.models.hf_config import HFConfig
from r1kit.models.layers import Linear, RMSNorm, SwiGLU, yarn_mscale
from r1kit.ops import Padding, SharedPrefix


@dataclass
class DeepseekV3Config(HFConfig):
    model_type = "deepseek_v3"
    architecture = "DeepseekV3ForCausalLM"

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    n_shared_experts: int = 1
    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    routed_scaling_factor: float = 2.5
    n_group: int | None = 8
    topk_group: int | None = 4
    first_k_dense_replace: int = 3
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    kv_lora_rank: int = 512
    q_lora_rank: int | None = 1536
    qk_rope_head_dim: int = 64
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128
    rope_interleave: bool = True
    attention_bias: bool = False
    num_nextn_predict_layers: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    # training-time balancing (not part of the architecture; ignored by transformers)
    aux_loss_alpha: float = 1e-4
    bias_update_speed: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        self.n_group = self.n_group or 1
        self.topk_group = self.topk_group or 1
        if self.scoring_func != "sigmoid":
            raise UserError(f"scoring_func {self.scoring_func!r} is not supported; DeepSeek-V3 uses 'sigmoid'")
        if self.n_routed_experts % self.n_group:
            raise UserError(f"n_routed_experts={self.n_routed_experts} is not divisible by n_group={self.n_group}")


class MLAttention(nn.Module):
    def __init__(self, cfg: DeepseekV3Config):
        super().__init__()
        self.h, self.nope, self.rope, self.v = (cfg.num_attention_heads, cfg.qk_nope_head_dim,
                                                cfg.qk_rope_head_dim, cfg.v_head_dim)
        self.rank, self.interleave = cfg.kv_lora_rank, cfg.rope_interleave
        qk = self.nope + self.rope
        if cfg.q_lora_rank is None:
            self.q_proj = Linear(cfg.hidden_size, self.h * qk, bias=False)
        else:
            self.q_a_proj = Linear(cfg.hidden_size, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)
            self.q_b_proj = Linear(cfg.q_lora_rank, self.h * qk, bias=False)
        self.kv_a_proj_with_mqa = Linear(cfg.hidden_size, self.rank + self.rope, bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(self.rank)
        self.kv_b_proj = Linear(self.rank, self.h * (self.nope + self.v), bias=False)
        self.o_proj = Linear(self.h * self.v, cfg.hidden_size, bias=cfg.attention_bias)
        self.scale = qk ** -0.5
        rp = cfg.rope_parameters
        if rp["rope_type"] != "default" and rp.get("mscale_all_dim"):
            self.scale *= yarn_mscale(rp["factor"], rp["mscale_all_dim"]) ** 2
        self.kv_cache: torch.Tensor | None = None  # [num_blocks, block_size, rank + rope], set by bind_kv_cache

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], ctx: AttentionContext | None,
                mask: Padding | SharedPrefix | None) -> torch.Tensor:
        lead = x.shape[:-1]  # (B, T) or (T,)
        q = self.q_proj(x) if hasattr(self, "q_proj") else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(*lead, self.h, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)  # [..., H, nope], [..., H, rope]
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)  # [..., R], [..., rope]
        c_kv = self.kv_a_layernorm(c_kv)
        cos, sin = rope  # [..., T, rope/2]
        q_pe = ops.rope(q_pe, cos.unsqueeze(-2), sin.unsqueeze(-2), self.interleave)
        k_pe = ops.rope(k_pe, cos, sin, self.interleave)
        if ctx is not None:
            return self.o_proj(self._paged(q_nope, q_pe, c_kv, k_pe, ctx).flatten(-2))
        kv = self.kv_b_proj(c_kv).view(*lead, self.h, self.nope + self.v)
        k_nope, v = kv.split([self.nope, self.v], dim=-1)  # [B, T, H, nope], [B, T, H, v]
        q = torch.cat((q_nope, q_pe), dim=-1)  # [B, T, H, nope+rope]
        k = torch.cat((k_nope, k_pe.unsqueeze(-2).expand(*lead, self.h, self.rope)), dim=-1)
        o = ops.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.scale)  # [B, H, T, v]
        return self.o_proj(o.transpose(1, 2).flatten(2))

    def _paged(self, q_nope, q_pe, c_kv, k_pe, ctx: AttentionContext) -> torch.Tensor:
        if self.kv_cache is None:
            raise RuntimeError("engine call without a KV cache: call model.bind_kv_cache(cache) first")
        w = self.kv_b_proj.weight.view(self.h, self.nope + self.v, self.rank)
        return ops.mla_paged_attention(q_nope, q_pe, c_kv, k_pe, self.kv_cache, ctx,
                                   w[:, :self.nope], w[:, self.nope:], self.scale)  # [T, H, v]


class Router(nn.Module):
    """Sigmoid top-k router with group limits; HF keys `gate.weight`, `gate.e_score_correction_bias` (fp32)."""

    def __init__(self, cfg: DeepseekV3Config):
        super().__init__()
        self.e, self.k, self.groups, self.topk_groups = (cfg.n_routed_experts, cfg.num_experts_per_tok,
                                                         cfg.n_group, cfg.topk_group)
        self.norm, self.scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.e, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.e, dtype=torch.float32))

    def _apply(self, fn, recurse=True):  # the bias stays fp32 whatever the model dtype (its updates are ~1e-3)
        before = self.e_score_correction_bias
        super()._apply(fn, recurse)
        after = self.e_score_correction_bias
        self.e_score_correction_bias = after.float() if before.is_meta or after.is_meta else before.to(after.device)
        return self

    def reset_buffers(self) -> None:
        self.e_score_correction_bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> expert ids [N, K], weights [N, K] (fp32), scores [N, E] (fp32, unbiased)."""
        with torch.autocast(x.device.type, enabled=False):  # routing stays fp32 under bf16 autocast too
            scores = F.linear(x.float(), self.weight.float()).sigmoid()  # [N, E]
        idx, w = ops.route(scores, self.e_score_correction_bias, self.k, self.groups, self.topk_groups, self.norm,
                           self.scaling)
        return idx, w, scores


class Experts(nn.Module):
    """E routed SwiGLU experts stored stacked; tokens are grouped by expert (no loop over tokens)."""

    def __init__(self, cfg: DeepseekV3Config):
        super().__init__()
        self.e, self.i = cfg.n_routed_experts, cfg.moe_intermediate_size
        self.gate_up = nn.Parameter(torch.empty(self.e, 2 * self.i, cfg.hidden_size))  # rows: [gate; up]
        self.down = nn.Parameter(torch.empty(self.e, cfg.hidden_size, self.i))

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [N, D], idx/w [N, K] -> sum_k w[n,k] * expert_{idx[n,k]}(x[n])  [N, D]."""
        return ops.routed_swiglu(x, idx, w, self.gate_up, self.down)

    def hf_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for e in range(self.e):
            out[f"{prefix}{e}.gate_proj.weight"] = self.gate_up[e, :self.i]
            out[f"{prefix}{e}.up_proj.weight"] = self.gate_up[e, self.i:]
            out[f"{prefix}{e}.down_proj.weight"] = self.down[e]
        return out


class MoE(nn.Module):
    def __init__(self, cfg: DeepseekV3Config):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
        self.alpha = cfg.aux_loss_alpha
        self.load: torch.Tensor | None = None  # [E] tokens routed to each expert since the last bias update
        self.last_aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] or [T, D]; token_mask [B, T] (1 = real token) keeps padding out of the balance statistics."""
        flat = x.reshape(-1, x.shape[-1])  # [N, D]
        idx, w, scores = self.gate(flat)
        if self.training:
            self._balance_stats(x, idx, scores, token_mask)
        return self.experts(flat, idx, w).view_as(x) + self.shared_experts(x)

    def _balance_stats(self, x: torch.Tensor, idx: torch.Tensor, scores: torch.Tensor,
                       token_mask: torch.Tensor | None) -> None:
        e, k = self.gate.e, self.gate.k
        b, t = (1, x.shape[0]) if x.dim() == 2 else x.shape[:2]  # sequences of the batch
        valid = (torch.ones(b, t, device=x.device) if token_mask is None
                 else token_mask.reshape(b, t).to(device=x.device, dtype=torch.float32))  # [B, T]
        slot_w = valid.reshape(-1, 1).expand(-1, k).reshape(b, t * k)  # [B, T*K]: each routed slot's weight
        counts = torch.bincount(idx.flatten(), weights=slot_w.flatten(), minlength=e).float()
        self.load = counts if self.load is None else self.load + counts
        if self.alpha <= 0:
            self.last_aux_loss = None
            return
        n = valid.sum(1, keepdim=True).clamp(min=1.0)  # real tokens per sequence [B, 1]
        probs = ((scores / scores.sum(-1, keepdim=True)).view(b, t, e) * valid[..., None]).sum(1) / n  # P_e [B, E]
        per_seq = torch.zeros(b, e, device=x.device).scatter_add_(1, idx.view(b, t * k), slot_w)
        f = per_seq * (e / k) / n  # [B, E]
        self.last_aux_loss = self.alpha * (f * probs).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        if self.load is not None and self.load.sum() > 0:
            self.gate.e_score_correction_bias += gamma * torch.sign(self.load.mean() - self.load)
        self.load = None


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DeepseekV3Config, index: int):
        super().__init__()
        self.self_attn = MLAttention(cfg)
        dense = index < cfg.first_k_dense_replace
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size) if dense else MoE(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, h, rope, ctx, mask):
        h = h + self.self_attn(self.input_layernorm(h), rope, ctx, mask)
        x = self.post_attention_layernorm(h)
        if isinstance(self.mlp, MoE):  # padded batches say which tokens are padding (balance statistics skip them)
            return h + self.mlp(x, getattr(mask, "token_mask", None))
        return h + self.mlp(x)


class DeepseekV3ForCausalLM(CausalLM):
    config_class = DeepseekV3Config

    def __init__(self, config: DeepseekV3Config):
        super().__init__(config, [DecoderLayer(config, i) for i in range(config.num_hidden_layers)],
                         rope_dim=config.qk_rope_head_dim)

    def kv_token_shape(self) -> tuple[int, ...]:
        return (self.config.kv_lora_rank + self.config.qk_rope_head_dim,)

    def moe_layers(self) -> list[MoE]:
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoE)]

    def aux_loss(self) -> torch.Tensor:
        """Sequence-wise balance loss of the last training forward (0 in eval mode or with aux_loss_alpha=0)."""
        losses = [m.last_aux_loss for m in self.moe_layers() if m.last_aux_loss is not None]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.device)

    def expert_load(self) -> torch.Tensor:
        """Tokens routed to each expert since the last `update_router_bias` [num_moe_layers, E] (training forwards)."""
        e = self.config.n_routed_experts
        return torch.stack([m.load if m.load is not None else torch.zeros(e, device=self.device)
                            for m in self.moe_layers()])

    def update_router_bias(self, gamma: float | None = None) -> None:
        """Aux-loss-free balancing step; call after optimizer.step(). Resets the load counters."""
        gamma = self.config.bias_update_speed if gamma is None else gamma
        for m in self.moe_layers():
            m.update_bias(gamma)
