"""Host-side launch shapes of the attention kernels: plain Python, importable where triton is absent (the
engine builds the kernels' work lists on the host)."""

from __future__ import annotations


def decode_page_ok(page: int) -> bool:
    """Whether the decode kernel can read cache blocks of `page` tokens: whole blocks, a power of two from 16 (a
    block is one operand of the tensor-core dots)."""
    return page >= 16 and page & (page - 1) == 0


def varlen_block_m(group: int, head_dim: int) -> int:
    return 64 if head_dim > 64 or group > 8 else 128


def varlen_query_blocks(query_lens: list[int], group: int, head_dim: int, block_m: int = 0
                        ) -> tuple[list[int], list[int]]:
    """Host-side work list for `varlen_attention`: (sequence index, first query) per program row (block_m: the
    kernel's rows, default `varlen_block_m`)."""
    qpb = (block_m or varlen_block_m(group, head_dim)) // group
    seqs, starts = [], []
    for i, n in enumerate(query_lens):
        for s in range(0, n, qpb):
            seqs.append(i)
            starts.append(s)
    return seqs, starts


def mixed_split_rows(kv_fp8: bool) -> int:
    """Leading one-token rows from which a mixed step's attention gives them to the decode kernel, the rest to the
    varlen kernel (two launches): where two launches timed faster than one on the H200 (docs/performance.md)."""
    return 64 if kv_fp8 else 128
