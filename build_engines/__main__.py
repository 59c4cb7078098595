"""`python -m build_engines import|build ...`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path("model_repository/llm/checkpoint")


def _import(argv: list[str]) -> int:
    from build_engines.importer import ImportError_, embedded_gguf, import_checkpoint

    ap = argparse.ArgumentParser(prog="python -m build_engines import",
                                 description="GGUF file or HF directory -> HF safetensors directory (cached).")
    ap.add_argument("source", nargs="?", default=None,
                    help="a .gguf file or an HF checkpoint directory (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--dequantize", action="store_true",
                    help="GGUF: dequantize every tensor to float32 (default: keep Q4_0/Q4_1/Q4_K decoder weights in "
                         "4 bits and Q8_0/Q5_K/Q6_K ones in 8-bit groups, refusing a file with other types)")
    a = ap.parse_args(argv)
    try:
        source = Path(a.source) if a.source else embedded_gguf()
        out = import_checkpoint(source, a.output, dequantize=a.dequantize)
    except ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint ready: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "import":
        return _import(argv[1:])
    if argv and argv[0] == "build":
        from build_engines.cli import main as build_main

        return build_main(argv)
    print("usage: python -m build_engines {import,build} ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
