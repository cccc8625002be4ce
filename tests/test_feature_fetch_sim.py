# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of a stage's feature fetch (hw/feature_fetch.py): the
bags of queries of a quantized stage (host/models.py) sent to the units
their tables live on, the units modelled in the testbench (in order, each
answering after its own random delay, with the golden pooled lookup of
host/embedding.py), the int8 features compared bit for bit with
QuantizedStageModel.int8_features, with random idle cycles and
backpressure everywhere."""

import random

import pytest
from amaranth.sim import Simulator

from host.embedding import EmbeddingStatus, pooled_lookup
from host.movielens import synthetic_queries
from hw.config import Config
from hw.embedding import Status, _units
from hw.feature_fetch import FeatureFetch
from tests.amaranth_streams import stream_get, stream_put
from tests.test_interaction_sim import stage

CFG = Config.preset("tiny").embedding


def unit_model(fetch, u, bags, fixed, emb, rng, done, *, max_delay=12):
    """A lookup unit in the testbench: takes ``bags`` (``(table, ids)``, in
    order) on ``fetch.i<u>``, checks each, and answers each with the golden
    pooled lookup of ``fixed[table]`` after a random delay, in order."""
    async def process(ctx):
        for t, ids in bags:
            seen = []
            while True:
                beat = await stream_get(ctx, getattr(fetch, f"i{u}"), rng=rng, stall=0.3)
                if not beat.empty:
                    seen.append((int(beat.table), int(beat.id)))
                if beat.last:
                    break
            assert seen == [(t, i) for i in ids], f"unit {u}: bag {seen}, expected {ids}"
            pooled, status = pooled_lookup(fixed[t], [0, len(ids)], ids, emb.max_bag)
            st = int(status[0])
            vec = [int(v) for v in pooled[0]] + [0] * (emb.max_dim - pooled.shape[1])
            if st != EmbeddingStatus.OK:
                vec = [0] * emb.max_dim
            for _ in range(rng.randrange(0, max_delay)):
                await ctx.tick()
            await stream_put(ctx, getattr(fetch, f"o{u}"), {"status": st, "pooled": vec})
        done.append(f"unit{u}")
    return process


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="dim"):
        FeatureFetch(CFG, CFG.max_dim + 1)
    with pytest.raises(ValueError, match="depth"):
        FeatureFetch(CFG, 4, depth=0)
    with pytest.raises(TypeError, match="EmbeddingConfig"):
        FeatureFetch(Config.preset("tiny"), 4)


@pytest.mark.parametrize("dense, users, items, seed", [(3, 2, 2, 0), (0, 1, 3, 1), (2, 0, 3, 2),
                                                    (3, 2, 3, 3)])
def test_features_are_the_golden_models(dense, users, items, seed):
    q = stage(dense, users, items, 8, seed=seed)
    cfg = q.config
    queries = synthetic_queries(cfg, 3, 5, user_bag=3, seed=seed + 7)
    r = random.Random(seed)
    n_units = _units(CFG)
    n_tables = len(cfg.tables)
    home = [r.randrange(n_units) for _ in range(n_tables)]   # table -> unit
    dut = FeatureFetch(CFG, 8, depth=r.choice([2, 4, 32]))
    nu = len(cfg.user_tables)

    # the bags, in the sequencer's order, and the features they must give
    bags, want = [], []
    for query in queries:
        u, i = q.int8_features(query)
        user = u[1:] if q.bottom is not None else u
        for t, ids in enumerate(query.user_ids):
            bags.append((t, [int(x) for x in ids], 0, t == nu - 1))
            want.append((0, t == nu - 1, Status.OK.value, user[t].tolist()))
        for c in range(query.n_candidates):
            for a in range(len(cfg.item_tables)):
                bags.append((nu + a, [int(query.item_ids[c, a])], 1, a == items - 1))
                want.append((1, a == items - 1, Status.OK.value, i[c, a].tolist()))
    # one id past the end of its table: the unit's BAD_ID, a zero vector
    bad_table = nu
    bags.append((bad_table, [cfg.tables[bad_table].rows], 1, True))
    want.append((1, True, Status.BAD_ID.value, [0] * 8))

    expected_per_unit = [[] for _ in range(n_units)]
    for t, ids, _, _ in bags:
        expected_per_unit[home[t]].append((t, ids))
    done = []

    async def params(ctx):
        for t in range(n_tables):
            ctx.set(dut.desc.payload, {"table": t, "desc": {
                "valid": 1, "onchip": home[t] >= CFG.channels,
                "unit": home[t] - CFG.channels if home[t] >= CFG.channels else home[t]}})
            ctx.set(dut.desc.valid, 1)
            ctx.set(dut.params.payload, {"table": t, "mult": int(q.emb_mult[t]),
                                         "shift": int(q.emb_shift[t])})
            ctx.set(dut.params.valid, 1)
            await ctx.tick()
        ctx.set(dut.desc.valid, 0)
        ctx.set(dut.params.valid, 0)
        for t, ids, item, group_last in bags:
            for j, ident in enumerate(ids):
                await stream_put(ctx, dut.bags, {
                    "lookup": {"table": t, "id": ident, "last": j == len(ids) - 1},
                    "item": item, "group_last": group_last}, rng=r, idle=0.3)
        done.append("bags")

    got = []

    async def sink(ctx):
        while len(got) < len(want):
            beat = await stream_get(ctx, dut.o, rng=r, stall=0.4)
            got.append((beat.item, beat.last, beat.status.value, [int(v) for v in beat.vec]))
        done.append("sink")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in [params, sink] + [unit_model(dut, u, expected_per_unit[u], q.fixed, CFG, r, done)
                                  for u in range(n_units)]:
        sim.add_testbench(tb)
    sim.run_until(1e-8 * 400 * len(want))     # a bound: a hang fails
    assert len(done) == 2 + n_units, f"did not finish: {done}, {len(got)} of {len(want)}"
    assert got == [(w[0], w[1], w[2], w[3]) for w in want]
