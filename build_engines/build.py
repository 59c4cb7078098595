"""Plans and runs the TensorRT-LLM 1.2.x engine build for a recipe: checkpoint conversion or ModelOpt
quantization, then `trtllm-build`. Planning is pure (a list of argv lists) so --dry-run and tests see
exactly what a real run executes.

Commands follow NVIDIA/TensorRT-LLM (read from source, see docs/tensorrt-llm.md for commits):
- examples/models/core/llama/convert_checkpoint.py: fp16/bf16, --use_weight_only --weight_only_precision int8,
  --smoothquant A --per_token --per_channel, --use_fp8_rowwise --use_meta_fp8_rowwise_recipe
- examples/quantization/quantize.py (ModelOpt): --qformat fp8|int8_sq|int4_awq, --kv_cache_dtype, --awq_block_size
- tensorrt_llm/commands/build.py (trtllm-build): limits, --gemm_plugin, --use_paged_context_fmha, --workers
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from build_engines.checks import HardwareFacts, ModelShape, kv_bytes_per_token
from build_engines.recipe import Recipe
from llmserve.engine.manifest import Manifest, engine_file_hashes, running_versions, write_manifest

EXAMPLES_ENV = "TRTLLM_EXAMPLES_DIR"
# A checkout of the v1.2.x tag: the engine-build examples were removed from main in mid 2026.
DEFAULT_EXAMPLES = "TensorRT-LLM/examples"
SELECTIVE_PATTERNS = {"attention": "*self_attn*"}  # HF Llama module names, as ModelOpt sees them
SELECTIVE_SCRIPT = Path(__file__).resolve().with_name("modelopt_selective.py")
# TensorRT-LLM's converter per architecture (examples/models/core/<family>/convert_checkpoint.py), and the flags
# we pass that a converter lacks: the Qwen one (@0df9aaf) has no fp8 rowwise, no --calib_size, no fp8 KV cache.
CONVERTERS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen"}
UNSUPPORTED_FLAGS = {"llama": set(), "qwen": {"--use_fp8_rowwise", "--use_meta_fp8_rowwise_recipe", "--calib_size",
                                              "--fp8_kv_cache"}}


class BuildError(RuntimeError):
    pass


class ConversionError(BuildError, ValueError):
    """The checkpoint's converter cannot do what the recipe asks: refused before any work (exit code 2)."""


@dataclass
class BuildPlan:
    recipe: Recipe
    hf_checkpoint: Path
    output_dir: Path
    commands: list[list[str]]

    @property
    def trtllm_checkpoint_dir(self) -> Path:
        return self.output_dir / "trtllm_checkpoint"

    @property
    def engine_dir(self) -> Path:
        return self.output_dir / "engine"


def default_examples_dir() -> str:
    return os.environ.get(EXAMPLES_ENV, DEFAULT_EXAMPLES)


def plan_build(recipe: Recipe, hf_checkpoint: str | Path, output_dir: str | Path, examples_dir: str | Path,
               python: str = "python3") -> BuildPlan:
    plan = BuildPlan(recipe, Path(hf_checkpoint), Path(output_dir), [])
    plan.commands = [checkpoint_command(plan, Path(examples_dir), python), trtllm_build_command(plan)]
    return plan


def checkpoint_command(plan: BuildPlan, examples: Path, python: str) -> list[str]:
    r, q = plan.recipe, plan.recipe.quantization
    common = ["--model_dir", str(plan.hf_checkpoint), "--output_dir", str(plan.trtllm_checkpoint_dir),
              "--dtype", r.dtype]
    parallel = ["--tp_size", str(r.tp_size), "--pp_size", str(r.pp_size)]
    if q.tool == "modelopt":
        args = [*common, "--qformat", q.qformat or ""]
        if q.kv_cache_dtype:
            args += ["--kv_cache_dtype", q.kv_cache_dtype]
        if q.group_size:
            args += ["--awq_block_size", str(q.group_size)]
        args += _calibration(q.calib_size, q.calib_dataset) + parallel
        script = str(examples / "quantization" / "quantize.py")
        if not q.keep_fp16:
            return [python, script, *args]
        # quantize.py has no per-layer switch; our wrapper disables the kept layers' quantizers, then runs it.
        keep = [x for part in q.keep_fp16 for x in ("--keep-fp16", part)]
        # By file path, not `-m build_engines...`: the build may run from any directory (issue 21 item 7);
        # the wrapper imports only the standard library and tensorrt_llm.
        return [python, str(SELECTIVE_SCRIPT), "--quantize-script", script, *keep, "--", *args]
    args = [*common] + parallel
    if r.precision == "int8_wo":
        args += ["--use_weight_only", "--weight_only_precision", q.weight_only_precision or "int8"]
    elif r.precision == "int8_sq":
        args += ["--smoothquant", str(q.smoothquant_alpha)]
        args += ["--per_token"] if q.per_token else []
        args += ["--per_channel"] if q.per_channel else []
        args += _calibration(q.calib_size, q.calib_dataset)
    elif r.precision == "fp8":
        args += ["--use_fp8_rowwise"]
        args += ["--use_meta_fp8_rowwise_recipe"] if q.keep_fp16 else []
    if q.kv_cache_dtype:
        args += [f"--{q.kv_cache_dtype}_kv_cache"]
    family = converter_family(plan.hf_checkpoint)
    missing = sorted(UNSUPPORTED_FLAGS[family] & set(args))
    if missing:
        raise ConversionError(f"recipe {r.name}: TensorRT-LLM's {family} converter has no {', '.join(missing)}; "
                         "use a ModelOpt recipe (fp8, int8_sq_selective, int4_awq) for this model")
    return [python, str(examples / "models" / "core" / family / "convert_checkpoint.py"), *args]


