"""amaranth.sim: a short MLP through the cluster, against the golden model,
with random idle cycles and backpressure (the cocotb suite does the volume)."""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Value
from amaranth.lib import wiring
from amaranth.sim import Simulator

from host.mlp_program import EngineTarget, compile_mlp
from host.numerics import QuantLayer, int8_mlp
from hw.config import Config
from hw.mlp_cluster import MLPCluster
from hw.mlp_engine import MLPEngine
from hw.mlp_isa import Opcode, Status
from hw.systolic import SystolicArray
from tests.amaranth_streams import run_bounded, stream_get, stream_put

#: Delays between a RUN and the next one's inputs, 0 to N_DELAYS - 1 cycles
#: (``test_writes_put_as_the_sender_takes_over``).
N_DELAYS = 100


def _random_layers(rng, dims, shifts=(12, 18)):
    """Random int8 layers ``dims[0]`` -> ``dims[1]`` -> ..., ReLU on the
    first only, shifts drawn from ``range(*shifts)``."""
    return [QuantLayer(rng.integers(-128, 128, (i, o)).astype(np.int8),
                       rng.integers(-3000, 3000, o), rng.integers(1 << 14, 1 << 16, o),
                       rng.integers(*shifts, o), l == 0)
            for l, (i, o) in enumerate(zip(dims, dims[1:]))]


def test_two_layers_on_split_array():
    cfg = Config.preset("tiny").array
    rng = np.random.default_rng(5)

    def layer(i, o, relu):
        return QuantLayer(rng.integers(-128, 128, (i, o)).astype(np.int8),
                          rng.integers(-3000, 3000, o), rng.integers(1 << 14, 1 << 16, o),
                          rng.integers(12, 18, o), relu)

    layers = [layer(5, 3, True), layer(3, 6, False)]
    rows = 18                                   # more than acc_rows: two row blocks
    x = rng.integers(-128, 128, (rows, 5)).astype(np.int8)
    set_split = EngineTarget(cfg, 0, 2)
    target = EngineTarget(cfg, 3, 2)            # the last sub-array of the 2x2 split
    prog = compile_mlp(layers, target)
    dut = MLPCluster(cfg)
    frames = {0: [], 3: []}

    async def tb(ctx):
        r = random.Random(1)
        split_cmd = set_split.pack(Opcode.SET_SPLIT, split={"index": 1})
        await stream_put(ctx, dut.cmd_0, set_split.cmd_layout.from_bits(split_cmd))
        frames[0].append((await stream_get(ctx, dut.resp_0)).as_bits())
        for c in prog.load_commands + prog.input_commands(x) + [prog.run_command(rows)]:
            await stream_put(ctx, dut.cmd_3, target.cmd_layout.from_bits(c), rng=r, idle=0.3)
        while True:
            beat = (await stream_get(ctx, dut.resp_3, rng=r, stall=0.3)).as_bits()
            frames[3].append(beat)
            if target.unpack_response(beat)["last"]:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert set_split.unpack_response(frames[0][0])["status"].name == "OK"
    y, cycles = prog.decode_run(frames[3], rows)
    assert np.array_equal(y, int8_mlp(x, layers))
    assert cycles > 0



# A row split in four of an 8-wide array: input tiles of 2 from 8-wide words
# (four a word), four engines side by side.
_ROWS4 = dataclasses.replace(Config.preset("tiny").array, dim=8, block=2, row_splits=(2, 4))


@pytest.mark.parametrize("cfg, mode, seed", [
    (Config.preset("tiny").array, (2, 1), 1), (Config.preset("tiny").array, (2, 1), 2),
    (_ROWS4, (4, 1), 1)])
