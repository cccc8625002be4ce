# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the activation packer (hw/act_packer.py).

A model of the MLP engine's activation buffers (a dict ``(buf, addr) ->
lanes``) applies the packer's WRITE_ACT beats; the contents and the order of
the writes are checked against the layout of hw/mlp_isa.py, computed here
from the formula, for random rows, sides, bases and strides, with random
idle cycles and backpressure; bad rows against the same golden model; and,
end to end, the item part of a quantized stage's top input
(QuantizedStageModel.top_inputs) through DotInteraction (or concatenated)
into the packer, and through a real MLP engine's first layer.

Every simulation runs under a step bound (a hang fails) and must end with all
its testbenches finished.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import stream
from amaranth.sim import Simulator

from host.mlp_program import EngineTarget, compile_mlp
from host.models import (QuantizedStageModel, StageModelConfig, TableSpec, init_params,
                         quantize_stage_model)
from host.movielens import synthetic_queries
from host.numerics import QuantLayer, int8_mlp
from hw.act_packer import ActPacker, PackStatus, engine_sides
from hw.config import ArrayConfig, Config, ceil_div
from hw.interaction import DotInteraction
from hw.mlp_cluster import MLPCluster
from hw.mlp_isa import Opcode, command_layout
from tests.amaranth_streams import stream_get, stream_put

TINY = Config.preset("tiny").array                   # dim 4: engine 0 sides 4, 2
WIDE = ArrayConfig(dim=16, block=4, splits=(1, 2, 4), engines=4, acc_rows=16,
                   max_rows=32, max_dim=64, weight_words=256, param_words=16)


# -- the golden layout ---------------------------------------------------------

def golden(cfg, engine, max_elems, ctl, rows, words=None):
    """The writes of one sub-batch (in order) and its ``done`` beat.

    ``rows``: (n, elems) per row, ``elems`` max_elems values; ``words``: the
    packer's (default: the engine's ``act_words``)."""
    lanes = cfg.engine_lanes(engine)
    act_words = words or cfg.act_words(engine)
    S, R, base, buf = ctl["side"], ctl["rows"], ctl["base"], ctl["buf"]
    ctl_bad = S not in engine_sides(cfg, engine) or not 1 <= R <= cfg.max_rows
    writes, status, first_bad, dropped = [], PackStatus.OK, 0, 0
    for r, (n, elems) in enumerate(rows):
        p = base + r
        if ctl_bad:
            st = PackStatus.BAD_CONTROL
        elif n > max_elems:
            st = PackStatus.TOO_LONG
        elif p >= R:
            st = PackStatus.BAD_ROW
        elif n and (ceil_div(n, S) - 1) * R + p >= act_words:
            st = PackStatus.BAD_ADDRESS
        else:
            st = PackStatus.OK
        if st != PackStatus.OK:
            dropped += 1
            if status == PackStatus.OK:
                status, first_bad = st, r
            continue
        for c in range(ceil_div(n, S)):
            chunk = [int(elems[c * S + j]) if c * S + j < n else 0 for j in range(S)]
            writes.append((buf, c * R + p, tuple(chunk + [0] * (lanes - S))))
    done = {"status": status, "first_bad": first_bad, "rows": len(rows), "dropped": dropped}
    return writes, done


def buffer_of(writes):
    buf = {}
    for b, addr, data in writes:
        buf[(b, addr)] = data
    return buf


def layout_buffer(x, side, lanes, rows, base, buf=0):
    """The engine's activation layout of int8 rows ``x`` (N, d), from the
    hw/mlp_isa.py docstring: chunk c of row r at word c * rows + r."""
    out = {}
    n, d = x.shape
    k = ceil_div(d, side)
    padded = np.zeros((n, k * side), dtype=np.int64)
    padded[:, :d] = x
    for r in range(n):
        for c in range(k):
            word = list(padded[r, c * side:(c + 1) * side]) + [0] * (lanes - side)
            out[(buf, c * rows + base + r)] = tuple(int(v) for v in word)
    return out


# -- simulation helpers ----------------------------------------------------------

def run_bounded(sim, max_steps):
    """Run until every testbench has returned; fail after ``max_steps`` steps."""
    for _ in range(max_steps):
        if not sim.advance():
            return
    raise AssertionError(f"the simulation did not finish within {max_steps} steps")


