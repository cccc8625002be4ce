"""cocotb tests of the MLP cluster (array + engines) against the golden model.

Configuration (JSON through ``RECACCEL_TB_CONFIG``, see :mod:`sim.runner`):

``config``
    The :class:`hw.config.Config` as a dict (the design was built from it).
``cases``
    Random MLPs per engine per split mode.
``max_dim``, ``max_layers``
    Bounds of the random shapes.
``seed``, ``idle``, ``backpressure``
    Randomness and the probability of an idle cycle / a stalled ready.
``report``
    Optional path: the test writes the number of layers checked there.
"""

from __future__ import annotations

import json
import random

import cocotb
import numpy as np
from cocotb.triggers import with_timeout

from host.engine_driver import EngineDriver
from host.mlp_program import EngineTarget, compile_mlp
from host.numerics import QuantLayer, int8_mlp
from hw.config import Config
from hw.mlp_isa import Opcode, Status
from sim.runner import read_tb_config
from sim.streams import StreamSink, StreamSource, random_pauses, reset, start_clock


class StreamPipe:
    """An :class:`~host.engine_driver.EnginePipe` over cocotb stream models."""

    def __init__(self, source: StreamSource, sink: StreamSink):
        self.source, self.sink = source, sink

    async def send(self, beats):
        for b in beats:
            self.source.send_nowait(b)

    async def recv(self):
        return await self.sink.recv()


class ClusterBench:
    def __init__(self, dut, tb: dict):
        self.dut = dut
        self.tb = tb
        self.config = Config.from_dict(tb["config"])
        self.array = self.config.array
        self.clock = start_clock(dut, 10)
        seed = tb["seed"]
        self.pipes = []
        for e in range(self.array.engines):
            src = StreamSource(dut, f"cmd_{e}", dut.clk, reset=dut.rst,
                               idle=random_pauses(random.Random(seed * 31 + e), tb["idle"]))
            snk = StreamSink(dut, f"resp_{e}", dut.clk, reset=dut.rst,
                             backpressure=random_pauses(random.Random(seed * 37 + e),
                                                        tb["backpressure"]))
            self.pipes.append(StreamPipe(src, snk))

    async def reset(self):
        await reset(self.dut, self.dut.clk, 3)

    def driver(self, engine, split):
        return EngineDriver(self.pipes[engine], EngineTarget(self.array, engine, split))


def random_layer(rng: np.random.Generator, i: int, o: int, relu: bool) -> QuantLayer:
    """A layer whose outputs spread over the whole int8 range, saturation included."""
    w = rng.integers(-128, 128, (i, o)).astype(np.int8)
    # Accumulators have a spread of about 128*74*sqrt(i); aim the requantized
    # values at a spread of ~64 so that rounding, ReLU and saturation all occur.
    spread = 128 * 74 * np.sqrt(i)
    mult = rng.integers(1 << 14, 1 << 16, o)
    shift = np.clip(np.round(np.log2(mult * spread / 64)), 0, 63).astype(np.int64)
    shift = shift + rng.integers(-2, 3, o)
    bias = rng.integers(-int(spread), int(spread) + 1, o)
    return QuantLayer(w, bias, mult, np.clip(shift, 0, 63), relu)


def random_mlp(rng, max_dim, max_layers):
    n = int(rng.integers(1, max_layers + 1))
    dims = [int(rng.integers(1, max_dim + 1)) for _ in range(n + 1)]
    return [random_layer(rng, dims[l], dims[l + 1], bool(rng.integers(0, 2)))
            for l in range(n)]


async def check_random_mlps(bench: ClusterBench, engine: int, split: int,
                            rng: np.random.Generator, cases: int) -> int:
    drv = bench.driver(engine, split)
    tb = bench.tb
    layers_checked = 0
    for case in range(cases):
        layers = random_mlp(rng, tb["max_dim"], tb["max_layers"])
        program = compile_mlp(layers, drv.target)
        # Every other case overlaps: up to three runs in alternating halves
        # of the buffers, each taken while the one before computes or sends.
        overlap = case % 2 == 1
        half = bench.array.act_words(engine) // 2
        per_run = program.max_rows_per_run(half if overlap else None)
        if per_run == 0:
            overlap, per_run = False, program.max_rows_per_run()
        most = min(per_run * (3 if overlap else 1), tb["max_rows"])
        rows = int(rng.integers(1, most + 1))
        x = rng.integers(-128, 128, (rows, layers[0].in_dim)).astype(np.int8)
        await drv.load(program)
        y, _ = await drv.run(program, x, overlap=overlap)
        ref = int8_mlp(x, layers)
        shapes = [(l.in_dim, l.out_dim) for l in layers]
        assert np.array_equal(y, ref), (
            f"engine {engine} split {split} case {case} (overlap {overlap}): shapes {shapes}, "
            f"rows {rows}: {int(np.sum(y != ref))} of {y.size} outputs differ")
        layers_checked += len(layers)
    return layers_checked


