"""amaranth.sim tests of the embedding caches (hw/embedding.py) in shapes the
cocotb suite does not build: one set (dynamic and static), rows of one beat,
ways that are not a power of two, tree PLRU. A channel unit is served by an
on-chip bank (in order, a beat a cycle); every pooled vector is checked
against the table and every counter against host.cache.CacheModel, with
random idle cycles and backpressure. And the set index against the model's
for every power-of-two number of sets."""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from host.cache import (CacheModel, StaticLoad, select_pinned, set_index, static_cache_writes,
                        static_lines)
from host.packing import Packer
from hw.config import Config
from hw.embedding import Status, _BankResponder, _Unit, cache_set, cache_write_layout
from tests.amaranth_streams import stream_get, stream_put
from tests.test_embedding_sim import make_rows, row_words

BASE = dataclasses.replace(Config.preset("tiny").embedding, onchip_words=4096)


@pytest.mark.parametrize("table_bits", [1, 3, 8])
def test_set_index_is_the_models(table_bits):
    r = random.Random(table_bits)
    for b in range(21):
        sets = 1 << b
        t, i = Signal(table_bits), Signal(32)
        m = Module()
        out = Signal(32)
        m.d.comb += out.eq(cache_set(t, i, sets))
        keys = [(r.randrange(1 << table_bits), r.getrandbits(32)) for _ in range(40)]
        got = []

        async def tb(ctx):
            for tv, iv in keys:
                ctx.set(t, tv)
                ctx.set(i, iv)
                got.append(ctx.get(out))
        sim = Simulator(m)
        sim.add_testbench(tb)
        sim.run()
        assert got == [set_index(tv, iv, sets) for tv, iv in keys], f"{sets} sets"


class _ChannelOnBank(wiring.Component):
    """A channel unit (with the caches) whose AXI port a bank serves."""

    def __init__(self, cfg):
        super().__init__({})
        self.unit = _Unit(cfg, 0)
        self.bank = _BankResponder(cfg)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit, m.submodules.bank = self.unit, self.bank
        wiring.connect(m, self.unit.axi, self.bank.axi)
        return m


def run(cfg, bags, *, n_tables=2, rows=48, dim=8, bits=8, seed=1):
    """Stream ``bags`` through; returns the wrong answers and the counters
    (hardware, model)."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    tables, words, descs = [], [], []
    beats = cfg.row_beats(dim, bits)
    for _ in range(n_tables):
        s, b, c = make_rows(rng, rows, dim, bits)
        base = len(words)
        for r in range(rows):
            words += row_words(cfg, s[r], b[r], c[r], bits)
        stride = (len(words) - base) // rows
        tables.append((s, b, c, base, stride))
        descs.append({"valid": 1, "onchip": 0, "unit": 0, "base": base, "rows": rows,
                      "dim": dim, "bits4": int(bits == 4), "row_beats": beats,
                      "stride_shift": (stride - 1).bit_length()})
    assert len(words) <= cfg.onchip_words
    trace = [(t, r) for t, ids in bags for r in ids]
    pinned = []
    if cfg.static_rows:
        prof = {t: np.zeros(rows, np.int64) for t in range(n_tables)}
        for t, r in trace:
            prof[t][r] += 1
        pinned = select_pinned(prof, cfg.static_rows, ways=cfg.static_ways).pairs()
    writes = []
    if pinned:
        t_, r_ = zip(*pinned)
        data = []
        for t, r in pinned:
            base, stride = tables[t][3], tables[t][4]
            at = base + r * stride
            data.append(np.frombuffer(b"".join(w.to_bytes(cfg.bus_bytes, "little")
                                               for w in words[at:at + beats]), np.uint8))
        load = StaticLoad(np.array(t_), np.array(r_), np.zeros(len(t_), np.int64),
                          np.zeros(len(t_), np.int64), data,
                          static_lines(t_, r_, cfg.static_rows, cfg.static_ways))
        writes = [Packer(cache_write_layout(cfg)).unpack(w)
                  for w in static_cache_writes(load, cfg)]
    top = _ChannelOnBank(cfg)
    u, bank = top.unit, top.bank
    out, counters = [], {}

    async def source(ctx):
        for a, w in enumerate(words):
            ctx.set(bank.w_addr, a)
            ctx.set(bank.w_data, w)
            ctx.set(bank.w_en, 1)
            await ctx.tick()
        ctx.set(bank.w_en, 0)
        for i, d in enumerate(descs):
            ctx.set(u.desc, {"table": i, "desc": d})
            ctx.set(u.desc_en, 1)
            await ctx.tick()
        ctx.set(u.desc_en, 0)
        while ctx.get(u.flushing):
            await ctx.tick()
        for w in writes:
            ctx.set(u.cw, w)
            ctx.set(u.cw_en, 1)
            await ctx.tick()
        ctx.set(u.cw_en, 0)
        for t, ids in bags:
            for n, r in enumerate(ids):
                await stream_put(ctx, u.i, {"table": t, "id": r, "last": int(n == len(ids) - 1),
                                            "empty": 0}, rng=prng, idle=0.3)

    async def sink(ctx):
        for _ in bags:
            got = await stream_get(ctx, u.o, rng=prng, stall=0.3)
            out.append((got.status, [got.pooled[p] for p in range(cfg.max_dim)]))
        await ctx.tick()
        counters.update({k: ctx.get(getattr(u.counters, k))
                         for k in ("static_hits", "dynamic_hits", "misses", "evictions")})

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * (len(words) + 4000 + 80 * len(trace)))
    assert len(out) == len(bags), "not every bag came out"
    wrong = 0
    for (status, vec), (t, ids) in zip(out, bags):
        s, b, c = tables[t][:3]
        want = [0] * cfg.max_dim
        for r in ids:
            for p in range(dim):
                want[p] += int(c[r][p]) * int(s[r]) + int(b[r])
        wrong += status != Status.OK or vec != want
    model = CacheModel.for_config(cfg, pinned=pinned).run(
        (np.array([t for t, _ in trace], np.int64),
         np.array([r for _, r in trace], np.int64))).counters()
    model.pop("accesses")
    return wrong, counters, model


def skewed_bags(n, n_tables, rows, seed):
    r = random.Random(seed)
    return [(r.randrange(n_tables), [min(rows - 1, int(rows * r.random() ** 3))
                                     for _ in range(r.randint(1, 4))]) for _ in range(n)]


@pytest.mark.parametrize("name, changes", [
    ("one dynamic set", dict(cache_sets=1, cache_ways=4)),
    ("one static set", dict(static_rows=4, static_ways=4, cache_sets=2, cache_ways=2)),
    ("rows of one beat", dict(data_bits=256, static_rows=8, static_ways=2, cache_sets=4,
                              cache_ways=2)),
    ("ways not a power of two", dict(static_rows=12, static_ways=3, cache_sets=2,
                                     cache_ways=3)),
    ("tree PLRU", dict(cache_sets=4, cache_ways=4, cache_policy="plru")),
])
def test_cache_shapes(name, changes):
    cfg = dataclasses.replace(BASE, **changes)
    wrong, hw, model = run(cfg, skewed_bags(60, 2, 48, seed=len(name)))
    assert wrong == 0, f"{name}: {wrong} wrong answers"
    assert hw == model, f"{name}: counters {hw}, model {model}"
    assert hw["static_hits"] + hw["dynamic_hits"] > 0 and hw["misses"] > 0
