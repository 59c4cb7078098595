"""Build planning: the exact --dry-run commands for every recipe x tp/pp, the pre-build checks, the real-run
driver (with a fake runner: no TensorRT-LLM here), and the ModelOpt selective wrapper's mechanics."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from build_engines import modelopt_selective
from build_engines.build import SELECTIVE_SCRIPT, BuildError, plan_build, run_plan
from build_engines.checks import HardwareFacts, ModelShape, estimate_weight_bytes
from build_engines.cli import main
from build_engines.recipe import load_recipe
from llmserve.engine.manifest import MANIFEST_NAME, read_manifest

LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
            "max_position_embeddings": 4096, "tie_word_embeddings": False}
EX = "/opt/TensorRT-LLM/examples"
CONVERT = f"python3 {EX}/models/core/llama/convert_checkpoint.py"
QUANTIZE = f"python3 {EX}/quantization/quantize.py"
IO = "--model_dir {ck} --output_dir {out}/trtllm_checkpoint --dtype float16"
PAR = "--tp_size {tp} --pp_size {pp}"
# Step 1 per recipe, spelled out by hand from the TRT-LLM Llama README / quantize.py arguments.
STEP1 = {
    "fp16": f"{CONVERT} {IO} {PAR}",
    "bf16": f"{CONVERT} {IO.replace('float16', 'bfloat16')} {PAR}",
    "int8_wo": f"{CONVERT} {IO} {PAR} --use_weight_only --weight_only_precision int8",
    "int8_sq": f"{CONVERT} {IO} {PAR} --smoothquant 0.5 --per_token --per_channel",
    "fp8_selective": f"{CONVERT} {IO} {PAR} --use_fp8_rowwise --use_meta_fp8_rowwise_recipe",
    "fp8": f"{QUANTIZE} {IO} --qformat fp8 --kv_cache_dtype fp8 --calib_size 512 {PAR}",
    "int4_awq": f"{QUANTIZE} {IO} --qformat int4_awq --awq_block_size 128 --calib_size 32 {PAR}",
    "int8_sq_selective": f"python3 {SELECTIVE_SCRIPT} --quantize-script "
                         f"{EX}/quantization/quantize.py --keep-fp16 attention -- "
                         f"{IO} --qformat int8_sq --calib_size 512 {PAR}",
}
BUILD = ("trtllm-build --checkpoint_dir {out}/trtllm_checkpoint --output_dir {out}/engine --gemm_plugin auto "
         "--max_batch_size {bs} --max_input_len 2048 --max_seq_len 4096 --max_num_tokens 4096 "
         "--use_paged_context_fmha enable --workers {world}")
NODE = ["--gpus", "4", "--gpu-memory-gib", "80", "--compute-capability", "9.0", "--trtllm-examples", EX]


@pytest.fixture
def ck(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA_7B))
    return d


def dry_run(capsys, *args: str) -> tuple[int, list[str], str]:
    rc = main(["build", *args, "--dry-run"])
    out = capsys.readouterr()
    return rc, out.out.strip().splitlines(), out.err


@pytest.mark.parametrize("tp,pp", [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("recipe", sorted(STEP1))
def test_dry_run_prints_the_exact_commands(capsys, ck, tmp_path, recipe, tp, pp):
    out = tmp_path / "out"
    rc, lines, err = dry_run(capsys, "--checkpoint", str(ck), "--recipe", recipe, "--output", str(out),
                             "--tp", str(tp), "--pp", str(pp), *NODE)
    assert rc == 0, err
    assert lines == [STEP1[recipe].format(ck=ck, out=out, tp=tp, pp=pp),
                     BUILD.format(out=out, bs=32 if recipe == "fp8" else 16, world=tp * pp)]
    assert err == ""  # every check ran: nothing left unchecked
    assert not out.exists()  # a dry run does no work


def test_limit_overrides_and_calibration_data_reach_the_commands(capsys, ck, tmp_path):
    rc, lines, _ = dry_run(capsys, "--checkpoint", str(ck), "--recipe", "fp8", "--output", str(tmp_path / "o"),
                           "--max-batch-size", "8", "--max-input-len", "1024", "--max-seq-len", "2048",
                           "--max-num-tokens", "512", "--calib-dataset", "/data/calib", *NODE)
    assert rc == 0
    assert lines[0].endswith("--calib_size 512 --calib_dataset /data/calib --tp_size 1 --pp_size 1")
    assert "--max_batch_size 8 --max_input_len 1024 --max_seq_len 2048 --max_num_tokens 512" in lines[1]


def test_gguf_checkpoint_is_imported_first(capsys, tmp_path):
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    rc, lines, err = dry_run(capsys, "--checkpoint", str(gguf), "--recipe", "fp16", "--output", str(tmp_path / "o"),
                             *NODE)
    assert rc == 0
    hf = tmp_path / "o" / "hf_checkpoint"
    assert lines[0] == f"# first: build_engines.importer.import_checkpoint('{gguf}', '{hf}')"
    assert f"--model_dir {hf} " in lines[1]
    assert "not checked: model shape and memory" in err


def test_real_run_imports_gguf_then_builds_with_a_rebuild_command(capsys, tmp_path, monkeypatch):
    from build_engines import cli, importer

    gguf, calls = tmp_path / "m.gguf", {}
    gguf.write_bytes(b"GGUF")

    def fake_import(source, output_dir, gguf_file=None):
        calls["import"] = (Path(source), Path(output_dir))
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "config.json").write_text(json.dumps(LLAMA_7B))
        return Path(output_dir)

    def fake_run(plan, shape, hw, rebuild, **kw):
        calls["run"] = (plan.commands, hw.gpu_name, rebuild)
        return types.SimpleNamespace(tensorrt_version="10.14.1", tensorrt_llm_version="1.2.1", gpu_name="H100",
                                     compute_capability="9.0")

    monkeypatch.setattr(importer, "import_checkpoint", fake_import)
    monkeypatch.setattr(cli, "run_plan", fake_run)
    monkeypatch.setattr(cli, "detect_hardware", lambda: HardwareFacts(1, 80 * 1024**3, (9, 0), "NVIDIA H100"))
    out = tmp_path / "o"
    rc = main(["build", "--checkpoint", str(gguf), "--recipe", "int8_wo", "--output", str(out), "--max-seq-len",
               "3072", "--trtllm-examples", EX])
    assert rc == 0, capsys.readouterr().err
    assert calls["import"] == (gguf, out / "hf_checkpoint")
    commands, gpu_name, rebuild = calls["run"]
    assert commands[0][3] == str(out / "hf_checkpoint") and gpu_name == "NVIDIA H100"
    assert rebuild == (f"python -m build_engines build --checkpoint {gguf} --recipe int8_wo --output {out} "
                       "--tp 1 --pp 1 --max-seq-len 3072")


def test_real_run_refuses_without_a_gpu(capsys, ck, tmp_path, monkeypatch):
    from build_engines import cli

    monkeypatch.setattr(cli, "detect_hardware", lambda: HardwareFacts(gpu_count=0))
    assert main(["build", "--checkpoint", str(ck), "--recipe", "fp16", "--output", str(tmp_path / "o")]) == 2
    assert "no GPU visible" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,message", [
    (["--recipe", "fp16", "--tp", "2", "--pp", "2", "--gpus", "2"], "needs 4 GPUs, 2 visible"),
    (["--recipe", "fp8", "--compute-capability", "8.0"], "FP8 needs compute capability >= 8.9"),
    (["--recipe", "fp8_selective", "--compute-capability", "8.6"], "FP8 needs compute capability >= 8.9"),
    (["--recipe", "fp16", "--gpu-memory-gib", "12"], "weights need about 12.6 GiB per GPU"),
    (["--recipe", "fp16", "--max-batch-size", "64"], "at most 29 full-length sequences fit"),
    (["--recipe", "fp16", "--tp", "3", "--gpus", "4"], "tp_size 3 must divide num_attention_heads 32"),
    (["--recipe", "fp16", "--max-input-len", "9000"], "limits.max_input_len: must be < max_seq_len"),
    (["--recipe", "nope"], "no such recipe file"),
])
def test_refusals_happen_before_any_work(capsys, ck, tmp_path, args, message):
    node = dict(zip(NODE[::2], NODE[1::2], strict=True))
    node.update(dict(zip(args[::2], args[1::2], strict=True)))
    rc = main(["build", "--checkpoint", str(ck), "--output", str(tmp_path / "o"),
               *[x for kv in node.items() for x in kv], "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err


QWEN2 = dict(LLAMA_7B, architectures=["Qwen2ForCausalLM"], model_type="qwen2")


@pytest.mark.parametrize("recipe", ["fp16", "int8_wo", "int8_sq", "fp8"])
def test_qwen2_goes_through_the_qwen_converter(capsys, ck, tmp_path, recipe):
    (ck / "config.json").write_text(json.dumps(QWEN2))
    out = tmp_path / "o"
    rc, lines, err = dry_run(capsys, "--recipe", recipe, "--checkpoint", str(ck), "--output", str(out), *NODE)
    assert rc == 0, err
    expected = STEP1[recipe].format(ck=ck, out=out, tp=1, pp=1)
    assert lines[0] == expected.replace("/models/core/llama/", "/models/core/qwen/")


def test_qwen2_refuses_what_its_converter_lacks(capsys, ck, tmp_path):
    (ck / "config.json").write_text(json.dumps(QWEN2))
    rc, _, err = dry_run(capsys, "--recipe", "fp8_selective", "--checkpoint", str(ck), "--output", str(tmp_path), *NODE)
    assert rc == 2
    assert "recipe fp8_selective: TensorRT-LLM's qwen converter has no --use_fp8_rowwise" in err


def test_an_architecture_without_a_converter_is_refused(capsys, ck, tmp_path):
    (ck / "config.json").write_text(json.dumps(dict(LLAMA_7B, architectures=["GemmaForCausalLM"])))
    rc, _, err = dry_run(capsys, "--recipe", "fp16", "--checkpoint", str(ck), "--output", str(tmp_path), *NODE)
    assert rc == 2 and "architectures ['GemmaForCausalLM']" in err


def test_memory_estimate_follows_precision_and_selective_layers():
    shape = ModelShape.from_config(LLAMA_7B)
    fp16 = estimate_weight_bytes(shape, load_recipe("fp16"))
    assert 13.4e9 < fp16 < 13.6e9  # 6.74 B parameters in 2 bytes
    int4 = estimate_weight_bytes(shape, load_recipe("int4_awq"))
    fp8, fp8_sel = (estimate_weight_bytes(shape, load_recipe(n)) for n in ("fp8", "fp8_selective"))
    assert int4 < fp8 < fp8_sel < fp16
    embeddings = 2 * 32000 * 4096 * 2
    assert fp8 == pytest.approx((fp16 - embeddings) / 2 + embeddings)


def test_real_run_executes_steps_and_writes_the_manifest(ck, tmp_path):
    recipe = load_recipe("int8_wo").with_overrides(tp_size=2)
    plan = plan_build(recipe, ck, tmp_path / "out", EX)
    ran: list[list[str]] = []

    def runner(cmd, check):
        ran.append(cmd)
        if cmd[0] == "trtllm-build":  # what trtllm-build leaves behind
            plan.engine_dir.mkdir(parents=True)
            for name in ("rank0.engine", "rank1.engine", "config.json"):
                (plan.engine_dir / name).write_bytes(name.encode())
        return subprocess.CompletedProcess(cmd, 0)

    hw = HardwareFacts(2, 80 * 1024**3, (9, 0), "NVIDIA H100 80GB HBM3")
    run_plan(plan, ModelShape.from_config(LLAMA_7B), hw, "python -m build_engines build ...", runner=runner,
             versions=("10.14.1", "1.2.1"))
    assert ran == plan.commands
    m = read_manifest(plan.engine_dir)
    assert (m.tensorrt_version, m.tensorrt_llm_version, m.compute_capability) == ("10.14.1", "1.2.1", "9.0")
    assert sorted(m.engine_files) == ["config.json", "rank0.engine", "rank1.engine"]
    assert m.model["kv_bytes_per_token"] == 2 * 32 * 16 * 128 * 2  # tp=2 halves the KV heads per GPU
    assert (plan.engine_dir / MANIFEST_NAME).is_file()


def test_a_failing_step_stops_the_build_without_a_manifest(ck, tmp_path):
    plan = plan_build(load_recipe("fp16"), ck, tmp_path / "out", EX)
    with pytest.raises(BuildError, match="exit code 3: python3 .*convert_checkpoint.py"):
        run_plan(plan, ModelShape.from_config(LLAMA_7B), HardwareFacts(1), "x",
                 runner=lambda cmd, check: subprocess.CompletedProcess(cmd, 3), versions=("a", "b"))
    assert not (plan.engine_dir / MANIFEST_NAME).exists()


def _fake_trtllm(monkeypatch) -> types.ModuleType:
    qbm = types.ModuleType("tensorrt_llm.quantization.quantize_by_modelopt")
    globals_cfg = {"int8_sq": {"quant_cfg": {"*weight_quantizer": {"enable": True}}, "algorithm": "smoothquant"}}
    qbm.quant_cfg_choices = lambda: globals_cfg
    pkg, sub = types.ModuleType("tensorrt_llm"), types.ModuleType("tensorrt_llm.quantization")
    sub.quantize_by_modelopt = qbm
    pkg.quantization = sub
    for name, mod in (("tensorrt_llm", pkg), ("tensorrt_llm.quantization", sub), (qbm.__name__, qbm)):
        monkeypatch.setitem(sys.modules, name, mod)
    return qbm


FAKE_QUANTIZE = """
import json, sys
from tensorrt_llm.quantization import quantize_by_modelopt as q
out = sys.argv[sys.argv.index("--output_dir") + 1]
cfg = q.quant_cfg_choices()["int8_sq"]["quant_cfg"]
excluded = ["*attention*"] if cfg.get("*self_attn*") == {"enable": False} else []
json.dump({"quantization": {"quant_algo": "W8A8_SQ_PER_CHANNEL", "exclude_modules": excluded}},
          open(out + "/config.json", "w"))
