"""The layers, read from the code's own imports: kernels <- model <- engine <- serving <- adapter / launch /
client / bench. A lower layer never imports a higher one, no modules import each other in a circle (counting
imports inside functions), a function-local import is only for a heavy optional dependency, and the adapter
and bench use public names only. Static: nothing here imports the code it checks."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Rank of each part; a module may import parts of its own rank or lower. config is read by engines and above.
RANKS = {"llmserve.errors": 0, "llmserve.kernels": 0, "llmserve.model": 1, "llmserve.config": 2, "llmserve.engine": 2,
         "llmserve.serving": 3, "llmserve.launch": 4, "adapter": 4, "llm_client": 4, "build_engines": 4,
         "bench": 5}
# Whose import, inside a function, is a heavy optional dependency (CPU wheels of torch lack triton).
HEAVY = {"torch", "triton", "tensorrt_llm", "transformers", "matplotlib", "tqdm", "mpi4py", "scipy"}
SOURCES = {"llmserve": "llmserve", "build_engines": "build_engines", "llm_client": "client/llm_client",
           "bench": "bench"}
ADAPTER = ROOT / "model_repository" / "llm" / "1" / "model.py"


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: list[tuple[str, bool, int]] = field(default_factory=list)  # (module, inside a function, line)


def _modules() -> dict[str, Module]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            found[name] = Module(name, path, ast.parse(path.read_text()))
    found["adapter"] = Module("adapter", ADAPTER, ast.parse(ADAPTER.read_text()))
    for module in found.values():
        module.imports = list(_imports(module, set(found)))
    return found


def _imports(module: Module, known: set[str]):
    for node, local in _walk(module.tree, False):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, local, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                yield (sub if sub in known else node.module), local, node.lineno


def _walk(node: ast.AST, local: bool):
    for child in ast.iter_child_nodes(node):
        inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, local
        yield from _walk(child, inside)


def _rank(name: str) -> int | None:
    best = max((p for p in RANKS if name == p or name.startswith(p + ".")), key=len, default=None)
    return RANKS.get(best)


def _ours(name: str, modules: dict[str, Module]) -> str | None:
    """The project module an import names (itself or its nearest parent package), or None if foreign."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


MODULES = _modules()


def test_every_part_of_the_library_has_a_rank():
    missing = [m for m in MODULES if m.startswith("llmserve.") and _rank(m) is None]
    assert not missing, f"modules outside the layers (add them to RANKS): {missing}"


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for m in MODULES.values():
        for target, _, line in m.imports:
            ours = _ours(target, MODULES)
            if ours and _rank(ours) is not None and _rank(m.name) is not None and _rank(ours) > _rank(m.name):
                bad.append(f"{m.path.relative_to(ROOT)}:{line} ({m.name}) imports {ours}")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph = {m.name: {_ours(t, MODULES) for t, _, _ in m.imports} - {None, m.name} for m in MODULES.values()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def _heavy(name: str, seen: set[str] | None = None) -> bool:
    """Whether importing the module loads a heavy optional dependency (directly or through our modules)."""
    seen = set() if seen is None else seen
    if name.split(".")[0] in HEAVY:
        return True
    module = MODULES.get(name)
    if module is None or name in seen:
        return False
    seen.add(name)
    return any(_heavy(_ours(t, MODULES) or t, seen) for t, local, _ in module.imports if not local)


@pytest.mark.parametrize("part", ["llmserve", "adapter"])
def test_function_local_imports_are_for_heavy_dependencies_only(part):
    bad = []
    for m in MODULES.values():
        if not (m.name == part or m.name.startswith(part + ".")):
            continue
        for target, local, line in m.imports:
            ours = _ours(target, MODULES)
            if local and ours and not _heavy(ours):
                bad.append(f"{m.path.relative_to(ROOT)}:{line} imports {ours} inside a function")
    assert not bad, "\n".join(bad)


def _private_uses(module: Module) -> list[str]:
    out = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmserve"):
            out += [f"{node.lineno}: {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                out.append(f"{node.lineno}: .{node.attr}")
    return out


@pytest.mark.parametrize("name", ["adapter"] + sorted(m for m in MODULES if m.startswith("bench")))
def test_adapter_and_bench_use_public_names_only(name):
    module = MODULES[name]
    allowed = {".__file__", ".__name__"}
    uses = [u for u in _private_uses(module) if u.split(": ")[1] not in allowed and not _foreign(u)]
    assert not uses, f"{module.path.relative_to(ROOT)} reaches into private names: {uses}"


def _foreign(use: str) -> bool:
    """Private names of the standard library and torch that bench code may use (sys._getframe, torch._C)."""
    return use.split(": ")[1] in {"._scaled_mm", "._C", "._getframe", "._dynamo", "._exit"}


def test_the_library_files_are_short():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "llmserve").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_the_client_imports_no_server_code():
    """The client (and the OpenAI front in it) talks to the server over gRPC/HTTP and starts it by its command
    line: installed without the server, it still imports."""
    bad = [f"{m.path.relative_to(ROOT)}:{line} imports {target}" for m in MODULES.values()
           if m.name.startswith("llm_client") for target, _, line in m.imports if target.startswith("llmserve")]
    assert not bad, "\n".join(bad)
