"""The GRPO policy-gradient objective and the per-token quantities it needs.

Everything here works on padded [B, T] tensors of completion tokens with a 0/1 `mask` (1 = a real completion token
that counts in the loss). The trainer computes log-probabilities with `token_logprobs`, then calls `grpo_loss`.

Per token (docs/architecture.md, "GRPO, DAPO and Dr. GRPO losses"):
    rho = exp(logp - old_logp)
    loss_t = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) + beta * k3(ref, logp)
    k3 = exp(ref - logp) - (ref - logp) - 1
Aggregation by `loss_type`:
    grpo    : mean over the tokens of each completion, then mean over completions (the paper)
    dapo    : mean over all tokens of the batch (token-level)
    dr_grpo : sum over all tokens / (num completions * max_completion_length) (a constant; Dr. GRPO)
With gradient accumulation the batch is split into micro-batches; pass the whole batch's `num_sequences` /
`num_tokens` so that the micro-batch losses add up to exactly the full-batch loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [B, T, V] predicting targets [B, T] -> (logp [B, T], entropy [B, T] or None), in float32.

    Logits are divided by the sampling temperature so that logp is the log-probability under the distribution the
    rollouts were actually sampled from (as TRL does).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)                                    # [B, T]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz       # [B, T]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            logprobs_all = logits - logz.unsqueeze(-1)
            entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)            # [B, T]
    return logp, entropy


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 when equal)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@dataclass
class LossOutput:
    loss: torch.Tensor          # scalar to backpropagate
    clip_frac: float            # fraction of tokens whose clipped term is the active one
    clip_low_frac: float
    clip_high_frac: float
    kl: float                   # mean k3 KL per token (0.0 when no reference)
    entropy: float | None       # mean entropy per token when given
    num_tokens: float           # masked tokens in this (micro-)batch


def grpo_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
              loss_type: str = "grpo", eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
              max_completion_length: int | None = None, entropy: torch.Tensor | None = None,
              num_sequences: float | None = None, num_tokens: float | None = None) -> LossOutput:
    """GRPO loss over a (micro-)batch.

    logp, old_logp, ref_logp, mask, entropy: [B, T]; advantages: [B] (one value per completion).
    old_logp None means a single policy update per rollout batch: the ratio is 1 in value but keeps its gradient
    (old = logp.detach(), as TRL does with num_iterations=1).
    num_sequences / num_tokens: normalisers of the whole batch when this is a micro-batch (default: this one's).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {list(LOSS_TYPES)}")
    mask = mask.to(logp.dtype)
    if old_logp is None:
        old_logp = logp.detach()
    adv = advantages.to(logp.dtype).unsqueeze(1)                              # [B, 1]
    ratio = torch.exp(logp - old_logp)                                        # [B, T]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)                        # [B, T]
    kl = None
    if ref_logp is not None and beta != 0.0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl

    tokens_here = mask.sum()
    n_seq = float(num_sequences) if num_sequences is not None else float(logp.shape[0])
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        loss = per_seq.sum() / n_seq
    elif loss_type == "dapo":
        n_tok = float(num_tokens) if num_tokens is not None else tokens_here.clamp(min=1.0)
        loss = (per_token * mask).sum() / n_tok
    else:  # dr_grpo
        if not max_completion_length:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        loss = (per_token * mask).sum() / (n_seq * max_completion_length)

    with torch.no_grad():
        denom = tokens_here.clamp(min=1.0)
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype) * mask
        out = LossOutput(
            loss=loss,
            clip_low_frac=float(low.sum() / denom),
            clip_high_frac=float(high.sum() / denom),
            clip_frac=float((low + high).sum() / denom),
            kl=float((kl * mask).sum() / denom) if kl is not None else 0.0,
            entropy=float((entropy * mask).sum() / denom) if entropy is not None else None,
            num_tokens=float(tokens_here),
        )
    return out
