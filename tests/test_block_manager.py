"""Block manager: allocation, reference counts, prefix caching with chained hashes, LRU eviction."""
from __future__ import annotations

from r1kit.engine.block_manager import BlockManager
from r1kit.engine.sampling_params import SamplingParams
from r1kit.engine.sequence import Sequence


def seq(tokens):
    return Sequence("r", 0, list(tokens), SamplingParams())


def computed(bm, s):
    """Pretend the model computed all of s's tokens."""
    old = s.num_computed_tokens
    s.num_computed_tokens = len(s)
    bm.commit(s, old)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(10, 4)
    a, b = seq(range(9)), seq(range(100, 104))
    bm.allocate(a)
    bm.allocate(b)
    assert len(a.block_table) == 3 and len(b.block_table) == 1
    assert not set(a.block_table) & set(b.block_table)
    assert bm.num_free_blocks == 6
    bm.free_seq(a)
    bm.free_seq(b)
    assert bm.num_free_blocks == 10 and all(blk.ref_count == 0 for blk in bm.blocks)


def test_prefix_cache_reuses_blocks_for_shared_system_prompt():
    bm = BlockManager(20, 4)
    system = list(range(1, 9))  # two full blocks
    a = seq(system + [50, 51, 52])
    bm.allocate(a)
    assert a.num_cached_tokens == 0
    computed(bm, a)
    b = seq(system + [60, 61])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.num_computed_tokens == 8 and b.block_table[2] != a.block_table[2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert bm.prefix_hits == 2
    # a finishes; its cached blocks survive and a third request still hits them
    bm.free_seq(a)
    bm.free_seq(b)
    c = seq(system + [70])
    bm.allocate(c)
    assert c.num_computed_tokens == 8


def test_prefix_cache_needs_same_parent_chain_and_keeps_last_token_uncached():
    bm = BlockManager(20, 4)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8])
    bm.allocate(a)
    computed(bm, a)
    # same second block after a different first block: no hit
    b = seq([9, 9, 9, 9, 5, 6, 7, 8, 1])
    bm.allocate(b)
    assert b.num_computed_tokens == 0
    # identical prompt: the block holding the last token is recomputed for its logits
    c = seq([1, 2, 3, 4, 5, 6, 7, 8])
    bm.allocate(c)
    assert c.num_computed_tokens == 4


def test_uncomputed_blocks_are_not_shared():
    bm = BlockManager(20, 4)
    a = seq(range(12))
    bm.allocate(a)  # allocated but not yet computed (e.g. mid chunked prefill)
    b = seq(range(13))
    bm.allocate(b)
    assert b.num_computed_tokens == 0


def test_lru_eviction_reuses_uncached_then_oldest_cached_blocks():
    bm = BlockManager(4, 2)
    old, new = seq([1, 2, 3]), seq([4, 5, 6])
    bm.allocate(old)
    computed(bm, old)
    bm.free_seq(old)
    bm.allocate(new)
    computed(bm, new)
    bm.free_seq(new)
    # 4 free blocks: 2 hold cached prefixes ([1,2] older, [4,5] newer), 2 hold nothing
    x = seq([7, 8, 9, 10, 11])  # needs 3 blocks: both empty ones, then evicts the older cached prefix
    bm.allocate(x)
    assert bm.num_free_blocks == 1
    assert seq([4, 5, 0]).block_table == [] and bm._lookup(seq([4, 5, 0])) != []
    assert bm._lookup(seq([1, 2, 0])) == []


def test_can_allocate_counts_hits_on_blocks_in_use_as_free():
    bm = BlockManager(3, 4)
    a = seq(range(9))  # 3 blocks
    bm.allocate(a)
    computed(bm, a)
    b = seq(list(range(8)) + [99])  # shares 2 blocks in use, needs 1 more: none free
    assert not bm.can_allocate(b)
    bm2 = BlockManager(4, 4)
    a2 = seq(range(9))
    bm2.allocate(a2)
    computed(bm2, a2)
    assert bm2.can_allocate(seq(list(range(8)) + [99]))
    assert not bm2.can_allocate(seq(range(200, 209)))
