"""`python -m build_engines build ...`: checks, plans and (unless --dry-run) runs a TensorRT-LLM engine build.

Exit codes: 0 done, 1 a build step failed, 2 the request was refused before any work (bad recipe, checks).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from build_engines.build import BuildError, default_examples_dir, format_commands, plan_build, run_plan
from build_engines.checks import (
    BuildCheckError,
    HardwareFacts,
    ModelShape,
    detect_hardware,
    parse_compute_capability,
    validate_plan,
)
from build_engines.recipe import RecipeError, load_recipe
from llmserve.engine.manifest import ManifestError, check_supported_runtime, running_versions

LIMIT_FLAGS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m build_engines")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build TensorRT-LLM engines for a recipe")
    b.add_argument("--checkpoint", required=True, help="HF checkpoint directory, or a .gguf file (imported first)")
    b.add_argument("--recipe", required=True, help="recipe name (build_engines/recipes/NAME.yaml) or YAML path")
    b.add_argument("--output", required=True, help="output directory (engine/ and trtllm_checkpoint/ go here)")
    b.add_argument("--tp", type=int, help="tensor-parallel size (overrides the recipe)")
    b.add_argument("--pp", type=int, help="pipeline-parallel size (overrides the recipe)")
    b.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    b.add_argument("--gpus", type=int, help="visible GPU count to plan for (default: detected)")
    b.add_argument("--gpu-memory-gib", type=float, help="memory of one GPU to plan for (default: detected)")
    b.add_argument("--compute-capability", help="e.g. 9.0 (default: detected)")
    for name in LIMIT_FLAGS:
        b.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    b.add_argument("--use-paged-context-fmha", choices=("enable", "disable"))
    b.add_argument("--calib-dataset", help="local dataset dir or HF name for calibration (quantized recipes)")
    b.add_argument("--trtllm-examples", default=default_examples_dir(),
                   help="examples/ of a TensorRT-LLM v1.2.x checkout (env TRTLLM_EXAMPLES_DIR)")
    b.add_argument("--python", default="python3", help="interpreter of the TensorRT-LLM environment")
    return parser


def rebuild_command(args: argparse.Namespace, tp: int, pp: int) -> str:
    """The command that reproduces this build; the manifest stores it for load-time errors."""
    cmd = ["python", "-m", "build_engines", "build", "--checkpoint", args.checkpoint, "--recipe", args.recipe,
           "--output", args.output, "--tp", str(tp), "--pp", str(pp)]
    for name in LIMIT_FLAGS:
        if getattr(args, name) is not None:
            cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.use_paged_context_fmha:
        cmd += ["--use-paged-context-fmha", args.use_paged_context_fmha]
    if args.calib_dataset:
        cmd += ["--calib-dataset", args.calib_dataset]
    return shlex.join(cmd)


def _hardware(args: argparse.Namespace, detected: HardwareFacts | None) -> HardwareFacts:
    """Facts to plan with: detected ones, with the CLI overrides on top."""
    hw = HardwareFacts(**vars(detected)) if detected else HardwareFacts()
    if args.gpus is not None:
        hw.gpu_count = args.gpus
    if args.gpu_memory_gib is not None:
        hw.gpu_memory_bytes = int(args.gpu_memory_gib * 1024**3)
    if args.compute_capability:
        hw.compute_capability = parse_compute_capability(args.compute_capability)
    return hw


def build(args: argparse.Namespace) -> int:
    fmha = None if args.use_paged_context_fmha is None else args.use_paged_context_fmha == "enable"
    recipe = load_recipe(args.recipe).with_overrides(
        tp_size=args.tp, pp_size=args.pp, use_paged_context_fmha=fmha, **{n: getattr(args, n) for n in LIMIT_FLAGS})
    if args.calib_dataset:
        recipe.quantization.calib_dataset = args.calib_dataset
    given = (args.gpus, args.gpu_memory_gib, args.compute_capability)
    # A dry run planning for another node needs no local GPU probe (which imports torch). A real run always
    # probes: the manifest must record the GPU the engines were really built on.
    detected = None if args.dry_run and all(v is not None for v in given) else detect_hardware()
    if not args.dry_run and not detected.gpu_count:
        raise BuildCheckError("no GPU visible: quantization and trtllm-build need one (check CUDA_VISIBLE_DEVICES)")
    hw = _hardware(args, detected)
    output, checkpoint = Path(args.output), Path(args.checkpoint)
    if checkpoint.suffix.lower() == ".gguf":
        hf_dir = output / "hf_checkpoint"
        if args.dry_run:
            print(f"# first: build_engines.importer.import_checkpoint({str(checkpoint)!r}, {str(hf_dir)!r})")
        else:
            validate_plan(recipe, None, hw, strict=True)  # GPU count and capability before the slow import
            from build_engines.importer import import_checkpoint

            hf_dir = Path(import_checkpoint(checkpoint, hf_dir))
        checkpoint = hf_dir
    shape = ModelShape.from_dir(checkpoint) if (checkpoint / "config.json").is_file() or not args.dry_run else None
    for warning in validate_plan(recipe, shape, hw, strict=not args.dry_run):
        print(f"# warning: {warning}", file=sys.stderr)
    plan = plan_build(recipe, checkpoint, output, args.trtllm_examples, python=args.python)
    if args.dry_run:
        print("\n".join(format_commands(plan)))
        return 0
    assert shape is not None and detected is not None  # a real run refused both above
    try:
        check_supported_runtime(running_versions()[1])
    except ManifestError as e:  # the build may work, but the server refuses the engine at load: say so now
        print(f"# warning: {e}; the server will refuse this engine", file=sys.stderr)
    manifest = run_plan(plan, shape, detected, rebuild_command(args, recipe.tp_size, recipe.pp_size))
    print(f"engines: {plan.engine_dir} (TensorRT {manifest.tensorrt_version}, TensorRT-LLM "
          f"{manifest.tensorrt_llm_version}, {manifest.gpu_name} sm{manifest.compute_capability})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return build(args)
    except (RecipeError, BuildCheckError, ValueError) as e:  # ValueError: the importer's refusals
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
