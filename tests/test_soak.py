"""Load: concurrent mixed streams, bounded in count; nothing lost, KV free, memory flat across rounds."""

import io

import pytest

from llm_client.soak import soak

pytestmark = pytest.mark.server


def test_soak_rounds_lose_nothing(server):
    out = io.StringIO()
    summary = soak(server.grpc_url, server.metrics_url, rounds=3, count=8, concurrency=8, duration_s=0,
                   max_growth_bytes=64 * 2**20, out=out)
    print(out.getvalue(), summary)
    assert summary["mismatches"] == [] and summary["errors"] == []
    assert summary["kv_free_every_round"]
    assert summary["requests"] == 24
    assert all(r > 100 for r in summary["rss_mib"])  # the gauge is real: the backend holds the model
    assert summary["rss_growth_mib"] <= 64, summary["rss_mib"]
    assert summary["ok"]
