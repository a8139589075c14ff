"""Continuous batching: which sequences run in the next step and how many of their tokens.

Every step has a token budget (`max_num_batched_tokens`). Running sequences go first, oldest first: each brings
its uncomputed tokens (1 when decoding, a chunk of its prompt during chunked prefill, several after forced
tokens). When the KV cache has no block left for one of them, the newest running sequence is preempted by
recompute: its blocks are freed and it goes back to the front of the waiting queue (prefix caching usually makes
the recompute cheap). Waiting sequences are then admitted in order while the budget, `max_num_seqs` and free
blocks allow; so decode tokens and prefill chunks share a step.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from r1kit.engine.block_manager import BlockManager
from r1kit.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]  # tokens of each sequence computed in this step

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 2048):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        if self.bm.blocks_needed(len(seq)) > self.bm.num_blocks:
            raise ValueError(f"sequence of {len(seq)} tokens needs more KV blocks than the cache has "
                             f"({self.bm.num_blocks} of {self.bm.block_size} tokens); raise the KV cache size")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free_seq(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        batch = ScheduledBatch([], [])
        preempted = False
        for seq in sorted(self.running, key=lambda s: s.seq_id):
            if seq not in self.running:  # preempted while making room for an older one
                continue
            if budget == 0:
                break
            n = min(seq.num_uncomputed, budget)
            if n == 0:
                continue
            while not self.bm.can_append(seq, n):
                victim = max(self.running, key=lambda s: s.seq_id)
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status != SequenceStatus.RUNNING:
                continue
            self.bm.append(seq, n)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        while self.waiting and not preempted and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # keep one block per running sequence free so they can keep decoding next step
            if not self.bm.can_allocate(seq, reserve=min(len(self.running), self.bm.num_free_blocks // 2)):
                break
            self.waiting.popleft()
            self.bm.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch

    def postprocess(self, batch: ScheduledBatch) -> None:
        """Mark the batch's tokens computed and register newly full blocks for prefix caching."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            old = seq.num_computed_tokens
            seq.num_computed_tokens += n
            self.bm.commit(seq, old)

    def finish(self, seq: Sequence, reason: str | None) -> None:
        """Finish or abort: free the blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free_seq(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
