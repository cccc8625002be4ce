# amaranth: UnusedElaboratable=no
"""amaranth.sim unit tests of the top-k filter's pieces: a cell against a
model of its rule, a chain's ranks and their timing, the two-way merge,
and a short run of the whole filter (the cocotb suite does the volume)."""

import random

import pytest
from amaranth.sim import Simulator

from host.topk import TopKStatus, topk, topk_list
from hw.config import TopKConfig
from hw.topk import (Status, TokenFIFO, TopKCell, TopKChain, TopKFilter, TopKMerge,
                     input_layout, output_layout)
from tests.amaranth_streams import stream_get, stream_put

CFG = TopKConfig(k_max=4, lanes=1, score_bits=6, signed=True, id_bits=5)


def run(dut, *testbenches, cycles=None):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    if cycles is None:
        sim.run()
    else:
        sim.run_until(1e-8 * cycles)


def key(pair):
    score, ident = pair
    return (-score, ident)


def test_status_matches_golden_model():
    assert {s.name: s.value for s in Status} == {s.name: s.value for s in TopKStatus}


def test_rejects_bad_parameters():
    with pytest.raises(TypeError, match="TopKConfig"):
        TopKFilter({"k_max": 4})
    with pytest.raises(ValueError, match="index"):
        TopKCell(CFG, index=CFG.k_max)


def test_golden_model_order_and_status():
    s, i = topk([3, 5, 5, -1, 5], [9, 4, 2, 1, 2], 4)
    assert s.tolist() == [5, 5, 5, 3] and i.tolist() == [2, 2, 4, 9]
    assert topk([1], [1], 3)[0].tolist() == [1]
    assert topk_list([1, 2], [0, 1], 0, 4).status is TopKStatus.BAD_K
    assert topk_list([1, 2], [0, 1], 5, 4).scores.size == 0
    assert topk_list([], [], 2, 4).status is TopKStatus.OK


@pytest.mark.parametrize("index", [0, 2])
def test_cell_against_its_rule(index):
    """Random pairs (few scores, so ties), markers and up-chain tokens through
    one cell, every output compared cycle by cycle with a model of the rule:
    two runs on alternate cycles, the loser out two cycles after a pair
    came, a marker's hand-off three cycles after it came, up_i passed on in
    one cycle otherwise."""
    dut = TopKCell(CFG, index=index)
    rng = random.Random(index)

    async def tb(ctx):
        held = [None, None]             # the model's pair of each run
        want_down, want_up = {}, {}     # cycle -> output the model expects then
        for cycle in range(400):
            item = (rng.randrange(-3, 3), rng.randrange(32)) if rng.random() < 0.8 else None
            mark = rng.random() < 0.15
            run, k, emit = rng.randrange(2), rng.randrange(0, CFG.k_max + 2), rng.random() < 0.8
            up = (rng.random() < 0.5, rng.randrange(2), rng.random() < 0.5,
                  (rng.randrange(-3, 3), rng.randrange(32)))
            ctx.set(dut.down_i, {"valid": item is not None,
                                 "pair": {"score": item[0] if item else 0,
                                          "id": item[1] if item else 0},
                                 "mark": mark, "run": run, "k": k, "emit": emit})
            ctx.set(dut.up_i, {"valid": up[0], "run": up[1], "entry": {
                "end": up[2], "pair": {"score": up[3][0], "id": up[3][1]}}})
            h = held[cycle % 2]
            if item is None:
                top, loser = h, None
            elif h is None or key(item) < key(h):
                top, loser = item, h
            else:
                top, loser = h, item
            rank = top is not None and index < k
            want_down[cycle + 2] = (loser, mark, run, k, emit and rank) if mark else (loser,)
            if mark and emit:
                want_up[cycle + 3] = (True, run, not rank, top if rank else None)
            want_up.setdefault(cycle + 1, (True, up[1], up[2], up[3]) if up[0] else (False,))
            held[cycle % 2] = None if mark else top
            await ctx.tick()
            seen = cycle + 1
            down = ctx.get(dut.down_o)
            if seen in want_down:
                want = want_down.pop(seen)
                assert ((down.pair.score, down.pair.id) if down.valid else None) == want[0]
                if want[1:]:
                    assert (down.mark, down.run, down.k, down.emit) == want[1:]
                else:
                    assert not down.mark
            upo = ctx.get(dut.up_o)
            want = want_up.pop(seen, (False,))
            assert upo.valid == want[0]
            if want[0]:
                assert (upo.run, upo.entry.end) == want[1:3]
                if want[3] is not None:
                    assert (upo.entry.pair.score, upo.entry.pair.id) == want[3]

    run(dut, tb)