def test_row_split_engines_side_by_side(cfg, mode, seed):
    """A row split, every engine of it at once: mode (2, 1) of ``tiny``
    (engines 0 and 1 each on 2 rows x 4 columns: an input tile is half an
    activation word) and (4, 1) of an 8x8 array (four engines on 2 x 8: a
    quarter of a word). Layers wider than a word, odd sizes, two layers
    chained through the buffers, row blocks, with random idle cycles and
    backpressure."""
    rng = np.random.default_rng(seed)
    engines = range(mode[0] * mode[1])
    jobs = {}
    for e in engines:
        dims = [int(d) for d in rng.integers(1, 14 if mode[0] == 2 else 20, 3)]
        layers = _random_layers(rng, dims)
        target = EngineTarget(cfg, e, mode)
        prog = compile_mlp(layers, target)
        rows = int(rng.integers(1, min(prog.max_rows_per_run(), 40) + 1))
        x = rng.integers(-128, 128, (rows, dims[0])).astype(np.int8)
        jobs[e] = (target, prog, layers, x)
    dut = MLPCluster(cfg)
    frames = {e: [] for e in engines}

    def engine_tb(e):
        async def tb(ctx):
            target, prog, _, x = jobs[e]
            cmd, resp = getattr(dut, f"cmd_{e}"), getattr(dut, f"resp_{e}")
            r = random.Random(seed * 10 + e)
            if e == 0:
                split = target.pack(Opcode.SET_SPLIT, split={"index": cfg.mode_index(mode)})
                await stream_put(ctx, cmd, target.cmd_layout.from_bits(split))
                status = target.unpack_response((await stream_get(ctx, resp)).as_bits())
                assert status["status"].name == "OK"
            else:
                await ctx.tick().until(dut.split == cfg.mode_index(mode))
            for c in prog.load_commands + prog.input_commands(x) + [prog.run_command(len(x))]:
                await stream_put(ctx, cmd, target.cmd_layout.from_bits(c), rng=r, idle=0.3)
            while True:
                beat = (await stream_get(ctx, resp, rng=r, stall=0.3)).as_bits()
                frames[e].append(beat)
                if target.unpack_response(beat)["last"]:
                    break
        return tb

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for e in engines:
        sim.add_testbench(engine_tb(e))
    run_bounded(sim, 4e-4)
    for e in engines:
        _, prog, layers, x = jobs[e]
        y, _ = prog.decode_run(frames[e], len(x))
        assert np.array_equal(y, int8_mlp(x, layers)), (e, [(l.in_dim, l.out_dim) for l in layers])


@pytest.mark.parametrize("offset", range(-4, 5))
def test_split_lock(offset):
    """SET_SPLIT on engine 0 and a RUN on engine 3 presented ``offset``
    cycles apart (RUN first when positive): either the RUN runs on the split
    array and the split changes only after its trailer, with the right
    answer, or it is taken after the split changed and answered
    NOT_AVAILABLE (engine 3 has no sub-array in the whole array). Never a
    split change under a running engine. (Which of the two, when they come
    close together, the ports cannot tell: both wait a cycle in the
    cluster's buffers; four cycles apart, the first one wins.)"""
    cfg = Config.preset("tiny").array
    rng = np.random.default_rng(7)
    layers = [QuantLayer(rng.integers(-128, 128, (5, 6)).astype(np.int8),
                         rng.integers(-3000, 3000, 6), rng.integers(1 << 14, 1 << 16, 6),
                         rng.integers(12, 18, 6), True)]
    rows = 20
    x = rng.integers(-128, 128, (rows, 5)).astype(np.int8)
    set_split = EngineTarget(cfg, 0, 2)
    target = EngineTarget(cfg, 3, 2)
    prog = compile_mlp(layers, target)
    dut = MLPCluster(cfg)
    seen = {"beats": []}

    async def tb(ctx):
        await stream_put(ctx, dut.cmd_0, set_split.cmd_layout.from_bits(
            set_split.pack(Opcode.SET_SPLIT, split={"index": 1})))
        await stream_get(ctx, dut.resp_0)
        for c in prog.load_commands + prog.input_commands(x):
            await stream_put(ctx, dut.cmd_3, target.cmd_layout.from_bits(c))
        run = target.cmd_layout.from_bits(prog.run_command(rows))
        whole = set_split.cmd_layout.from_bits(
            set_split.pack(Opcode.SET_SPLIT, split={"index": 0}))
        run_at, split_at = max(0, -offset), max(0, offset)
        ctx.set(dut.resp_0.ready, 1)
        ctx.set(dut.resp_3.ready, 1)
        for cycle in range(2000):
            if "run_taken" not in seen and cycle >= run_at:
                ctx.set(dut.cmd_3.valid, 1)
                ctx.set(dut.cmd_3.payload, run)
            if "split_taken" not in seen and cycle >= split_at:
                ctx.set(dut.cmd_0.valid, 1)
                ctx.set(dut.cmd_0.payload, whole)
            for name, port in (("run_taken", dut.cmd_3), ("split_taken", dut.cmd_0)):
                if ctx.get(port.valid) and ctx.get(port.ready):
                    seen[name] = cycle
            if ctx.get(dut.resp_3.valid):
                seen["beats"].append(ctx.get(dut.resp_3.payload).as_bits())
                if target.unpack_response(seen["beats"][-1])["last"]:
                    seen["trailer"] = cycle
            if "changed" not in seen and ctx.get(dut.split) == 0:
                seen["changed"] = cycle          # the new split shows from this cycle
            await ctx.tick()
            for name, port in (("run_taken", dut.cmd_3), ("split_taken", dut.cmd_0)):
                if name in seen:
                    ctx.set(port.valid, 0)
            if "trailer" in seen and "changed" in seen:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert {"run_taken", "trailer", "changed"} <= seen.keys(), seen.keys()
    status = target.unpack_response(seen["beats"][-1])["status"].name
    if abs(offset) == 4:
        assert status == ("OK" if offset > 0 else "NOT_AVAILABLE"), seen
    if status == "OK":
        assert seen["run_taken"] < seen["changed"] and seen["changed"] > seen["trailer"], seen
        y, _ = prog.decode_run(seen["beats"], rows)
        assert np.array_equal(y, int8_mlp(x, layers))
    else:
        assert status == "NOT_AVAILABLE" and len(seen["beats"]) == 1, seen