def row_beat(max_elems, n, elems, last):
    elems = [int(v) for v in elems][:max_elems]
    return {"n": n, "elems": elems + [0] * (max_elems - len(elems)), "last": int(last)}


class Monitor:
    """The engine side of the packer: takes ``o`` (random backpressure) into
    a buffer model and a list of writes, and ``done`` beats, until
    ``n_done`` of them; counts ``err`` pulses."""

    def __init__(self, packer, n_done, *, rng, stall, act_words, o=None):
        self.packer, self.n_done, self.rng, self.stall = packer, n_done, rng, stall
        self.o = packer.o if o is None else o
        self.act_words = act_words
        self.writes = [[]]          # per sub-batch, in order
        self.cycles = [[]]          # the cycle of each write
        self.dones = []
        self.errs = 0
        self.finished = False

    async def run(self, ctx):
        o, done = self.o, self.packer.done
        cycle = 0
        while len(self.dones) < self.n_done:
            o_ready = int(self.rng.random() >= self.stall)
            d_ready = int(self.rng.random() >= self.stall)
            ctx.set(o.ready, o_ready)
            ctx.set(done.ready, d_ready)
            _, _, ov, op, dv, dp, err = await ctx.tick().sample(
                o.valid, o.payload, done.valid, done.payload, self.packer.err)
            self.errs += err
            if ov and o_ready:
                assert op.op == Opcode.WRITE_ACT
                act = op.args.act
                assert act.addr < self.act_words, "a write outside the buffer"
                self.writes[-1].append((int(act.buf), int(act.addr),
                                        tuple(int(v) for v in act.data)))
                self.cycles[-1].append(cycle)
            if dv and d_ready:
                self.dones.append({"status": PackStatus(dp.status),
                                   "first_bad": int(dp.first_bad),
                                   "rows": int(dp.rows), "dropped": int(dp.dropped)})
                self.writes.append([])
                self.cycles.append([])
            cycle += 1
        ctx.set(o.ready, 0)
        ctx.set(done.ready, 0)
        self.finished = True


def simulate_packer(cfg, engine, max_elems, batches, *, seed, idle=0.3, stall=0.3,
                    max_steps=20_000, words=None):
    """``batches``: (ctl dict, [(n, elems), ...]). Returns the monitor."""
    dut = ActPacker(cfg, engine=engine, max_elems=max_elems, words=words)
    rng = random.Random(seed)
    mon = Monitor(dut, len(batches), rng=random.Random(seed + 1), stall=stall,
                  act_words=words or cfg.act_words(engine))
    finished = []

    async def control(ctx):
        for ctl, _ in batches:
            await stream_put(ctx, dut.ctl, ctl, rng=rng, idle=idle)
        finished.append("control")

    async def rows(ctx):
        r = random.Random(seed + 2)
        for _, batch in batches:
            for k, (n, elems) in enumerate(batch):
                await stream_put(ctx, dut.i, row_beat(max_elems, n, elems, k == len(batch) - 1),
                                 rng=r, idle=idle)
        finished.append("rows")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(rows)
    sim.add_testbench(mon.run)
    run_bounded(sim, max_steps)
    assert sorted(finished) == ["control", "rows"] and mon.finished
    return mon


def check_against_golden(cfg, engine, max_elems, batches, mon, words=None):
    want_all = []
    for k, (ctl, batch) in enumerate(batches):
        want, done = golden(cfg, engine, max_elems, ctl, batch, words)
        assert mon.writes[k] == want, f"sub-batch {k}: writes differ"
        assert mon.dones[k] == done, f"sub-batch {k}: done beat differs"
        want_all += want
    assert mon.writes[-1] == [], "writes after the last done beat"
    got_all = [w for ws in mon.writes for w in ws]
    assert buffer_of(got_all) == buffer_of(want_all)
    assert mon.errs == sum(d["dropped"] for d in mon.dones)


def random_batch(cfg, engine, max_elems, rng, *, side=None):
    lanes = cfg.engine_lanes(engine)
    S = side or rng.choice(engine_sides(cfg, engine))
    count = rng.randint(1, 7)
    base = rng.randint(0, 5)
    R = rng.randint(base + count, min(cfg.max_rows, base + count + 6))
    ns = [rng.choice([0, 1, S - 1, S, S + 1, max_elems, rng.randint(1, max_elems)])
          for _ in range(count)]
    ns = [max(0, min(n, max_elems)) for n in ns]
    rows = [(n, [rng.randint(-128, 127) for _ in range(max_elems)]) for n in ns]
    assert S <= lanes
    return {"side": S, "rows": R, "base": base, "buf": rng.randint(0, 1)}, rows


