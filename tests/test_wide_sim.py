# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the wide matrix-vector unit (hw/wide.py): random
shapes and parameters against host.models.requantize_wide of
host.numerics.wrap_int32(x @ W), bit for bit, with random idle cycles and
backpressure; the user pass and the score head of a quantized stage against
the golden stage model (QuantizedStageModel.user_bias and .scores); bad
dimensions and row lengths; throughput; Verilator lint. The bottom MLP unit
(RowMLP: a chain of them with ReLU) against host.numerics.int8_mlp, its
refused rows marked and the rows after them right."""

import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.sim import Simulator

from host.models import (QuantizedStageModel, StageModelConfig, TableSpec, init_params,
                         quantize_stage_model, requantize_wide)
from host.movielens import synthetic_queries
from host.numerics import QuantLayer, int8_mlp, requantize, wrap_int32
from hw.wide import RowMLP, Status, WideMatVec, WriteKind
from tests.amaranth_streams import stream_get, stream_put

CLOCK = 1e-8


# -- beats ----------------------------------------------------------------------

def chunks_of(x: np.ndarray, lanes: int) -> list[list[int]]:
    """``x`` (1-D int8) in chunks of ``lanes``, the last one zero-padded."""
    n = max(1, -(-len(x) // lanes))
    padded = np.zeros(n * lanes, np.int64)
    padded[:len(x)] = x
    return [padded[c * lanes:(c + 1) * lanes].tolist() for c in range(n)]


def dims_beat(in_dim: int, out_dim: int) -> dict:
    return {"kind": WriteKind.DIMS, "addr": 0,
            "data": {"dims": {"in_dim": in_dim, "out_dim": out_dim}}}


def layer_beats(dut: WideMatVec | RowMLP, weight, bias, mult, shift) -> list[dict]:
    """Writes of a layer: weight words (j, c), then each output's parameters."""
    weight = np.asarray(weight)
    beats = []
    for j in range(weight.shape[1]):
        for c, word in enumerate(chunks_of(weight[:, j], dut.lanes)):
            beats.append({"kind": WriteKind.WEIGHT, "addr": dut.weight_address(j, c),
                          "data": {"weight": word}})
        beats.append({"kind": WriteKind.PARAM, "addr": j,
                      "data": {"param": {"bias": int(bias[j]), "mult": int(mult[j]),
                                         "shift": int(shift[j])}}})
    return beats


def row_beats(x, lanes: int, tag: int, end: int) -> list[dict]:
    ch = chunks_of(np.asarray(x), lanes)
    return [{"x": word, "last": int(c == len(ch) - 1), "end": end, "tag": tag}
            for c, word in enumerate(ch)]


def expected(x, weight, bias, mult, shift, bits, tag, end) -> list[tuple]:
    """The golden outputs of one good row, as (value, j, last, end, tag, status)."""
    acc = wrap_int32(np.asarray(x, np.int64) @ np.asarray(weight, np.int64))
    y = requantize_wide(acc, bias, mult, shift, bits)
    n = len(y)
    return [(int(v), j, int(j == n - 1), end, tag, Status.OK) for j, v in enumerate(y)]


# -- a bounded simulation ----------------------------------------------------------

@dataclass
class Run:
    """What one simulation did: outputs, and the cycle counts seen."""
    got: list = field(default_factory=list)
    finished: set = field(default_factory=set)
    cycle: int = 0
    first_row_cycle: int | None = None
    last_out_cycle: int | None = None


