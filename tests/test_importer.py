"""Checkpoint import: clear refusals, and an HF directory imported once and cached."""

import json

import pytest

from build_engines.importer import ImportError_, import_checkpoint


def hf_dir(path, arch="LlamaForCausalLM", weights=("model.safetensors",)):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama"}))
    for w in weights:
        (path / w).write_bytes(b"\0" * 16)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(ImportError_, match="checkpoint not found"):
        import_checkpoint(tmp_path / "nope.gguf", tmp_path / "out")


def test_a_file_that_is_not_gguf_is_refused_before_any_work(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ImportError_, match="expected a .gguf file or an HF checkpoint directory"):
        import_checkpoint(tmp_path / "model.bin", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_unsupported_architecture(tmp_path):
    with pytest.raises(ImportError_, match="unsupported architecture.*GPT2LMHeadModel"):
        import_checkpoint(hf_dir(tmp_path / "gpt2", arch="GPT2LMHeadModel"), tmp_path / "out")


def test_pickle_checkpoints_refused(tmp_path):
    src = hf_dir(tmp_path / "pickled", weights=("pytorch_model.bin",))
    with pytest.raises(ImportError_, match="pickle.*safetensors only"):
        import_checkpoint(src, tmp_path / "out")


def test_hf_directory_imported_once(tmp_path):
    src = hf_dir(tmp_path / "llama")
    (src / "tokenizer.json").write_text("{}")
    out = import_checkpoint(src, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "import_manifest.json", "model.safetensors",
                                                     "tokenizer.json"]
    stamp = (out / "import_manifest.json").stat().st_mtime_ns
    assert import_checkpoint(src, tmp_path / "out") == out
    assert (out / "import_manifest.json").stat().st_mtime_ns == stamp  # cached: not written again


def test_imports_started_together_into_one_folder_import_once(tmp_path, monkeypatch):
    import threading
    import time

    from build_engines import importer

    src, calls, real = hf_dir(tmp_path / "llama"), [], importer._import_into

    def slow_import(*args):
        calls.append(1)
        time.sleep(0.5)  # the second caller arrives while the first is still importing
        real(*args)

    monkeypatch.setattr(importer, "_import_into", slow_import)
    outs: list = []
    threads = [threading.Thread(target=lambda: outs.append(import_checkpoint(src, tmp_path / "out")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outs == [tmp_path / "out"] * 2 and len(calls) == 1
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out.partial").exists()
