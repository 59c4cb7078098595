"""One decode-attention launch per KV dtype at 256 x 2,100 (Llama-3.1-8B heads), for ncu."""
import sys

import torch

from llmserve.kernels.attention import decode_attention

B, ctx, H, KVH, D, page, top = 256, 2100, 32, 8, 128, 16, 4096
for kv in sys.argv[1].split(","):
    blocks_per = -(-ctx // page)
    nblocks = B * blocks_per + 1
    dtype = torch.float8_e4m3fn if kv.startswith("fp8") else torch.bfloat16
    cache = torch.randn(2, nblocks, page, KVH, D, device="cuda", dtype=torch.bfloat16).to(dtype)
    bt = torch.randperm(nblocks - 1, device="cuda")[:B * blocks_per].view(B, blocks_per).to(torch.int32)
    bt = torch.cat([bt, torch.zeros(B, top // page - blocks_per, dtype=torch.int32, device="cuda")], 1)
    ctxs = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
    cfg = tuple(int(x) for x in kv.split(":")[1].split("/")) if ":" in kv else None
    mode = int(kv.split(":")[2]) if kv.count(":") > 1 else 1
    for _ in range(3):
        decode_attention(q, cache, bt, ctxs, D ** -0.5, top, config=cfg, fp8_convert=mode)
    torch.cuda.synchronize()
    del cache