@pytest.mark.parametrize("n_layers,alternate", [(1, True), (2, True), (1, False), (2, False)])
def test_overlapped_runs(n_layers, alternate):
    """Runs in alternating halves of the buffers (or all from word 0), all
    commands sent at once, the responses read with long stalls: the engine
    takes the next run's inputs while a run computes and the next RUN while
    an answer leaves, and every answer is right. With two layers the answer
    lands in buffer 0, where the inputs go: writes into the rows still being
    sent must wait, and so must writes that would land in the cycle a result
    row is written. From word 0 every time, the writes wait for the run
    before (its window) and, with two layers, for its answer to leave."""
    cfg = Config.preset("tiny").array
    rng = np.random.default_rng(11 + n_layers)
    dims = [5, 6, 3][:n_layers + 1]
    layers = _random_layers(rng, dims)
    target = EngineTarget(cfg, 0, 1)
    prog = compile_mlp(layers, target)
    half = cfg.act_words(0) // 2
    batches = [rng.integers(-128, 128, (rows, 5)).astype(np.int8) for rows in (20, 9, 16, 3)]
    dut = MLPCluster(cfg)
    seen = {"runs": 0, "trailers": 0, "early_writes": 0, "early_runs": 0, "frames": []}

    async def producer(ctx):
        r = random.Random(3)
        for c in prog.load_commands:
            await stream_put(ctx, dut.cmd_0, target.cmd_layout.from_bits(c))
        for i, x in enumerate(batches):
            base = (i % 2) * half if alternate else 0
            for c in prog.input_commands(x, base):
                await stream_put(ctx, dut.cmd_0, target.cmd_layout.from_bits(c), rng=r, idle=0.1)
                seen["early_writes"] += seen["runs"] > seen["trailers"]
            await stream_put(ctx, dut.cmd_0,
                             target.cmd_layout.from_bits(prog.run_command(len(x), base)))
            seen["early_runs"] += seen["runs"] > seen["trailers"]
            seen["runs"] += 1

    async def consumer(ctx):
        r = random.Random(4)
        for _ in batches:
            frame = []
            while True:
                frame.append((await stream_get(ctx, dut.resp_0, rng=r, stall=0.9)).as_bits())
                if target.unpack_response(frame[-1])["last"]:
                    break
            seen["trailers"] += 1
            seen["frames"].append(frame)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    run_bounded(sim, 2e-4)
    _assert_answers(prog, layers, batches, seen["frames"])
    if alternate:
        assert seen["early_writes"] > 0 and seen["early_runs"] > 0, seen
    elif n_layers == 1:
        # (with two layers the next inputs wait for the answer, so its RUN too)
        assert seen["early_runs"] > 0, seen


def _assert_answers(prog, layers, xs, frames):
    """Each answer frame is the golden MLP of its batch."""
    assert len(frames) == len(xs)
    for x, frame in zip(xs, frames):
        y, _ = prog.decode_run(frame, len(x))
        assert np.array_equal(y, int8_mlp(x, layers))