def test_chain_runs_ranks_and_timing_back_to_back():
    """Lists back to back with the least gap the filter allows between their
    markers (3 r + 2 cycles); each list closed by markers on two consecutive
    cycles (runs 0 and 1). Rank q of a run surfaces 3 q + 3 cycles after its
    marker, the end token after its last rank (from the tail stage when all
    k_max cells handed off)."""
    dut = TopKChain(CFG)
    rng = random.Random(3)
    lists = []
    for n, k in [(7, 4), (0, 2), (2, 4), (19, 1), (3, 0), (9, 4), (1, 3), (12, 3),
                 (16, 4), (5, 4)]:
        lists.append(([(rng.randrange(-4, 4), rng.randrange(32)) for _ in range(n)], k))
    seen = []                                   # (cycle, run, end, pair)
    runs = []                                   # per list: cycle of each run's marker, pairs

    async def tb(ctx):
        cycle = 0
        free_at = 0                             # earliest cycle for the next markers

        async def step(item, mark=0, run_=0, k=0):
            nonlocal cycle
            ctx.set(dut.i, {"valid": item is not None,
                            "pair": {"score": item[0] if item else 0, "id": item[1] if item else 0},
                            "mark": mark, "run": run_, "k": k, "emit": 1})
            await ctx.tick()
            cycle += 1
            o = ctx.get(dut.o)
            if o.valid:
                seen.append((cycle, o.run, o.entry.end,
                             (o.entry.pair.score, o.entry.pair.id)))

        for pairs, k in lists:
            parts = {0: [], 1: []}
            body, tail = pairs[:-2], pairs[-2:]
            for p in body:
                parts[cycle % 2].append(p)
                await step(p)
            while cycle < free_at:              # only markers wait
                await step(None)
            tail = [None] * (2 - len(tail)) + tail
            marks = {}
            for r, p in enumerate(tail):        # the last two tokens carry the markers
                marks[r] = (cycle, parts[cycle % 2])
                if p is not None:
                    parts[cycle % 2].append(p)
                await step(p, 1, r, k)
            runs.append((marks, k))
            r_max = max(min(k, len(part), CFG.k_max) for part in parts.values())
            free_at = marks[0][0] + 3 * r_max + 2
        for _ in range(6 * CFG.k_max):
            await step(None)

    run(dut, tb)
    for marks, k in runs:
        for r, (t, part) in marks.items():
            s, i = topk([p[0] for p in part], [p[1] for p in part], min(k, CFG.k_max))
            want = [(t + 3 * q + 3, r, 0, (int(a), int(b))) for q, (a, b) in enumerate(zip(s, i))]
            got = [e for e in seen if e[1] == r][:len(want) + 1]
            for e in got:
                seen.remove(e)
            assert got[:-1] == want
            assert got[-1][:3] == (t + 3 * len(want) + 3, r, 1)
    assert not seen