# -- the layout, random rows -------------------------------------------------------

@pytest.mark.parametrize("cfg, engine, max_elems", [(TINY, 0, 13), (TINY, 2, 7),
                                                    (WIDE, 0, 37), (WIDE, 1, 20)])
def test_layout_random_rows(cfg, engine, max_elems):
    rng = random.Random(max_elems * 7 + engine)
    batches = [random_batch(cfg, engine, max_elems, rng) for _ in range(16)]
    # every side the engine has, and n < S, n = k*S + j among the rows
    sides = {ctl["side"] for ctl, _ in batches}
    batches += [random_batch(cfg, engine, max_elems, rng, side=s)
                for s in engine_sides(cfg, engine) if s not in sides]
    assert any(0 < n < ctl["side"] for ctl, rows in batches for n, _ in rows)
    assert any(n % ctl["side"] for ctl, rows in batches for n, _ in rows)
    mon = simulate_packer(cfg, engine, max_elems, batches, seed=max_elems)
    check_against_golden(cfg, engine, max_elems, batches, mon)
    assert all(d["status"] == PackStatus.OK for d in mon.dones)
    assert sum(len(w) for w in mon.writes) > 60, "degenerate test"


def test_one_command_a_cycle():
    """Rows of equal length, no idle input and no backpressure: the commands
    of a sub-batch leave on consecutive cycles."""
    cfg, max_elems = WIDE, 37
    rng = random.Random(3)
    batches = []
    for S, n in ((16, 37), (8, 8), (4, 5), (4, 37)):
        rows = [(n, [rng.randint(-128, 127) for _ in range(max_elems)]) for _ in range(8)]
        batches.append(({"side": S, "rows": 8, "base": 0, "buf": 0}, rows))
    mon = simulate_packer(cfg, 0, max_elems, batches, seed=3, idle=0.0, stall=0.0)
    check_against_golden(cfg, 0, max_elems, batches, mon)
    for k, cycles in enumerate(mon.cycles[:-1]):
        assert cycles == list(range(cycles[0], cycles[0] + len(cycles))), \
            f"sub-batch {k}: a bubble between commands"


# -- bad input ---------------------------------------------------------------------

def test_bad_rows_are_dropped():
    """Too long, past ``rows``, past act_words (the exact boundary), bad
    control: dropped whole, reported, never written, never hung."""
    cfg, engine, max_elems = TINY, 0, 64     # act_words 1024; 7-bit n: up to 127
    assert cfg.act_words(engine) == 1024
    rng = random.Random(11)

    def row(n):
        return (n, [rng.randint(-128, 127) for _ in range(max_elems)])

    batches = [
        # 32 chunks of side 2, stride 33: row 0 ends at 31*33 = 1023 (fits),
        # row 1 at 1024 (does not); 62 elements (31 chunks) fit again.
        ({"side": 2, "rows": 33, "base": 0, "buf": 1}, [row(64), row(64), row(62), row(3)]),
        # too long, then past rows (base 2 + r >= 6), with good rows between
        ({"side": 2, "rows": 6, "base": 2, "buf": 0},
         [row(5), row(65), row(127), row(4), row(1), row(0)]),
        ({"side": 3, "rows": 4, "base": 0, "buf": 0}, [row(3), row(4)]),   # not a side
        ({"side": 1, "rows": 4, "base": 0, "buf": 0}, [row(3)]),            # not this engine's
        ({"side": 4, "rows": 0, "base": 0, "buf": 0}, [row(3)]),            # rows 0
        ({"side": 4, "rows": 65, "base": 0, "buf": 0}, [row(3), row(0)]),   # rows > max_rows
        ({"side": 4, "rows": 3, "base": 5, "buf": 0}, [row(3)]),            # base past rows
        ({"side": 4, "rows": 64, "base": 60, "buf": 0}, [row(64), row(9)]),  # still works
    ]
    mon = simulate_packer(cfg, engine, max_elems, batches, seed=11)
    check_against_golden(cfg, engine, max_elems, batches, mon)
    statuses = [d["status"] for d in mon.dones]
    assert statuses == [PackStatus.BAD_ADDRESS, PackStatus.TOO_LONG, PackStatus.BAD_CONTROL,
                        PackStatus.BAD_CONTROL, PackStatus.BAD_CONTROL, PackStatus.BAD_CONTROL,
                        PackStatus.BAD_ROW, PackStatus.OK]
    assert [d["dropped"] for d in mon.dones] == [1, 4, 2, 1, 1, 2, 1, 0]
    assert mon.dones[1]["first_bad"] == 1
    assert max(a for ws in mon.writes for _, a, _ in ws) == 1023


