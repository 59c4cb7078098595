"""bench/kernel_check/switches.py: the cases a device call names set llmserve.kernels.linear's switches and undo
them exactly (a dict entry or a module constant of its own type)."""

import pytest

pytest.importorskip("triton")

from bench.kernel_check.switches import apply_case, parse_cases  # noqa: E402
from llmserve.kernels import linear  # noqa: E402


def test_cases_parse_and_apply_then_undo():
    cases = parse_cases("GATE_OUT=0;SKINNY_MAX_M.fp8=1,GATE_OUT=1")
    assert cases == [{"GATE_OUT": 0}, {"SKINNY_MAX_M.fp8": 1, "GATE_OUT": 1}]
    gate, skinny = linear.GATE_OUT, dict(linear.SKINNY_MAX_M)
    before = apply_case(cases[0])
    assert linear.GATE_OUT is False
    apply_case(before)
    before = apply_case(cases[1])
    assert linear.SKINNY_MAX_M["fp8"] == 1 and linear.GATE_OUT is True
    apply_case(before)
    assert linear.GATE_OUT is gate and linear.SKINNY_MAX_M == skinny


def test_a_case_names_another_kernels_modules_switch():
    from llmserve.kernels import int4

    rows = int4.MMA_ROWS
    before = apply_case(parse_cases("int4:MMA_ROWS=8")[0])
    assert int4.MMA_ROWS == 8 and before == {"int4:MMA_ROWS": rows}
    apply_case(before)
    assert int4.MMA_ROWS == rows
