"""The tritonserver command line for a TensorRT-LLM engine with TP*PP > 1.

TensorRT-LLM's Executor runs one process per GPU under MPI ("leader mode": rank 0 takes requests, the others
follow it). NVIDIA's triton_backend/scripts/launch_triton_server.py (get_cmd) therefore starts one
tritonserver per rank in one MPMD mpirun:

    mpirun --allow-run-as-root -n 1 tritonserver ARGS(rank 0) : -n 1 tritonserver ARGS(rank 1) : ...

with a distinct Python-backend shared-memory prefix per rank (`--backend-config=python,shm-region-prefix-name=
prefix{rank}_`, so the ranks' stubs do not collide in /dev/shm), and ranks != 0 loading only the LLM model
(`--model-control-mode=explicit --load-model=NAME`). We mirror that, including the ':' after every rank
(NVIDIA's script ends the list with one too). Pure function: callers exec the list.

All ranks get the same ports, as in NVIDIA's script. That works because a worker rank never finishes loading
its model: the Executor on ranks != 0 blocks in model initialize until the leader shuts down (model.py;
llmserve.engine.trtllm.create_trtllm_engine does the same), and tritonserver opens its endpoints only after
loading. A model that returns from initialize on a worker gets "Socket '0.0.0.0:8001' already in use"
(tensorrtllm_backend issues #96, #243, #455).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmserve.engine.manifest import ManifestError, read_manifest


class LaunchError(RuntimeError):
    """The launch cannot work as asked; the message names the command that does."""


@dataclass
class LaunchSpec:
    tp_size: int
    pp_size: int = 1
    model_repository: str = "/models"
    model_name: str = "llm"  # the Triton model that owns the TensorRT-LLM engine
    tritonserver: str = "/opt/tritonserver/bin/tritonserver"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_file: str | None = None  # rank 0 only, verbose, as NVIDIA's --log
    oversubscribe: bool = False  # SLURM-style MPI setups
    allow_run_as_root: bool = True  # containers run as root; NVIDIA's script always passes it
    # The bundled server (nvidia-pytriton) keeps its backends and caches in its own folder, not under
    # /opt/tritonserver: without these every rank fails to find the Python backend outside NVIDIA's image.
    backend_directory: str | None = None
    cache_directory: str | None = None

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size


def rank_args(spec: LaunchSpec, rank: int) -> list[str]:
    """One rank's tritonserver argv."""
    args = [spec.tritonserver, f"--model-repository={spec.model_repository}",
            f"--grpc-port={spec.grpc_port}", f"--http-port={spec.http_port}", f"--metrics-port={spec.metrics_port}"]
    args += [f"--backend-directory={spec.backend_directory}"] if spec.backend_directory else []
    args += [f"--cache-directory={spec.cache_directory}"] if spec.cache_directory else []
    if spec.log_file and rank == 0:
        args += ["--log-verbose=3", f"--log-file={spec.log_file}"]
    if rank != 0:
        # Workers only host the executor rank; the ensemble/tokenizer models and the clients talk to rank 0.
        args += ["--model-control-mode=explicit", f"--load-model={spec.model_name}"]
    args += ["--disable-auto-complete-config", f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
    return args


def build_launch_command(spec: LaunchSpec) -> list[str]:
    """The full argv. World size 1 needs no MPI: the plain tritonserver command of rank 0."""
    if spec.tp_size < 1 or spec.pp_size < 1:
        raise ValueError(f"tp_size and pp_size must be >= 1, got tp={spec.tp_size} pp={spec.pp_size}")
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(spec, name)
        if not 0 < port < 65536:
            raise ValueError(f"{name}: {port} is not a TCP port")
    if spec.world_size == 1:
        return rank_args(spec, 0)
    cmd = ["mpirun"] + (["--allow-run-as-root"] if spec.allow_run_as_root else [])
    cmd += ["--oversubscribe"] if spec.oversubscribe else []
    for rank in range(spec.world_size):
        cmd += ["-n", "1", *rank_args(spec, rank), ":"]
    return cmd


def engine_dir_of(model_repository: str | Path, model: str = "llm") -> Path:
    """The engine directory config.pbtxt names (parameter engine_dir, relative to the model directory)."""
    model_dir = Path(model_repository) / model
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    found = re.search(r'key: "engine_dir" value: \{ string_value: "([^"]*)"', text)
    return model_dir / (found.group(1) if found else "engine")


def engine_world(model_repository: str | Path, model: str = "llm") -> tuple[int, int, str]:
    """(tp, pp, rebuild command) from the engine's build manifest: the executor takes tp/pp from the engine
    (executorImpl.cpp: GptJsonConfig tp/pp) and throws unless the MPI world size is tp*pp."""
    engine_dir = engine_dir_of(model_repository, model)
    try:
        m = read_manifest(engine_dir)
    except ManifestError as e:
        raise LaunchError(f"a TP/PP launch takes tp and pp from the engine's build manifest: {e}") from None
    return m.tp_size, m.pp_size, m.rebuild_command


def resolve_world(model_repository: str | Path, tp: int | None, pp: int | None, model: str = "llm") -> tuple[int, int]:
    """tp/pp for the launch: the engine's, and a command line that says otherwise is refused before launching."""
    e_tp, e_pp, rebuild = engine_world(model_repository, model)
    want_tp, want_pp = tp or e_tp, pp or e_pp
    if (want_tp, want_pp) != (e_tp, e_pp):
        where, fixed = engine_dir_of(model_repository, model), _retarget(rebuild, want_tp, want_pp)
        raise LaunchError(
            f"the engine in {where} was built for tp={e_tp} pp={e_pp} (an MPI world of {e_tp * e_pp}); "
            f"--tp {want_tp} --pp {want_pp} would start {want_tp * want_pp} ranks and TensorRT-LLM refuses that. "
            f"Launch it as built: python -m llmserve.launch serve --model-repository {model_repository} "
            f"--tp {e_tp} --pp {e_pp}; or rebuild for tp={want_tp} pp={want_pp}: {fixed}")
    return e_tp, e_pp


def _retarget(rebuild: str, tp: int, pp: int) -> str:
    """The manifest's rebuild command with the asked-for parallelism (build_engines takes --tp/--pp)."""
    for flag, value in (("--tp", tp), ("--pp", pp)):
        rebuild, n = re.subn(rf"{flag} \d+", f"{flag} {value}", rebuild)
        rebuild += "" if n else f" {flag} {value}"
    return rebuild