def test_a_smaller_buffer():
    """``words`` (the stage engine gives the packer half the buffer): a row
    whose last chunk lands past it is dropped, at the exact boundary."""
    cfg, engine, max_elems, words = TINY, 0, 64, 512
    rng = random.Random(12)

    def row(n):
        return (n, [rng.randint(-128, 127) for _ in range(max_elems)])

    # side 2, stride 32: 16 chunks end at 15*32 + r < 512, 17 at 512 + r
    batches = [({"side": 2, "rows": 32, "base": 0, "buf": 0},
                [row(32), row(34), row(32), row(33), row(31)])]
    mon = simulate_packer(cfg, engine, max_elems, batches, seed=12, words=words)
    check_against_golden(cfg, engine, max_elems, batches, mon, words)
    assert mon.dones[0]["status"] == PackStatus.BAD_ADDRESS
    assert (mon.dones[0]["first_bad"], mon.dones[0]["dropped"]) == (1, 2)
    assert max(a for ws in mon.writes for _, a, _ in ws) == 15 * 32 + 4


def test_bad_parameters():
    with pytest.raises(TypeError, match="ArrayConfig"):
        ActPacker(Config.preset("tiny"), max_elems=4)
    with pytest.raises(ValueError, match="engine must be in 0..3, not 4"):
        ActPacker(TINY, engine=4, max_elems=4)
    with pytest.raises(ValueError, match=r"max_elems .* not 65"):
        ActPacker(TINY, max_elems=65)
    with pytest.raises(ValueError, match="not 0"):
        ActPacker(TINY, max_elems=0)
    for words in (0, TINY.act_words(0) + 1):
        with pytest.raises(ValueError, match=rf"words must be an integer in 1..1024 .* not {words}"):
            ActPacker(TINY, max_elems=4, words=words)


def test_lints_clean(tmp_path):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "act_packer.v"
    path.write_text(to_verilog(ActPacker(WIDE, engine=0, max_elems=37), "act_packer"))
    lint(path, "act_packer")


# -- end to end: a stage's top input ----------------------------------------------

def stage(interaction, dense, users, items, dim, seed) -> QuantizedStageModel:
    tables = tuple([TableSpec(f"u{t}", 50, "user") for t in range(users)]
                   + [TableSpec(f"i{t}", 40, "item") for t in range(items)])
    cfg = StageModelConfig("t", dense, (16, dim) if dense else (), tables, dim,
                           interaction, (8, 1))
    params = init_params(cfg, seed=seed)
    calib = synthetic_queries(cfg, 8, 16, user_bag=3, seed=seed + 100)
    return quantize_stage_model(params, calib, emb_bits=8)