async def _read_answers(ctx, resp, target, n, r, frames, stall=0.5):
    """Reads ``n`` answers from the stream ``resp`` (an engine's) into
    ``frames`` (each a list of its beats' bits), stalling a ``stall``
    share of the cycles."""
    for _ in range(n):
        frame = []
        while True:
            frame.append((await stream_get(ctx, resp, rng=r, stall=stall)).as_bits())
            if target.unpack_response(frame[-1])["last"]:
                break
        frames.append(frame)


def _run_back_to_back(cfg, target, before, after, n_answers, seed):
    """Sends ``before`` with random idle cycles, then ``after`` back to back
    (so that its commands land while the last RUN's rows are in flight), to
    engine 0 of an ``MLPCluster``; reads ``n_answers`` answers with stalls."""
    frames = []
    dut = MLPCluster(cfg)

    async def producer(ctx):
        r = random.Random(seed)
        for c in before:
            await stream_put(ctx, dut.cmd_0, target.cmd_layout.from_bits(c), rng=r, idle=0.3)
        for c in after:
            await stream_put(ctx, dut.cmd_0, target.cmd_layout.from_bits(c))

    async def consumer(ctx):
        await _read_answers(ctx, dut.resp_0, target, n_answers, random.Random(seed + 1),
                            frames)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    run_bounded(sim, 1e-4)
    assert len(frames) == n_answers
    return frames


@pytest.mark.parametrize("change", ["params", "relu"])
def test_layer_changed_while_rows_in_flight(change):
    """A RUN hands its answer to the sender while its last rows are still in
    the array and the requantizer, and the engine takes commands again. The
    rows carry their ReLU and read their parameters on the way: a SET_LAYER
    that turns ReLU on, or a WRITE_PARAM (which waits for them), sent right
    after the RUN leaves its answer alone, and a second RUN (from the other
    half of the buffers) gets the new layer. (An 8x8 array: its rows are long
    enough in flight for the test to see a change under them.)"""
    cfg = dataclasses.replace(Config.preset("ecp5").array, dsp="generic")
    rng = np.random.default_rng(21)
    w = rng.integers(-128, 128, (5, 8)).astype(np.int8)

    def layer(params=None, relu=False):
        params = params or (rng.integers(-3000, 3000, 8), rng.integers(1 << 14, 1 << 16, 8),
                            rng.integers(18, 22, 8))
        return QuantLayer(w, *params, relu)

    old = [layer()]
    new = [layer()] if change == "params" else \
        [layer((old[0].bias, old[0].mult, old[0].shift), relu=True)]
    target = EngineTarget(cfg, 0, 1)
    progs = [compile_mlp(old, target), compile_mlp(new, target)]
    half = cfg.act_words(0) // 2
    xs = [rng.integers(-128, 128, (12, 5)).astype(np.int8) for _ in range(2)]

    def changes(commands):
        # straight after the RUN: the new parameters, the last output tile's
        # first (the weights are the same), or the new layer descriptor
        op = Opcode.WRITE_PARAM if change == "params" else Opcode.SET_LAYER
        return [c for c in commands if target.cmd_layout.from_bits(c).op == op][::-1]

    # from the RUN on, back to back: the change must land while its rows
    # are in flight
    frames = _run_back_to_back(
        cfg, target, progs[0].load_commands + progs[0].input_commands(xs[0], 0),
        [progs[0].run_command(len(xs[0]), 0)] + changes(progs[1].load_commands)
        + progs[1].input_commands(xs[1], half) + [progs[1].run_command(len(xs[1]), half)],
        2, seed=5)
    for prog, layers, x, frame in zip(progs, (old, new), xs, frames):
        y, _ = prog.decode_run(frame, len(x))
        assert np.array_equal(y, int8_mlp(x, layers))


