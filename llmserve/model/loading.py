"""Streams an HF safetensors checkpoint into a model built on the meta device, one shard file at a time.

Each file is opened lazily (safetensors' safe_open: the header is read, tensors come off the memory map one by
one). A tensor is cast and moved to the device as soon as it is read; a module's tensors are handed to it together
once all of them have arrived (q/k/v and gate/up are packed there, and may sit in different shards, so only their
pending parts wait, on the device). The host thus holds one tensor at a time plus the pages of the open shard,
never the whole checkpoint: a 16 GB Llama-3.1-8B loads within two shards' worth of host memory.

A tensor-parallel rank reads only its slice of each parallel layer's tensors (safetensors' get_slice; a `Slicer`
from llmserve/model/tensor_parallel.py says which rows or columns), into a model already shaped to its sizes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from llmserve.model.weights import cast

# safetensors' dtype names (its format spec) and the torch types they load as
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
# HF's separate projections and the packed one of ours they stack into (hf_to_ours does the same, all in memory)
PACKED = re.compile(r"^(layers\.\d+\.)(self_attn\.(q|k|v)|mlp\.(gate|up))_proj\.(weight|bias|weight_scale|weight_min)$")
PARTS = {"q": ("self_attn.qkv_proj", 0, 3), "k": ("self_attn.qkv_proj", 1, 3), "v": ("self_attn.qkv_proj", 2, 3),
         "gate": ("mlp.gate_up_proj", 0, 2), "up": ("mlp.gate_up_proj", 1, 2)}
Index = dict[Path, dict[str, torch.Tensor]]  # shard file -> its tensors' names and meta-device stand-ins
Rename = Callable[[str], "str | None"]  # our full-model name -> the name in the model being filled (None: not kept)
# The pieces of a tensor to read: (dim, [(start, stop), ...]), concatenated along dim; None: all of it
Pieces = tuple[int, list[tuple[int, int]]]
Slicer = Callable[[str, int, int, tuple[int, ...]], "Pieces | None"]  # (our name, part, parts, shape) -> Pieces


def _same(key: str) -> str:
    return key


def stage_rename(model: nn.Module, tied: bool) -> Rename:
    """Our names for a model that keeps only some layers (a pipeline stage: layers first_layer.. renumbered from
    0, maybe no embedding or head), so a stage reads only its own tensors. A tied head without the embedding
    (the last stage) takes the embedding's tensor as lm_head.weight."""
    first, count = getattr(model, "first_layer", 0), len(model.layers)
    embed, head = model.embed_tokens is not None, model.lm_head is not None
    if first == 0 and embed and head:  # the whole model (a stage keeps at most one of the two ends)
        return _same

    def rename(key: str) -> str | None:
        if key.startswith("layers."):
            index, _, rest = key.removeprefix("layers.").partition(".")
            local = int(index) - first
            return f"layers.{local}.{rest}" if 0 <= local < count else None
        if key.startswith("embed_tokens."):
            return key if embed else ("lm_head.weight" if tied and head and key == "embed_tokens.weight" else None)
        if key.startswith(("norm.", "lm_head.")):
            return key if head else None
        return key
    return rename


def our_key(hf_key: str) -> tuple[str, int, int] | None:
    """Our name of a checkpoint tensor, its part among those packed into it and their number (None: not loaded)."""
    if hf_key.endswith("rotary_emb.inv_freq"):
        return None
    key = hf_key.removeprefix("model.")
    m = PACKED.match(key)
    if m is None:
        return key, 0, 1
    name, part, parts = PARTS[m.group(3) or m.group(4)]
    return f"{m.group(1)}{name}.{m.group(5)}", part, parts


def read_index(checkpoint_dir: Path) -> Index:
    """Every *.safetensors file's tensor names, with shape and dtype as meta tensors (headers only, no data)."""
    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no *.safetensors weights")
    index: Index = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            index[path] = {k: _meta(f.get_slice(k), f"{path.name}: {k}") for k in f.keys()}
    return index


def _meta(sl, where: str) -> torch.Tensor:
    if sl.get_dtype() not in ST_DTYPES:
        raise ValueError(f"{where}: dtype {sl.get_dtype()} is not one this model loads")
    return torch.empty(sl.get_shape(), dtype=ST_DTYPES[sl.get_dtype()], device="meta")


