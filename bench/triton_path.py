"""The engine behind the real tritonserver 2.51 (from the nvidia-pytriton wheel), driven over HTTP streaming.

On the lent H100 (toolchain-facts.md, "The real Triton server on the lent H100") the server comes from a
carried tar (`.carry/tritonserver.tar.xz`: bin, backends with the 3.12 stub, caches, lib = nvidia_pytriton.libs)
and the Python backend needs numpy < 2: a venv overlay holding the carried numpy 1.26.4 wheel, whose .pth
adds the image's site-packages (torch) and this checkout (llmserve). Where nvidia-pytriton is installed
(the CPU machines), llmserve.launch.tritonserver.prepare_server_dir() provides the same folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.request
from pathlib import Path

from bench.common import DEFAULT_SHAPE, ROOT, write_random_checkpoint
from bench.workload import Record

CARRY = ROOT / ".carry"


def server_folder(work: Path) -> tuple[Path, Path]:
    """Returns (server folder with bin/backends/caches, lib folder). The carried tar holds the Python 3.12 stub
    (the lent GPU's Python); where nvidia-pytriton is installed, its copy has the stub for this Python."""
    import importlib.util

    tar = CARRY / "tritonserver.tar.xz"
    if tar.is_file() and (sys.version_info[:2] == (3, 12) or importlib.util.find_spec("pytriton") is None):
        dest = work / "tritonserver"
        if not (dest / "bin" / "tritonserver").is_file():
            with tarfile.open(tar) as t:
                t.extractall(work, filter="tar") if sys.version_info >= (3, 12) else t.extractall(work)
        return dest, dest / "lib"
    from llmserve.launch.tritonserver import prepare_server_dir, site_packages

    return prepare_server_dir(), site_packages() / "nvidia_pytriton.libs"


# Packages built against numpy 2 that break on numpy 1.x, or that transformers would import if present
# (scipy/sklearn did: "Could not import module 'AutoTokenizer'" in the stub on the lent H100, 2026-11-25).
DENY_EXACT = {"numpy", "scipy", "sklearn", "scikit_learn", "pandas", "pyarrow", "numba", "numba_cuda", "h5py",
              "tensorstore", "ml_dtypes", "matplotlib", "contourpy", "statsmodels", "xarray", "seaborn", "skimage",
              "scikit_image", "sentence_transformers", "timm", "torch_geometric", "botorch", "gpytorch", "numpyro",
              "optax", "flax", "chex", "orbax", "orbax_checkpoint", "diffrax", "equinox", "lineax", "optimistix",
              "cv2", "opencv_python_headless", "tifffile", "imageio", "patsy", "formulaic", "tensorboard",
              "pytorch_lightning", "lightning", "sacrebleu", "e3nn"}
DENY_PREFIX = ("jax", "cupy", "onnx")


def _denied(name: str) -> bool:
    base = name.split("-")[0].split(".")[0].lower()
    return base in DENY_EXACT or base.startswith(DENY_PREFIX)


def python_overlay(work: Path, force: bool = False) -> Path:
    """A venv for the stub's `python3`: numpy 1.26 (carried wheel) plus links to every other package of this
    interpreter except those built against numpy 2 (DENY_*), and this checkout on sys.path."""
    import numpy

    if numpy.__version__.startswith("1.") and not force:  # this environment already suits the stub
        return Path(sys.executable).parent
    venv = work / "v312"
    sp = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not (venv / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        wheels = sorted(CARRY.glob(f"numpy-1.*-cp{sys.version_info.major}{sys.version_info.minor}-*.whl"))
        if wheels:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                            str(sp), str(wheels[-1])], check=True)
        elif not numpy.__version__.startswith("1."):
            raise RuntimeError("numpy is 2.x here and no numpy-1.x wheel for this Python is in .carry/")
        for src_dir in [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]:
            for entry in src_dir.iterdir():
                dest = sp / entry.name
                if dest.exists() or dest.is_symlink() or (wheels and _denied(entry.name)):
                    continue
                if not wheels and _denied(entry.name) and not entry.name.lower().startswith("numpy"):
                    continue
                dest.symlink_to(entry)
        (sp / "llmserve_bench.pth").write_text(str(ROOT) + "\n")
    return venv / "bin"


def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer files: the carried copy (the GPU machine has no checkpoint), else the embedded model's."""
    tok = CARRY / "tokenizer"
    return tok if tok.is_dir() else ROOT / "model_repository" / "llm" / "checkpoint"


def random_checkpoint(dest: Path, quant: str | None = None, shape: str = DEFAULT_SHAPE) -> Path:
    """config.json of `shape` with vocab 49152 (random weights, made on load) and SmolLM2's tokenizer
    (tokenizer_dir()): the Triton phases' model; `engine: synthetic` reads only its tokenizer."""
    ckpt = write_random_checkpoint(dest, vocab=49152, quant=quant, tokenizer_dir=tokenizer_dir(), shape=shape)
    _check_tokenizer(ckpt)
    return ckpt


def model_repository(work: Path, params: dict[str, str], quant: str | None = None, instances: int = 1,
                     shape: str = DEFAULT_SHAPE) -> Path:
    """The model repository for the run: the production model.py and config.pbtxt with `params` set and
    `instances` model instances, serving random weights of `shape` with SmolLM2's tokenizer (vocab 49152)."""
    from llmserve.launch.tritonserver import derive_repository

    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    ckpt = random_checkpoint(work / f"ckpt-{quant or 'bf16'}", quant, shape)
    return derive_repository(repo, ckpt, ROOT / "model_repository", instances=instances, **params)


