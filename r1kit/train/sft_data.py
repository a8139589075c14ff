"""SFT data: conversations (JSONL files, or a task's cold-start traces) -> (ids, loss mask) examples -> rows.

Each assistant turn becomes one example: the conversation before it is rendered with the tokenizer's chat template
and a generation prompt (for R1: "...<｜Assistant｜><think>\n"), the turn itself (reasoning + answer + EOS) is
appended. Only the appended tokens carry loss. Prompt and completion are tokenized separately, exactly as the engine
sees them at inference (prompt encoded, completion generated). A turn without "</think>" gets an empty reasoning
block so that the model still learns to close it. A {"text": ...} record is plain text (base training, continued
pretraining): BOS + text + EOS with loss on every token.

Examples are packed into rows of max_seq_len (or, with packing off, length-bucketed and right-padded). The order of
rows is a fixed function of (seed, epoch), so a resumed run sees exactly the rows the uninterrupted one would.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from r1kit.errors import UserError

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


def encode_text(tokenizer, text: str) -> Example:
    """Plain text (base training, continued pretraining): BOS + text + EOS, loss on every token."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = bos + tokenizer.encode(text) + eos
    return ids, [1] * len(ids)


def record_to_messages(rec: dict[str, Any], where: str) -> list[dict[str, Any]] | str:
    """A JSONL record as a conversation, or as plain text for a {"text": ...} record."""
    if "messages" in rec:
        return rec["messages"]
    if "prompt" in rec and "completion" in rec:
        prompt = rec["prompt"]
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        return [*msgs, {"role": "assistant", "content": str(rec["completion"])}]
    if isinstance(rec.get("text"), str):
        return rec["text"]
    raise UserError(f'{where}: each line needs "messages", "prompt" + "completion" or "text", got keys {sorted(rec)}')


def read_sft_records(path: str) -> list[list[dict[str, Any]] | str]:
    """Conversations and plain texts of an SFT JSONL file, in file order."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--data {path!r} does not exist")
    records = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            records.append(record_to_messages(rec, f"{path}:{n}"))
    return records


def encode_records(tokenizer, records: list[list[dict[str, Any]] | str]) -> list[Example]:
    """(ids, loss mask) examples of conversations (one per assistant turn) and plain texts."""
    return [ex for r in records
            for ex in ([encode_text(tokenizer, r)] if isinstance(r, str) else encode_conversation(tokenizer, r))]


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