def simulate(dut: WideMatVec, script: list, n_out: int, *, rng: random.Random,
             idle: float = 0.0, stall: float = 0.0, max_cycles: int) -> Run:
    """Feeds ``script`` (("w", beat) writes and ("i", beat) row beats, in
    order; ("drain", n) waits for the first n outputs, since writes apply to
    rows taken after them) and collects ``n_out`` outputs; every testbench
    must end within ``max_cycles``."""
    run = Run()

    async def source(ctx):
        for port, beat in script:
            if port == "drain":
                while len(run.got) < beat and run.cycle < max_cycles:
                    await ctx.tick()
                continue
            if port == "i" and run.first_row_cycle is None:
                run.first_row_cycle = run.cycle
            await stream_put(ctx, getattr(dut, port), beat, rng=rng, idle=idle)
        run.finished.add("source")

    async def sink(ctx):
        while len(run.got) < n_out:
            b = await stream_get(ctx, dut.o, rng=rng, stall=stall)
            run.got.append((int(b.value), int(b.j), int(b.last), int(b.end), int(b.tag),
                            Status(b.status)))
            run.last_out_cycle = run.cycle
        # nothing more may come out
        for _ in range(2 * dut.latency):
            await ctx.tick()
            assert not ctx.get(dut.o.valid), "an output beat too many"
        run.finished.add("sink")

    async def clock(ctx):
        while len(run.finished) < 2 and run.cycle < max_cycles:
            await ctx.tick()
            run.cycle += 1
        run.finished.add("clock")

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(clock)
    sim.run_until(CLOCK * (max_cycles + 10))
    assert run.finished == {"source", "sink", "clock"}, \
        f"the testbench did not finish in {max_cycles} cycles: {sorted(run.finished)} " \
        f"done, {len(run.got)} of {n_out} outputs"
    return run


# -- random shapes against requantize_wide ---------------------------------------------

def random_params(r: np.random.Generator, out: int, in_dim: int, bits: int,
                  first_mode: int = 0):
    """bias, mult, shift per output, a mix of: exact (mult 1, shift 0), scaled
    to about ``bits`` bits (any mult, a shift to match), saturating (biases
    near +-2**31, mult 65535, shift 0) and vanishing (shifts 40 .. 63)."""
    bias = np.zeros(out, np.int64)
    mult = np.ones(out, np.int64)
    shift = np.zeros(out, np.int64)
    amax = in_dim * 128 * 128
    for j in range(out):
        mode = (first_mode + j) % 4
        if mode == 0:
            bias[j] = r.integers(-1000, 1000)
        elif mode == 1:
            bias[j] = r.integers(-amax, amax + 1)
            mult[j] = [1, 65535, int(r.integers(1, 1 << 16))][r.integers(0, 3)]
            need = (2 * amax * int(mult[j])).bit_length() - (bits - 1)
            shift[j] = max(0, need + int(r.integers(-2, 3)))
        elif mode == 2:
            bias[j] = [-(1 << 31), (1 << 31) - 1, -(1 << 31) + 5,
                       (1 << 31) - 7][r.integers(0, 4)]
            mult[j] = 65535 if r.integers(0, 2) else int(r.integers(1, 1 << 16))
            shift[j] = int(r.integers(0, 3))
        else:
            bias[j] = r.integers(-(1 << 31), 1 << 31)
            mult[j] = int(r.integers(1, 1 << 16))
            shift[j] = int(r.integers(40, 64))
    return bias, mult, shift


