"""amaranth.sim test of the pooled-sum requantizer (hw/requant.py) against
host.embedding.requantize_pooled, with random stalls."""

import random

import numpy as np
from amaranth.sim import Simulator

from host.embedding import requantize_pooled
from hw.config import Config
from hw.embedding import Status
from hw.requant import PooledRequant
from tests.amaranth_streams import stream_get, stream_put

CFG = Config.preset("tiny").embedding


def test_against_requantize_pooled():
    rng = np.random.default_rng(3)
    r = random.Random(3)
    lim = 1 << (CFG.acc_bits - 1)
    cases = []
    for n in range(120):
        scale = int(rng.integers(0, CFG.acc_bits))           # magnitudes of every size
        pooled = rng.integers(-(1 << scale), 1 << scale, CFG.max_dim)
        if n % 17 == 0:
            pooled[:2] = [lim - 1, -lim]                         # the extremes
        mult = int(rng.integers(1, 1 << 16))
        shift = int(rng.integers(0, 64))
        status = Status.BAD_ID if n % 13 == 0 else Status.OK
        if status != Status.OK:
            pooled[:] = 0
        cases.append((status, pooled, mult, shift))
    want = [(s, (requantize_pooled(p, m, sh) if s == Status.OK
                 else np.zeros(CFG.max_dim, np.int8)).tolist()) for s, p, m, sh in cases]
    dut = PooledRequant(CFG)
    got = []

    async def source(ctx):
        for s, p, m, sh in cases:
            await stream_put(ctx, dut.i, {"status": s, "pooled": [int(v) for v in p],
                                          "mult": m, "shift": sh}, rng=r, idle=0.3)

    async def sink(ctx):
        for _ in cases:
            beat = await stream_get(ctx, dut.o, rng=r, stall=0.3)
            got.append((beat.status, [int(v) for v in beat.vec]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-4)
    assert len(got) == len(cases)
    assert got == want
    flat = [v for _, vec in want for v in vec]
    assert -128 in flat and 127 in flat and len(set(flat)) > 50   # saturation and range hit


def test_lints_clean(tmp_path):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "pooled_requant.v"
    path.write_text(to_verilog(PooledRequant(CFG), "pooled_requant"))
    lint(path, "pooled_requant")