@cocotb.test(timeout_time=20, timeout_unit="sec")
async def test_random_mlps_every_split(dut):
    """Random MLPs on every engine, engines side by side, in every mode."""
    tb = read_tb_config()
    bench = ClusterBench(dut, tb)
    await bench.reset()
    rng = np.random.default_rng(tb["seed"])
    total = 0
    for split in bench.array.modes:
        await bench.driver(0, split).set_split(split)
        assert int(dut.split.value) == bench.array.mode_index(split)
        engines = [e for e in range(bench.array.engines) if e < split[0] * split[1]]
        tasks = [cocotb.start_soon(check_random_mlps(
                     bench, e, split, np.random.default_rng(rng.integers(1 << 32)),
                     tb["cases"])) for e in engines]
        for t in tasks:
            total += await t
    if tb.get("report"):
        with open(tb["report"], "w") as f:
            json.dump({"layers_checked": total}, f)
    assert total > 0


@cocotb.test(timeout_time=5, timeout_unit="sec")
async def test_bad_commands(dut):
    """Every malformed command gets its error status; the engine then still runs."""
    tb = read_tb_config()
    bench = ClusterBench(dut, tb)
    await bench.reset()
    cfg = bench.array
    drv = bench.driver(0, 1)
    t = drv.target
    lay = t.cmd_layout
    cases = [
        # (raw command, expected status)
        # opcodes with no name (0 and 7), set through the field's offset
        (0 << lay["op"].offset, Status.BAD_OPCODE),
        (7 << lay["op"].offset, Status.BAD_OPCODE),
        (t.pack(Opcode.WRITE_WEIGHTS, weights={"addr": cfg.weight_words, "data": [0] * t.lanes}),
         Status.BAD_ADDRESS),
        (t.pack(Opcode.WRITE_PARAM, param={"addr": cfg.param_words, "lane": 0, "bias": 0,
                                           "mult": 1, "shift": 0}), Status.BAD_ADDRESS),
        (t.pack(Opcode.WRITE_PARAM, param={"addr": 0, "lane": t.lanes, "bias": 0,
                                           "mult": 1, "shift": 0}), Status.BAD_ADDRESS),
        (t.pack(Opcode.WRITE_ACT, act={"buf": 0, "addr": cfg.act_words(0),
                                       "data": [0] * t.lanes}), Status.BAD_ADDRESS),
        (t.pack(Opcode.SET_LAYER, layer={"index": cfg.max_layers, "in_dim": 1, "out_dim": 1,
                                         "w_base": 0, "p_base": 0, "relu": 0}),
         Status.BAD_ADDRESS),
        (t.pack(Opcode.RUN, run={"layers": 1, "rows": 0}), Status.BAD_RUN),
        (t.pack(Opcode.RUN, run={"layers": 1, "rows": cfg.max_rows + 1}), Status.BAD_RUN),
        (t.pack(Opcode.RUN, run={"layers": 0, "rows": 1}), Status.BAD_RUN),
        (t.pack(Opcode.RUN, run={"layers": cfg.max_layers + 1, "rows": 1}), Status.BAD_RUN),
        (t.pack(Opcode.SET_SPLIT, split={"index": len(cfg.modes)}), Status.BAD_SPLIT),
    ]
    bad_layers = [
        # zero, too wide, chained wrongly, weights or params beyond memory
        [{"in_dim": 0, "out_dim": 3}],
        [{"in_dim": cfg.max_dim + 1, "out_dim": 3}],
        [{"in_dim": 3, "out_dim": 4}, {"in_dim": 5, "out_dim": 2}],
        [{"in_dim": cfg.max_dim, "out_dim": cfg.max_dim, "w_base": cfg.weight_words - 1}],
        [{"in_dim": 3, "out_dim": 3, "p_base": cfg.param_words}],
    ]
    for raw, status in cases:
        await drv.pipe.send([raw])
        got, info = await drv.expect_status()
        assert got == status, f"command {raw:#x}: expected {status}, got {got}"
    for descs in bad_layers:
        beats = []
        for i, d in enumerate(descs):
            d = {"w_base": 0, "p_base": 0, "relu": 0, **d, "index": i}
            beats.append(t.pack(Opcode.SET_LAYER, layer=d))
        await drv.pipe.send(beats + [t.pack(Opcode.RUN, run={"layers": len(descs), "rows": 1})])
        got, info = await drv.expect_status()
        assert got == Status.BAD_LAYER and info == len(descs) - 1, (descs, got, info)
    # a RUN whose words run past the buffers from its base
    await drv.pipe.send([
        t.pack(Opcode.SET_LAYER, layer={"index": 0, "in_dim": 3, "out_dim": 3, "w_base": 0,
                                        "p_base": 0, "relu": 0}),
        t.pack(Opcode.RUN, run={"layers": 1, "rows": 2, "base": cfg.act_words(0) - 1})])
    assert await drv.expect_status() == (Status.BAD_LAYER, 0)
    if cfg.engines > 1:
        # Engine 1 has no sub-array while the array is whole, and may not split it.
        other = bench.driver(1, cfg.splits[-1])
        await other.pipe.send([other.target.pack(Opcode.RUN, run={"layers": 1, "rows": 1})])
        assert (await other.expect_status())[0] == Status.NOT_AVAILABLE
        await other.pipe.send([other.target.pack(Opcode.SET_SPLIT, split={"index": 0})])
        assert (await other.expect_status())[0] == Status.NOT_AVAILABLE
    # Still serving.
    rng = np.random.default_rng(tb["seed"])
    assert await check_random_mlps(bench, 0, 1, rng, 2) > 0