@pytest.mark.parametrize("lanes, max_in, max_out, bits, shapes, seed", [
    (1, 5, 3, 32, [(5, 3), (1, 1), (3, 2)], 1),
    (3, 10, 4, 20, [(7, 4), (2, 1), (10, 3)], 2),
    (4, 9, 2, 32, [(9, 1), (3, 2), (4, 2)], 3),
    (8, 40, 3, 12, [(37, 3), (5, 1), (16, 2)], 4),
    (5, 23, 1, 32, [(23, 1), (11, 1), (1, 1), (4, 1)], 5),
    (7, 15, 2, 2, [(15, 2), (6, 1), (3, 2)], 6),
    (2, 6, 2, 31, [(6, 2), (1, 1), (5, 1)], 7),
    (6, 20, 2, 8, [(20, 2), (13, 1), (6, 2)], 8),
])
def test_random_shapes(lanes, max_in, max_out, bits, shapes, seed):
    r = np.random.default_rng(seed)
    rng = random.Random(seed)
    dut = WideMatVec(lanes=lanes, max_in=max_in, max_out=max_out, bits=bits, tag_bits=8)
    script, want = [], []
    for k, (in_dim, out_dim) in enumerate(shapes):
        w = r.integers(-128, 128, (in_dim, out_dim))
        bias, mult, shift = random_params(r, out_dim, in_dim, bits, first_mode=k)
        script += [("drain", len(want)), ("w", dims_beat(in_dim, out_dim))]
        script += [("w", b) for b in layer_beats(dut, w, bias, mult, shift)]
        for n in range(4):
            x = r.integers(-128, 128, in_dim)
            if n == 0:      # extremes: the largest accumulators
                x = np.where(w[:, 0] < 0, -128, 127)
            tag, end = int(r.integers(0, 256)), int(n == 3)
            script += [("i", b) for b in row_beats(x, lanes, tag, end)]
            want += expected(x, w, bias, mult, shift, bits, tag, end)
    run = simulate(dut, script, len(want), rng=rng, idle=0.3, stall=0.4,
                   max_cycles=40 * len(script) + 500)
    assert run.got == want
    values = [g[0] for g in want]
    lim = 1 << (bits - 1)
    assert len(set(values)) >= min(5, (1 << bits) - 1), "degenerate test data"
    assert -lim in values or lim - 1 in values, "no saturation exercised"


# -- the golden stage model ------------------------------------------------------------

def stage(score_bits: int, seed: int) -> QuantizedStageModel:
    tables = (TableSpec("u0", 50, "user"), TableSpec("u1", 50, "user"),
              TableSpec("i0", 40, "item"), TableSpec("i1", 40, "item"))
    cfg = StageModelConfig("t", 3, (16, 8), tables, 8, "dot", (6, 1))
    params = init_params(cfg, seed=seed)
    calib = synthetic_queries(cfg, 8, 16, user_bag=3, seed=seed + 100)
    return quantize_stage_model(params, calib, emb_bits=8, score_bits=score_bits)


def penultimate(q: QuantizedStageModel, query) -> tuple[np.ndarray, np.ndarray]:
    """The last top layer's int8 input per candidate, and its int32 bias,
    computed as QuantizedStageModel.accumulators does."""
    u, x = q.top_inputs(query)
    beta = q.user_bias(u)
    for l, layer in enumerate(q.layers[:-1]):
        acc = wrap_int32(np.asarray(x, np.int64) @ layer.weight.astype(np.int64))
        x = requantize(acc, beta if l == 0 else layer.bias, layer.mult, layer.shift,
                       layer.relu)
    return x, (beta if len(q.layers) == 1 else q.layers[-1].bias)


def test_user_pass_is_the_golden_models():
    q = stage(32, seed=3)
    ul = q.user_layer
    assert ul is not None
    rows, out = ul.weight.shape
    lanes = 4
    assert rows % lanes and out > 1
    queries = synthetic_queries(q.config, 6, 2, user_bag=3, seed=11)
    dut = WideMatVec(lanes=lanes, max_in=rows, max_out=out, bits=32, tag_bits=4)
    script = [("w", dims_beat(rows, out))]
    script += [("w", b) for b in layer_beats(dut, ul.weight, ul.bias, ul.mult, ul.shift)]
    want = []
    for n, query in enumerate(queries):
        u, _ = q.top_inputs(query)
        script += [("i", b) for b in row_beats(u, lanes, n, 1)]
        beta = q.user_bias(u)
        want += [(int(v), j, int(j == out - 1), 1, n, Status.OK) for j, v in enumerate(beta)]
    run = simulate(dut, script, len(want), rng=random.Random(1), idle=0.2, stall=0.3,
                   max_cycles=20 * len(script) + 40 * len(want) + 500)
    assert run.got == want
    assert len({g[0] for g in want}) > 5


