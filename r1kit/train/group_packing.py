"""GRPO micro-batches packed as shared-prefix rows: each prompt's tokens go through the model once per row, not
once per completion.

A row holds one prompt (left-padded to the longest prompt of the micro-batch, P) followed by `row_size`
completions of it, each right-padded to the longest completion, C (layout and attention: r1kit/ops/attention.py).
Logits are computed only where a completion token is predicted: the prompt's last token predicts every
completion's first token, completion token c - 1 predicts token c. Everything the loss needs comes out on a
[num_completions, C] grid (targets, loss mask, rollout logprobs), in the order of the samples given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from r1kit.ops import SharedPrefix
from r1kit.train.losses import token_logprobs


@dataclass
class PackedGroups:
    ids: torch.Tensor              # [R, P + k*C] packed rows
    positions: torch.Tensor        # [R, P + k*C]
    layout: SharedPrefix
    logits_index: torch.Tensor     # [R, k*C]: column whose logits predict each completion token
    targets: torch.Tensor          # [R*k, C] completion tokens (pad_id past the end)
    mask: torch.Tensor             # [R*k, C] 1.0 on real completion tokens
    old_logprobs: torch.Tensor | None  # [R*k, C] rollout-time logprobs, when every sample has them


def pack_groups(samples: list, row_size: int, pad_id: int, device: torch.device) -> PackedGroups:
    """samples (r1kit.train.rollout.Sample; consecutive runs of `row_size` share a prompt) -> PackedGroups."""
    if not samples or len(samples) % row_size:
        raise ValueError(f"{len(samples)} samples do not split into rows of {row_size}")
    rows = [samples[i:i + row_size] for i in range(0, len(samples), row_size)]
    for row in rows:
        if any(s.prompt_ids != row[0].prompt_ids for s in row):
            raise ValueError("a packed row mixes completions of different prompts")
    R, k = len(rows), row_size
    P = max(len(r[0].prompt_ids) for r in rows)
    C = max(1, max(len(s.completion_ids) for s in samples))
    L = P + k * C
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    positions = torch.zeros(R, L, dtype=torch.long)
    valid = torch.zeros(R, P, dtype=torch.bool)
    targets = torch.full((R * k, C), pad_id, dtype=torch.long)
    mask = torch.zeros(R * k, C)
    have_old = all(s.logprobs is not None for s in samples)
    old = torch.zeros(R * k, C)
    for r, row in enumerate(rows):
        prompt = row[0].prompt_ids
        n, pad = len(prompt), P - len(prompt)
        ids[r, pad:P] = torch.tensor(prompt)
        valid[r, pad:] = True
        positions[r, pad:P] = torch.arange(n)
        positions[r, P:] = (torch.arange(C) + n).repeat(k)
        for i, s in enumerate(row):
            m, b = len(s.completion_ids), r * k + i
            if m:
                targets[b, :m] = torch.tensor(s.completion_ids)
                mask[b, :m] = 1.0
                if have_old:
                    old[b, :m] = torch.tensor(s.logprobs)
    ids[:, P:] = targets.view(R, k * C)      # a row's completion slots are its completions' targets, in order
    # completion i of a row: token 0 is predicted by the prompt's last column, token c by column P + i*C + c - 1
    col = P + torch.arange(k)[:, None] * C + torch.arange(C)[None, :] - 1   # [k, C]
    col[:, 0] = P - 1
    token_mask = torch.cat([valid.float(), mask.view(R, k * C)], dim=1)   # [R, L]
    return PackedGroups(ids.to(device), positions.to(device),
                        SharedPrefix(P, k, C, valid.to(device), token_mask.to(device)),
                        col.flatten().expand(R, -1).to(device),
                        targets.to(device), mask.to(device), old.to(device) if have_old else None)


def packed_logprobs(model, batch: PackedGroups, temperature: float, with_entropy: bool = False):
    """(logp [R*k, C], entropy or None) of the completion tokens under `model` (inside any autocast you set)."""
    logits = model(batch.ids, positions=batch.positions, shared_prefix=batch.layout,
                   logits_indices=batch.logits_index)                     # [R, k*C, V]
    logits = logits.view(batch.targets.shape[0], batch.targets.shape[1], -1)  # [R*k, C, V]
    return token_logprobs(logits, batch.targets, temperature, with_entropy)
