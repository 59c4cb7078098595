"""The drain handshake between whoever stops the server and each model instance (llmserve/serving/drain.py)."""

import threading

from llmserve.serving.drain import DrainWatch, request_drain, wait_drained


def test_wait_drained_waits_for_every_registered_instance(tmp_path):
    a, b = DrainWatch(tmp_path, "llm_0_0"), DrainWatch(tmp_path, "llm_0_1")
    assert a.requested() is None and b.requested() is None
    request_drain(tmp_path, 2.5)
    assert a.requested() == 2.5 and b.requested() == 2.5
    a.mark_drained()
    assert not wait_drained(tmp_path, timeout=0.2)  # b still serves
    threading.Timer(0.2, b.mark_drained).start()
    assert wait_drained(tmp_path, timeout=5)


def test_an_unloaded_instance_is_not_waited_for_and_nothing_registered_drains_at_once(tmp_path):
    assert wait_drained(tmp_path, timeout=0)
    watch = DrainWatch(tmp_path, "llm 0/0")  # odd characters become a safe file name
    assert not wait_drained(tmp_path, timeout=0.1)
    watch.close()
    assert wait_drained(tmp_path, timeout=0)


def test_no_control_dir_means_no_drain(tmp_path):
    watch = DrainWatch(None, "llm_0_0")
    assert watch.requested() is None
    watch.mark_drained()
    watch.close()
    assert list(tmp_path.iterdir()) == []