class DotIntoPacker(Elaboratable):
    """DotInteraction's output into the packer: the payload with ``pairs``
    renamed ``elems``, and ``last`` on the sub-batch's ``batch_len``-th row
    (``batch_len`` is latched with the packer's control beat)."""

    def __init__(self, array, dim, max_users, max_items):
        self.dot = DotInteraction(dim, max_users, max_items)
        self.packer = ActPacker(array, engine=0, max_elems=self.dot.max_pairs)
        self.batch_len = Signal(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dot = dot = self.dot
        m.submodules.packer = packer = self.packer
        left = Signal(16)
        with m.If(packer.ctl.valid & packer.ctl.ready):
            m.d.sync += left.eq(self.batch_len)
        with m.Elif(packer.i.valid & packer.i.ready):
            m.d.sync += left.eq(left - 1)
        m.d.comb += [
            packer.i.valid.eq(dot.o.valid),
            dot.o.ready.eq(packer.i.ready),
            packer.i.payload.n.eq(dot.o.payload.n),
            packer.i.payload.elems.eq(dot.o.payload.pairs),
            packer.i.payload.last.eq(left == 1),
        ]
        return m


def sub_batches(queries, rng, sides):
    """Per query: its side, RUN rows and sub-batches (base, first, count)."""
    plan = []
    for q, query in enumerate(queries):
        n = query.n_candidates
        side = sides[q % len(sides)]
        if q % 3 == 0 and n > 1:            # two sub-batches fill one RUN
            h = rng.randint(1, n - 1)
            plan.append((side, n, [(0, 0, h), (h, h, n - h)]))
        else:                               # one, at an offset, with spare rows
            base = rng.randint(0, 3)
            plan.append((side, base + n + rng.randint(0, 2), [(base, 0, n)]))
    return plan


def check_queries(mon, plan, want_rows, lanes):
    k = 0
    for q, (side, R, subs) in enumerate(plan):
        got = []
        for _ in subs:
            assert mon.dones[k]["status"] == PackStatus.OK
            got += mon.writes[k]
            k += 1
        want = {}
        for base, first, count in subs:
            want.update(layout_buffer(want_rows[q][first:first + count], side, lanes, R, base))
        assert buffer_of(got) == want, f"query {q}: the buffer differs"
        assert len(got) == len(want), f"query {q}: a word written twice"


def test_dot_stage_through_interaction():
    q = stage("dot", dense=3, users=2, items=2, dim=8, seed=21)
    cfg = q.config
    queries = synthetic_queries(cfg, 4, 5, user_bag=3, seed=8)
    U, I, nu = cfg.n_user_features, len(cfg.item_tables), cfg.n_user_pairs
    top = TINY
    dut = DotIntoPacker(top, cfg.embedding_dim, U + 1, I + 1)
    feats = [q.int8_features(query) for query in queries]
    want_rows = [q.top_inputs(query)[1] for query in queries]
    P = want_rows[0].shape[1]
    assert P < dut.dot.max_pairs and P % 2 and P > 4    # n < max_elems, not a multiple of S
    rng = random.Random(4)
    plan = sub_batches(queries, rng, engine_sides(top, 0))
    n_subs = sum(len(s) for _, _, s in plan)
    mon = Monitor(dut.packer, n_subs, rng=random.Random(5), stall=0.3,
                  act_words=top.act_words(0))
    finished = []

    async def params(ctx):
        for k in range(P):
            await stream_put(ctx, dut.dot.params, {"pair": k, "mult": int(q.pair_mult[nu + k]),
                                                   "shift": int(q.pair_shift[nu + k])})
        finished.append("params")

    async def features(ctx):
        r = random.Random(6)
        await ctx.tick().repeat(P + 2)          # after the parameters
        for u, i in feats:
            for j, vec in enumerate(u):
                await stream_put(ctx, dut.dot.i, {"item": 0, "last": int(j == len(u) - 1),
                                                  "vec": vec.tolist()}, rng=r, idle=0.3)
            for cand in i:
                for a, vec in enumerate(cand):
                    await stream_put(ctx, dut.dot.i, {"item": 1, "last": int(a == len(cand) - 1),
                                                      "vec": vec.tolist()}, rng=r, idle=0.3)
        finished.append("features")

    async def control(ctx):
        r = random.Random(7)
        for side, R, subs in plan:
            for base, _, count in subs:
                ctx.set(dut.batch_len, count)
                await stream_put(ctx, dut.packer.ctl,
                                 {"side": side, "rows": R, "base": base, "buf": 0},
                                 rng=r, idle=0.3)
        finished.append("control")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (params, features, control, mon.run):
        sim.add_testbench(tb)
    run_bounded(sim, 20_000)
    assert sorted(finished) == ["control", "features", "params"] and mon.finished
    check_queries(mon, plan, want_rows, top.engine_lanes(0))
    assert mon.errs == 0


@pytest.mark.parametrize("cfg, engine", [(TINY, 0), (WIDE, 1)])
def test_concat_stage(cfg, engine):
    q = stage("concat", dense=2, users=1, items=3, dim=8, seed=22)
    queries = synthetic_queries(q.config, 4, 6, user_bag=2, seed=9)
    want_rows = [q.top_inputs(query)[1] for query in queries]
    rows_of = []
    for query in queries:
        _, i = q.int8_features(query)
        rows_of.append(i.reshape(i.shape[0], -1))       # the item features, concatenated
    d = want_rows[0].shape[1]
    assert d == 24
    rng = random.Random(10)
    plan = sub_batches(queries, rng, engine_sides(cfg, engine))
    batches = []
    for (side, R, subs), x in zip(plan, rows_of):
        for base, first, count in subs:
            batches.append(({"side": side, "rows": R, "base": base, "buf": 0},
                            [(d, row) for row in x[first:first + count]]))
    mon = simulate_packer(cfg, engine, d, batches, seed=12)
    check_queries(mon, plan, want_rows, cfg.engine_lanes(engine))
    assert mon.errs == 0


# -- end to end: through an MLP engine ----------------------------------------------

class PackerOnCluster(Elaboratable):
    """The packer and the testbench share engine 0's command port
    (``use_packer`` selects; switched only while both are idle)."""

    def __init__(self, array, max_elems):
        self.cluster = MLPCluster(array)
        self.packer = ActPacker(array, engine=0, max_elems=max_elems)
        self.cmd = stream.Signature(command_layout(array, 0)).create()
        self.use_packer = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.cluster = cluster = self.cluster
        m.submodules.packer = packer = self.packer
        cmd = cluster.cmd_0
        with m.If(self.use_packer):
            m.d.comb += [cmd.valid.eq(packer.o.valid), cmd.payload.eq(packer.o.payload),
                         packer.o.ready.eq(cmd.ready)]
        with m.Else():
            m.d.comb += [cmd.valid.eq(self.cmd.valid), cmd.payload.eq(self.cmd.payload),
                         self.cmd.ready.eq(cmd.ready)]
        return m


def test_first_layer_on_the_engine():
    """The packer's writes, then the stage's first top layer on engine 0 in
    the 2x2 split (side 2 of 4 lanes): the engine's answer is the golden
    model's first hidden layer."""
    q = stage("dot", dense=3, users=2, items=2, dim=8, seed=23)
    query = synthetic_queries(q.config, 1, 9, user_bag=3, seed=13)[0]
    u, x = q.top_inputs(query)
    first = q.layers[0]
    layer = QuantLayer(first.weight, q.user_bias(u).astype(np.int64), first.mult,
                       first.shift, first.relu)
    want = int8_mlp(x, [layer])
    top = TINY
    target = EngineTarget(top, 0, 2)
    prog = compile_mlp([layer], target)
    rows, n = x.shape
    dut = PackerOnCluster(top, max_elems=n + 3)
    frames = []
    finished = []

    async def tb(ctx):
        r = random.Random(14)
        split = target.pack(Opcode.SET_SPLIT, split={"index": 1})
        await stream_put(ctx, dut.cmd, target.cmd_layout.from_bits(split))
        split_ack = await stream_get(ctx, dut.cluster.resp_0)
        assert split_ack.status.name == "OK" and split_ack.last
        for c in prog.load_commands:
            await stream_put(ctx, dut.cmd, target.cmd_layout.from_bits(c), rng=r, idle=0.2)
        ctx.set(dut.use_packer, 1)
        h = rows // 2                                   # two sub-batches
        for base, part in ((0, x[:h]), (h, x[h:])):
            await stream_put(ctx, dut.packer.ctl, {"side": 2, "rows": rows, "base": base,
                                                   "buf": 0})
            for k, row in enumerate(part):
                await stream_put(ctx, dut.packer.i, row_beat(n + 3, n, row, k == len(part) - 1),
                                 rng=r, idle=0.3)
            done = await stream_get(ctx, dut.packer.done, rng=r, stall=0.3)
            assert done.status == PackStatus.OK and done.dropped == 0
        ctx.set(dut.use_packer, 0)
        await stream_put(ctx, dut.cmd, target.cmd_layout.from_bits(prog.run_command(rows)))
        while True:
            beat = (await stream_get(ctx, dut.cluster.resp_0, rng=r, stall=0.3)).as_bits()
            frames.append(beat)
            if target.unpack_response(beat)["last"]:
                break
        finished.append("tb")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_bounded(sim, 20_000)
    assert finished == ["tb"]
    y, cycles = prog.decode_run(frames, rows)
    assert np.array_equal(y, want)
    assert cycles > 0 and len({int(v) for v in want.ravel()}) > 3
