"""KV block allocation: fixed-size blocks, reference counts and prefix caching.

The KV cache is `num_blocks` blocks of `block_size` token slots. Each sequence owns a block table (list of block
ids). A block that is full and whose KV has been computed gets a hash chained with its parent block's hash, so a
later sequence whose prompt starts with the same tokens finds it (`hash -> block`), checks the tokens really match,
and shares it (ref_count + 1) instead of recomputing it. A block whose ref count drops to 0 returns to the free
list but keeps its contents and hash until it is reused: free blocks are reused least recently freed first, and
blocks holding no cached prefix go before those that do.
"""
from __future__ import annotations

from collections import OrderedDict

from r1kit.engine.sequence import Sequence


def block_hash(parent: int | None, tokens: list[int]) -> int:
    return hash((parent, tuple(tokens)))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # front = reuse first
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queries = 0  # full prompt blocks looked up
        self.prefix_hits = 0

    # -- bookkeeping -------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict its cached prefix
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def _lookup(self, seq: Sequence) -> list[int]:
        """Blocks already holding seq's leading full blocks (never the block of its last token, which must be
        computed to produce logits, nor blocks whose prompt logprobs the sequence still needs)."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], None
        usable = (len(seq) - 1) // self.block_size
        if seq.needs_prompt_logprobs:  # positions whose prompt logprobs are still to come must be computed
            usable = min(usable, (len(seq.prompt_logprobs) - 1) // self.block_size)
        for i in range(usable):
            tokens = seq.block_tokens(i, self.block_size)
            parent = block_hash(parent, tokens)
            block_id = self.hash_to_block.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != tuple(tokens):
                break
            hits.append(block_id)
        return hits

    # -- the scheduler's interface -----------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence, reserve: int = 0) -> bool:
        """Enough free blocks for all of seq's tokens (hits on blocks in use cost nothing), keeping `reserve` free."""
        in_use_hits = sum(1 for b in self._lookup(seq) if self.blocks[b].ref_count > 0)
        return self.blocks_needed(len(seq)) - in_use_hits + reserve <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, sharing cached prefix blocks."""
        assert not seq.block_table
        hits = self._lookup(seq)
        num_lookups = (len(seq) - 1) // self.block_size
        self.prefix_queries += num_lookups if self.enable_prefix_caching else 0
        self.prefix_hits += len(hits)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
        seq.block_table = hits + [self._take_free() for _ in range(self.blocks_needed(len(seq)) - len(hits))]
        seq.num_computed_tokens = seq.num_cached_tokens = len(hits) * self.block_size

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table) <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make room for num_new_tokens more computed tokens."""
        while len(seq.block_table) < self.blocks_needed(seq.num_computed_tokens + num_new_tokens):
            seq.block_table.append(self._take_free())

    def commit(self, seq: Sequence, old_computed: int) -> None:
        """After a step computed tokens [old_computed, seq.num_computed_tokens): register newly full blocks."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        first, last = old_computed // bs, seq.num_computed_tokens // bs  # blocks [first, last) are now full
        if first >= last:
            return
        parent = self.blocks[seq.block_table[first - 1]].hash if first > 0 else None
        if first > 0 and parent is None:  # an earlier block was never registered: its chain is broken
            return
        for i in range(first, last):
            block = self.blocks[seq.block_table[i]]
            tokens = seq.block_tokens(i, bs)
            h = block_hash(parent, tokens)
            if block.hash is None:
                block.hash, block.token_ids = h, tuple(tokens)
                self.hash_to_block.setdefault(h, block.block_id)
            parent = block.hash

    def free_seq(self, seq: Sequence) -> None:
        """Drop seq's references; blocks nobody uses return to the free list (cached ones at the back)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.hash is None:
                    self.free.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (after the weights changed, the cached KV is stale)."""
        for block in self.blocks:
            block.hash, block.token_ids = None, ()
        self.hash_to_block.clear()

    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
