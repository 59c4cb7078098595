"""Start the real tritonserver (2.51, shipped inside the PyPI wheel nvidia-pytriton) on a model repository.

`python -m llmserve.launch serve` starts it, waits until the model is ready, and on Ctrl-C / SIGTERM drains
the model (llmserve/serving/drain.py: every request in flight gets its final response, an error at worst) before it
stops the server. `TritonServer` does the same for tests and benchmarks, as a context manager.
`wrap -- tritonserver ...` gives any tritonserver command line (the NGC image's) the same drain on SIGTERM;
`drain` asks a running server to drain, for a Kubernetes preStop hook.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from llmserve.launch.layout import gpu_list, layout_fits, repository_of, set_instance_gpus
from llmserve.launch.mpi import LaunchError, LaunchSpec, build_launch_command, resolve_world
from llmserve.serving.drain import CONTROL_ENV, request_drain, wait_drained

CACHE = Path(os.environ.get("LLMSERVE_CACHE", Path.home() / ".cache" / "llmserve"))


class ServerError(RuntimeError):
    pass


def site_packages() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("tritonserver comes from the PyPI wheel nvidia-pytriton: pip install nvidia-pytriton==0.7.0")
    return Path(list(spec.submodule_search_locations)[0]).parent


def prepare_server_dir() -> Path:
    """Copies the bundled server once into a folder of our own, with the stub for this Python.

    The folder is not named `triton`: on sys.path that would shadow the `triton` package torch imports.
    """
    site = site_packages()
    src = site / "pytriton" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest = CACHE / f"tritonserver-2.51-py{version}"
    stub = dest / "backends" / "python" / "triton_python_backend_stub"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_name(dest.name + ".lock")):  # servers starting together copy it once
        if not stub.is_file():
            _copy_server(src, dest, version)
    return dest


def _copy_server(src: Path, dest: Path, version: str) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in ("bin", "backends", "caches"):
        shutil.copytree(src / part, tmp / part)
    shutil.copy2(src / "python_backend_stubs" / version / "triton_python_backend_stub",
                 tmp / "backends" / "python" / "triton_python_backend_stub")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def server_env(venv_bin: Path | None = None) -> dict[str, str]:
    site = site_packages()
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(site / "nvidia_pytriton.libs"), libdir,
                                                         env.get("LD_LIBRARY_PATH", "")) if p)
    # The stub's embedded interpreter finds `python3` on PATH, and with it this venv's packages.
    env["PATH"] = os.pathsep.join([str(venv_bin or Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class TritonServer:
    def __init__(self, model_repository: str | Path, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, model: str = "llm", log_path: str | Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.model_repository = Path(model_repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.model = model
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self.control_dir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        d = prepare_server_dir()
        return [str(d / "bin" / "tritonserver"), f"--model-repository={self.model_repository}",
                f"--backend-directory={d / 'backends'}", f"--cache-directory={d / 'caches'}",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", "--allow-metrics=true", "--allow-gpu-metrics=false",
                "--exit-timeout-secs=20", "--model-control-mode=explicit", "--load-model=*", *self.extra_args]

    def start(self, timeout: float = 300.0) -> TritonServer:
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            if _port_open(port):
                raise ServerError(f"port {port} is already in use: another server running? Stop it or pick "
                                  "other ports (--http-port/--grpc-port/--metrics-port)")
        out = None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = out = open(self.log_path, "ab")
        self.control_dir = Path(tempfile.mkdtemp(prefix="llmserve-control-"))
        env = {**server_env(), CONTROL_ENV: str(self.control_dir)}
        # Its own session: a terminal's Ctrl-C reaches only us, and we drain before the server hears of it.
        self.process = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT
                                        if out else None, start_new_session=True)
        metrics = "--allow-metrics=false" not in self.extra_args
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} during start-up"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            # The metrics port too: tritonserver 2.51 opens it ~40 ms after HTTP reports ready, and a scrape right
            # after start() was refused once in a fresh-clone run (2026-11-30).
            if self.ready() and (not metrics or _port_open(self.metrics_port)):
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"model {self.model!r} not ready after {timeout:.0f} s")

    def ready(self) -> bool:
        return _get(f"http://localhost:{self.http_port}/v2/models/{self.model}/ready") == 200

    def stop(self, timeout: float = 30.0, drain_s: float = 0.0) -> int | None:
        """Drains the model (running requests get `drain_s` seconds, then a final error), then stops."""
        if self.process is None:
            return None
        code = stop_process(self.process, self.control_dir, drain_s, timeout)
        if self._log_file:
            self._log_file.close()
        if self.control_dir is not None:
            shutil.rmtree(self.control_dir, ignore_errors=True)
        self.process = self.control_dir = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(process: subprocess.Popen, control: Path | None, drain_s: float, timeout: float) -> int:
    if process.poll() is None and control is not None:
        request_drain(control, drain_s)
        if wait_drained(control, drain_s + 10.0):
            time.sleep(0.2)  # the last finals are on their way from the stub to the frontends
        else:
            print("llmserve: the model did not drain in time; stopping anyway", file=sys.stderr, flush=True)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # tritonserver 2.51 can hang in its abort handler after the exit timeout (seen with decoupled
            # requests in flight); the whole process group goes, Python stubs included.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wrap(command: list[str], drain_s: float, timeout: float) -> int:
    """Runs a tritonserver command line; SIGTERM/SIGINT drain the model before the server is stopped."""
    control = Path(os.environ.get(CONTROL_ENV) or tempfile.mkdtemp(prefix="llmserve-control-"))
    control.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, env={**os.environ, CONTROL_ENV: str(control)}, start_new_session=True)
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop and process.poll() is None:
        time.sleep(0.2)
    code = stop_process(process, control, drain_s, timeout)
    return 0 if code in (0, -signal.SIGINT) or (stop and code is not None and code < 0) else code


def set_instance_count(config: str, count: int) -> str:
    """config.pbtxt text with `count` model instances (Triton stubs; with engine_process they share one engine)."""
    config, n = re.subn(r"instance_group \[ \{ count: \d+,", f"instance_group [ {{ count: {count},", config)
    if n != 1:
        raise ValueError("config.pbtxt: expected one `instance_group [ { count: N, ...` line")
    return config


def derive_repository(dest: str | Path, checkpoint: str | Path | None = None, source: str | Path = "model_repository",
                      model: str = "llm", instances: int | None = None, instance_gpus: list[int] | None = None,
                      **overrides: object) -> Path:
    """A model repository at `dest` holding `model` with some config.pbtxt parameters (and the instance count)
    overridden, or one KIND_GPU replica on each of `instance_gpus`.

    For sweeps and tests that need another configuration. The checkpoint is hard-linked (no copy, and it
    stays inside the model directory, where checkpoint_dir must resolve)."""
    src = Path(source) / model
    dst = Path(dest) / model
    (dst / "1").mkdir(parents=True)
    shutil.copy2(src / "1" / "model.py", dst / "1" / "model.py")
    config = (src / "config.pbtxt").read_text()
    for key, value in overrides.items():
        pattern = rf'(parameters \{{ key: "{key}" value: \{{ string_value: )"[^"]*"'
        config, n = re.subn(pattern, rf'\1"{value}"', config)
        if n == 0:
            config += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    if instances is not None:
        config = set_instance_count(config, instances)
    if instance_gpus:
        config = set_instance_gpus(config, instance_gpus, instances or 1)
    (dst / "config.pbtxt").write_text(config)
    ckpt = Path(checkpoint) if checkpoint else src / "checkpoint"
    (dst / "checkpoint").mkdir()
    for f in ckpt.iterdir():
        try:
            os.link(f, dst / "checkpoint" / f.name)
        except OSError:  # another file system
            shutil.copy2(f, dst / "checkpoint" / f.name)
    return Path(dest)


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llmserve.launch", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["serve", "command", "wrap", "drain"],
                    help="serve: run until Ctrl-C or SIGTERM; command: print the tritonserver command line; "
                    "wrap -- CMD...: run a tritonserver command line with drain on SIGTERM; drain: ask a running "
                    "server (LLMSERVE_CONTROL_DIR) to drain, and wait until it has")
    ap.add_argument("--model-repository", default="model_repository")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    ap.add_argument("--tp", type=int, default=None, help="TensorRT-LLM tensor parallelism (default: the engine's "
                    "build manifest, when engine=tensorrtllm); must match the engine; TP*PP > 1 launches the MPI world")
    ap.add_argument("--pp", type=int, default=None, help="TensorRT-LLM pipeline parallelism, likewise")
    ap.add_argument("--drain-seconds", type=float, default=20.0,
                    help="on shutdown, how long running requests may go on before they end with an error")
    ap.add_argument("--control-dir", default=os.environ.get(CONTROL_ENV),
                    help=f"drain: the control folder of the server (default ${CONTROL_ENV})")
    ap.add_argument("--instance-gpus", type=gpu_list, default=None, metavar="G,G,...",
                    help="serve: one replica of model llm per listed GPU (instance_group KIND_GPU gpus); with "
                    "tensor_parallel_size T each replica also takes the T-1 GPUs after its own: 2 x TP2 on 4 GPUs is "
                    "--instance-gpus 0,2 --set tensor_parallel_size=2")
    ap.add_argument("--assume-gpus", type=int, default=None, metavar="N",
                    help="check the layout as if N GPUs were visible instead of torch.cuda.device_count() (to check "
                    "a layout for another machine: `command --assume-gpus 4`)")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                    help="serve: override a config.pbtxt parameter of model llm (repeatable); the server then runs "
                    "on a copy of the repository in a temporary folder, the checkpoint hard-linked")
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command line; the layout of our engine's replicas is checked before any tritonserver starts."""
    ap = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    wrapped = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if a.command == "wrap":
        if not wrapped:
            ap.error("wrap needs a command line after --")
        repo = repository_of(wrapped)
        if repo is not None and not layout_fits(repo, a.assume_gpus):
            return 2
        return wrap(wrapped, a.drain_seconds, timeout=60.0)
    if a.command == "drain":
        if not a.control_dir:
            ap.error(f"drain needs --control-dir or ${CONTROL_ENV}")
        request_drain(a.control_dir, a.drain_seconds)
        ok = wait_drained(a.control_dir, a.drain_seconds + 10.0)
        print("drained" if ok else "not drained in time", flush=True)
        return 0 if ok else 1
    with tempfile.TemporaryDirectory(prefix="llmserve-repo-") as work:
        repo = _with_overrides(a, work) if a.set or a.instance_gpus else a.model_repository
        return _launch(a, TritonServer(repo, a.http_port, a.grpc_port, a.metrics_port))


