# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the dot interaction (hw/interaction.py) against the
golden stage model: a quantized DLRM "dot" stage (host/models.py), its int8
features fed in, its top input's item part (QuantizedStageModel.top_inputs)
out, bit for bit, with random idle cycles and backpressure."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from host.models import (QuantizedStageModel, StageModelConfig, TableSpec, init_params,
                         quantize_stage_model)
from host.movielens import synthetic_queries
from hw.interaction import DotInteraction, item_pairs
from tests.amaranth_streams import run_bounded, stream_get, stream_put


def stage(dense: int, users: int, items: int, dim: int, seed: int) -> QuantizedStageModel:
    tables = tuple([TableSpec(f"u{t}", 50, "user") for t in range(users)]
                   + [TableSpec(f"i{t}", 40, "item") for t in range(items)])
    cfg = StageModelConfig("t", dense, (16, dim) if dense else (), tables, dim, "dot", (8, 1))
    params = init_params(cfg, seed=seed)
    calib = synthetic_queries(cfg, 8, 16, user_bag=3, seed=seed + 100)
    return quantize_stage_model(params, calib, emb_bits=8)


@pytest.mark.parametrize("dense, users, items, dim", [(3, 2, 2, 8), (0, 1, 3, 4),
                                                     (2, 0, 3, 8), (0, 2, 1, 16)])
def test_item_pairs_are_the_golden_models(dense, users, items, dim):
    q = stage(dense, users, items, dim, seed=users * 10 + items)
    cfg = q.config
    queries = synthetic_queries(cfg, 3, 6, user_bag=3, seed=7)
    U = cfg.n_user_features
    nu = cfg.n_user_pairs
    dut = DotInteraction(dim, max_users=U + 1, max_items=items + 1)
    P = item_pairs(U, items)
    want, feats = [], []
    for query in queries:
        u, i = q.int8_features(query)
        _, zi = q.top_inputs(query)
        feats.append((u, i))
        want += [row.tolist() for row in zi]
    assert len(want[0]) == P
    r = random.Random(dense + users + items + dim)
    got = []

    async def source(ctx):
        for k in range(P):
            await stream_put(ctx, dut.params, {"pair": k, "mult": int(q.pair_mult[nu + k]),
                                               "shift": int(q.pair_shift[nu + k])})
        for u, i in feats:
            for j, vec in enumerate(u):
                await stream_put(ctx, dut.i, {"item": 0, "last": int(j == len(u) - 1),
                                              "vec": vec.tolist()}, rng=r, idle=0.3)
            for cand in i:
                for a, vec in enumerate(cand):
                    await stream_put(ctx, dut.i, {"item": 1, "last": int(a == len(cand) - 1),
                                                  "vec": vec.tolist()}, rng=r, idle=0.3)

    async def sink(ctx):
        while len(got) < len(want):
            beat = await stream_get(ctx, dut.o, rng=r, stall=0.3)
            assert beat.n == P
            got.append([int(x) for x in beat.pairs][:P])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-3)
    assert len(got) == len(want), "not every candidate came out"
    assert got == want
    assert len({v for row in want for v in row}) > 3, "degenerate test data"


def test_bad_sizes():
    with pytest.raises(ValueError, match="dim: must be an integer >= 1"):
        DotInteraction(0, 2, 2)
    with pytest.raises(ValueError, match="max_items"):
        DotInteraction(8, 2, 0)


def test_lints_clean(tmp_path):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "dot_interaction.v"
    path.write_text(to_verilog(DotInteraction(8, 3, 2), "dot_interaction"))
    lint(path, "dot_interaction")


def test_no_user_features():
    """Items only (a stage without dense or user features): item pairs alone."""
    from amaranth.back import rtlil
    rtlil.convert(DotInteraction(8, 0, 3))
    with pytest.raises(ValueError, match="make no pair"):
        DotInteraction(8, 0, 1)


def packed_pairs(users, items, mult, shift) -> list[int]:
    """The item part for ``users`` and one candidate's ``items`` (int8
    vectors), from its definition: for item ``a``, its dot products with the
    users, then with the items before it, pair ``k`` requantized with
    ``mult[k]``, ``shift[k]``."""
    from host.numerics import requantize
    z = []
    for a, x in enumerate(items):
        z += [int(np.dot(x, u)) for u in users] + [int(np.dot(x, b)) for b in items[:a]]
    return requantize(np.array(z, dtype=np.int64), 0, mult[:len(z)], shift[:len(z)],
                      False).tolist()