def _check_tokenizer(ckpt: Path) -> None:
    """transformers releases name the fast tokenizer class differently: fall back to the older name."""
    from llmserve.serving.tokenizer import Tokenizer

    try:
        Tokenizer(ckpt)
    except Exception:  # noqa: BLE001
        cfg_path = ckpt / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg))
        Tokenizer(ckpt)


class Server:
    def __init__(self, work: Path, repo: Path, http_port: int = 8000):
        self.work, self.repo, self.port = work, repo, http_port
        self.proc: subprocess.Popen | None = None
        self.log = work / "tritonserver.log"

    def start(self, timeout: float = 900) -> None:
        folder, lib = server_folder(self.work)
        bin_dir = python_overlay(self.work)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(lib), sysconfig.get_config_var("LIBDIR") or "",
                                                  "/usr/lib/x86_64-linux-gnu", env.get("LD_LIBRARY_PATH", "")])
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [str(folder / "bin" / "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={folder / 'backends'}", f"--cache-directory={folder / 'caches'}",
               f"--http-port={self.port}", f"--grpc-port={self.port + 1}", f"--metrics-port={self.port + 2}",
               "--allow-metrics=true", "--exit-timeout-secs=20"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.tail()}")
            log = self.tail(20000)
            if any(m in log for m in ("error while loading shared libraries", "failed to load", "UNAVAILABLE:")):
                self.stop()
                raise RuntimeError(f"the model failed to load:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://localhost:{self.port}/v2/models/llm/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"model not ready after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        """The log's errors (tritonserver's E lines, the stub's failures) and then its last n characters."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        errors = [ln[:3000] for ln in text.splitlines() if ln.startswith("E1") or "Failed to initialize" in ln]
        return "\n".join(errors[-10:]) + "\n...\n" + text[-n:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def exact_length_prompts(tokenizer_dir: Path, n: int, length: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """`n` texts of random words that our tokenizer encodes to exactly `length` tokens (and their ids)."""
    from llmserve.serving.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_dir)
    vocab = tok.backend.get_vocab()
    words = sorted(w[1:] for w in vocab if w.startswith("Ġ") and w[1:].isalpha() and w[1:].islower()
                   and 3 <= len(w) <= 9)
    rng = random.Random(seed)
    texts, ids = [], []
    for _ in range(n):
        parts = [rng.choice(words) for _ in range(length)]
        text = " " + " ".join(parts)
        enc = tok.encode(text)
        while len(enc) != length:
            if len(enc) > length:
                parts.pop()
            else:
                parts.append(rng.choice(words))
            text = " " + " ".join(parts)
            enc = tok.encode(text)
        texts.append(text)
        ids.append(enc)
    return texts, ids


async def _one(session, url: str, text: str, out_len: int, rec: Record) -> None:
    body = {"text_input": text, "max_tokens": out_len, "ignore_eos": True, "temperature": 0.0, "stream": True,
            "return_num_output_tokens": True}
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = time.perf_counter()
                msg = json.loads(line[5:])
                if "error" in msg:
                    rec.error = str(msg["error"])[:200]
                    return
                n = msg.get("num_output_tokens", 1)
                n = n[0] if isinstance(n, list) else n
                rec.token_times.extend([now] * int(n))
    except Exception as exc:  # noqa: BLE001
        rec.error = f"{type(exc).__name__}: {exc}"[:200]


async def _drive(port: int, texts: list[str], out_len: int, concurrency: int,
                 start_at: float | None = None) -> tuple[list[Record], float, float]:
    import aiohttp

    url = f"http://localhost:{port}/v2/models/llm/generate_stream"
    queue = list(texts)
    records: list[Record] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        async def worker():
            while queue:
                text = queue.pop(0)
                rec = Record(time.perf_counter())
                records.append(rec)
                await _one(session, url, text, out_len, rec)

        if start_at is not None:  # several client processes start together
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return records, start, time.perf_counter()


def _drive_process(args: tuple) -> tuple[list[Record], float, float]:
    return asyncio.run(_drive(*args))


# One asyncio client parses ~10k server-sent events a second at most: at hundreds of streams the client, not
# the server, would set the pace. Streams are spread over processes of at most this many each.
STREAMS_PER_CLIENT = 32


def drive_triton(port: int, texts: list[str], out_len: int, concurrency: int,
                 streams_per_client: int = STREAMS_PER_CLIENT) -> tuple[list[Record], float]:
    """Keeps `concurrency` streaming HTTP requests in flight until every text is answered; returns the records
    and the wall time. time.perf_counter is CLOCK_MONOTONIC on Linux, shared by the client processes."""
    procs = -(-concurrency // streams_per_client)
    if procs <= 1:
        records, start, end = asyncio.run(_drive(port, texts, out_len, concurrency))
        return records, end - start
    import multiprocessing

    start_at = time.perf_counter() + 3.0  # after every process is up
    jobs = [(port, texts[i::procs], out_len, len(range(i, concurrency, procs)), start_at) for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_drive_process, jobs)
    records = [r for part, _, _ in parts for r in part]
    return records, max(end for _, _, end in parts) - min(start for _, start, _ in parts)
