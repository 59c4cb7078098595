"""KV-cache block accounting with prefix reuse.

A full block is identified by a hash chained over every token before it, so two sequences share a block
only when their whole prefix up to that block matches. Freed blocks keep their hash until they are
handed out again (least recently freed first), which lets a later request with the same prefix reuse them.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from llmserve.engine.sequence import Sequence, Status


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    # Each id as 4 little-endian unsigned bytes, in one call rather than a bytes object per token (out of range:
    # struct.error, as int.to_bytes raised OverflowError).
    h.update(struct.pack(f"<{len(tokens)}I", *tokens))
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        self.hash_to_block: dict[bytes, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hit_blocks = 0
        self.query_blocks = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take_free(self) -> int:
        block, _ = self.free.popitem(last=False)
        old = self.block_hashes[block]
        if old is not None and self.hash_to_block.get(old) == block:
            del self.hash_to_block[old]
        self.block_hashes[block] = None
        self.ref_count[block] = 1
        return block

    def _chain(self, seq: Sequence, upto_blocks: int) -> list[bytes]:
        hashes, parent = [], b""
        for b in range(upto_blocks):
            parent = block_hash(parent, seq.tokens[b * self.block_size:(b + 1) * self.block_size])
            hashes.append(parent)
        return hashes

    def allocate_prompt(self, seq: Sequence, budget: int) -> bool:
        """Gives a fresh sequence blocks for its cached prefix plus up to `budget` new tokens.

        At least one token is always left to compute, so the step that follows has a position to sample
        from. Returns False (allocating nothing) when the free blocks do not suffice.
        """
        assert not seq.block_table
        reusable = self.leader_blocks(seq)
        shared = bool(reusable)  # its group's blocks: no cache lookup, and no cache hit counted
        chain = self._chain(seq, len(reusable)) if shared and self.enable_prefix_caching else []
        if not shared and self.enable_prefix_caching:
            full = (len(seq.tokens) - 1) // self.block_size
            self.query_blocks += full
            chain = self._chain(seq, full)
            for h in chain:
                block = self.hash_to_block.get(h)
                if block is None:
                    break
                reusable.append(block)
        cached_tokens = len(reusable) * self.block_size
        num_tokens = cached_tokens + min(len(seq.tokens) - cached_tokens, budget)
        new_needed = self.blocks_needed(num_tokens) - len(reusable)
        free_after_reuse = self.num_free - sum(1 for b in reusable if self.ref_count[b] == 0)
        if new_needed > free_after_reuse:
            return False
        for block in reusable:
            if self.ref_count[block] == 0:
                del self.free[block]
            self.ref_count[block] += 1
        if not shared:
            self.hit_blocks += len(reusable)
        seq.block_table = reusable + [self._take_free() for _ in range(new_needed)]
        seq.num_computed_tokens = cached_tokens
        seq.num_cached_tokens = cached_tokens
        seq.num_hashed_blocks = len(reusable)
        seq.block_hashes = chain[:len(reusable)] if reusable else []
        return True

    def shared_prompt_blocks(self, seq: Sequence) -> int:
        """The full blocks of a prompt that its n choices share: all but the block holding the last prompt token,
        which each choice computes itself (it is where each one's own tokens go next)."""
        return (seq.num_prompt_tokens - 1) // self.block_size

    def leader_blocks(self, seq: Sequence) -> list[int]:
        """The computed prompt blocks of the choice `seq` follows (n > 1), whether or not prefix caching is on;
        none when that choice does not hold them now (preempted or ended: `seq` then computes its prompt)."""
        leader = seq.leader
        if leader is None or leader.status is not Status.RUNNING:
            return []
        shared = self.shared_prompt_blocks(leader)
        if leader.num_computed_tokens < shared * self.block_size:
            return []
        return leader.block_table[:shared]

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= self.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Makes room for the first `num_tokens` tokens of a sequence that already holds blocks."""
        while len(seq.block_table) < self.blocks_needed(num_tokens):
            seq.block_table.append(self._take_free())

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publishes blocks that are now completely computed, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_hashed_blocks:
            return
        # Extend the sequence's chain from its last hashed block: hashing stays O(new blocks) per step.
        parent = seq.block_hashes[-1] if seq.block_hashes else b""
        for b in range(seq.num_hashed_blocks, full):
            parent = block_hash(parent, seq.tokens[b * self.block_size:(b + 1) * self.block_size])
            seq.block_hashes.append(parent)
            block = seq.block_table[b]
            self.block_hashes[block] = parent
            self.hash_to_block.setdefault(parent, block)
        seq.num_hashed_blocks = full

    def free_sequence(self, seq: Sequence) -> None:
        # Release tail first: a block reused later most likely is an early (shared-prefix) one.
        for block in reversed(seq.block_table):
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0
        seq.block_hashes = []