@pytest.mark.parametrize("score_bits", [32, 10])
def test_score_head_is_the_golden_models(score_bits):
    q = stage(score_bits, seed=5)
    last = q.layers[-1]
    hidden = last.weight.shape[0]
    assert int(last.mult[0]) == 1 and (score_bits == 32) == (int(last.shift[0]) == 0)
    lanes = 4
    queries = synthetic_queries(q.config, 2, 12, user_bag=3, seed=21)
    dut = WideMatVec(lanes=lanes, max_in=hidden, max_out=1, bits=q.score.bits, tag_bits=12)
    want, script, first = [], [], True
    for query in queries:
        x, bias = penultimate(q, query)
        if first:
            script += [("w", dims_beat(hidden, 1))]
            script += [("w", b) for b in layer_beats(dut, last.weight, bias, last.mult,
                                                     last.shift)]
            first = False
        scores = q.scores(query)
        for pos, row in enumerate(x):
            end = int(pos == len(x) - 1)
            script += [("i", b) for b in row_beats(row, lanes, pos, end)]
            want.append((int(scores[pos]), 0, 1, end, pos, Status.OK))
    run = simulate(dut, script, len(want), rng=random.Random(2), idle=0.2, stall=0.3,
                   max_cycles=20 * len(script) + 500)
    assert run.got == want
    assert len({g[0] for g in want}) > 4, "degenerate scores"


# -- errors ------------------------------------------------------------------------

def test_bad_dims_and_lengths_then_good_rows():
    lanes, max_in, max_out = 3, 8, 2
    dut = WideMatVec(lanes=lanes, max_in=max_in, max_out=max_out, bits=32, tag_bits=8)
    r = np.random.default_rng(9)
    w = r.integers(-128, 128, (7, 2))
    bias, mult, shift = [5, -9], [3, 1], [1, 0]
    script = [("w", b) for b in layer_beats(dut, w, bias, mult, shift)]
    # writes past the memories are dropped (PARAM 2, 3 would alias 0, 1)
    junk = {"weight": [-128] * lanes, "param": {"bias": -(1 << 31), "mult": 65535,
                                               "shift": 63}}
    for kind, addr in [(WriteKind.WEIGHT, 6), (WriteKind.WEIGHT, 7), (WriteKind.PARAM, 2),
                       (WriteKind.PARAM, 3), (WriteKind.PARAM, 7)]:
        field = "weight" if kind == WriteKind.WEIGHT else "param"
        script.append(("w", {"kind": kind, "addr": addr, "data": {field: junk[field]}}))
    want = []

    def bad_row(n_chunks, tag, status):
        script.extend(("i", b) for b in row_beats(np.ones(n_chunks * lanes, np.int64),
                                                  lanes, tag, tag & 1))
        want.append((0, 0, 1, tag & 1, tag, status))

    def good_row(tag):
        x = r.integers(-128, 128, 7)
        script.extend(("i", b) for b in row_beats(x, lanes, tag, 0))
        want.extend(expected(x, w, bias, mult, shift, 32, tag, 0))

    bad_row(1, 1, Status.BAD_DIMS)              # never written: 0 x 0
    for in_dim, out_dim in [(0, 1), (max_in + 1, 1), (3, 0), (3, max_out + 1),
                            (65535, 65535)]:
        script.append(("w", dims_beat(in_dim, out_dim)))
        bad_row(1, 2, Status.BAD_DIMS)
        bad_row(4, 3, Status.BAD_DIMS)
    script.append(("w", dims_beat(7, 2)))      # 3 chunks
    good_row(10)
    bad_row(2, 11, Status.BAD_LENGTH)           # too short
    bad_row(4, 12, Status.BAD_LENGTH)           # longer than in_dim
    bad_row(9, 13, Status.BAD_LENGTH)           # longer than the buffer
    good_row(14)
    bad_row(1, 15, Status.BAD_LENGTH)
    good_row(16)
    good_row(17)
    run = simulate(dut, script, len(want), rng=random.Random(3), idle=0.2, stall=0.3,
                   max_cycles=40 * len(script) + 500)
    assert run.got == want


