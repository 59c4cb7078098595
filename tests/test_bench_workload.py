"""bench/workload.py's closed loop on a stand-in engine: every request gets the output length asked for (the
workload's, or its own with `bench.run --spread`), and the summary counts a short answer against that length."""

from types import SimpleNamespace

from bench.workload import drive_engine, request_tokens, summarize


class CountingEngine:
    """One token a step for every request in flight, finished at its max_tokens (the engine's interface as
    drive_engine uses it)."""

    def __init__(self):
        self.live: dict[str, list[int]] = {}  # request id -> [tokens left]
        self.most_in_flight = 0

    def add_request(self, req):
        self.live[req.request_id] = [req.params.max_tokens]
        self.most_in_flight = max(self.most_in_flight, len(self.live))

    def has_work(self):
        return bool(self.live)

    def step(self):
        outs = []
        for rid, left in list(self.live.items()):
            left[0] -= 1
            done = "length" if not left[0] else None
            outs.append(SimpleNamespace(request_id=rid, new_token_ids=[7], finish_reason=done))
            if not left[0]:
                del self.live[rid]
        return outs


def test_spread_lengths_are_seeded_within_the_fraction_and_each_request_gets_its_own():
    lengths = [request_tokens(i, 100, 0.5) for i in range(40)]
    assert lengths == [request_tokens(i, 100, 0.5) for i in range(40)]  # the same requests every run
    assert all(50 <= n <= 150 for n in lengths) and len(set(lengths)) > 10
    assert request_tokens(3, 100, 0) == 100
    eng = CountingEngine()
    records, wall = drive_engine(eng, [[1, 2, 3]] * 40, lengths, concurrency=8)
    assert [len(r.token_times) for r in records] == lengths and eng.most_in_flight == 8
    s = summarize(records, wall, 8, 3, 100)
    assert s["short_responses"] == 0 and s["output_tokens"] == sum(lengths)
    records, wall = drive_engine(CountingEngine(), [[1]] * 5, 12, concurrency=2)
    assert [len(r.token_times) for r in records] == [12] * 5
    assert summarize(records, wall, 2, 1, 13)["short_responses"] == 5  # against the workload's length
