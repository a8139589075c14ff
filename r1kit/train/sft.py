"""Supervised fine-tuning on chat-formatted reasoning traces (R1's cold start, and distillation).

Each assistant turn becomes one example: the conversation before it is rendered with the tokenizer's chat template
and a generation prompt (for R1: "...<｜Assistant｜><think>\n"), the turn itself (reasoning + answer + EOS) is
appended. Only the appended tokens carry loss. Prompt and completion are tokenized separately, exactly as the engine
sees them at inference (prompt encoded, completion generated). A turn without "</think>" gets an empty reasoning
block so that the model still learns to close it.

Examples are packed into rows of max_seq_len (or, with packing off, length-bucketed and right-padded). The order of
rows is a fixed function of (seed, epoch), so a resumed run sees exactly the rows the uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from r1kit.errors import UserError
from r1kit.train.checkpointing import save_checkpoint
from r1kit.train.config import SFTConfig
from r1kit.train.distributed import (DistInfo, all_reduce_sum, barrier, full_model_for_saving, init_distributed,
                                     optimizer_state_for_saving, unwrap)
from r1kit.train.run import (RunLog, Timer, aux_loss, autocast_context, checkpoint_due, find_resume_checkpoint,
                             finish_run, grad_norm_and_clip, prepare_training, router_bias_update)

Example = tuple[list[int], list[int]]  # token ids, loss mask (1 = trained on)


def completion_text(content: str, think_prefill: bool) -> str:
    """The text the model must produce after the generation prompt for an assistant `content`."""
    if think_prefill:
        if content.startswith("<think>"):
            content = content[len("<think>"):].lstrip("\n")
        if "</think>" not in content:
            content = "\n</think>\n\n" + content
    return content


def encode_conversation(tokenizer, messages: list[dict[str, Any]]) -> list[Example]:
    """One (ids, mask) example per assistant turn of `messages`."""
    out = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or i == 0:
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
        content = m.get("content") or ""
        reasoning = m.get("reasoning_content") or m.get("reasoning")
        if reasoning:
            content = f"{reasoning}\n</think>\n\n{content}"
        think = prompt.rstrip().endswith("<think>")
        p_ids = tokenizer.encode(prompt)
        c_ids = tokenizer.encode(completion_text(content, think))
        eos = tokenizer.eos_token_id
        if eos is not None:
            c_ids = c_ids + [eos]
        out.append((p_ids + c_ids, [0] * len(p_ids) + [1] * len(c_ids)))
    return out


def record_to_messages(rec: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "messages" in rec:
        return rec["messages"]
    if "prompt" in rec and "completion" in rec:
        prompt = rec["prompt"]
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        return [*msgs, {"role": "assistant", "content": str(rec["completion"])}]
    raise UserError(f'{where}: each line needs "messages" or "prompt" + "completion", got keys {sorted(rec)}')


def read_jsonl_conversations(path: str) -> list[list[dict[str, Any]]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--data {path!r} does not exist")
    convs = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            convs.append(record_to_messages(rec, f"{path}:{n}"))
    return convs


def pack(examples: list[Example], max_len: int, seed: int) -> list[Example]:
    """Concatenate shuffled examples into rows of max_len + 1 tokens (inputs = row[:-1], targets = row[1:])."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    ids, mask = [], []
    for i in order:
        ids += examples[i][0]
        mask += examples[i][1]
    rows = [(ids[s:s + max_len + 1], mask[s:s + max_len + 1]) for s in range(0, len(ids) - 1, max_len)]
    return [r for r in rows if sum(r[1][1:]) > 0]


def bucket(examples: list[Example], max_len: int, batch_size: int, seed: int) -> list[Example]:
    """Truncate, then order so that each batch holds examples of similar length (less padding)."""
    rows = [(ids[:max_len + 1], m[:max_len + 1]) for ids, m in examples]
    rng = random.Random(seed)
    rng.shuffle(rows)
    chunk = batch_size * 32
    out = []
    for s in range(0, len(rows), chunk):
        out += sorted(rows[s:s + chunk], key=lambda r: len(r[0]))
    return out


def collate(rows: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows -> (inputs [B, T], targets [B, T], loss mask [B, T], token mask [B, T]: 1 on real inputs), right-padded."""
    T = max(len(r[0]) for r in rows) - 1
    inp = torch.full((len(rows), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), T), pad_id, dtype=torch.long)
    msk = torch.zeros((len(rows), T))
    real = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (ids, m) in enumerate(rows):
        n = len(ids) - 1
        inp[b, :n] = torch.tensor(ids[:-1])
        tgt[b, :n] = torch.tensor(ids[1:])
        msk[b, :n] = torch.tensor(m[1:], dtype=torch.float)
        real[b, :n] = 1
    return inp, tgt, msk, real


def row_indices(step: int, global_batch: int, num_rows: int, seed: int) -> list[int]:
    """Row ids of optimizer step `step`: a fresh seeded permutation per epoch; a pure function of step."""
    out = []
    for c in range(step * global_batch, (step + 1) * global_batch):
        epoch, pos = divmod(c, num_rows)
        g = torch.Generator().manual_seed(seed * 1000003 + epoch)
        out.append(int(torch.randperm(num_rows, generator=g)[pos]))
    return out


def train_sft(model: str, out: str, cfg: SFTConfig, data: list[str] = (), tasks: list[str] = (),
              resume: bool | str = False, extra_config: dict | None = None) -> Path:
    """Fine-tune `model` on `data` JSONL files and/or cold-start traces of `tasks`; returns the final model dir."""
    from r1kit.tokenizer import load_tokenizer

    info = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    log = RunLog(out, info)
    ckpt = find_resume_checkpoint(out, resume)
    tokenizer = load_tokenizer(model)
    convs = [c for path in data for c in read_jsonl_conversations(path)]
    if not convs and not tasks:
        raise UserError("no training data: give --data FILE.jsonl and/or --task NAME")
    examples = [ex for conv in convs for ex in encode_conversation(tokenizer, conv)]
    if tasks:
        from r1kit.train.task_data import cold_start_examples

        examples += cold_start_examples(tokenizer, list(tasks), cfg.num_examples, cfg.seed)
    if not examples:
        raise UserError("the data holds no assistant turns to train on")
    rows = (pack(examples, cfg.max_seq_len, cfg.seed) if cfg.packing
            else bucket(examples, cfg.max_seq_len, cfg.batch_size, cfg.seed))
    global_batch = cfg.batch_size * cfg.grad_accum_steps * info.world_size
    if cfg.epochs > 0:
        cfg.max_steps = max(1, math.ceil(cfg.epochs * len(rows) / global_batch))
    log.save_config(cfg, {"model": model, "data": list(data), "tasks": list(tasks), "world_size": info.world_size,
                          **(extra_config or {})})

    policy, train_model, optimizer, scheduler, state = prepare_training(model, ckpt, info, cfg)
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
            _checkpoint(log, info, step + 1, policy, optimizer, scheduler, model, cfg)
        if stop:
            return None
    _checkpoint(log, info, cfg.max_steps, policy, optimizer, scheduler, model, cfg)
    return finish_run(log, info, policy, model)


def _checkpoint(log: RunLog, info: DistInfo, step: int, policy, optimizer, scheduler, model_src, cfg) -> None:
    full = full_model_for_saving(unwrap(policy))          # FSDP: both gather full tensors (collectives)
    optim_state = optimizer_state_for_saving(unwrap(policy), optimizer)
    if info.is_main:
        save_checkpoint(log.dir, step, full, {"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                        "data_position": step}, keep_last=cfg.keep_last, tokenizer_src=model_src)
    barrier(info)



