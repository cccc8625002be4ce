# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the survivors unit (hw/survivors.py): random queries
recorded on their way into stage 1 while earlier queries' top-k lists
(host/topk.py on random scores; also empty lists, BAD_K trailers, too long
lists and positions past the buffer) come back, two or three queries in
flight, with random idle cycles and backpressure on every stream; every
candidate passed through, every survivor (pos, ids, left) and every status
beat checked. Plus the two-halves bound on how far stage 1 runs ahead, bad
parameters and Verilator lint."""

import random

import pytest
from amaranth.sim import Simulator

from host.topk import topk
from hw.config import Config
from hw.survivors import SurvivorStatus, Survivors
from hw.topk import Status as TopKStatus
from tests.amaranth_streams import run_bounded, stream_get, stream_put

CFG = Config.preset("tiny")         # k_max 8, id_bits 8
K_MAX = CFG.topk.k_max
PERIOD = 1e-8


def test_rejects_bad_parameters():
    with pytest.raises(TypeError, match="Config"):
        Survivors(CFG.topk, max_items=2, max_candidates=16)
    with pytest.raises(ValueError, match="max_items: .* not 0"):
        Survivors(CFG, max_items=0, max_candidates=16)
    with pytest.raises(ValueError, match="max_candidates: .* not 257"):
        Survivors(CFG, max_items=2, max_candidates=257)   # positions are 8 bits
    with pytest.raises(ValueError, match="max_candidates"):
        Survivors(CFG, max_items=2, max_candidates=True)


def _query(r, n_pos, items, kind):
    """A query's candidates and the top-k list stage 1's filter would give.

    Returns ``(cands, pairs, trailer_status, want_status)``; ``cands`` are
    ``(pos, ids)``, ``pairs`` ``(score, id)`` best first."""
    n = r.randint(1, min(n_pos, 20))
    if r.random() < 0.5:
        positions = r.sample(range(n), n)            # the stage's own numbering
    else:
        positions = r.sample(range(n_pos), n)        # anywhere in the buffer
    if kind == "bad_pos":
        positions[r.randrange(n)] = r.randrange(n_pos, 1 << CFG.topk.id_bits)
    cands = [(p, [r.getrandbits(32) for _ in range(items)]) for p in positions]
    scores = [r.randrange(-128, 128) for _ in range(n)]
    k = r.randint(1, K_MAX)
    if kind in ("ok", "bad_pos"):
        s, i = topk(scores, positions, k)
        pairs = list(zip(s.tolist(), i.tolist()))
        want = SurvivorStatus.OK if kind == "ok" else SurvivorStatus.BAD_POS
        return cands, pairs, TopKStatus.OK, want
    if kind == "empty":
        return cands, [], TopKStatus.OK, SurvivorStatus.EMPTY
    if kind == "bad_k":
        return cands, [], TopKStatus.BAD_K, SurvivorStatus.BAD_K
    assert kind == "overflow"   # more pairs than a filter can send
    pairs = [(0, positions[r.randrange(n)]) for _ in range(K_MAX + 1 + r.randrange(3))]
    return cands, pairs, TopKStatus.OK, SurvivorStatus.OVERFLOW


def _cand(pos, ids, left):
    return {"pos": pos, "ids": ids, "left": left}


def hold_checker(stream, finished, done, name):
    """A testbench that checks the stream rules at ``stream``'s producer (a
    beat offered and not taken stays, unchanged, until taken) until
    ``finished()``, then appends ``name`` to ``done``."""
    async def check(ctx):
        waiting = None
        while not finished():
            _, _, valid, ready, payload = await ctx.tick().sample(
                stream.valid, stream.ready, stream.payload.as_value())
            if waiting is not None:
                assert valid and payload == waiting, "a beat changed or left before taken"
            waiting = payload if valid and not ready else None
        done.append(name)
    return check


def _simulate(dut, processes, cycles):
    """Run for ``cycles`` at most (the caller checks that its processes ended)."""
    sim = Simulator(dut)
    sim.add_clock(PERIOD)
    for p in processes:
        sim.add_testbench(p)
    run_bounded(sim, PERIOD * cycles)


@pytest.mark.parametrize("max_candidates, items, seed", [(24, 2, 0), (32, 1, 1), (256, 3, 2),
                                                         (5, 2, 3)])
def test_survivors_are_the_recorded_candidates(max_candidates, items, seed):
    r = random.Random(seed)
    dut = Survivors(CFG, max_items=items, max_candidates=max_candidates)
    kinds = ["ok"] * 6 + ["empty", "bad_k", "overflow"]
    if max_candidates < 1 << CFG.topk.id_bits:
        kinds.append("bad_pos")
    queries = [_query(r, max_candidates, items, r.choice(kinds)) for _ in range(30)]
    for kind in ("empty", "bad_k"):             # at least one of each
        queries.insert(r.randrange(len(queries)), _query(r, max_candidates, items, kind))

    passed = []         # the candidates stage 1 got (cand_o), in order
    recorded = [0]      # queries whose last candidate passed
    statuses = []       # err beats
    survivors = []      # o beats
    lead = [0]          # most queries recorded ahead of their status
    done = []

    async def stage1_candidates(ctx):
        for cands, *_ in queries:
            for j, (pos, ids) in enumerate(cands):
                await stream_put(ctx, dut.cand, _cand(pos, ids, len(cands) - 1 - j),
                                 rng=r, idle=0.3)
            for _ in range(r.choice([0, 0, 0, 3, 20])):
                await ctx.tick()
        done.append("cand")

    async def stage1(ctx):
        for cands, *_ in queries:
            for j, (pos, ids) in enumerate(cands):
                b = await stream_get(ctx, dut.cand_o, rng=r, stall=0.3)
                passed.append((b.pos, list(b.ids), b.left))
            recorded[0] += 1
            lead[0] = max(lead[0], recorded[0] - len(statuses))
        done.append("cand_o")

    async def stage1_filter(ctx):
        for n, (_, pairs, trailer, _) in enumerate(queries):
            # a real filter's list follows the query's last candidate; sometimes
            # send it early (the unit then waits for the recording to end)
            if r.random() < 0.8:
                while recorded[0] <= n:
                    await ctx.tick()
            for j, (score, pid) in enumerate(pairs):
                await stream_put(ctx, dut.topk, {"score": score, "id": pid,
                                                 "rank": min(j, K_MAX - 1), "last": 0,
                                                 "status": TopKStatus.OK}, rng=r, idle=0.3)
            await stream_put(ctx, dut.topk, {"score": 0, "id": 0, "last": 1, "status": trailer,
                                             "rank": min(len(pairs), K_MAX)}, rng=r, idle=0.3)
        done.append("topk")

    want_o = []
    for cands, pairs, _, want in queries:
        if want == SurvivorStatus.OK:
            ids_at = dict(cands)
            want_o += [(pid, ids_at[pid], len(pairs) - 1 - j)
                       for j, (_, pid) in enumerate(pairs)]

    async def slow(ctx):
        # now and then a long stall: the unit's outputs wait while it has more
        if r.random() < 0.2:
            for _ in range(r.randint(5, 40)):
                await ctx.tick()

    async def stage2(ctx):
        while len(survivors) < len(want_o):
            await slow(ctx)
            b = await stream_get(ctx, dut.o, rng=r, stall=0.4)
            survivors.append((b.pos, list(b.ids), b.left))
        done.append("o")

    async def top(ctx):
        while len(statuses) < len(queries):
            await slow(ctx)
            b = await stream_get(ctx, dut.err, rng=r, stall=0.4)
            statuses.append((b.status, b.count))
        done.append("err")

    def finished():
        return {"cand", "cand_o", "err", "o", "topk"} <= set(done)
    _simulate(dut, [stage1_candidates, stage1, stage1_filter, stage2, top,
                    hold_checker(dut.o, finished, done, "o rules"),
                    hold_checker(dut.err, finished, done, "err rules")], 20_000)
    assert sorted(done) == ["cand", "cand_o", "err", "err rules", "o", "o rules", "topk"], \
        f"hung: only {done}"

    assert passed == [(pos, ids, len(c) - 1 - j) for c, *_ in queries
                      for j, (pos, ids) in enumerate(c)]
    assert statuses == [(want, len(pairs) if want == SurvivorStatus.OK else 0)
                        for _, pairs, _, want in queries]
    assert survivors == want_o
    assert lead[0] >= 2, "stage 1 never ran a query ahead"


def test_stage1_runs_one_query_ahead():
    """Two queries record at full rate with no list back yet; the third waits
    until the first query's survivors have left, then goes on."""
    r = random.Random(7)
    dut = Survivors(CFG, max_items=2, max_candidates=16)
    qa = [(p, [r.getrandbits(32), r.getrandbits(32)]) for p in (3, 0, 7)]
    qb = [(p, [r.getrandbits(32), r.getrandbits(32)]) for p in (1, 2)]
    qc = [(5, [r.getrandbits(32), r.getrandbits(32)])]
    lists = [[7, 3], [2], [5]]          # each query's survivors, best first
    release = [0]                       # lists the filter may send
    out, stat, done = [], [], []

    async def stage1_candidates(ctx):
        ctx.set(dut.cand_o.ready, 1)
        for q in (qa, qb):
            for j, (pos, ids) in enumerate(q):
                ctx.set(dut.cand.payload, _cand(pos, ids, len(q) - 1 - j))
                ctx.set(dut.cand.valid, 1)
                assert ctx.get(dut.cand.ready), "recording stalled with a free half"
                await ctx.tick()
        ctx.set(dut.cand.payload, _cand(*qc[0], 0))
        for _ in range(30):
            assert not ctx.get(dut.cand.ready), "stage 1 ran two queries ahead"
            await ctx.tick()
        release[0] = 1
        await ctx.tick().until(dut.cand.ready)
        assert len(out) == 2, "recorded into a half before its survivors had left"
        ctx.set(dut.cand.valid, 0)
        release[0] = 3
        done.append("cand")

    async def stage1_filter(ctx):
        for n, ids in enumerate(lists):
            while release[0] <= n:
                await ctx.tick()
            for j, pid in enumerate(ids):
                await stream_put(ctx, dut.topk, {"id": pid, "rank": j, "status": 0})
            await stream_put(ctx, dut.topk, {"last": 1, "rank": len(ids), "status": 0})
        done.append("topk")

    async def stage2(ctx):
        while len(out) < 4:
            b = await stream_get(ctx, dut.o)
            out.append((b.pos, list(b.ids), b.left))
        done.append("o")

    async def top(ctx):
        while len(stat) < 3:
            b = await stream_get(ctx, dut.err)
            stat.append((b.status, b.count))
        done.append("err")

    _simulate(dut, [stage1_candidates, stage1_filter, stage2, top], 300)
    assert sorted(done) == ["cand", "err", "o", "topk"], f"hung: only {done}"
    ids = dict(qa + qb + qc)
    assert out == [(7, ids[7], 1), (3, ids[3], 0), (2, ids[2], 0), (5, ids[5], 0)]
    assert stat == [(SurvivorStatus.OK, 2), (SurvivorStatus.OK, 1), (SurvivorStatus.OK, 1)]


@pytest.mark.parametrize("items, max_candidates", [(3, 24), (1, 256)])
def test_lints_clean(tmp_path, items, max_candidates):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "survivors.v"
    path.write_text(to_verilog(Survivors(CFG, max_items=items, max_candidates=max_candidates),
                               "survivors"))
    lint(path, "survivors")