# -- the bottom MLP unit ----------------------------------------------------------------

def relu_layers(r: np.random.Generator, rows: np.ndarray, dims) -> list[QuantLayer]:
    """Random int8 ReLU layers whose outputs for ``rows`` spread over 0 ..
    127: each output's shift scales its accumulators' range to about 8 bits
    (output 0 of the first layer saturates)."""
    layers, x = [], rows
    for in_dim, out_dim in zip(dims, dims[1:]):
        w = r.integers(-128, 128, (in_dim, out_dim)).astype(np.int8)
        acc = wrap_int32(x.astype(np.int64) @ w.astype(np.int64))
        bias = np.round(-acc.mean(0) + r.normal(0, 1, out_dim) * acc.std(0)).astype(np.int64)
        mult = r.integers(1, 1 << 16, out_dim)
        top = (np.abs(acc + bias).max(0) * mult).astype(np.int64)
        shift = np.array([max(0, int(t).bit_length() - 7) for t in top])
        if not layers:
            bias[0] = (1 << 31) - 1
        layer = QuantLayer(w, bias.astype(np.int32), mult.astype(np.uint16),
                           shift.astype(np.uint8), True)
        layers.append(layer)
        x = int8_mlp(x, [layer])
    return layers


def mlp_beats(dut: RowMLP, layers: list[QuantLayer]) -> list[dict]:
    """Each layer's writes (:func:`layer_beats`, then its dimensions) to its unit."""
    return [{"layer": n, "w": b}
            for n, l in enumerate(layers)
            for b in layer_beats(dut, l.weight, l.bias, l.mult, l.shift)
            + [dims_beat(l.in_dim, l.out_dim)]]


@pytest.mark.parametrize("lanes, max_dim, units, dims, bad_at, seed", [
    (4, 16, 2, (3, 16, 4), None, 0),       # ml-*: dense 3, a wide first layer
    (3, 10, 3, (10, 7, 9, 2), 2, 1),       # three layers, a refused row
    (8, 20, 3, (20, 5), 1, 2),             # one layer of a unit built for three
    (5, 12, 2, (12, 12, 1), 0, 3),
])
def test_row_mlp_is_the_golden_mlp(lanes, max_dim, units, dims, bad_at, seed):
    """Rows through ``len(dims) - 1`` layers of the unit, with random idle
    cycles and backpressure, against int8_mlp bit for bit; a row of the
    wrong length (at ``bad_at``) leaves with ``bad`` on its every beat, the
    last with ``last``, and the rows after it are right."""
    r = np.random.default_rng(seed)
    rng = random.Random(seed)
    rows = r.integers(-128, 128, (5, dims[0])).astype(np.int8)
    layers = relu_layers(r, rows, dims)
    dut = RowMLP(lanes=lanes, max_dim=max_dim, layers=units)
    got = []
    done = set()

    async def source(ctx):
        ctx.set(dut.n_layers, len(layers))
        for b in mlp_beats(dut, layers):
            await stream_put(ctx, dut.w, b)
        for n, x in enumerate(rows):
            ch = chunks_of(x, lanes) + ([[1] * lanes] if n == bad_at else [])
            for c, word in enumerate(ch):
                await stream_put(ctx, dut.i, {"x": word, "last": int(c == len(ch) - 1)},
                                 rng=rng, idle=0.3)
        done.add("source")

    async def sink(ctx):
        for _ in rows:
            beats = []
            while not beats or not beats[-1][2]:
                b = await stream_get(ctx, dut.o, rng=rng, stall=0.4)
                beats.append((int(b.value), int(b.j), int(b.last), int(b.bad)))
            got.append(beats)
        done.add("sink")

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(CLOCK * 20_000)
    assert done == {"source", "sink"}, f"did not finish: {sorted(done)}"
    want = int8_mlp(rows, layers)
    for n, beats in enumerate(got):
        if n == bad_at:
            assert all(b[3] for b in beats), beats
        else:
            assert beats == [(int(v), j, int(j == dims[-1] - 1), 0)
                             for j, v in enumerate(want[n])]
    values = {v for n, row in enumerate(want) if n != bad_at for v in row.tolist()}
    assert 0 in values and len(values) > min(4, dims[-1]), "degenerate test data"