def converter_family(hf_checkpoint: Path) -> str:
    """Which converter takes the checkpoint, from its config.json (a GGUF not imported yet: llama's)."""
    config = hf_checkpoint / "config.json"
    archs = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else ["LlamaForCausalLM"]
    family = next((CONVERTERS[a] for a in archs if a in CONVERTERS), None)
    if family is None:
        raise ConversionError(f"architectures {archs}: TensorRT-LLM's converters here take {sorted(CONVERTERS)}")
    return family


def _calibration(size: int | None, dataset: str | None) -> list[str]:
    return (["--calib_size", str(size)] if size else []) + (["--calib_dataset", dataset] if dataset else [])


def trtllm_build_command(plan: BuildPlan) -> list[str]:
    lim = plan.recipe.limits
    return ["trtllm-build", "--checkpoint_dir", str(plan.trtllm_checkpoint_dir), "--output_dir", str(plan.engine_dir),
            "--gemm_plugin", "auto",
            "--max_batch_size", str(lim.max_batch_size), "--max_input_len", str(lim.max_input_len),
            "--max_seq_len", str(lim.max_seq_len), "--max_num_tokens", str(lim.max_num_tokens),
            "--use_paged_context_fmha", "enable" if lim.use_paged_context_fmha else "disable",
            # trtllm-build builds one rank per worker; checks.validate_plan made sure that many GPUs exist.
            "--workers", str(plan.recipe.world_size)]


def format_commands(plan: BuildPlan) -> list[str]:
    return [shlex.join(cmd) for cmd in plan.commands]


def run_plan(plan: BuildPlan, shape: ModelShape, hw: HardwareFacts, rebuild_command: str,
             runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
             versions: tuple[str, str] | None = None) -> Manifest:
    """Executes the plan with a progress bar, then writes the manifest next to the engine files."""
    from tqdm import tqdm

    plan.output_dir.mkdir(parents=True, exist_ok=True)
    for cmd in tqdm(plan.commands, desc=f"build {plan.recipe.name}", unit="step"):
        tqdm.write("$ " + shlex.join(cmd))
        done = runner(cmd, check=False)
        if done.returncode != 0:
            raise BuildError(f"step failed with exit code {done.returncode}: {shlex.join(cmd)}")
    hashes = engine_file_hashes(plan.engine_dir)
    if not any(name.endswith(".engine") for name in hashes):
        raise BuildError(f"trtllm-build finished but wrote no rank*.engine into {plan.engine_dir}")
    trt, trtllm = versions or running_versions()
    manifest = make_manifest(plan, shape, hw, rebuild_command, trt, trtllm, hashes)
    write_manifest(manifest, plan.engine_dir)
    return manifest


def make_manifest(plan: BuildPlan, shape: ModelShape, hw: HardwareFacts, rebuild_command: str,
                  trt_version: str, trtllm_version: str, engine_files: dict[str, str]) -> Manifest:
    r = plan.recipe
    cc = hw.compute_capability or (0, 0)
    return Manifest(
        model={"source": str(plan.hf_checkpoint), "architectures": shape.architectures,
               "vocab_size": shape.vocab_size, "max_position_embeddings": shape.max_position_embeddings,
               # lets the server turn ServingConfig.kv_cache_memory_bytes into KvCacheConfig.max_tokens
               "kv_bytes_per_token": kv_bytes_per_token(shape, r)},
        recipe={"name": r.name, "precision": r.precision, "dtype": r.dtype, "quantization": asdict(r.quantization)},
        tp_size=r.tp_size, pp_size=r.pp_size, tensorrt_version=trt_version, tensorrt_llm_version=trtllm_version,
        gpu_name=hw.gpu_name or "unknown", compute_capability=f"{cc[0]}.{cc[1]}", limits=asdict(r.limits),
        engine_files=engine_files, rebuild_command=rebuild_command)