def _with_overrides(a: argparse.Namespace, work: str) -> Path:
    knobs = dict(item.partition("=")[::2] for item in a.set)
    return derive_repository(Path(work) / "repo", source=a.model_repository, instance_gpus=a.instance_gpus, **knobs)


def _world(a: argparse.Namespace, repo: Path) -> tuple[int, int]:
    """tp/pp: the TensorRT-LLM engine's (refusing a command line that disagrees); 1/1 for the PyTorch engine."""
    config = (repo / "llm" / "config.pbtxt").read_text(encoding="utf-8")
    trtllm = re.search(r'key: "engine" value: \{ string_value: "tensorrtllm" \}', config) is not None
    if not trtllm and (a.tp or 1) * (a.pp or 1) == 1:
        return 1, 1
    return resolve_world(repo, a.tp, a.pp)


def _launch(a: argparse.Namespace, server: TritonServer) -> int:
    try:
        tp, pp = _world(a, server.model_repository)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if tp * pp == 1 and not layout_fits(server.model_repository, a.assume_gpus):
        return 2
    if tp * pp > 1:
        # One tritonserver per rank under mpirun, as NVIDIA's launch_triton_server.py (llmserve/launch/mpi.py),
        # each with the bundled server's backend and cache directories, as TritonServer.command() passes them.
        d = prepare_server_dir()
        spec = LaunchSpec(tp, pp, str(server.model_repository), tritonserver=str(d / "bin" / "tritonserver"),
                          http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port,
                          backend_directory=str(d / "backends"), cache_directory=str(d / "caches"))
        argv_mpi = build_launch_command(spec)
        print(" ".join(argv_mpi), flush=True)
        if a.command == "command":
            return 0
        os.execvpe(argv_mpi[0], argv_mpi, server_env())
    if a.command == "command":
        print(" ".join(server.command()))
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        server.start(a.timeout)
        print(f"ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}", flush=True)
        while not stop and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        code = server.stop(drain_s=a.drain_seconds)
    return 0 if code in (0, None, -signal.SIGINT) else code


if __name__ == "__main__":
    sys.exit(main())
