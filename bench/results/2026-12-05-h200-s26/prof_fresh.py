"""Session 26, call 4: the engine's first 4 x 2,048-token prefill step (kernel_check's profile section) with fresh
prompts' attention as the tree has it, or changed by FRESH_MODE: "cache" (every block over the cache, as before
the twenty-second session: new_kv dropped), "pointers" (FRESH_LOADS 1). Run from the repository root."""
import os
import sys

from llmserve.kernels import varlen

mode = os.environ.get("FRESH_MODE", "")
if mode == "pointers":
    varlen.FRESH_LOADS = 1
elif mode == "cache":
    launch = varlen.varlen_attention
    varlen.varlen_attention = lambda *a, **kw: launch(*a, **{**kw, "new_kv": None})

from bench.kernel_check.__main__ import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
