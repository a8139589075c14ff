"""Supervised fine-tuning on chat-formatted reasoning traces (R1's cold start, and distillation): the training loop.
The data (conversations -> loss-masked examples -> packed rows, in a resumable order) is sft_data.py.
"""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from r1kit.errors import UserError
from r1kit.train.checkpointing import checkpoint_due, find_resume_checkpoint, save_checkpoint
from r1kit.train.config import SFTConfig
from r1kit.train.distributed import (DistInfo, all_reduce_sum, barrier, full_model_for_saving, init_distributed,
                                     optimizer_state_for_saving, unwrap)
from r1kit.train.moe_balance import aux_loss, router_bias_update
from r1kit.train.optim import grad_norm_and_clip
from r1kit.train.precision import autocast_context
from r1kit.train.run_log import RunLog, Timer, finish_run
from r1kit.train.setup import prepare_training
from r1kit.train.sft_data import bucket, collate, encode_records, pack, read_sft_records, row_indices


def train_sft(model_path: str, out: str, cfg: SFTConfig, data: list[str] = (), tasks: list[str] = (),
              resume: bool | str = False, extra_config: dict | None = None) -> Path:
    """Fine-tune the model at `model_path` (a builtin name, model directory or hub id: the CLI's --model) on `data`
    JSONL files and/or cold-start traces of `tasks`; returns the final model dir."""
    from r1kit.models.builtin import resolve_model
    from r1kit.tokenizer import load_tokenizer

    info = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    log = RunLog(out, info)
    ckpt = find_resume_checkpoint(out, resume)
    model_path = str(resolve_model(model_path))  # builtin name, hub id or directory; checked before --out is written
    tokenizer = load_tokenizer(model_path)
    records = [r for path in data for r in read_sft_records(path)]
    if not records and not tasks:
        raise UserError("no training data: give --data FILE.jsonl and/or --task NAME")
    examples = encode_records(tokenizer, records)
    if tasks:
        from r1kit.train.task_data import cold_start_examples

        examples += cold_start_examples(tokenizer, list(tasks), cfg.num_examples, cfg.task_target)
    if not examples:
        raise UserError("the data holds no assistant turns to train on")
    rows = (pack(examples, cfg.max_seq_len, cfg.seed) if cfg.packing
            else bucket(examples, cfg.max_seq_len, cfg.batch_size, cfg.seed))
    global_batch = cfg.batch_size * cfg.grad_accum_steps * info.world_size
    if cfg.epochs > 0:
        cfg.max_steps = max(1, math.ceil(cfg.epochs * len(rows) / global_batch))
    log.save_config(cfg, {"model": model_path, "data": list(data), "tasks": list(tasks),
                          "world_size": info.world_size, **(extra_config or {})})

    policy, train_model, optimizer, scheduler, state = prepare_training(model_path, ckpt, info, cfg)
    start = state["step"] if state is not None else 0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    log.truncate_after(start)          # a fresh run (or a resume) forgets log lines of steps it will redo
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, disable=not info.is_main,
               desc="sft", dynamic_ncols=True)
    for step in bar:
        timer = Timer()
        ids = row_indices(step, global_batch, len(rows), cfg.seed)
        share = cfg.batch_size * cfg.grad_accum_steps                  # rows of this rank
        mine = ids[info.rank * share:(info.rank + 1) * share]
        micro = [collate([rows[i] for i in mine[k:k + cfg.batch_size]], pad_id)
                 for k in range(0, len(mine), cfg.batch_size)]
        local_tokens = sum(float(m.sum()) for _, _, m, _ in micro)
        total_tokens = float(all_reduce_sum([local_tokens], info)[0])
        loss_sum = 0.0
        for k, (inp, tgt, msk, real) in enumerate(micro):
            inp, tgt, msk, real = inp.to(info.device), tgt.to(info.device), msk.to(info.device), real.to(info.device)
            sync = k == len(micro) - 1 or not hasattr(train_model, "no_sync")
            ctx = train_model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with autocast_context(info.device, cfg.dtype):
                    logits = train_model(inp, attention_mask=real)   # right-padded: MoE stats skip the padding
                nll = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none").view_as(msk)
                loss = (nll * msk).sum() / max(total_tokens, 1.0) * info.world_size
                loss = loss + aux_loss(policy) * (inp.shape[0] / len(mine))
                loss.backward()
            loss_sum += float((nll.detach() * msk).sum())
        grad_norm = grad_norm_and_clip(policy.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        router_bias_update(unwrap(policy), cfg.router_bias_gamma, info)
        dt = timer.lap()
        all_tokens = float(all_reduce_sum([sum(int(real.sum()) for *_, real in micro)], info)[0])
        loss_mean = float(all_reduce_sum([loss_sum], info)[0]) / max(total_tokens, 1.0)
        record = {"step": step + 1, "loss": loss_mean, "lr": lr, "grad_norm": grad_norm,
                  "loss_tokens": total_tokens, "tokens_per_s": all_tokens / dt, "step_time": dt}
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            log.append("metrics.jsonl", record)
        bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}")
        save, stop = checkpoint_due(cfg, step + 1)
        if save:
            _checkpoint(log, info, step + 1, policy, optimizer, scheduler, model_path, cfg)
        if stop:
            return None
    _checkpoint(log, info, cfg.max_steps, policy, optimizer, scheduler, model_path, cfg)
    return finish_run(log, info, policy, model_path)


def _checkpoint(log: RunLog, info: DistInfo, step: int, policy, optimizer, scheduler, model_path, cfg) -> None:
    full = full_model_for_saving(unwrap(policy))          # FSDP: both gather full tensors (collectives)
    optim_state = optimizer_state_for_saving(unwrap(policy), optimizer)
    if info.is_main:
        save_checkpoint(log.dir, step, full, {"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                        "data_position": step}, keep_last=cfg.keep_last, tokenizer_src=model_path)
    barrier(info)