def test_row_mlp_bad_parameters():
    for name, bad in [("lanes", 0), ("max_dim", 0), ("layers", 0), ("layers", 17)]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            RowMLP(**{**dict(lanes=4, max_dim=8, layers=2), name: bad})


# -- throughput ------------------------------------------------------------------------

@pytest.mark.parametrize("lanes, in_dim, out_dim", [(4, 10, 1), (8, 8, 1), (3, 7, 3)])
def test_full_rate(lanes, in_dim, out_dim):
    """Without idle cycles or backpressure a row costs out_dim * chunks cycles:
    for the score head (out_dim = 1) a chunk is taken every cycle."""
    r = np.random.default_rng(lanes)
    dut = WideMatVec(lanes=lanes, max_in=in_dim, max_out=out_dim, bits=24, tag_bits=8)
    w = r.integers(-128, 128, (in_dim, out_dim))
    bias, mult, shift = random_params(r, out_dim, in_dim, 24)
    script = [("w", dims_beat(in_dim, out_dim))]
    script += [("w", b) for b in layer_beats(dut, w, bias, mult, shift)]
    want = []
    rows = 60
    for n in range(rows):
        x = r.integers(-128, 128, in_dim)
        script += [("i", b) for b in row_beats(x, lanes, n, int(n == rows - 1))]
        want += expected(x, w, bias, mult, shift, 24, n, int(n == rows - 1))
    run = simulate(dut, script, len(want), rng=random.Random(0), max_cycles=4000)
    assert run.got == want
    steps = rows * out_dim * -(-in_dim // lanes)
    took = run.last_out_cycle - run.first_row_cycle
    print(f"{rows} rows, {steps} steps: {took} cycles, latency {dut.latency}")
    assert took <= steps + dut.latency + 8, (took, steps, dut.latency)


# -- construction and Verilog ---------------------------------------------------------------

def test_bad_parameters():
    ok = dict(lanes=4, max_in=8, max_out=2)
    for name, bad in [("lanes", 0), ("lanes", 65), ("max_in", 0), ("max_out", 0),
                      ("max_out", 1 << 16), ("bits", 1), ("bits", 33), ("tag_bits", 0),
                      ("lanes", True), ("max_in", 2.0)]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            WideMatVec(**{**ok, name: bad})
    with pytest.raises(ValueError, match="^target: "):
        WideMatVec(**ok, target="xilinx")


def test_lints_clean(tmp_path):
    from hw.verilog import to_verilog
    from sim.runner import lint
    for n, kw in enumerate([dict(lanes=8, max_in=100, max_out=3, bits=32, tag_bits=16),
                            dict(lanes=1, max_in=1, max_out=1, bits=2, tag_bits=1)]):
        path = tmp_path / f"wide{n}.v"
        path.write_text(to_verilog(WideMatVec(**kw), "wide_mat_vec"))
        lint(path, "wide_mat_vec")
    path = tmp_path / "row_mlp.v"
    path.write_text(to_verilog(RowMLP(lanes=4, max_dim=16, layers=2), "row_mlp"))
    lint(path, "row_mlp")


def test_ecp5_target_elaborates():
    from amaranth.back import rtlil
    rtlil.convert(WideMatVec(lanes=8, max_in=300, max_out=4, target="ecp5"))