def random_params(P: int, r: random.Random) -> tuple[list[int], list[int]]:
    return [r.randrange(256, 1 << 12) for _ in range(P)], [r.randrange(15, 22) for _ in range(P)]


def vec(r: random.Random, dim: int) -> np.ndarray:
    return np.array([r.randrange(-128, 128) for _ in range(dim)], dtype=np.int64)


def beat(item: bool, last: bool, v: np.ndarray) -> dict:
    return {"item": int(item), "last": int(last), "vec": v.tolist()}


@pytest.mark.parametrize("dim, U, I", [(16, 3, 1), (8, 2, 2)])
def test_one_candidate_a_cycle(dim, U, I):
    """No stalls: N candidates of one item beat each (and a change of user set
    half way) take N + the user beats + the latency cycles, each beat right."""
    dut = DotInteraction(dim, U, I)
    P = dut.max_pairs
    r = random.Random(dim)
    mult, shift = random_params(P, r)
    N = 40
    sets = [[vec(r, dim) for _ in range(U)] for _ in range(2)]
    beats, want = [], []
    for s, users in enumerate(sets):
        beats += [beat(False, j == U - 1, u) for j, u in enumerate(users)]
        for _ in range(N // 2):
            x = vec(r, dim)
            beats.append(beat(True, True, x))
            want.append(packed_pairs(users, [x], mult, shift))
    got, cycles = [], []

    async def tb(ctx):
        for k in range(P):
            await stream_put(ctx, dut.params, {"pair": k, "mult": mult[k], "shift": shift[k]})
        ctx.set(dut.o.ready, 1)
        sent = n = 0
        while len(got) < N and n < 10 * N:
            if sent < len(beats):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, beats[sent])
            else:
                ctx.set(dut.i.valid, 0)
            _, _, ready, valid, out = await ctx.tick().sample(dut.i.ready, dut.o.valid,
                                                              dut.o.payload)
            n += 1
            sent += sent < len(beats) and ready
            if valid:
                assert out.n == U
                got.append([int(x) for x in out.pairs][:U])
        cycles.append(n)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run_until(1e-4)
    assert got == want
    # the output is three registers behind the input
    assert cycles[0] <= len(beats) + 4, f"{cycles[0]} cycles for {N} candidates"


@pytest.mark.parametrize("dim, U, I, seed", [(8, 3, 2, 1), (4, 0, 3, 2), (4, 2, 3, 3)])
def test_back_to_back_with_stalls(dim, U, I, seed):
    """Many candidates in a row at random idle and backpressure (often none,
    often long), the user set (and its size) changing between them: none is
    lost or doubled, each pair right, ``n`` the present pairs."""
    dut = DotInteraction(dim, U, I)
    P = dut.max_pairs
    r = random.Random(seed)
    mult, shift = random_params(P, r)
    beats, want = [], []
    users: list = []
    for q in range(10):
        # (without user features the unit drops user beats)
        nu = r.randrange(0 if q == 0 else 1, max(U, 1) + 1)
        new = [vec(r, dim) for _ in range(nu)]
        beats += [beat(False, j == nu - 1, u) for j, u in enumerate(new)]
        if U:
            users = new
        for _ in range(r.randrange(1, 12)):
            cand = [vec(r, dim) for _ in range(r.randrange(1, I + 1))]
            beats += [beat(True, a == len(cand) - 1, x) for a, x in enumerate(cand)]
            pairs = packed_pairs(users, cand, mult, shift)
            if pairs:
                want.append((len(pairs), pairs + [0] * (P - len(pairs))))
            else:
                want.append((0, [0] * P))
    got = []

    async def source(ctx):
        for k in range(P):
            await stream_put(ctx, dut.params, {"pair": k, "mult": mult[k], "shift": shift[k]})
        for b in beats:
            await stream_put(ctx, dut.i, b, rng=r, idle=r.choice([0, 0.6]))

    async def sink(ctx):
        while len(got) < len(want):
            out = await stream_get(ctx, dut.o, rng=r, stall=r.choice([0, 0.7]))
            got.append((int(out.n), [int(x) for x in out.pairs]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    run_bounded(sim, 1e-4)
    assert len(got) == len(want), "not every candidate came out"
    assert got == want
    assert len(want) > 40
    assert len({v for _, row in want for v in row}) > 10, "degenerate test data"