@pytest.mark.parametrize("depth", [5, 40])
def test_token_fifo_keeps_order_and_capacity(depth):
    """Random writes (while w_rdy) and reads: every entry comes out once, in
    order, and the FIFO takes depth (rounded up to banks) + 1 entries."""
    dut = TokenFIFO(width=12, depth=depth)
    rng = random.Random(depth)
    sent, got = [], []
    full = []

    async def tb(ctx):
        for cycle in range(1500):
            full.append(not ctx.get(dut.w_rdy))
            burst = cycle < 700 and (cycle // 150) % 2 == 0    # fill up, then drain
            w = ctx.get(dut.w_rdy) and rng.random() < (0.9 if burst else 0.3)
            value = rng.randrange(1 << 12)
            ctx.set(dut.w_en, w)
            ctx.set(dut.w_data, value)
            r = rng.random() < (0.1 if burst else 0.8)
            ctx.set(dut.r_en, r)
            if r and ctx.get(dut.r_rdy):
                got.append(ctx.get(dut.r_data))
            if w:
                sent.append(value)
            await ctx.tick()
            assert len(sent) - len(got) <= dut.depth + 1
        ctx.set(dut.w_en, 0)
        while len(got) < len(sent):
            ctx.set(dut.r_en, 1)
            if ctx.get(dut.r_rdy):
                got.append(ctx.get(dut.r_data))
            await ctx.tick()

    run(dut, tb)
    assert got == sent
    assert any(full)
    assert dut.depth == -(-depth // TokenFIFO.BANK) * TokenFIFO.BANK


@pytest.mark.parametrize("half_rate", [False, True])
def test_merge_interleaves_two_sorted_runs(half_rate):
    dut = TopKMerge(CFG, half_rate=half_rate)
    rng = random.Random(4)
    runs = {"a": [], "b": []}
    expect = []
    for _ in range(20):
        lists = {}
        for side in "ab":
            n = rng.randrange(0, 5)
            pairs = [(rng.randrange(-3, 3), rng.randrange(32)) for _ in range(n)]
            lists[side] = sorted(pairs, key=key)
            # end tokens carry arbitrary pairs
            runs[side] += [(0, p) for p in lists[side]] + [(1, (rng.randrange(-3, 3), rng.randrange(32)))]
        expect += [(0, p) for p in sorted(lists["a"] + lists["b"], key=key)] + [(1, (0, 0))]
    got = []

    def put(side):
        async def tb(ctx):
            for end, (score, ident) in runs[side]:
                await stream_put(ctx, getattr(dut, side),
                                 {"end": end, "pair": {"score": score, "id": ident}},
                                 rng=rng, idle=0.3)
        return tb

    async def get(ctx):
        for _ in expect:
            e = await stream_get(ctx, dut.o, rng=rng, stall=0.3)
            got.append((e.end, (e.pair.score, e.pair.id) if not e.end else (0, 0)))

    run(dut, put("a"), put("b"), get)
    assert got == expect


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_filter_short_run(lanes):
    """Random short lists (ties, duplicates, bad k, empty lists) with idle
    cycles and backpressure, against the golden model."""
    cfg = TopKConfig(k_max=4, lanes=lanes, score_bits=6, signed=bool(lanes & 1), id_bits=5)
    dut = TopKFilter(cfg)
    rng = random.Random(lanes)
    lo = -4 if cfg.signed else 0
    lists = []
    for _ in range(10):
        n = rng.randrange(0, 3 * cfg.k_max)
        k = rng.choice([0, 1, 2, 3, 4, 4, 5, 15])
        lists.append(([rng.randrange(lo, lo + 8) for _ in range(n)],
                      [rng.randrange(32) for _ in range(n)], k))
    got = []

    async def produce(ctx):
        for scores, ids, k in lists:
            pairs = list(zip(scores, ids))
            while True:
                beat, mask = [], 0
                for j in range(lanes):
                    if pairs and rng.random() < 0.7:
                        mask |= 1 << j
                        score, ident = pairs.pop()
                        beat.append({"score": score, "id": ident})
                    else:
                        beat.append({"score": 0, "id": 0})
                last = not pairs and rng.random() < 0.7
                await stream_put(ctx, dut.i, {"pairs": beat, "valid": mask, "last": last,
                                              "k": k if last else rng.randrange(16)},
                                 rng=rng, idle=0.2)
                if last:
                    break

    async def consume(ctx):
        for _ in lists:
            beats = []
            while True:
                b = await stream_get(ctx, dut.o, rng=rng, stall=0.2)
                beats.append(b)
                if b.last:
                    break
            got.append(beats)

    run(dut, produce, consume)
    for (scores, ids, k), beats in zip(lists, got):
        want = topk_list(scores, ids, k, cfg.k_max)
        *pairs, trailer = beats
        assert [(b.score, b.id) for b in pairs] == list(zip(want.scores.tolist(),
                                                             want.ids.tolist()))
        assert [b.rank for b in pairs] == list(range(len(pairs)))
        assert trailer.status == Status(want.status.value)
        assert trailer.rank == len(pairs)


def test_layouts_fit_the_config():
    cfg = TopKConfig(k_max=7, lanes=2, score_bits=9, signed=False, id_bits=3)
    assert input_layout(cfg)["k"].shape.width == 4          # 0..7 and an illegal 8..15
    assert output_layout(cfg)["rank"].shape.width == 3      # a count up to k_max
