"""GRPO training (the R1-Zero recipe): sample G completions per prompt, reward them by rules, push up the better ones.

One optimizer step:
  1. rollout  : this rank's share of prompts (whole groups) -> r1kit's engine over the live policy -> completions
                with their rollout-time logprobs; rewards (`length`: the soft overlong penalty); with dynamic sampling,
                groups whose rewards are all equal are dropped and more prompts drawn until the share is full.
  2. advantage: group-relative (advantages.py), per completion; truncated completions masked if asked.
  3. train    : the engine's KV memory is released; num_iterations passes of micro-batched forward/backward of the
                clipped objective (losses.py; each prompt packed once with its completions, group_packing.py)
                against the rollout logprobs (num_iterations > 1) or the detached current ones (== 1, as TRL),
                k3 KL to a frozen reference when beta > 0; clip, step, router bias. With beta = 0, groups whose
                rewards are all equal (zero advantages, zero policy gradient) are skipped (skip_zero_advantage;
                _micro_batches says what that changes for MoE balancing).
  4. log      : metrics.jsonl (+ samples.jsonl), checkpoints (checkpointing.py).
Examples are dicts with "prompt" (a string or chat messages) plus whatever the rewards need; the reward is a
r1kit.rewards.CombinedReward: named (completion_text, example) -> float callables with weights.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from r1kit.errors import UserError
from r1kit.rewards import CombinedReward
from r1kit.train.advantages import fill_informative_groups, group_advantages
from r1kit.train.checkpointing import checkpoint_due, find_resume_checkpoint, save_checkpoint
from r1kit.train.config import GRPOConfig
from r1kit.train.distributed import (DistInfo, all_gather_objects, all_reduce_max, all_reduce_sum, barrier,
                                     full_model_for_saving, gather_for_inference, init_distributed,
                                     optimizer_state_for_saving, reshard, unwrap)
from r1kit.train.group_packing import PackedGroups, pack_groups, packed_logprobs
from r1kit.train.losses import grpo_loss
from r1kit.train.moe_balance import aux_loss, router_bias_update
from r1kit.train.optim import grad_norm_and_clip
from r1kit.train.precision import autocast_context
from r1kit.train.rollout import EngineRollout, Sample
from r1kit.train.run_log import RunLog, finish_run
from r1kit.train.setup import load_policy, prepare_training
from r1kit.train.task_data import prompt_ids


def score_samples(samples: list[Sample], reward: CombinedReward, cfg: GRPOConfig) -> None:
    """Set each sample's rewards (one score per named reward, in parallel threads: math and code verifiers wait on
    worker processes) and their weighted sum. The examples also carry the completion's token count and the run's
    length limit, for the `length` reward (DAPO's soft overlong penalty over the last overlong_buffer tokens)."""
    length = {"max_completion_tokens": cfg.max_completion_length,
              "overlong_cache_tokens": cfg.overlong_buffer or max(1, cfg.max_completion_length // 4)}
    exs = [{**s.example, **length, "completion_tokens": len(s.completion_ids)} for s in samples]
    totals, per = reward.score_batch([s.text for s in samples], exs)
    for i, s in enumerate(samples):
        s.rewards = {name: scores[i] for name, scores in per.items()}
        s.reward = totals[i]


class PromptStream:
    """Rank-local, resumable stream of examples: rank r reads positions r, r + W, r + 2W, ... of a seeded
    per-epoch permutation of the examples."""

    def __init__(self, examples: list[dict], seed: int, rank: int, world: int):
        self.examples, self.seed, self.rank, self.world = examples, seed, rank, world
        self.cursor = 0

    @property
    def position(self) -> int:
        """Global index (over all ranks) of the example the next `next()` returns; the same prompt has the same
        position whatever the number of processes (rank r of W reads r, r + W, ...)."""
        return self.cursor * self.world + self.rank

    def next(self) -> dict:
        c = self.position
        self.cursor += 1
        epoch, pos = divmod(c, len(self.examples))
        order = list(range(len(self.examples)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return self.examples[order[pos]]


def policy_logprobs(model, batch: PackedGroups, temperature: float, device, dtype: str, with_entropy: bool = False):
    """Completion-token logprobs [R*k, C] (and entropies) of a packed micro-batch, under the trainer's autocast."""
    with autocast_context(device, dtype):
        return packed_logprobs(model, batch, temperature, with_entropy)


def train_grpo(model_path: str, out: str, cfg: GRPOConfig, tasks: list[str] = (), reward: str | None = None,
               resume: bool | str = False, examples: list[dict] | None = None,
               rewards: CombinedReward | None = None, extra_config: dict | None = None) -> Path:
    """Train the model at `model_path` (a model directory or what r1kit.models.load_model takes: the CLI's --model)
    with GRPO on `tasks` (or the given `examples` and `rewards`); returns the final model dir.
    `reward` is a reward spec ("accuracy:1.0,format:0.2"; default: each task's own scorer)."""
    from r1kit.models.builtin import resolve_model
    from r1kit.tokenizer import load_tokenizer

    info = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.prompts_per_step % info.world_size:
        raise UserError(f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of the number of "
                        f"processes ({info.world_size}): each rank rolls out whole groups")
    if examples is None or rewards is None:
        from r1kit.train.task_data import examples_and_rewards

        ex2, rw2 = examples_and_rewards(list(tasks), reward)
        examples, rewards = examples if examples is not None else ex2, rewards if rewards is not None else rw2
    if not examples:
        raise UserError("no prompts: give --task NAME")
    log = RunLog(out, info)
    ckpt = find_resume_checkpoint(out, resume)
    model_path = str(resolve_model(model_path))  # builtin name, hub id or directory; checked before --out is written
    log.save_config(cfg, {"model": model_path, "tasks": list(tasks), "reward": reward, "world_size": info.world_size,
                          "rewards": {name: w for name, (_, w) in rewards.parts.items()}, **(extra_config or {})})
    tokenizer = load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    policy, train_model, optimizer, scheduler, state = prepare_training(model_path, ckpt, info, cfg)
    ref = None
    if cfg.beta > 0:
        ref = load_policy(model_path, info.device).eval().requires_grad_(False)
    stream = PromptStream(examples, cfg.seed, info.rank, info.world_size)
    start = 0
    if state is not None:
        stream.cursor = state["prompt_cursors"][info.rank]
        if ref is not None and state.get("ref") is not None:
            ref.load_state_dict(state["ref"])
        start = state["step"]
    local_groups = cfg.prompts_per_step // info.world_size
    engine = EngineRollout(unwrap(policy), tokenizer, cfg.max_prompt_length + cfg.max_completion_length,
                           local_groups * cfg.num_generations, cfg.kv_cache_memory_gb)

    log.truncate_after(start)          # a fresh run (or a resume) forgets log lines of steps it will redo
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, disable=not info.is_main,
               desc="grpo", dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        # ---- 1. rollout -------------------------------------------------------------------------------------
        gather_for_inference(policy)
        engine.allocate_kv_cache()

        def draw(k: int) -> list[list[Sample]]:
            # a prompt's sampling seed is a function of its global stream position only (not of the rank or of
            # its slot in this rank's batch), so 1 or N processes sample the same completions for the same prompt
            seeds = [(cfg.seed * 1_000_003 + (stream.position + j * info.world_size) * 10_007) % (2 ** 31)
                     for j in range(k)]
            exs = [stream.next() for _ in range(k)]
            prompts = [prompt_ids(tokenizer, e, cfg.max_prompt_length) for e in exs]
            groups = engine.generate(prompts, exs, list(range(k)), cfg.num_generations, seeds,
                                     cfg.max_completion_length, cfg.temperature, cfg.top_p)
            score_samples([s for g in groups for s in g], rewards, cfg)
            return groups

        if cfg.dynamic_sampling:
            groups, _ = fill_informative_groups(draw, local_groups, lambda g: len({s.reward for s in g}) > 1,
                                                cfg.max_dynamic_draws)
        else:
            groups = draw(local_groups)
        engine.free_kv_cache()
        reshard(policy)
        t_rollout = time.perf_counter() - t0
        samples = [s for g in groups for s in g]
        reward_t = torch.tensor([s.reward for s in samples], dtype=torch.float64)  # flat = equal Python floats
        adv = group_advantages(reward_t, cfg.num_generations, cfg.scale_rewards)
        # ---- 2./3. train -----------------------------------------------------------------------------------
        t1 = time.perf_counter()
        stats = _train_on(samples, adv, train_model, policy, ref, optimizer, scheduler, cfg, info, pad_id)
        router_bias_update(unwrap(policy), cfg.router_bias_gamma, info)
        if ref is not None and cfg.ref_refresh_steps and (step + 1) % cfg.ref_refresh_steps == 0:
            ref.load_state_dict(unwrap(policy).state_dict())
        t_train = time.perf_counter() - t1
        # ---- 4. log ----------------------------------------------------------------------------------------
        record = _metrics(step + 1, samples, groups, rewards, cfg, info, stats, t_rollout, t_train,
                          time.perf_counter() - t0)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            log.append("metrics.jsonl", record)
        if cfg.sample_every and (step == start or (step + 1) % cfg.sample_every == 0):
            for s in samples[:: max(1, cfg.num_generations)][: cfg.num_samples_logged]:
                log.append("samples.jsonl", {"step": step + 1, "prompt": tokenizer.decode(s.prompt_ids),
                                             "completion": s.text, "reward": s.reward, "rewards": s.rewards})
        bar.set_postfix(reward=f"{record['reward']:.3f}", len=f"{record['completion_length']:.0f}")
        save, stop = checkpoint_due(cfg, step + 1)
        if save:
            _checkpoint(log, info, step + 1, policy, optimizer, scheduler, ref, stream, model_path, cfg)
        if stop:
            return None
    _checkpoint(log, info, cfg.max_steps, policy, optimizer, scheduler, ref, stream, model_path, cfg)
    return finish_run(log, info, policy, model_path)


def _train_on(samples, adv, train_model, policy, ref, optimizer, scheduler, cfg: GRPOConfig, info: DistInfo,
              pad_id: int) -> dict[str, float]:
    device = info.device
    keep = torch.tensor([0.0 if (cfg.mask_truncated_completions and s.truncated) else 1.0 for s in samples])
    n_tok_local = float(sum(len(s.completion_ids) * k for s, k in zip(samples, keep.tolist())))
    n_seq, n_tok = all_reduce_sum([len(samples), n_tok_local], info).tolist()
    W = info.world_size
    # micro-batches of whole packed rows: a row is one prompt + k of its completions (group_packing.py)
    # (k divides micro_batch_size, and samples come in whole groups, so every micro-batch is whole rows)
    k = math.gcd(cfg.num_generations, cfg.micro_batch_size)
    micro, n_fill = _micro_batches(adv * keep, cfg, info)
    n_trained = sum(len(idx) for idx in micro[:len(micro) - n_fill])
    # the balance loss is a mean over the trained sequences of all ranks (DDP then averages the ranks' gradients)
    aux_scale = W / max(float(all_reduce_sum([n_trained], info)[0]), 1.0)
    # rollout-time logprobs are the "old" policy when several updates reuse a batch; with one update the ratio is
    # taken against the detached current logprobs (value 1, gradient of the policy), exactly like TRL.
    use_old = cfg.num_iterations > 1
    prepared = []
    for j, idx in enumerate(micro):
        batch = pack_groups([samples[i] for i in idx], k, pad_id, device)
        filler = j >= len(micro) - n_fill
        if filler:  # kept out of the MoE balance statistics (router loads, balance loss)
            batch.layout.token_mask = torch.zeros_like(batch.layout.token_mask)
        mask, old = batch.mask * keep[idx].to(device).unsqueeze(1), batch.old_logprobs
        ref_lp = None
        if ref is not None:
            with torch.no_grad():
                ref_lp, _ = policy_logprobs(ref, batch, cfg.temperature, device, cfg.dtype)
        if use_old and old is None:
            with torch.no_grad():
                old, _ = policy_logprobs(unwrap(policy), batch, cfg.temperature, device, cfg.dtype)
        prepared.append((batch, mask, old if use_old else None, ref_lp, adv[idx].to(device),
                         0.0 if filler else len(idx) * aux_scale, filler))
    keys = ("loss", "clip_frac", "clip_low", "clip_high", "kl", "entropy", "tokens")
    acc = {f: dict.fromkeys(keys, 0.0) for f in (False, True)}  # trained micro-batches, fillers
    grad_norm = 0.0
    lr = scheduler.get_last_lr()[0]
    for it in range(cfg.num_iterations):
        for j, (batch, mask, old, ref_lp, a, aux_w, filler) in enumerate(prepared):
            last = j == len(prepared) - 1
            ctx = train_model.no_sync() if (not last and hasattr(train_model, "no_sync")) else contextlib.nullcontext()
            with ctx:
                logp, ent = policy_logprobs(train_model, batch, cfg.temperature, device, cfg.dtype,
                                            with_entropy=(it == 0))
                out = grpo_loss(logp, a, mask, old_logp=old, ref_logp=ref_lp, loss_type=cfg.loss_type,
                                eps_low=cfg.eps_low, eps_high=cfg.eps_high, beta=cfg.beta,
                                max_completion_length=cfg.max_completion_length, entropy=ent,
                                num_sequences=n_seq / W, num_tokens=max(n_tok, 1.0) / W)
                (out.loss + aux_loss(policy) * aux_w).backward()
            if it == 0:
                t, a_ = out.num_tokens, acc[filler]
                a_["loss"] += float(out.loss.detach()) / W
                a_["tokens"] += t
                for key, v in (("clip_frac", out.clip_frac), ("clip_low", out.clip_low_frac),
                               ("clip_high", out.clip_high_frac), ("kl", out.kl), ("entropy", out.entropy or 0.0)):
                    a_[key] += v * t
        grad_norm = grad_norm_and_clip(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    n = len(keys)
    sums = all_reduce_sum([acc[f][key] for f in (False, True) for key in keys] + [n_trained, len(samples)],
                          info).tolist()
    main, fill = dict(zip(keys, sums[:n])), dict(zip(keys, sums[n:2 * n]))
    # entropy, KL and clip fractions describe the trained groups; fillers only when nothing else was trained
    tot = main if main["tokens"] > 0 else fill
    t = max(tot["tokens"], 1.0)
    return {"loss": main["loss"] + fill["loss"], "clip_frac": tot["clip_frac"] / t,
            "clip_low_frac": tot["clip_low"] / t, "clip_high_frac": tot["clip_high"] / t, "kl": tot["kl"] / t,
            "entropy": tot["entropy"] / t, "grad_norm": grad_norm, "lr": lr,
            "trained_frac": sums[2 * n] / max(sums[2 * n + 1], 1.0)}


def _micro_batches(adv: torch.Tensor, cfg: GRPOConfig, info: DistInfo) -> tuple[list[list[int]], int]:
    """The step's micro-batches (sample indices) and how many of them, at the end, are filler.

    adv: each sample's advantage, 0 where its loss is masked. Without skip_zero_advantage (or with beta > 0) every
    sample is trained, in rollout order. With it, a group whose advantages are all zero (its rewards were all equal,
    or its completions are masked) is skipped: with beta = 0 every token's term is -min(r A, clip(r) A) = 0 for
    A = 0, whatever the ratio r, so its policy gradient is exactly zero. Dense models and MoE models without balancing
    (aux_loss_alpha = router_bias_gamma = 0) reach the same parameters; with balancing, DeepSeek-V3's balance loss
    and router-bias loads cover the trained groups only. Every rank runs as many micro-batches as the busiest one,
    so collectives match: a rank with fewer informative groups runs filler micro-batches of its flat ones (at least
    one), which the caller keeps out of the balance statistics and the logged metrics."""
    g, mbs, n = cfg.num_generations, cfg.micro_batch_size, adv.numel()

    def chunks(idx: list[int]) -> list[list[int]]:
        return [idx[i:i + mbs] for i in range(0, len(idx), mbs)]

    if not cfg.skip_zero_advantage or cfg.beta > 0:
        return chunks(list(range(n))), 0
    moves = adv.view(-1, g).ne(0).any(dim=1).tolist()  # [groups]: any completion with a nonzero advantage
    micro = chunks([j * g + i for j, m in enumerate(moves) if m for i in range(g)])
    spare = chunks([j * g + i for j, m in enumerate(moves) if not m for i in range(g)])
    busiest = int(all_reduce_max([max(len(micro), 1)], info)[0])
    fill = spare[:max(busiest - len(micro), 0)]
    if len(micro) + len(fill) != busiest:  # every rank holds as many samples, so it always has enough filler
        raise RuntimeError(f"rank {info.rank}: {len(micro) + len(fill)} micro-batches where the others run {busiest}")
    return micro + fill, len(fill)


def _metrics(step, samples, groups, rewards, cfg, info, stats, t_rollout, t_train, t_step) -> dict[str, Any]:
    lens = [len(s.completion_ids) for s in samples]
    vals = [s.reward for s in samples]
    zero = sum(1 for g in groups if len({s.reward for s in g}) <= 1)
    names = list(rewards.parts)
    sums = all_reduce_sum([len(samples), sum(vals), sum(v * v for v in vals), sum(lens),
                           sum(s.truncated for s in samples), zero, len(groups),
                           sum(len(s.prompt_ids) for s in samples)]
                          + [sum(s.rewards[n] for s in samples) for n in names], info).tolist()
    n = max(sums[0], 1.0)
    mean = sums[1] / n
    var = max(sums[2] / n - mean * mean, 0.0)
    maxes = all_reduce_max([max(lens), -min(lens), t_rollout, t_train, t_step], info).tolist()
    rec = {"step": step, "reward": mean, "reward_std": var ** 0.5}
    for i, name in enumerate(names):
        rec[f"rewards/{name}"] = sums[8 + i] / n
    if "accuracy" in names:
        rec["accuracy"] = rec["rewards/accuracy"]
    rec.update({"frac_reward_zero_std": sums[5] / max(sums[6], 1.0), "completion_length": sums[3] / n,
                "completion_length_min": -maxes[1], "completion_length_max": maxes[0],
                "truncated_frac": sums[4] / n, **stats,
                "tokens_per_s": (sums[3] + sums[7]) / max(maxes[4], 1e-9),
                "rollout_tokens_per_s": sums[3] / max(maxes[2], 1e-9),
                "rollout_time": maxes[2], "train_time": maxes[3], "step_time": maxes[4]})
    return rec


def _checkpoint(log, info, step, policy, optimizer, scheduler, ref, stream, model_path, cfg) -> None:
    cursors = all_gather_objects(stream.cursor, info)
    full = full_model_for_saving(unwrap(policy))          # FSDP: both gather full tensors (collectives)
    optim_state = optimizer_state_for_saving(unwrap(policy), optimizer)
    if info.is_main:
        state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                 "prompt_cursors": cursors, "data_position": cursors,
                 "ref": ref.state_dict() if ref is not None and cfg.ref_refresh_steps else None}
        save_checkpoint(log.dir, step, full, state, keep_last=cfg.keep_last, tokenizer_src=model_path)
    barrier(info)

