"""Packs what the GPU machine lacks into `.carry/` (gitignored), for `python -m bench.run`'s Triton phases.

    .venv/bin/python -m bench.carry      # about 47 MB; run where nvidia-pytriton is installed (scripts/setup.sh)

- `tritonserver.tar.xz`: tritonserver 2.51's bin, backends (with the Python 3.12 stub, the GPU image's Python)
  and caches from the nvidia-pytriton wheel, and its shared libraries as `lib/` (less the wheel's own libpython
  3.13, which only its 3.13 stub loads: the 3.12 stub links the image's libpython), packed with xz -9e: 25 MB
  instead of 35, so that `.carry/` (about 47 MB), the tracked tree and a few wheels fit one device call's 64 MiB;
- the numpy 1.26.4 wheel for CPython 3.12 (the 2.51 stub misreads numpy 2 arrays; the image has numpy 2);
- `tokenizer/`: the embedded model's tokenizer files (the Triton phases serve random weights with it).
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bench.common import ROOT, TOKENIZER_FILES
from llmserve.launch.tritonserver import site_packages

CARRY = ROOT / ".carry"
STUB_PYTHON = "3.12"
NUMPY = "numpy==1.26.4"


def _unused_lib(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leaves out the wheel's libpython (3.13, for its 3.13 stub): nothing the 3.12 stub, the server or its
    backends load needs it (readelf -d, NEEDED entries followed from bin/, backends/ and caches/)."""
    return None if info.name.startswith("tritonserver/lib/libpython3") else info


def pack_server(dest: Path) -> None:
    site = site_packages()
    src = site / "pytriton" / "tritonserver"
    stub = src / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"

    def add(tar: tarfile.TarFile, path: Path, name: str) -> None:
        tar.add(path, arcname=f"tritonserver/{name}", filter=_unused_lib)

    with tarfile.open(dest, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:
        for part in ("bin", "backends", "caches"):
            add(tar, src / part, part)
        add(tar, stub, "backends/python/triton_python_backend_stub")
        add(tar, site / "nvidia_pytriton.libs", "lib")


def main() -> int:
    CARRY.mkdir(exist_ok=True)
    tar = CARRY / "tritonserver.tar.xz"
    if not tar.is_file():
        print(f"packing {tar} (a minute)", flush=True)
        pack_server(tar.with_suffix(".partial"))
        tar.with_suffix(".partial").rename(tar)
    if not list(CARRY.glob("numpy-1.*-cp312-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", STUB_PYTHON, "--implementation", "cp", "--platform",
                        "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(CARRY), NUMPY],
                       check=True)
    tok = CARRY / "tokenizer"
    tok.mkdir(exist_ok=True)
    ckpt = ROOT / "model_repository" / "llm" / "checkpoint"
    for name in TOKENIZER_FILES:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, tok / name)
    total = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
