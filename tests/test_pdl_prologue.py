"""Every kernel that takes a PDL constexpr waits for the previous grid before it reads or writes memory.

Under programmatic dependent launch a kernel's programs may run while the kernel before it still does: a load or
store ahead of the wait would race with it. Read from the source (no triton needed): in each such kernel, only index
arithmetic comes before the call of `pdl_prologue` (llmserve.kernels.pdl).
"""

import ast
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "llmserve" / "kernels"
PROLOGUE = "pdl_prologue"
# What may run before the wait: program ids and index arithmetic
ALLOWED = {"program_id", "arange", "to", "num_programs"}


def _pdl_kernels() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in sorted(p for p in KERNELS.glob("*.py") if p.name != "pdl.py"):  # pdl.py: the wait itself
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "PDL" for a in node.args.args):
                if any(_name(d) == "jit" for d in node.decorator_list):
                    found.append((f"{path.name}:{node.name}", node))
    return found


def _name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _calls(stmt: ast.stmt) -> set[str]:
    return {_name(n.func) for n in ast.walk(stmt) if isinstance(n, ast.Call)}


def test_the_kernels_with_a_pdl_switch_are_found():
    names = {name.split(":")[1] for name, _ in _pdl_kernels()}
    assert {"_gemv_kernel", "_wmm_kernel", "_rmsnorm_kernel", "_rope_cache_kernel", "_w4gemv_kernel"} <= names


@pytest.mark.parametrize("name,fn", _pdl_kernels(), ids=[n for n, _ in _pdl_kernels()])
def test_nothing_touches_memory_before_the_pdl_wait(name, fn):
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]  # docstring
    first = next((i for i, s in enumerate(body) if PROLOGUE in _calls(s)), None)
    assert first is not None, f"{name} takes PDL but never calls {PROLOGUE}"
    for stmt in body[:first]:
        assert _calls(stmt) <= ALLOWED, f"{name} line {stmt.lineno}: {sorted(_calls(stmt) - ALLOWED)} before its wait"
