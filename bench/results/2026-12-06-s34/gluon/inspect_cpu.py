"""Compiles the Gluon prototype for sm_90 on the CPU: TTGIR waits, ptxas warnings, SASS loop counts."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.pop("TRITON_INTERPRET", None)
from bench.ptx_stats import _tool, sass_counts  # noqa: E402
from bench.ptx_stats import compile_launches as compile_gluon  # noqa: E402


def ptxas(ptx):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        return subprocess.run([_tool("ptxas"), "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True).stderr


def main():
    from w4wg import w4wg
    from w4wg2 import w4wg2
    M, N, K, g = [int(v) for v in (sys.argv[1:5] if len(sys.argv) > 4 else (256, 4096, 4096, 128))]
    kw = eval("dict(" + (sys.argv[5] if len(sys.argv) > 5 else "") + ")")
    fn = w4wg2 if kw.pop("v2", False) else w4wg
    if fn is w4wg2:
        kw["x_permuted"] = True
    x = torch.zeros(M, K, dtype=torch.bfloat16)
    w = torch.zeros(N, K // 2, dtype=torch.uint8)
    s = torch.zeros(N, K // g, dtype=torch.float16)
    (k,) = compile_gluon(lambda: fn(x, w, s, **kw))
    ttgir = k.asm["ttgir"]
    ptx = k.asm["ptx"]
    Path("/tmp/gl/k.ttgir").write_text(ttgir)
    Path("/tmp/gl/k.ptx").write_text(ptx)
    Path("/tmp/gl/k.cubin").write_bytes(k.asm["cubin"])
    print("waits:", re.findall(r"warp_group_dot_wait[^\n]*pendings = \d+", ttgir))
    print("ptx wgmma:", ptx.count("wgmma.mma_async"),
          "wait_group:", re.findall(r"wgmma.wait_group.sync.aligned \d+", ptx))
    print("ld.shared", ptx.count("ld.shared"), "st.shared", ptx.count("st.shared"), "ld.global", ptx.count("ld.global"))
    print(ptxas(ptx).strip())
    print(sass_counts(k.asm["cubin"]))




def sass_hist():
    import collections

    from bench.ptx_stats import _longest_loop  # noqa
    cubin = Path("/tmp/gl/k.cubin").read_bytes()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        lines = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout.splitlines()
    Path("/tmp/gl/k.sass").write_text("\n".join(lines))
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"(\.L_x_\d+):", line))}
    spans = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := re.search(r"BRA `\((\.L_x_\d+)\)", line)) and labels.get(m.group(1), i) < i]
    a, b = max(spans, key=lambda s: s[1] - s[0])
    ops = collections.Counter()
    for line in lines[a:b + 1]:
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            ops[m.group(1).split(".")[0]] += 1
    print(sorted(ops.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    main()
    sass_hist()