"""


@pytest.mark.parametrize("record_exclusion", [True, False])
def test_selective_wrapper_disables_attention_quantizers(monkeypatch, tmp_path, record_exclusion):
    qbm = _fake_trtllm(monkeypatch)
    original = qbm.quant_cfg_choices()
    script = tmp_path / "quantize.py"
    script.write_text(FAKE_QUANTIZE if record_exclusion else FAKE_QUANTIZE.replace('["*attention*"] if', '[] if'))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    args = ["--quantize-script", str(script), "--keep-fp16", "attention", "--", "--output_dir", str(tmp_path)]
    if record_exclusion:
        assert modelopt_selective.main(args) == 0
        assert json.loads((tmp_path / "config.json").read_text())["quantization"]["exclude_modules"] == ["*attention*"]
    else:
        with pytest.raises(SystemExit, match="does not exclude the attention layers"):
            modelopt_selective.main(args)
    assert "*self_attn*" not in original["int8_sq"]["quant_cfg"]  # ModelOpt's global config left untouched


def test_gpu_checks_come_before_the_slow_gguf_import(capsys, tmp_path, monkeypatch):
    from build_engines import cli, importer

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(importer, "import_checkpoint", lambda *a, **k: pytest.fail("imported before checking"))
    monkeypatch.setattr(cli, "detect_hardware", lambda: HardwareFacts(1, 80 * 1024**3, (8, 0), "NVIDIA A100"))
    assert main(["build", "--checkpoint", str(gguf), "--recipe", "fp8", "--output", str(tmp_path / "o")]) == 2
    assert "FP8 needs compute capability >= 8.9" in capsys.readouterr().err


def test_the_selective_wrapper_runs_from_any_directory(tmp_path):
    # issue 21 item 7: `python -m build_engines.modelopt_selective` imported only from the project root
    done = subprocess.run([sys.executable, str(SELECTIVE_SCRIPT)], cwd=tmp_path, capture_output=True, text=True)
    assert "No module named" not in done.stderr and "usage: modelopt_selective" in done.stderr
