import time

from llmserve.engine.api import EngineRequest
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.engine.sequence import Sequence, Status


def seq(n, rid):
    tokens = [rid * 1000 + i for i in range(n)]  # distinct prompts: no prefix sharing
    return Sequence(EngineRequest(str(rid), tokens, SamplingParams()), tokens, n, n + 100)


def run_step(sched, batch):
    """What the engine does after a step: mark computed, append a sampled token when a prefill completes."""
    for s, n in zip(batch.seqs, batch.num_tokens):
        s.num_computed_tokens += n
        if s.num_computed_tokens == len(s.tokens):
            s.tokens.append(1)


def test_admission_respects_batch_slots_and_token_budget():
    sched = Scheduler(SchedulerConfig(max_batch_size=2, max_num_tokens=100), BlockManager(64, 4, False))
    for i in range(3):
        sched.add(seq(30, i))
    b = sched.schedule()
    assert [s.request_id for s in b.seqs] == ["0", "1"] and b.num_tokens == [30, 30]
    assert len(sched.waiting) == 1


def test_chunked_prefill_splits_long_prompts_and_decodes_join():
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=16), BlockManager(64, 4, False))
    short, long_ = seq(4, 1), seq(40, 2)
    sched.add(short)
    run_step(sched, sched.schedule())  # short prefilled alone
    sched.add(long_)
    b = sched.schedule()
    assert b.num_tokens == [1, 15]  # the running decode first, then a chunk of what remains
    run_step(sched, b)
    b = sched.schedule()
    assert b.num_tokens == [1, 15]
    run_step(sched, b)
    b = sched.schedule()
    assert b.num_tokens == [1, 10] and b.total_tokens <= 16


def test_preemption_frees_the_newest_and_recomputes_it_later():
    bm = BlockManager(num_blocks=6, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=64), bm)
    a, b = seq(8, 1), seq(8, 2)
    sched.add(a)
    sched.add(b)
    run_step(sched, sched.schedule())  # both prefilled: 2 blocks each + room for 1 token each
    assert bm.num_free == 0 or bm.num_free == 2
    for _ in range(8):
        batch = sched.schedule()
        run_step(sched, batch)
    assert sched.num_preemptions >= 1
    assert a.status is Status.RUNNING  # the oldest keeps running
    assert b.preempted >= 1
    used = sum(len(s.block_table) for s in sched.running)
    assert used + bm.num_free == bm.num_blocks


def test_queue_delay_holds_the_first_prefill():
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=64, max_queue_delay_s=0.5),
                      BlockManager(64, 4, False))
    s = seq(4, 1)
    sched.add(s)
    now = s.request.arrival_time
    assert sched.schedule(now=now).seqs == []
    assert 0.4 < sched.next_wakeup(now) <= 0.5
    assert sched.schedule(now=now + 0.6).seqs == [s]
    assert time.monotonic() > 0


def test_queue_delay_ends_when_a_burst_pauses_or_fills_a_step():
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=12, max_queue_delay_s=0.5,
                                      queue_delay_gap_s=0.01), BlockManager(64, 4, False))
    a, b = seq(4, 1), seq(4, 2)
    sched.add(a)
    t0 = a.request.arrival_time
    b.request.arrival_time = t0 + 0.008  # the burst goes on: the gap counts from the newest arrival
    sched.add(b)
    assert sched.schedule(now=t0 + 0.012).seqs == []
    assert abs(sched.next_wakeup(t0 + 0.012) - 0.006) < 1e-6
    c = seq(4, 3)
    c.request.arrival_time = t0 + 0.013
    sched.add(c)  # 12 prompt tokens waiting fill the step's budget: no reason to wait longer
    assert sched.next_wakeup(t0 + 0.014) == 0.0
    assert sched.schedule(now=t0 + 0.014).seqs == [a, b, c]


def test_chain_next_says_whether_the_next_schedule_may_run_behind_a_launched_step():
    """Safe: every sequence it may run argmax-only, one token for a sequence whose token is on its way, and the
    free blocks hold every running sequence's uncomputed tokens (so nothing is preempted)."""
    blocks = BlockManager(12, 4, False)
    sched = Scheduler(SchedulerConfig(max_batch_size=2, max_num_tokens=64), blocks)
    a, b = seq(6, 1), seq(10, 2)
    for s in (a, b):
        s.plain_greedy = True
        sched.add(s)
    assert sched.chain_next() == (0, 0, True)  # nothing running: a mixed step that admits both
    sched.schedule(max_tokens=8)  # a takes 6 tokens, b a chunk of 2 (the budget capped)
    a.num_computed_tokens, b.num_computed_tokens = 6, 2
    a.tokens.append(-1)
    a.num_pending = 1  # a's first token is on its way
    check = sched.chain_next()
    assert check == (2, 9, False) and not check.plain_decode  # a decodes one token, b's prompt has 8 left
    b.num_computed_tokens = 10
    b.tokens.append(-1)
    assert sched.chain_next().plain_decode
    a.num_computed_tokens = 5  # a sequence whose token is on its way needs exactly that one token
    assert sched.chain_next() is None
    a.num_computed_tokens, a.num_pending, a.tokens[-1] = 6, 0, 7
    a.tokens += [7, 7]  # a has 3 tokens to compute (a third block), b 1 (a third block too)
    assert sched.chain_next() == (2, 4, False)
    blocks.grow(seq(4 * blocks.num_free, 9), 4 * blocks.num_free)  # no block free: schedule would preempt
    assert sched.chain_next() is None
    sampled = seq(4, 3)
    sched.remove(b)
    sched.add(sampled)  # a waiting sequence that could be admitted and samples: synchronous
    assert sched.chain_next() is None


def test_steps_in_flight_share_the_running_sequences_and_their_sequences_are_never_preempted():
    """Pipeline stages with several steps in flight (llmserve/engine/step_queue.py): a sequence whose step is in
    flight is not scheduled again, max_rows caps a step's sequences, and a preemption passes over in-flight ones."""
    bm = BlockManager(num_blocks=6, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_batch_size=8, max_num_tokens=64), bm)
    seqs = [seq(4, i) for i in range(4)]
    for s in seqs:
        sched.add(s)
    first = sched.schedule(max_rows=2)
    assert first.seqs == seqs[:2] and len(sched.waiting) == 2  # admission stops at the cap too
    for s in first.seqs:
        s.in_flight = True
    second = sched.schedule(max_rows=2)
    assert second.seqs == seqs[2:]  # the in-flight ones are passed over
    for s in second.seqs:
        s.in_flight = True
    assert not sched.schedule().seqs  # everything is in flight: nothing to run
    for batch in (first, second):
        run_step(sched, batch)
        for s in batch.seqs:
            s.in_flight = False
    # Each holds one full block; its 5th token needs a second and 2 blocks are free. The newest sequence (3) is
    # in flight, so the one preempted to make room is 2, the newest of those that are not.
    seqs[3].in_flight = True
    grow = sched.schedule()
    assert grow.seqs == seqs[:2] and sched.num_preemptions == 1
    assert seqs[2].preempted == 1 and seqs[2].status is Status.WAITING
    assert seqs[3].preempted == 0 and seqs[3].status is Status.RUNNING
