"""amaranth.sim unit tests of the systolic array on its own: every mode
(square and row splits), the latency the engine relies on, and the
tag-selected weight switch."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import ArrayConfig
from hw.systolic import SystolicArray

CFG = ArrayConfig(dim=4, block=2, splits=(1, 2), row_splits=(2,), engines=4, acc_rows=16,
                  max_rows=16, max_dim=16, weight_words=64, param_words=8, max_layers=2)


def simulate(mode, tiles, rows):
    """Load ``tiles[p][b]`` (K x S int8) into register ``b`` of each
    sub-array ``p``, then stream ``rows[p]`` = list of (vector, sel). Returns
    the psum rows each port produced, with the cycle they appeared."""
    dut = SystolicArray(CFG)
    k_side, side = CFG.mode_sides(mode)
    ports = list(range(mode[0] * mode[1]))
    seen = {p: [] for p in ports}
    t0 = {}

    async def tb(ctx):
        ctx.set(dut.split, CFG.mode_index(mode))
        await ctx.tick()            # (a new mode takes effect a cycle later)
        for b in range(2):
            for i in reversed(range(k_side)):      # the last row first
                for p in ports:
                    port = dut.port(p)
                    ctx.set(port.w_load, 1)
                    ctx.set(port.w_buf, b)
                    row = list(tiles[p][b][i]) + [0] * (port.signature.lanes - side)
                    ctx.set(port.weights, row)
                await ctx.tick()
        for p in ports:
            ctx.set(dut.port(p).w_load, 0)
        await ctx.tick()            # (a load takes effect a cycle later)
        cycle = 0
        n = max(len(r) for r in rows.values())
        for t in range(n + 3 * CFG.dim + 10):
            for p in ports:
                port = dut.port(p)
                if t < len(rows[p]):
                    vec, sel = rows[p][t]
                    ctx.set(port.act, list(vec) + [0] * (port.signature.lanes - k_side))
                    ctx.set(port.sel, sel)
                    t0.setdefault(p, cycle)
                else:
                    ctx.set(port.act, [0] * port.signature.lanes)
                seen[p].append([ctx.get(port.psum[c]) for c in range(side)])
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return seen, t0


@pytest.mark.parametrize("mode", CFG.modes)
def test_every_mode_latency_and_values(mode):
    rng = np.random.default_rng(mode)
    k_side, side = CFG.mode_sides(mode)
    ports = range(mode[0] * mode[1])
    tiles = {p: [rng.integers(-128, 128, (k_side, side)) for _ in range(2)] for p in ports}
    rows = {p: [(rng.integers(-128, 128, k_side), int(rng.integers(0, 2))) for _ in range(9)]
            for p in ports}
    seen, t0 = simulate(mode, tiles, rows)
    for p in ports:
        lat = SystolicArray.latency(CFG, p, mode)
        for t, (vec, sel) in enumerate(rows[p]):
            expect = (vec.astype(np.int64) @ tiles[p][sel]).tolist()
            assert seen[p][t0[p] + t + lat] == expect, (p, t)
        # nothing arrives early: the cycle before the first row's sums is idle
        assert seen[p][t0[p] + lat - 1] == [0] * side