def meta_state(index: Index) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint by their HF names, on the meta device (for checks that read shapes)."""
    return {k: t for tensors in index.values() for k, t in tensors.items()}


def check_names(model: nn.Module, index: Index, tied: bool, where: Path, rename: Rename = _same) -> None:
    """Refuses, before any data is read, a checkpoint lacking a tensor of the model or holding one it would not
    use (a bias, a scale: computation this model would silently skip). rename: stage_rename's, for a stage."""
    parts: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    for name in filter(None, (_renamed(our_key(k), rename) for k in meta_state(index))):
        parts.setdefault(name[0], set()).add(name[1])
        counts[name[0]] = name[2]
    have = {k for k, p in parts.items() if len(p) == counts[k]}
    if tied or "lm_head.weight" not in have:
        have.add("lm_head.weight")  # the embedding's, as transformers ties it
    expected = set(model.state_dict())
    missing = expected - have
    if missing:
        raise ValueError(f"{where}: checkpoint lacks {sorted(missing)[:4]}...")
    unused = set(parts) - expected
    if unused:
        raise ValueError(f"{where}: checkpoint has tensors this model does not use: {sorted(unused)[:4]}...")


def load_checkpoint_(model: nn.Module, index: Index, dtype: torch.dtype, device: torch.device, tied: bool,
                     rename: Rename = _same, slicer: Slicer | None = None) -> None:
    """Fills the meta-device `model` from the shards of `index`, on `device` (check_names first). slicer: the
    pieces of each tensor to read (a tensor-parallel rank's), all asked before any data is read, so a refusal
    (a rank's inputs splitting a group) reads nothing."""
    wanted: dict[str, set[str]] = {}  # module -> the names of its tensors still to come
    for key in model.state_dict():
        if not (tied and key == "lm_head.weight"):
            owner, _, name = key.rpartition(".")
            wanted.setdefault(owner, set()).add(name)
    plan = {path: [(hf_key, name, slicer and slicer(*name, tuple(t.shape))) for hf_key, t in tensors.items()
                   if (name := _renamed(our_key(hf_key), rename)) is not None and _wanted(wanted, name[0])]
            for path, tensors in index.items()}  # the rotary table, lm_head when tied, other stages': skipped
    ready: dict[str, dict[str, torch.Tensor]] = {}  # module -> its tensors on the device
    pending: dict[str, list[torch.Tensor | None]] = {}  # packed key -> its parts on the device
    for path, todo in plan.items():
        with safe_open(path, framework="pt") as f:
            for hf_key, (key, part, parts), pieces in todo:
                t = cast(key, _read(f, hf_key, pieces), dtype).to(device)
                if parts > 1:
                    slots = pending.setdefault(key, [None] * parts)
                    slots[part] = t
                    if any(s is None for s in slots):
                        continue
                    t = torch.cat(pending.pop(key), 0)
                _arrive(model, key, t, wanted, ready)
    if wanted or pending:
        raise ValueError(f"incomplete checkpoint: {sorted(wanted)[:4]} {sorted(pending)[:4]}")
    if tied:
        model.lm_head.weight = model.embed_tokens.weight


def _read(f, hf_key: str, pieces: Pieces | None) -> torch.Tensor:
    """The tensor, or only its pieces (rows, or columns of a 2-D one) off the memory map."""
    if pieces is None:
        return f.get_tensor(hf_key)
    dim, spans = pieces
    sl = f.get_slice(hf_key)
    read = [sl[a:b] if dim == 0 else sl[:, a:b] for a, b in spans]
    return read[0] if len(read) == 1 else torch.cat(read, dim)


def _renamed(name: tuple[str, int, int] | None, rename: Rename) -> tuple[str, int, int] | None:
    if name is None:
        return None
    key = rename(name[0])
    return None if key is None else (key, name[1], name[2])


def _wanted(wanted: dict[str, set[str]], key: str) -> bool:
    owner, _, name = key.rpartition(".")
    return name in wanted.get(owner, ())


def _arrive(model: nn.Module, key: str, t: torch.Tensor, wanted: dict[str, set[str]],
            ready: dict[str, dict[str, torch.Tensor]]) -> None:
    """Keeps `t` for its module; once the module has all its tensors they go in together (an int4 layer sizes
    its groups from its scales, so its weight_min must not arrive before them)."""
    owner, _, name = key.rpartition(".")
    ready.setdefault(owner, {})[name] = t
    wanted[owner].discard(name)
    if not wanted[owner]:
        del wanted[owner]
        model.get_submodule(owner).load_state_dict(ready.pop(owner), strict=True, assign=True)
