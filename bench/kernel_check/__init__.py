"""One device call: environment, kernel correctness, GEMV configuration sweep, floors, engine smoke timings.

    python -m bench.kernel_check --out $OUT [--sections env,tests,engine_small,gemv,floor,attn,engine7b]

Every section catches its own failure, writes what it measured to OUT/kernel_check.json as it goes, and
prints a short table at the end (the device tool returns only the tail of the output). The sections live in
modules by subject (engine, linear, quant, attention, profile, host); `__main__` lists them.
"""
