"""Selective quantization (the guide's "keep attention in FP16") on top of TRT-LLM's ModelOpt script.

Runs on the build node, inside the TensorRT-LLM 1.2.x environment, as planned by build.py:
    python3 -m build_engines.modelopt_selective --quantize-script .../quantize.py --keep-fp16 attention -- ARGS

examples/quantization/quantize.py has no per-layer switch. It calls
tensorrt_llm.quantization.quantize_by_modelopt.quantize_and_export, which takes its ModelOpt config from
the module-level `quant_cfg_choices()`; we wrap that function so every config also carries
`{"<pattern>": {"enable": False}}` (ModelOpt wildcard quantizer config), then run the unmodified script.
TRT-LLM's non-plugin SmoothQuant and FP8 layer swaps honour `quantization.exclude_modules` from the
exported config.json (tensorrt_llm/quantization/quantize.py: quantize_layers), so after export we check
that the exclusion is recorded there and fail loudly when this ModelOpt version did not record it.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATTERNS = {"attention": "*self_attn*"}  # HF Llama: model.layers.N.self_attn.{q,k,v,o}_proj
# TRT-LLM checkpoint names of the attention GEMMs (tensorrt_llm/models/llama/model.py: attention.qkv/dense)
TRTLLM_ATTENTION_MODULES = ("transformer.layers.0.attention.qkv", "transformer.layers.0.attention.dense")


def patch_quant_cfg_choices(qbm: Any, patterns: list[str]) -> None:
    original: Callable[[], dict[str, Any]] = qbm.quant_cfg_choices

    def with_exclusions() -> dict[str, Any]:
        out = {}
        for name, cfg in original().items():
            # deep copy: quantize_and_export mutates the returned dict, and these are ModelOpt's globals
            cfg = copy.deepcopy(cfg)
            for pattern in patterns:
                cfg["quant_cfg"][pattern] = {"enable": False}
            out[name] = cfg
        return out

    qbm.quant_cfg_choices = with_exclusions


def check_exported(output_dir: Path) -> None:
    config = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization") or {}
    if quant.get("quant_algo") == "MIXED_PRECISION":
        return  # per-layer algorithms live in quant_cfg.json; the disabled layers have none
    excluded = quant.get("exclude_modules") or []
    if all(any(fnmatch.fnmatchcase(m, p) for p in excluded) for m in TRTLLM_ATTENTION_MODULES):
        return
    raise SystemExit(f"{output_dir}/config.json does not exclude the attention layers from quantization "
                     f"(exclude_modules={excluded}); TensorRT-LLM would quantize them anyway. Check that "
                     "nvidia-modelopt matches TensorRT-LLM 1.2 (~=0.37) before trusting this build.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: modelopt_selective --quantize-script PATH --keep-fp16 PART -- QUANTIZE_ARGS")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="modelopt_selective")
    parser.add_argument("--quantize-script", required=True)
    parser.add_argument("--keep-fp16", action="append", choices=sorted(PATTERNS), required=True)
    args = parser.parse_args(argv[:split])
    rest = argv[split + 1:]
    if "--output_dir" not in rest:
        raise SystemExit("quantize.py arguments must include --output_dir")
    output_dir = Path(rest[rest.index("--output_dir") + 1])

    from tensorrt_llm.quantization import quantize_by_modelopt  # only on the build node

    patch_quant_cfg_choices(quantize_by_modelopt, [PATTERNS[p] for p in args.keep_fp16])
    sys.argv = [args.quantize_script, *rest]
    runpy.run_path(args.quantize_script, run_name="__main__")
    check_exported(output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