@pytest.mark.parametrize("regions", [1, 2])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_first_layer_parameters_per_batch(regions, n_layers):
    """Each batch has its own first-layer biases (as a stage's queries have,
    from their user pass), written with its inputs while the batch before
    still has rows in flight: into two regions of the parameter memory in
    turn, chosen by the layer's SET_LAYER (the engine takes a WRITE_PARAM
    outside the entries the rows in flight read at once; with two layers
    those rows are the second layer's), or into one (the writes wait for
    the rows). Every answer is its own batch's MLP."""
    cfg = dataclasses.replace(Config.preset("ecp5").array, dsp="generic")
    rng = np.random.default_rng(23 + n_layers)
    fixed = _random_layers(rng, [5, 12, 6][:n_layers + 1], shifts=(16, 20))
    target = EngineTarget(cfg, 0, 1)
    # the layers' entries, then layer 0's second region
    alt = sum(-(-l.out_dim // target.side) for l in fixed)
    nt0 = -(-fixed[0].out_dim // target.side)

    def moved(c, off):
        # the command, layer 0's parameter entries moved by ``off``
        v = target.cmd_layout.from_bits(c)
        if v.op == Opcode.WRITE_PARAM and v.args.param.addr < nt0:
            return target.moved_param(c, off)
        if v.op == Opcode.SET_LAYER and v.args.layer.index == 0:
            d = v.args.layer
            return target.pack(Opcode.SET_LAYER, layer={
                "index": 0, "in_dim": d.in_dim, "out_dim": d.out_dim, "w_base": d.w_base,
                "p_base": d.p_base + off, "relu": d.relu})
        return c

    half = cfg.act_words(0) // 2
    commands, batches = [], []
    for i in range(6):
        layers = [dataclasses.replace(fixed[0], bias=rng.integers(-3000, 3000, 12))] + fixed[1:]
        prog = compile_mlp(layers, target)
        x = rng.integers(-128, 128, (int(rng.integers(8, 24)), 5)).astype(np.int8)
        batches.append((prog, layers, x))
        off = alt * (i % regions)
        changes = [moved(c, off) for c in prog.load_commands
                   if i == 0 or target.cmd_layout.from_bits(c).op != Opcode.WRITE_WEIGHTS]
        commands += changes + prog.input_commands(x, (i % 2) * half) \
            + [prog.run_command(len(x), (i % 2) * half)]
    # (the first batch's load with random idle cycles, the rest back to back)
    n_load = len(batches[0][0].load_commands)
    frames = _run_back_to_back(cfg, target, commands[:n_load], commands[n_load:],
                               len(batches), seed=9)
    _assert_answers_each(batches, frames)


def _assert_answers_each(batches, frames):
    """Each answer frame is the golden MLP of its ``(program, layers, x)``."""
    assert len(frames) == len(batches)
    for (prog, layers, x), frame in zip(batches, frames):
        y, _ = prog.decode_run(frame, len(x))
        assert np.array_equal(y, int8_mlp(x, layers))


@pytest.mark.parametrize("bad_layer", [0, 1])
def test_a_failed_run_leaves_no_stale_tile(bad_layer):
    """A RUN's first tile loads while the RUN is checked. A RUN that then
    fails (a layer that cannot run: the first, while that tile still
    loads, or the second, after it), followed by new weights for the
    same words and a good RUN of the same layout: the good RUN uses the new
    weights. (An 8x8 array.)"""
    cfg = dataclasses.replace(Config.preset("ecp5").array, dsp="generic")
    rng = np.random.default_rng(31 + bad_layer)
    old = _random_layers(rng, [5, 8, 6], shifts=(16, 20))
    new = _random_layers(rng, [5, 8, 6], shifts=(16, 20))
    target = EngineTarget(cfg, 0, 1)
    progs = [compile_mlp(old, target), compile_mlp(new, target)]
    half = cfg.act_words(0) // 2
    xs = [rng.integers(-128, 128, (rows, 5)).astype(np.int8) for rows in (9, 11)]
    sets = [c for c in progs[0].load_commands
            if target.cmd_layout.from_bits(c).op == Opcode.SET_LAYER]
    d = target.cmd_layout.from_bits(sets[bad_layer]).args.layer
    # (a first layer of no inputs; a second that does not take the first's
    # outputs)
    broken = target.pack(Opcode.SET_LAYER, layer={
        "index": bad_layer, "in_dim": 0 if bad_layer == 0 else 7, "out_dim": d.out_dim,
        "w_base": d.w_base, "p_base": d.p_base, "relu": d.relu})
    frames = _run_back_to_back(
        cfg, target, progs[0].load_commands + progs[0].input_commands(xs[0], 0),
        [progs[0].run_command(len(xs[0]), 0), broken, progs[0].run_command(len(xs[0]), 0)]
        + progs[1].load_commands + progs[1].input_commands(xs[1], half)
        + [progs[1].run_command(len(xs[1]), half)], 3, seed=11)
    assert target.unpack_response(frames[1][-1])["status"] == Status.BAD_LAYER
    assert len(frames[1]) == 1
    _assert_answers_each([(progs[0], old, xs[0]), (progs[1], new, xs[1])],
                         [frames[0], frames[2]])


def test_inputs_written_while_rows_in_flight():
    """After a RUN hands its answer over, the engine takes the next inputs
    while the RUN's last rows are still being written. With two layers those
    rows land in buffer 0, where the inputs go (in the other half): an input
    write must not take the RAM's port in the cycle a row is written, or the
    row is lost. (The SET_LAYERs after the RUN are only taken once it has
    handed over, so the writes after them meet its rows in flight.)"""
    cfg = dataclasses.replace(Config.preset("ecp5").array, dsp="generic")
    rng = np.random.default_rng(22)
    layers = _random_layers(rng, [5, 8, 8], shifts=(16, 20))
    target = EngineTarget(cfg, 0, 1)
    prog = compile_mlp(layers, target)
    half = cfg.act_words(0) // 2
    # (enough input rows after the RUN to cover the cycles its last rows land)
    xs = [rng.integers(-128, 128, (rows, 5)).astype(np.int8) for rows in (12, 48)]
    set_layers = [c for c in prog.load_commands
                  if target.cmd_layout.from_bits(c).op == Opcode.SET_LAYER]
    assert set_layers
    frames = _run_back_to_back(
        cfg, target, prog.load_commands + prog.input_commands(xs[0], 0),
        [prog.run_command(len(xs[0]), 0)] + set_layers + prog.input_commands(xs[1], half)
        + [prog.run_command(len(xs[1]), half)], 2, seed=7)
    _assert_answers(prog, layers, xs, frames)


def test_answers_carry_their_commands_tag():
    """Every beat of an answer carries the tag of the command it answers: a
    RUN's rows and trailer, SET_SPLIT's trailer and each kind of error (a
    bad write, a bad RUN, a layer that cannot run, a bad split), with tags
    0 and 1 mixed."""
    cfg = Config.preset("tiny").array
    rng = np.random.default_rng(5)
    layers = [QuantLayer(rng.integers(-128, 128, (5, 6)).astype(np.int8),
                         rng.integers(-3000, 3000, 6), rng.integers(1 << 14, 1 << 16, 6),
                         rng.integers(12, 18, 6), True)]
    target = EngineTarget(cfg, 0, 1)
    prog = compile_mlp(layers, target)
    x = rng.integers(-128, 128, (3, 5)).astype(np.int8)
    tag = target.cmd_layout.const({"tag": 1}).as_bits()     # the tag bit, by the layout
    bad_layer = target.pack(Opcode.SET_LAYER, layer={"index": 1, "in_dim": 0, "out_dim": 4})
    # (command, its answer's status, its tag)
    answered = [
        (prog.run_command(len(x)) | tag, "OK", 1),
        (target.pack(Opcode.WRITE_WEIGHTS, weights={"addr": cfg.weight_words}), "BAD_ADDRESS", 0),
        (target.pack(Opcode.RUN, run={"layers": 1, "rows": 0}) | tag, "BAD_RUN", 1),
        (target.pack(Opcode.RUN, run={"layers": 2, "rows": 1}) | tag, "BAD_LAYER", 1),
        (target.pack(Opcode.SET_SPLIT, split={"index": len(cfg.modes)}) | tag, "BAD_SPLIT", 1),
        (target.pack(Opcode.SET_SPLIT, split={"index": 0}), "OK", 0),
        (prog.run_command(len(x)), "OK", 0),
    ]
    frames = _run_back_to_back(cfg, target, prog.load_commands + prog.input_commands(x)
                               + [bad_layer], [c for c, _, _ in answered], len(answered), 9)
    for frame, (_, status, t) in zip(frames, answered):
        beats = [target.unpack_response(b) for b in frame]
        assert beats[-1]["status"].name == status, beats[-1]
        assert [b["tag"] for b in beats] == [t] * len(beats), (status, beats)
        if len(beats) > 1:
            y, _ = prog.decode_run(frame, len(x))
            assert np.array_equal(y, int8_mlp(x, layers))


def test_writes_put_as_the_sender_takes_over():
    """A command put in the cycle the sender's rows and the RUN's window
    change gets its checks from the new state, and the refresh of the slots
    that were full before leaves it alone. RUNs of two layers, all from word
    0, each followed, after a delay one cycle longer than the RUN before's,
    by the next RUN's inputs, which go into the rows the answer before is
    sent from: one of the delays puts the first write in the cycle of the
    hand-over. While idle the command input carries other bits (a stream's
    payload is anything while ``valid`` is low), so a slot's checks refreshed
    from what it held before the put would let that write in early."""
    cfg = Config.preset("tiny").array
    rng = np.random.default_rng(31)
    layers = _random_layers(rng, [5, 6, 3])
    target = EngineTarget(cfg, 0, 1)
    prog = compile_mlp(layers, target)
    batches = [rng.integers(-128, 128, (int(rng.integers(1, 4)), 5)).astype(np.int8)
               for _ in range(N_DELAYS)]
    dut = MLPCluster(cfg)
    bits = Value.cast(dut.cmd_0.payload)
    frames = []

    async def producer(ctx):
        noise = random.Random(8)
        for c in prog.load_commands:
            await stream_put(ctx, dut.cmd_0, target.cmd_layout.from_bits(c))
        for delay, x in enumerate(batches):
            for _ in range(delay):
                ctx.set(bits, noise.getrandbits(len(bits)))
                await ctx.tick()
            for c in prog.input_commands(x, 0) + [prog.run_command(len(x), 0)]:
                await stream_put(ctx, dut.cmd_0, target.cmd_layout.from_bits(c))

    async def consumer(ctx):
        await _read_answers(ctx, dut.resp_0, target, len(batches), random.Random(9), frames)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    run_bounded(sim, 1e-3)
    _assert_answers(prog, layers, batches, frames)


class _EngineOnArray(Elaboratable):
    """Engine 0 alone on the whole array (mode 0), its array port in reach."""

    def __init__(self, cfg):
        self.engine = MLPEngine(cfg, engine=0)
        self.array = SystolicArray(cfg)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.engine
        m.submodules.array = self.array
        wiring.connect(m, self.engine.array, self.array.port(0))
        return m


def test_consecutive_runs_rows_back_to_back():
    """While a RUN's last rows go into the array, the next RUN is checked and
    loads its first tile into the other weight register: with the inputs of
    each in a region of their own, three RUNs of two row blocks and two
    output tiles each put every row into the array in consecutive cycles,
    with no gap between one RUN's last row and the next one's first (they
    used to be ~36 cycles apart: the next RUN started once the last row was
    issued). Every answer is right, read with stalls (a tenth of the cycles:
    the sender of one RUN must be done before the next RUN hands over, so
    it has to keep up). The commands come back to back: idle cycles in them
    would leave gaps that are not the engine's."""
    cfg = dataclasses.replace(Config.preset("ecp5").array, dsp="generic")
    rng = np.random.default_rng(41)
    target = EngineTarget(cfg, 0, 1)
    layers = _random_layers(rng, [5, 2 * target.side])
    prog = compile_mlp(layers, target)
    region = cfg.act_words(0) // 3
    # (no zero input: a row goes in exactly when the array's input is not 0)
    xs = [rng.integers(1, 128, (cfg.max_rows, 5)).astype(np.int8) for _ in range(3)]
    dut = _EngineOnArray(cfg)
    eng = dut.engine
    injected, frames = [], []

    async def producer(ctx):
        for c in prog.load_commands:
            await stream_put(ctx, eng.cmd, target.cmd_layout.from_bits(c))
        for i, x in enumerate(xs):
            for c in prog.input_commands(x, i * region) + [prog.run_command(len(x), i * region)]:
                await stream_put(ctx, eng.cmd, target.cmd_layout.from_bits(c))

    async def consumer(ctx):
        await _read_answers(ctx, eng.resp, target, len(xs), random.Random(42), frames,
                            stall=0.1)

    async def monitor(ctx):
        cycle = 0
        while True:
            await ctx.tick()
            if ctx.get(Value.cast(eng.array.act)):
                injected.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor)
    run_bounded(sim, 1e-4)
    _assert_answers(prog, layers, xs, frames)
    assert len(injected) == 2 * sum(map(len, xs)), len(injected)
    gaps = [b - a - 1 for a, b in zip(injected, injected[1:]) if b - a > 1]
    assert not gaps, gaps
