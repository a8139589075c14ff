"""Scheduler: chunked prefill under a token budget, decode and prefill sharing a step, preemption, abort."""
from __future__ import annotations

from r1kit.engine.block_manager import BlockManager
from r1kit.engine.sampling_params import SamplingParams
from r1kit.engine.scheduler import Scheduler
from r1kit.engine.sequence import Sequence, SequenceStatus


def seq(n, start=0):
    return Sequence("r", 0, list(range(start, start + n)), SamplingParams())


def step(sched, sample=True):
    """One fake model step: mark tokens computed, append a token to every sequence whose prompt is done."""
    batch = sched.schedule()
    sched.postprocess(batch)
    if sample:
        for s in batch.seqs:
            if s.num_uncomputed == 0:
                s.token_ids.append(7)
    return batch


def test_chunked_prefill_respects_token_budget_and_shares_step_with_decode():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a = seq(6)
    sched.add(a)
    b1 = step(sched)
    assert b1.num_new_tokens == [6]
    b = seq(25, start=100)
    sched.add(b)
    b2 = step(sched)  # a decodes one token, b gets a 9-token chunk
    assert [s.seq_id for s in b2.seqs] == [a.seq_id, b.seq_id] and b2.num_new_tokens == [1, 9]
    b3 = step(sched)
    assert b3.num_new_tokens == [1, 9]
    b4 = step(sched)
    assert b4.num_new_tokens == [1, 7] and b.num_output_tokens == 1
    assert sum(b2.num_new_tokens) <= 10


def test_max_num_seqs_limits_running():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        sched.add(seq(3, start=10 * i))
    batch = step(sched)
    assert len(batch) == 2 and len(sched.waiting) == 1


def test_preemption_frees_newest_and_requeues_it_first():
    bm = BlockManager(6, 2)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    old, new = seq(3), seq(3, start=50)
    sched.add(old)
    sched.add(new)
    step(sched)
    assert len(sched.running) == 2
    for _ in range(10):  # both grow until a block is missing
        step(sched)
        if sched.num_preemptions:
            break
    assert sched.num_preemptions == 1
    assert sched.waiting[0] is new and new.status == SequenceStatus.WAITING and new.block_table == []
    assert new.num_computed_tokens == 0 and old.num_computed_tokens == len(old) - 1
    # when old finishes, new is recomputed from scratch including the tokens it had sampled
    sched.finish(old, "stop")
    n_tokens = len(new)
    batch = step(sched)
    assert batch.seqs == [new] and new.num_computed_tokens == n_tokens
    # its own full blocks were still cached, so only the rest was recomputed
    assert new.num_cached_tokens > 0 and batch.num_new_tokens == [n_tokens - new.num_cached_tokens]


def test_abort_frees_blocks_at_once():
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    seqs = [seq(9, start=20 * i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    step(sched)
    for s in seqs:
        sched.finish(s, "abort")
    assert bm.num_free_blocks == 16 and not sched.has_unfinished()
    assert all(b.ref_count == 0 for b in bm.blocks)
