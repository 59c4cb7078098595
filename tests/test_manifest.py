"""Build manifest: contents, round trip, and the load-time check that names the rebuild command."""

from __future__ import annotations

import json

import pytest

from llmserve.engine.manifest import (
    DEFAULT_TRITON_IMAGE,
    MANIFEST_NAME,
    SUPPORTED_TRTLLM_LINE,
    TRITON_TRTLLM_IMAGES,
    Manifest,
    ManifestError,
    check_manifest,
    check_supported_runtime,
    engine_file_hashes,
    read_manifest,
    sha256_file,
    verify_engine_files,
    write_manifest,
)

REBUILD = ("python -m build_engines build --checkpoint /models/llama --recipe fp8 --output /engines/llama-fp8 "
           "--tp 2 --pp 1")


def make(engine_dir, **changes) -> Manifest:
    (engine_dir / "rank0.engine").write_bytes(b"engine-0")
    (engine_dir / "rank1.engine").write_bytes(b"engine-1")
    (engine_dir / "config.json").write_text('{"build_config": {}}')
    fields = dict(model={"source": "/models/llama", "vocab_size": 32000, "architectures": ["LlamaForCausalLM"]},
                  recipe={"name": "fp8", "precision": "fp8"}, tp_size=2, pp_size=1, tensorrt_version="10.14.1",
                  tensorrt_llm_version="1.2.1", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                  limits={"max_batch_size": 32, "max_seq_len": 4096}, engine_files=engine_file_hashes(engine_dir),
                  rebuild_command=REBUILD)
    fields.update(changes)
    return Manifest(**fields)


def test_manifest_records_what_the_brief_asks_for(tmp_path):
    m = make(tmp_path)
    path = write_manifest(m, tmp_path)
    assert path == tmp_path / MANIFEST_NAME
    raw = json.loads(path.read_text())
    for key in ("model", "recipe", "tp_size", "pp_size", "tensorrt_version", "tensorrt_llm_version", "gpu_name",
                "compute_capability", "limits", "engine_files", "rebuild_command", "built_at"):
        assert key in raw
    assert raw["engine_files"]["rank0.engine"] == sha256_file(tmp_path / "rank0.engine")
    assert sorted(raw["engine_files"]) == ["config.json", "rank0.engine", "rank1.engine"]
    assert read_manifest(tmp_path) == m


def test_matching_runtime_passes(tmp_path):
    m = make(tmp_path)
    check_manifest(m, "10.14.1", "1.2.1", (9, 0))
    check_manifest(json.loads(m.to_json()), "10.14.1", "1.2.1", "9.0")  # plain dict and string cc work too


@pytest.mark.parametrize("trt,trtllm,cc,problem", [
    ("10.13.0", "1.2.1", (9, 0), "TensorRT 10.14.1 at build, 10.13.0 here"),
    ("10.14.1", "1.1.0", (9, 0), "TensorRT-LLM 1.2.1 at build, 1.1.0 here"),
    ("10.14.1", "1.2.1", (8, 9), "GPU compute capability 9.0 (NVIDIA H100 80GB HBM3) at build, 8.9 here"),
])
def test_mismatch_names_the_problem_and_the_exact_rebuild_command(tmp_path, trt, trtllm, cc, problem):
    with pytest.raises(ManifestError) as exc:
        check_manifest(make(tmp_path), trt, trtllm, cc)
    message = str(exc.value)
    assert problem in message
    assert message.endswith(f"Rebuild on this node with: {REBUILD}")
    assert "(fp8, tp=2 pp=1)" in message


def test_every_mismatch_is_listed_at_once(tmp_path):
    with pytest.raises(ManifestError) as exc:
        check_manifest(make(tmp_path), "10.13.0", "1.1.0", (8, 0))
    assert str(exc.value).count(" at build, ") == 3


def test_missing_or_broken_manifest_says_how_to_build(tmp_path):
    with pytest.raises(ManifestError, match=f"no {MANIFEST_NAME} in .*python -m build_engines build"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ManifestError, match="format_version 99"):
        read_manifest(tmp_path)


def test_verify_engine_files_catches_a_changed_engine(tmp_path):
    m = make(tmp_path)
    verify_engine_files(m, tmp_path)
    (tmp_path / "rank1.engine").write_bytes(b"rebuilt elsewhere")
    with pytest.raises(ManifestError, match=f"changed or missing since the build: rank1.engine .*{REBUILD}"):
        verify_engine_files(m, tmp_path)
    (tmp_path / "rank0.engine").unlink()
    with pytest.raises(ManifestError, match="rank0.engine, rank1.engine"):
        verify_engine_files(m, tmp_path)


# -- issue 21 item 8: the image default and the supported TensorRT-LLM line are one table ----------------------

@pytest.mark.parametrize("image", sorted(TRITON_TRTLLM_IMAGES))
def test_an_engine_built_and_served_in_a_listed_image_passes_every_load_check(tmp_path, image):
    trt, trtllm = TRITON_TRTLLM_IMAGES[image]
    check_supported_runtime(trtllm)
    check_manifest(make(tmp_path, tensorrt_version=trt, tensorrt_llm_version=trtllm), trt, trtllm, (9, 0))


def test_the_default_image_is_listed_and_ships_the_newest_supported_release():
    assert DEFAULT_TRITON_IMAGE in TRITON_TRTLLM_IMAGES
    newest = max((tuple(map(int, v.split("."))) for _, v in TRITON_TRTLLM_IMAGES.values()))
    assert tuple(map(int, TRITON_TRTLLM_IMAGES[DEFAULT_TRITON_IMAGE][1].split("."))) == newest
    assert newest[:2] == SUPPORTED_TRTLLM_LINE


@pytest.mark.parametrize("version", ["1.1.0", "1.0.3.2510", "0.21.0", "1.20.0", "2.2.0", "not installed"])
def test_other_tensorrt_llm_releases_are_refused_naming_the_default_image(version):
    with pytest.raises(ManifestError, match=f"TensorRT-LLM {version} here; .* 1.2.x only. Run it in "
                       f"{DEFAULT_TRITON_IMAGE}"):
        check_supported_runtime(version)


@pytest.mark.parametrize("version", ["1.2.0", "1.2.1", "1.2.0rc2", "1.2.2.post1"])
def test_every_release_of_the_supported_line_passes(version):
    check_supported_runtime(version)
