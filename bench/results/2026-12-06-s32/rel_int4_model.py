"""How far the int4 model's fast path is from its torch path with the RMSNorm folds on and off (the GPU test
test_model_fast_path_matches_torch_path_int4 asserts rel < 2e-2 on each of prefill, three decode rows, one row).
Run from the repository's root on a GPU: python bench/results/2026-12-06-s32/rel_int4_model.py"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "tests")
import test_kernels_model  # noqa: E402
from test_kernels import rel  # noqa: E402
from test_kernels_model import test_model_fast_path_matches_torch_path  # noqa: E402

from llmserve.kernels import int4  # noqa: E402

rels = []
test_kernels_model.rel = lambda a, b: (rels.append(rel(a, b)), 0.0)[1]  # record instead of asserting
for quant in ("int4_sym", "int4_asym"):
    for fold in (True, False):
        for seed in (0, 1, 2):
            int4.FOLD_NORM = fold
            rels.clear()
            with tempfile.TemporaryDirectory() as d:
                test_model_fast_path_matches_torch_path(Path(d), quant, seed, False)
            print(f"{quant} FOLD_NORM={fold} seed {seed}: prefill / 3 decode rows / 1 row rel "
                  + " / ".join(f"{r:.5f}" for r in rels), flush=True)
