# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the stage engine (hw/stage.py) on a real MLP engine
and systolic array (hw/mlp_cluster.py) and the feature fetch
(hw/feature_fetch.py), the lookup units modelled in the testbench (in
order, random delays, the golden pooled lookup): queries of a quantized
"dot" stage (host/models.py) compiled by host/stage_program.py, every score
compared bit for bit with QuantizedStageModel.scores, with random idle
cycles on every input and random backpressure on every output."""

import random

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from host.models import StageModelConfig, TableSpec, init_params, quantize_stage_model
from host.movielens import synthetic_queries
from host.stage_program import StageLimits, compile_stage
from hw.config import Config
from hw.embedding import _units
from hw.feature_fetch import FeatureFetch
from hw.mlp_cluster import MLPCluster
from hw.mlp_isa import Opcode as EOp
from hw.stage import StageEngine, StageStatus
from hw.wide import WriteKind
from tests.amaranth_streams import stream_get, stream_put
from tests.test_feature_fetch_sim import unit_model

CFG = Config.preset("tiny")
DIM = 4


def dot_stage(dense, users, items, top, seed):
    tables = tuple([TableSpec(f"u{t}", 30, "user") for t in range(users)]
                   + [TableSpec(f"i{t}", 25, "item") for t in range(items)])
    cfg = StageModelConfig("s", dense, (8, DIM) if dense else (), tables, DIM, "dot", top)
    params = init_params(cfg, seed=seed, table_scale=0.5)
    calib = synthetic_queries(cfg, 12, 8, user_bag=3, seed=seed + 100)
    return quantize_stage_model(params, calib, emb_bits=8,
                                score_bits=CFG.topk.score_bits, max_bag=CFG.embedding.max_bag)


class _Harness(Elaboratable):
    """The stage engine on engine 0 of a cluster, its bags through a feature
    fetch; ``load`` writes the engine before the stage drives it. ``faults``:
    the stage's RUNs of these indices (from 0, in the order they are sent) go
    to the engine with no rows, which answers each with an error."""

    def __init__(self, limits: StageLimits, staging: int, faults=()):
        self.faults = tuple(faults)
        self.stage = StageEngine(CFG, engine=0, dim=limits.dim, max_users=limits.max_users,
                                 max_items=limits.max_items, max_hidden=limits.max_hidden,
                                 max_pen=limits.max_pen, max_bottom=limits.max_bottom,
                                 bottom_layers=limits.bottom_layers, staging=staging)
        self.fetch = FeatureFetch(CFG.embedding, limits.dim, depth=8)
        self.cluster = MLPCluster(CFG.array)
        self.load_cmd = self.cluster.cmd_0.signature.flip().create()

    def elaborate(self, platform):
        m = Module()
        m.submodules.stage, m.submodules.fetch = self.stage, self.fetch
        m.submodules.cluster = cl = self.cluster
        wiring.connect(m, self.stage.bags, self.fetch.bags)
        wiring.connect(m, self.fetch.o, self.stage.feat)
        wiring.connect(m, cl.resp_0, self.stage.eresp)
        lc = self.load_cmd
        with m.If(lc.valid):
            m.d.comb += [cl.cmd_0.valid.eq(1), cl.cmd_0.payload.eq(lc.payload),
                         lc.ready.eq(cl.cmd_0.ready)]
        with m.Else():
            m.d.comb += [cl.cmd_0.valid.eq(self.stage.ecmd.valid),
                         cl.cmd_0.payload.eq(self.stage.ecmd.payload),
                         self.stage.ecmd.ready.eq(cl.cmd_0.ready)]
            if self.faults:
                last = max(self.faults)
                runs = Signal(range(last + 2))
                is_run = self.stage.ecmd.payload.op == EOp.RUN
                with m.If(self.stage.ecmd.valid & cl.cmd_0.ready & is_run & (runs <= last)):
                    m.d.sync += runs.eq(runs + 1)
                for f in self.faults:
                    with m.If(is_run & (runs == f)):
                        m.d.comb += cl.cmd_0.payload.args.run.rows.eq(0)
        return m


def run_stage(model, queries, *, sb_rows, staging, ks, seed, status_delay=0, faults=(),
              edit=None):
    limits = StageLimits(DIM, 3, 2, 16, 16)
    prog = compile_stage(model, CFG, limits, sb_rows=sb_rows, table_base=1)
    if edit is not None:
        edit(prog)                      # (a program the host would not send)
    dut = _Harness(limits, staging, faults)
    st, fe = dut.stage, dut.fetch
    r = random.Random(seed)
    n_units = _units(CFG.embedding)
    n_tables = len(model.config.tables)
    home = [r.randrange(n_units) for _ in range(n_tables)]
    # every bag, in the order the stage sends them, per unit
    per_unit = [[] for _ in range(n_units)]
    for q in queries:
        for t, ids in enumerate(q.user_ids):
            per_unit[home[t]].append((1 + t, [int(i) for i in ids]))
        nu = len(model.config.user_tables)
        for c in range(q.n_candidates):
            for a in range(len(model.config.item_tables)):
                per_unit[home[nu + a]].append((1 + nu + a, [int(q.item_ids[c, a])]))
    done, lists, statuses = [], [], []
    fixed = {1 + t: f for t, f in enumerate(model.fixed)}   # by the unit's table index

    def setb(ctx, port, payload):
        ctx.set(port.payload, payload)
        ctx.set(port.valid, 1)

    async def load(ctx):
        for t in range(n_tables):
            u = home[t]
            setb(ctx, fe.desc, {"table": 1 + t, "desc": {
                "valid": 1, "onchip": u >= CFG.embedding.channels,
                "unit": u - CFG.embedding.channels if u >= CFG.embedding.channels else u}})
            await ctx.tick()
        ctx.set(fe.desc.valid, 0)
        for port, beats in ((fe.params, prog.fetch_params), (st.ldesc, prog.ldesc),
                            (st.p0, prog.p0), (st.dot_params, prog.dot_params),
                            (st.upair_params, prog.upair_params), (st.uw, prog.uw),
                            (st.sw, prog.sw), (st.bw, prog.bw), (st.conf, [prog.conf])):
            for b in beats:
                await stream_put(ctx, port, b)
        for c in prog.engine_cmds:
            await stream_put(ctx, dut.load_cmd, dut.load_cmd.payload.shape().from_bits(c))
        done.append("load")
        # then the queries
        for q, k in zip(queries, ks):
            await stream_put(ctx, st.q, {"k": k}, rng=r, idle=0.3)
        done.append("q")

    def feeder(name, beats_of):
        async def process(ctx):
            while "load" not in done:
                await ctx.tick()
            for q in queries:
                for b in beats_of(q):
                    await stream_put(ctx, getattr(st, name), b, rng=r, idle=0.3)
            done.append(name)
        return process

    async def topk(ctx):
        for q in queries:
            got = []
            while True:
                beat = await stream_get(ctx, st.topk, rng=r, stall=0.3)
                assert beat.valid == 1
                got.append((int(beat.pairs[0].id), int(beat.pairs[0].score)))
                if beat.last:
                    break
            lists.append(got)
        done.append("topk")

    async def status(ctx):
        # (status_delay: the statuses are read late, after several queries
        # have finished: none may be lost)
        if status_delay:
            await ctx.tick().repeat(status_delay)
        for _ in queries:
            statuses.append((await stream_get(ctx, st.status, rng=r, stall=0.3)))
        done.append("status")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in [load, topk, status, feeder("dense", prog.dense_beats),
               feeder("ubags", prog.ubag_beats), feeder("cand", prog.cand_beats)] \
            + [unit_model(fe, u, per_unit[u], fixed, CFG.embedding, r, done, max_delay=10)
               for u in range(n_units)]:
        sim.add_testbench(tb)
    cands = sum(q.n_candidates for q in queries)
    sim.run_until(1e-8 * (20_000 + 600 * cands))        # a bound: a hang fails
    assert len(done) == 7 + n_units, f"did not finish: {sorted(done)}"
    return lists, statuses


@pytest.mark.parametrize("dense, users, items, n, sb_rows, staging, seed", [
    (3, 2, 1, 10, 4, 64, 0),        # 3 sub-batches, the last one short
    (2, 1, 2, 7, 7, 4, 1),          # one sub-batch, a staging FIFO smaller than it
    (0, 2, 2, 9, 2, 16, 2),         # no bottom MLP
])
def test_scores_are_the_golden_models(dense, users, items, n, sb_rows, staging, seed):
    model = dot_stage(dense, users, items, (8, 6, 1) if seed % 2 else (8, 1), seed)
    queries = synthetic_queries(model.config, 3, n, user_bag=3, seed=seed + 50)
    # (one case reads the statuses late: a query's final score waits until
    # the status before it is taken)
    lists, statuses = run_stage(model, queries, sb_rows=sb_rows, staging=staging,
                                ks=[3, 1, 5], seed=seed, status_delay=4000 * (seed == 1))
    assert [s for s in statuses] == [StageStatus.OK] * len(queries)
    for q, got in zip(queries, lists):
        want = model.scores(q)
        assert got == [(c, int(want[c])) for c in range(q.n_candidates)]


@pytest.mark.parametrize("faults, faulty, status_delay", [
    # query 0's last sub-batch: answered while query 1's user side runs
    ((2,), (0,), 0),
    # query 1's first sub-batch
    ((3,), (1,), 0),
    # query 1's last and query 2's first, the statuses read late: query 1's
    # final score waits for query 0's status while query 2's error comes,
    # and each error is its own query's
    ((5, 6), (1, 2), 4000),
])
def test_an_engine_error_fails_its_query_alone(faults, faulty, status_delay):
    """A candidate RUN the engine answers with an error (no rows): its query's
    status is ENGINE and its list is still complete (the rows are scored as
    zeros); the queries around it, one of them running while the error comes,
    are right, and nothing waits."""
    model = dot_stage(3, 2, 1, (8, 1), 0)
    queries = synthetic_queries(model.config, 3, 10, user_bag=3, seed=50)
    # per query 3 sub-batches (4, 4, 2 rows), a RUN each
    lists, statuses = run_stage(model, queries, sb_rows=4, staging=64, ks=[10, 10, 10],
                                seed=3, status_delay=status_delay, faults=faults)
    assert statuses == [StageStatus.ENGINE if i in faulty else StageStatus.OK
                        for i in range(len(queries))]
    for i, (q, got) in enumerate(zip(queries, lists)):
        if i in faulty:
            assert sorted(c for c, _ in got) == list(range(q.n_candidates))
        else:
            want = model.scores(q)
            assert got == [(c, int(want[c])) for c in range(q.n_candidates)]


@pytest.mark.parametrize("bad", [("p0_base",), ("p0_alt",), ("p0_base", "p0_alt")])
def test_a_bias_past_the_parameters_fails_its_query(bad):
    """A configuration whose user-pass biases land past the engine's
    parameter words (``p0_base``, the region of every other query, or
    ``p0_alt``, the others', too large; the host never compiles one): those
    biases are not written, the queries that use the region are answered
    BAD_PARAM with their lists still complete, the others are right, and
    nothing waits. (The engine would answer each such write with an error
    that nothing waits for, and the scores would take it for a RUN's
    answer.)"""
    model = dot_stage(3, 2, 1, (8, 1), 0)
    assert model.user_layer is not None
    queries = synthetic_queries(model.config, 4, 6, user_bag=3, seed=51)
    lists, statuses = run_stage(
        model, queries, sb_rows=4, staging=64, ks=[6] * len(queries), seed=4,
        edit=lambda p: p.conf.update({f: CFG.array.param_words - 1 for f in bad}))
    failing = [("p0_base", "p0_alt")[i % 2] in bad for i in range(len(queries))]
    assert statuses == [StageStatus.BAD_PARAM if f else StageStatus.OK for f in failing]
    for q, got, f in zip(queries, lists, failing):
        if f:
            assert sorted(c for c, _ in got) == list(range(q.n_candidates))
        else:
            want = model.scores(q)
            assert got == [(c, int(want[c])) for c in range(q.n_candidates)]


def test_a_bottom_row_the_unit_refuses_fails_its_query():
    """The bottom MLP unit's first layer set to take two chunks of dense
    features where the queries have one (the stage's count of dense chunks
    is the host's): the unit refuses each row, and every query's status is
    BAD_BOTTOM, with its list complete and nothing waiting."""
    model = dot_stage(3, 2, 1, (8, 1), 0)
    queries = synthetic_queries(model.config, 2, 6, user_bag=3, seed=52)

    def edit(prog):
        (dims,) = [b["w"]["data"]["dims"] for b in prog.bw
                   if b["layer"] == 0 and b["w"]["kind"] == WriteKind.DIMS]
        dims["in_dim"] = CFG.array.engine_lanes(0) + 1
    lists, statuses = run_stage(model, queries, sb_rows=4, staging=64, ks=[6, 6], seed=5,
                                edit=edit)
    assert statuses == [StageStatus.BAD_BOTTOM] * len(queries)
    for q, got in zip(queries, lists):
        assert sorted(c for c, _ in got) == list(range(q.n_candidates))


def test_a_configuration_it_cannot_run_is_refused():
    """``conf_bad``: every configuration the host compiles passes; one with a
    count out of range (each field in turn) is refused. (Any of these would
    leave a loop of the stage without its end.)"""
    limits = StageLimits(DIM, 3, 2, 16, 16)
    goods = [compile_stage(dot_stage(d, u, i, top, 5), CFG, limits, sb_rows=sb).conf
             for d, u, i, top, sb in ((3, 2, 1, (8, 1), 4), (0, 3, 2, (16, 8, 1), 64),
                                      (5, 1, 1, (8, 4, 1), 1))]
    good = goods[0]
    bad = [("n_items", 0), ("n_items", 3), ("n_pooled", 3), ("sb_rows", 0), ("sb_rows", 65),
           ("log_side", 3), ("pen_chunks", 0), ("pen_chunks", 9), ("u_chunks", 0),
           ("u_chunks", 3), ("n_top", 0), ("n_top", 5), ("n_bottom", 0), ("n_bottom", 3),
           ("dense_chunks", 0), ("dense_chunks", 9)]
    cases = [(c, 0) for c in goods] + [({**good, k: v}, 1) for k, v in bad] + \
        [({**goods[1], "dense_chunks": 1}, 1),                 # no bottom, dense chunks
         ({**goods[1], "n_pooled": 0, "has_bottom": 0}, 1)]    # no user feature
    stage = StageEngine(CFG, engine=0, dim=limits.dim, max_users=limits.max_users,
                        max_items=limits.max_items, max_hidden=limits.max_hidden,
                        max_pen=limits.max_pen)
    got = []

    async def tb(ctx):
        for conf, _ in cases:
            ctx.set(stage.conf.payload, conf)
            ctx.set(stage.conf.valid, 1)
            got.append(ctx.get(stage.conf_bad))
            await ctx.tick()
        ctx.set(stage.conf.valid, 0)

    sim = Simulator(stage)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run_until(1e-8 * 200)
    assert got == [want for _, want in cases], [(c, g) for c, g in zip(cases, got)
                                                 if g != c[1]]
