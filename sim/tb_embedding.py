"""cocotb tests of the embedding lookup unit (:mod:`hw.embedding`) against the
golden model (:mod:`host.embedding`), with an AXI4 memory model
(:mod:`sim.axi_mem`) on every channel.

:func:`build_embedding` (plain Python) builds the cached Verilator model of
an :class:`~hw.config.EmbeddingConfig`. Configuration of the tests (JSON
through ``RECACCEL_TB_CONFIG``): ``embedding`` (the config fields), ``seed``,
``idle``, ``backpressure`` (input idle and output stall probabilities),
``latency`` ([min, max] cycles), ``r_gaps``, ``ar_backpressure``, ``bags``
per unit, ``errors`` (error ranges in the channels' memories), ``skew``
(share of ids drawn from a heavy-tailed law rather than uniformly).

With caches in the config, every test also pins each channel's hottest rows
(from the lookups it is about to send) in the static cache, and checks the
cache counters at the end against :class:`host.cache.CacheModel` on the rows
the unit read.
"""

from __future__ import annotations

import dataclasses
import random

import cocotb
import numpy as np

from host.cache import CacheModel, Outcome, StaticLoad, select_pinned, static_cache_writes, static_lines
from host.embedding import (EmbeddingStatus, FixedPointTable, pack_hw_rows, pool_rows)
from host.packing import Packer
from hw.config import Config, EmbeddingConfig
from hw.embedding import (bank_write_layout, counters_layout, desc_write_layout,
                          lookup_layout, pooled_layout)
from sim import runner
from sim.axi_mem import AxiReadMemory
from sim.build import design_verilog
from sim.runner import read_tb_config
from sim.streams import StreamSink, StreamSource, random_pauses, reset, start_clock

__all__ = ["TOPLEVEL", "build_embedding"]

TOPLEVEL = "embedding_lookup"


def build_embedding(config: EmbeddingConfig, *, waves: bool = False):
    """The Verilator build of ``EmbeddingLookup(config)``: ``(runner, toplevel)``."""
    from hw.embedding import EmbeddingLookup
    name = "emb-" + "-".join(str(v) for v in dataclasses.astuple(config))
    cfg = Config(name=name, embedding=config)
    src = design_verilog(cfg, lambda c: EmbeddingLookup(c.embedding), TOPLEVEL, "embedding")
    build_dir = runner.default_build_root() / "builds" / f"{TOPLEVEL}-{name}"
    return runner.build([src], TOPLEVEL, build_dir, waves=waves), TOPLEVEL


def stride_beats(cfg: EmbeddingConfig, dim: int, bits: int) -> int:
    return 1 << (cfg.row_beats(dim, bits) - 1).bit_length()


@dataclasses.dataclass
class Table:
    index: int
    unit: int
    table: FixedPointTable
    base: int               # in beats
    byte_base: int

    @property
    def rows(self):
        return self.table.rows


def random_table(cfg: EmbeddingConfig, rng: np.random.Generator, rows: int) -> FixedPointTable:
    bits = int(rng.choice([8, 4]))
    dim = int(rng.integers(1, cfg.max_dim + 1))
    lim = 1 << min(31, cfg.frac_bits + 4)
    return FixedPointTable(codes=rng.integers(0, 1 << bits, (rows, dim)).astype(np.uint8),
                           scale_q=rng.integers(-lim, lim, rows),
                           bias_q=rng.integers(-(1 << 31), 1 << 31, rows) // 4,
                           bits=bits, frac_bits=cfg.frac_bits)


def bag_beats(table: int, ids, row_tables=None, *, rng=None, empty_rate=0.0):
    """The lookup beats of one bag (dicts of :func:`hw.embedding.lookup_layout`):
    an empty bag is one ``empty, last`` beat; ``row_tables`` names each row's
    table (default: the bag's); with ``rng``, an empty beat (which carries
    nothing) goes before a row with probability ``empty_rate``."""
    if not len(ids):
        return [{"table": table, "id": 0, "last": 1, "empty": 1}]
    beats = []
    for n, i in enumerate(ids):
        if rng is not None and rng.random() < empty_rate:
            beats.append({"table": table, "id": 0, "last": 0, "empty": 1})
        beats.append({"table": table if row_tables is None else row_tables[n], "id": int(i),
                      "last": int(n == len(ids) - 1), "empty": 0})
    return beats


def check_pooled(got: dict, status: int, want, max_dim: int, where: str):
    """An unpacked output beat against the golden status and vector (``want``
    is the table's ``dim`` elements; the rest must be zero)."""
    got_status = int(getattr(got["status"], "value", got["status"]))
    assert got_status == int(status), f"{where}: status {got_status}, want {int(status)}"
    full = np.zeros(max_dim, np.int64)
    full[:len(want)] = want
    assert list(got["pooled"]) == full.tolist(), f"{where}: pooled differs"


class EmbeddingBench:
    """Tables placed on the units, the memory models, the streams, and the
    golden answer of every bag.

    ``tables`` is a list of ``(unit, FixedPointTable)``; by default two
    random tables per unit (banks: what fits). With ``tb["errors"]`` the
    second half of each channel's first table answers SLVERR.
    """

    def __init__(self, dut, tb: dict, tables=None, mem_rate: float = 1.0):
        self.dut = dut
        self.tb = tb
        cfg = self.cfg = EmbeddingConfig(**tb["embedding"])
        self.rng = np.random.default_rng(tb["seed"])
        self.prng = random.Random(tb["seed"])
        start_clock(dut, 10)
        n_units = cfg.channels + cfg.onchip_banks
        if tables is None:
            tables = [(u, random_table(cfg, self.rng, int(self.rng.integers(1, 24))))
                      for u in range(n_units) for _ in range(2)][:cfg.max_tables]
        self.tables: list[Table] = []
        memories = [bytearray() for _ in range(cfg.channels)]
        self.bank_words: list[list[int]] = [[] for _ in range(cfg.onchip_banks)]
        for u, t in tables:
            stride = stride_beats(cfg, t.dim, t.bits)
            rows = np.zeros((t.rows, stride * cfg.bus_bytes), np.uint8)
            packed = pack_hw_rows(t, cfg)
            rows[:, :packed.shape[1]] = packed
            if u < cfg.channels:
                mem = memories[u]
                base = -(-len(mem) // (stride * cfg.bus_bytes)) * stride
                mem.extend(bytes(base * cfg.bus_bytes - len(mem)))
                mem.extend(rows.tobytes())
            else:
                words = self.bank_words[u - cfg.channels]
                base = -(-len(words) // stride) * stride
                if (base + t.rows * stride) > cfg.onchip_words:
                    continue
                words.extend([0] * (base - len(words)))
                flat = rows.reshape(-1, cfg.bus_bytes)
                words.extend(int.from_bytes(w.tobytes(), "little") for w in flat)
            self.tables.append(Table(len(self.tables), u, t, base, base * cfg.bus_bytes))
        self.error_rows: dict[int, set] = {}
        self.axi = []
        self.channel_memory = []
        for c in range(cfg.channels):
            errors = []
            mine = [t for t in self.tables if t.unit == c]
            if tb.get("errors") and mine:
                t = mine[0]
                stride_bytes = stride_beats(cfg, t.table.dim, t.table.bits) * cfg.bus_bytes
                half = t.rows // 2
                errors.append((t.byte_base + half * stride_bytes,
                               t.byte_base + t.rows * stride_bytes))
                self.error_rows[t.index] = set(range(half, t.rows))
            memory = np.frombuffer(bytes(memories[c]) + bytes(cfg.bus_bytes), np.uint8)
            self.channel_memory.append(memory)
            self.axi.append(AxiReadMemory(
                dut, f"m{c}", dut.clk, memory=memory, reset=dut.rst,
                latency=tuple(tb["latency"]), seed=tb["seed"] * 97 + c,
                ar_backpressure=tb["ar_backpressure"], r_gaps=tb["r_gaps"],
                beats_per_cycle=mem_rate, error_ranges=errors))
        self.desc = StreamSource(dut, "desc", dut.clk, reset=dut.rst)
        self.bank_w = (StreamSource(dut, "bank_w", dut.clk, reset=dut.rst)
                       if cfg.onchip_banks else None)
        self.src = []
        self.sink = []
        for u in range(n_units):
            idle = random_pauses(random.Random(tb["seed"] * 31 + u), tb["idle"]) \
                if tb["idle"] else None
            bp = random_pauses(random.Random(tb["seed"] * 37 + u), tb["backpressure"]) \
                if tb["backpressure"] else None
            self.src.append(StreamSource(dut, f"i{u}", dut.clk, reset=dut.rst, idle=idle))
            self.sink.append(StreamSink(dut, f"o{u}", dut.clk, reset=dut.rst, backpressure=bp))
        self.lookup = Packer(lookup_layout(cfg))
        self.pooled = Packer(pooled_layout(cfg))
        # the rows each channel reads, in order (the caches' trace)
        self.reads: list[list[tuple[int, int]]] = [[] for _ in range(cfg.channels)]
        self.pinned: list[list[tuple[int, int]]] = [[] for _ in range(cfg.channels)]
        self.pinned_keys: set[tuple[int, int]] = set()

    def read_rows(self, unit: int, table: int, ids, row_tables=None):
        """The rows the unit reads of a bag: those before its first problem
        (a bad table: none)."""
        cfg = self.cfg
        t = self.tables[table] if table < len(self.tables) else None
        if t is None or t.unit != unit:
            return []
        out = []
        for n, i in enumerate(ids):
            if n >= cfg.max_bag or (row_tables and row_tables[n] != table) or i >= t.rows:
                break
            out.append((table, int(i)))
        return out

    def pin(self, plans):
        """Pin each channel's hottest rows of ``plans`` (bags per unit, in
        the form :meth:`send_bag` takes) in its static cache."""
        cfg = self.cfg
        if not cfg.static_rows:
            return
        for c in range(cfg.channels):
            counts = {}
            for bag in plans[c]:
                for key in self.read_rows(c, *bag):
                    counts[key] = counts.get(key, 0) + 1
            profile = {t.index: np.zeros(t.rows, np.int64) for t in self.tables if t.unit == c}
            for (t, i), n in counts.items():
                profile[t][i] = n
            sel = select_pinned(profile, cfg.static_rows, ways=cfg.static_ways)
            self.pinned[c] = sel.pairs()
        self.pinned_keys = {k for p in self.pinned for k in p}

    def _cache_writes(self) -> list[int]:
        cfg = self.cfg
        table, row, channel, data = [], [], [], []
        line = []
        for c, pairs in enumerate(self.pinned):
            if not pairs:
                continue
            t_, r_ = zip(*pairs)
            line += static_lines(t_, r_, cfg.static_rows, cfg.static_ways).tolist()
            for t, r in pairs:
                tb = self.tables[t]
                stride = stride_beats(cfg, tb.table.dim, tb.table.bits) * cfg.bus_bytes
                start = tb.byte_base + r * stride
                mem = self.channel_memory[c]
                data.append(np.asarray(mem[start:start + cfg.row_beats(
                    tb.table.dim, tb.table.bits) * cfg.bus_bytes], np.uint8))
                table.append(t)
                row.append(r)
                channel.append(c)
        load = StaticLoad(np.array(table, np.int64), np.array(row, np.int64),
                          np.array(channel, np.int64), np.zeros(len(table), np.int64), data,
                          np.array(line, np.int64))
        return static_cache_writes(load, cfg)

    def check_counters(self):
        """The hardware's counters against the cache model on the rows read."""
        cfg = self.cfg
        if not cfg.cached:
            return
        cp = Packer(counters_layout(cfg))
        poisoned = 0
        for c in range(cfg.channels):
            got = cp.unpack(int(getattr(self.dut, f"c{c}").value))
            model = CacheModel.for_config(cfg, pinned=self.pinned[c])
            reads = self.reads[c]
            table = np.array([t for t, _ in reads], np.int64)
            row = np.array([r for _, r in reads], np.int64)
            stats = model.run((table, row))
            want = stats.counters()
            want.pop("accesses")
            self.dut._log.info(f"channel {c} cache counters: {got}")
            assert got == want, f"channel {c}: counters {got}, model {want}"
            failed = np.array([r in self.error_rows.get(t, ()) for t, r in reads], bool)
            poisoned += int(np.sum(failed & (stats.outcome == Outcome.DYNAMIC_HIT)))
        if self.error_rows and cfg.dynamic_rows:
            self.dut._log.info(f"{poisoned} hits on lines a failed read filled")
            assert poisoned, "no hit on a line a failed read filled: the test misses its point"

    async def load(self):
        cfg = self.cfg
        await reset(self.dut, self.dut.clk, 3)
        dp = Packer(desc_write_layout(cfg))
        for t in self.tables:
            onchip = t.unit >= cfg.channels
            beats = cfg.row_beats(t.table.dim, t.table.bits)
            self.desc.send_nowait(dp.pack({"table": t.index, "desc": {
                "valid": 1, "onchip": int(onchip),
                "unit": t.unit - cfg.channels if onchip else t.unit,
                "base": t.base, "rows": t.rows, "dim": t.table.dim,
                "bits4": int(t.table.bits == 4), "row_beats": beats,
                "stride_shift": (beats - 1).bit_length()}}))
        if self.bank_w is not None:
            bp = Packer(bank_write_layout(cfg))
            for b, words in enumerate(self.bank_words):
                for a, w in enumerate(words):
                    self.bank_w.send_nowait(bp.pack({"bank": b, "addr": a, "data": w}))
            await self.bank_w.wait_idle()
        if cfg.cached:
            cache_w = StreamSource(self.dut, "cache_w", self.dut.clk, reset=self.dut.rst)
            for w in self._cache_writes():
                cache_w.send_nowait(w)
            await cache_w.wait_idle()
        await self.desc.wait_idle()

    def golden(self, unit: int, table: int, ids: list[int], row_tables=None):
        cfg = self.cfg
        zero = np.zeros(cfg.max_dim, np.int64)
        t = self.tables[table] if table < len(self.tables) else None
        if t is None or t.unit != unit:
            return EmbeddingStatus.BAD_TABLE, zero
        if len(ids) > cfg.max_bag or any(rt != table for rt in row_tables or ()):
            return EmbeddingStatus.BAD_BAG, zero
        if any(i >= t.rows for i in ids):
            return EmbeddingStatus.BAD_ID, zero
        if any(i in self.error_rows.get(table, ()) and (table, i) not in self.pinned_keys
               for i in ids):
            return EmbeddingStatus.MEM_ERROR, zero
        ft = t.table
        pooled = pool_rows(ft.codes[ids], ft.scale_q[ids], ft.bias_q[ids], [0, len(ids)])
        out = zero.copy()
        out[:ft.dim] = pooled[0]
        return EmbeddingStatus.OK, out

    def random_bag(self, unit: int):
        cfg, r = self.cfg, self.prng
        mine = [t for t in self.tables if t.unit == unit]
        if not mine or r.random() < 0.05:
            table = r.choice([t.index for t in self.tables if t.unit != unit]
                             + [len(self.tables), (1 << max(1, (cfg.max_tables - 1)
                                                            .bit_length())) - 1])
            rows = 4
        else:
            t = r.choice(mine)
            table, rows = t.index, t.rows
        n = r.choice([0, 1, 1, 2, 3, r.randrange(0, cfg.max_bag + 1)])
        if r.random() < 0.03:
            n = cfg.max_bag + 1
        skew = self.tb.get("skew", 0.0)

        def one():
            if r.random() < 0.04:
                return rows + r.randrange(3)
            if r.random() < skew:                   # heavy-tailed: low ids hot
                return min(rows - 1, int(rows * r.random() ** 4))
            return r.randrange(rows)
        ids = [one() for _ in range(n)]
        row_tables = [table] * n
        if n >= 2 and r.random() < 0.04:       # a row of another table mid-bag
            row_tables[r.randrange(1, n)] = r.randrange(len(self.tables) + 1)
        return table, ids, row_tables

    def send_bag(self, unit: int, table: int, ids: list[int], row_tables=None):
        if unit < self.cfg.channels:
            self.reads[unit] += self.read_rows(unit, table, ids, row_tables)
        for beat in bag_beats(table, ids, row_tables, rng=self.prng, empty_rate=0.05):
            self.src[unit].send_nowait(self.lookup.pack(beat))

    async def check_unit(self, unit: int, bags):
        for n, bag in enumerate(bags):
            got = self.pooled.unpack(await self.sink[unit].recv())
            status, want = self.golden(unit, *bag)
            check_pooled(got, status, want, self.cfg.max_dim,
                         f"unit {unit} bag {n} (table {bag[0]}, ids {bag[1]})")


@cocotb.test(timeout_time=40, timeout_unit="ms")
async def test_random_bags(dut):
    """Random tables on every channel and bank, random bags (empty, long,
    bad ids, unknown tables) on every unit at once, with idle cycles,
    backpressure, random memory latency, AR backpressure and R gaps."""
    tb = read_tb_config()
    bench = EmbeddingBench(dut, tb)
    n_units = len(bench.src)
    # with "rounds" > 1, the unit is reset and loaded anew between rounds:
    # the caches start empty again (and the static one holds the new pins)
    for _ in range(tb.get("rounds", 1)):
        plans = [[bench.random_bag(u) for _ in range(tb["bags"])] for u in range(n_units)]
        bench.reads = [[] for _ in range(bench.cfg.channels)]
        bench.pin(plans)
        await bench.load()
        for u in range(n_units):
            for bag in plans[u]:
                bench.send_bag(u, *bag)
        checks = [cocotb.start_soon(bench.check_unit(u, plans[u])) for u in range(n_units)]
        for c in checks:
            await c
        for m in bench.axi:
            m.check()
        bench.check_counters()


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def bench_uniform(dut):
    """Benchmark: one table of ``bench.rows`` int8 rows of ``max_dim`` per
    channel, bags of one uniform random row streamed to every channel at
    once (``bench.lookups`` each), fixed memory latency, no idle cycles, no
    backpressure; then one lookup round alone (a bag on every channel).
    Every answer is checked; the figures go to ``report``."""
    import json
    from cocotb.triggers import RisingEdge
    tb = read_tb_config()
    spec = tb["bench"]
    cfg = EmbeddingConfig(**tb["embedding"])
    tb = {**tb, "idle": 0.0, "backpressure": 0.0, "r_gaps": 0.0, "ar_backpressure": 0.0,
          "latency": [spec["latency"], spec["latency"]], "errors": False}
    rng = np.random.default_rng(tb["seed"] + 1)
    dim, rows = cfg.max_dim, spec["rows"]
    lim = 1 << min(31, cfg.frac_bits + 4)
    tables = [(c, FixedPointTable(rng.integers(0, 256, (rows, dim)).astype(np.uint8),
                                  rng.integers(-lim, lim, rows),
                                  rng.integers(-(1 << 29), 1 << 29, rows), 8, cfg.frac_bits))
              for c in range(cfg.channels)]
    bench = EmbeddingBench(dut, tb, tables)
    await bench.load()
    beats = cfg.row_beats(dim, 8)
    clk = dut.clk
    cycle = 0

    async def count():
        nonlocal cycle
        while True:
            await RisingEdge(clk)
            cycle += 1
    counter = cocotb.start_soon(count())

    async def stream(lookups):
        plans = []
        for c in range(cfg.channels):
            bags = [(c, [int(i)]) for i in rng.integers(0, rows, lookups)]
            for table, ids in bags:
                for beat in bag_beats(table, ids):
                    bench.src[c].send_nowait(bench.lookup.pack(beat))
            plans.append(bags)
        start = cycle
        checks = [cocotb.start_soon(bench.check_unit(c, plans[c])) for c in range(cfg.channels)]
        for t in checks:
            await t
        return cycle - start

    cycles = await stream(spec["lookups"])
    round_cycles = await stream(1)
    counter.cancel()
    total = spec["lookups"] * cfg.channels
    peak = cfg.channels / beats
    report = {"channels": cfg.channels, "row_beats": beats, "latency": spec["latency"],
              "lookups": total, "cycles": cycles, "rows_per_cycle": total / cycles,
              "peak_rows_per_cycle": peak, "efficiency": total / cycles / peak,
              "round_latency_cycles": round_cycles,
              "max_in_flight": max(m.stats.max_in_flight for m in bench.axi)}
    with open(tb["report"], "w") as f:
        json.dump(report, f, indent=2)



@cocotb.test(timeout_time=40, timeout_unit="ms")
async def test_compiled_tables(dut):
    """End to end with the table compiler: float tables (8- and 4-bit, some
    one-hot and small enough to be merged by Cartesian product, some on
    chip), the compiler's images, descriptors and lookup streams, against
    :func:`host.table_compiler.golden_stream`. Random stalls everywhere and
    an error range on channel 0."""
    from host.table_compiler import (MergePolicy, TableSpec, bank_writes, build_lookup_stream,
                                     compile_tables, descriptor_writes, golden_stream)
    tb = read_tb_config()
    cfg = EmbeddingConfig(**tb["embedding"])
    rng = np.random.default_rng(tb["seed"])
    prng = random.Random(tb["seed"])
    specs = []
    for n in range(min(cfg.max_tables, 7)):
        one_hot = n < 4
        rows = int(rng.integers(2, 6)) if one_hot else int(rng.integers(20, 200))
        dim = int(rng.integers(1, 9)) if one_hot else int(rng.integers(1, cfg.max_dim + 1))
        specs.append(TableSpec(f"f{n}", rng.normal(0, 1, (rows, dim)).astype(np.float32),
                               bits=int(rng.choice([8, 4])),
                               pooling_factor=1.0 if one_hot else 3.0))
    compiled = compile_tables(specs, cfg, merge=MergePolicy(max_growth=1.0))
    amap = compiled.address_map
    items = tb["bags"]
    bags = {}
    for s in specs:
        t, _ = amap.feature(s.name)
        rows = amap.tables[t].rows
        if s.pooling_factor == 1.0 and amap.tables[t].merged:
            bags[s.name] = [[prng.randrange(s.data.shape[0])] for _ in range(items)]
        else:
            bags[s.name] = [[prng.randrange(s.data.shape[0] + (prng.random() < 0.03))
                             for _ in range(prng.choice([0, 1, 2, 3, 5]))]
                            for _ in range(items)]
    stream = build_lookup_stream(amap, bags)
    errors = {}
    if len(compiled.channel_images[0]):
        size = len(compiled.channel_images[0])
        errors = {0: [(size - size // 4, size)]}
    status, vectors = golden_stream(compiled, stream, errors)
    assert any(t.merged for t in amap.tables), "no table was merged"

    start_clock(dut, 10)
    await reset(dut, dut.clk, 3)
    axi = []
    for c in range(cfg.channels):
        memory = np.concatenate([compiled.channel_images[c],
                                 np.zeros(cfg.bus_bytes, np.uint8)])
        axi.append(AxiReadMemory(dut, f"m{c}", dut.clk, memory=memory, reset=dut.rst,
                                 latency=tuple(tb["latency"]), seed=tb["seed"] + c,
                                 ar_backpressure=tb["ar_backpressure"], r_gaps=tb["r_gaps"],
                                 error_ranges=errors.get(c, ())))
    desc = StreamSource(dut, "desc", dut.clk, reset=dut.rst)
    for w in descriptor_writes(amap, cfg):
        desc.send_nowait(w)
    if cfg.onchip_banks:
        bank_w = StreamSource(dut, "bank_w", dut.clk, reset=dut.rst)
        for w in bank_writes(compiled):
            bank_w.send_nowait(w)
        await bank_w.wait_idle()
    await desc.wait_idle()
    lookup, pooled = Packer(lookup_layout(cfg)), Packer(pooled_layout(cfg))
    n_units = cfg.channels + cfg.onchip_banks

    async def unit(u):
        src = StreamSource(dut, f"i{u}", dut.clk, reset=dut.rst,
                           idle=random_pauses(random.Random(tb["seed"] + 7 * u), tb["idle"]))
        sink = StreamSink(dut, f"o{u}", dut.clk, reset=dut.rst,
                          backpressure=random_pauses(random.Random(tb["seed"] + 11 * u),
                                                     tb["backpressure"]))
        mine = stream.unit_bags(u)
        for k in mine:
            for beat in bag_beats(int(stream.table[k]), stream.bag_ids(k)):
                src.send_nowait(lookup.pack(beat))
        for k in mine:
            for seg, want in enumerate(vectors[k]):
                check_pooled(pooled.unpack(await sink.recv()), status[k], want, cfg.max_dim,
                             f"unit {u} bag {k} segment {seg} (table {stream.table[k]})")

    tasks = [cocotb.start_soon(unit(u)) for u in range(n_units)]
    for t in tasks:
        await t
    for m in axi:
        m.check()


@cocotb.test(timeout_time=5000, timeout_unit="ms")
async def bench_cache_rounds(dut):
    """Benchmark of the caches (:mod:`benchmarks.cache`): ``bench.tables``
    (rows per table; table ``k`` on channel ``k mod channels``, int8 rows of
    ``max_dim``), ``bench.pinned`` per channel, ``bench.warm`` and
    ``bench.measure``: per channel the ``[table, id]`` lookups, in bags of
    ``bench.bag``; a round is one bag on every channel. The warm-up goes
    untimed, then the measured rounds stream back to back; every answer is
    checked, and so are the counters against the cache model over both.
    Fixed memory latency ``bench.latency`` at ``bench.mem_rate`` beats per
    cycle; no idle cycles, no backpressure."""
    import json
    from cocotb.triggers import RisingEdge
    tb = read_tb_config()
    spec = tb["bench"]
    cfg = EmbeddingConfig(**tb["embedding"])
    tb = {**tb, "idle": 0.0, "backpressure": 0.0, "r_gaps": 0.0, "ar_backpressure": 0.0,
          "latency": [spec["latency"], spec["latency"]], "errors": False}
    rng = np.random.default_rng(tb["seed"])
    lim = 1 << min(31, cfg.frac_bits + 4)
    dim = cfg.max_dim
    tables = [(k % cfg.channels,
               FixedPointTable(rng.integers(0, 256, (rows, dim)).astype(np.uint8),
                               rng.integers(-lim, lim, rows),
                               rng.integers(-(1 << 29), 1 << 29, rows), 8, cfg.frac_bits))
              for k, rows in enumerate(spec["tables"])]
    bench = EmbeddingBench(dut, tb, tables, mem_rate=spec["mem_rate"])
    if cfg.static_rows:
        bench.pinned = [[tuple(p) for p in pins] for pins in spec["pinned"]]
        bench.pinned_keys = {k for p in bench.pinned for k in p}
    await bench.load()
    bag = spec["bag"]
    cycle = 0

    async def count():
        nonlocal cycle
        while True:
            await RisingEdge(dut.clk)
            cycle += 1
    counter = cocotb.start_soon(count())

    async def stream(lookups):
        plans = []
        for c in range(cfg.channels):
            bags = []                       # up to `bag` lookups of one table
            for table, ident in lookups[c]:
                if not bags or bags[-1][1] != table or len(bags[-1][2]) == bag:
                    bags.append((c, table, []))
                bags[-1][2].append(ident)
            for unit, table, ids in bags:
                bench.send_bag(unit, table, ids)
            plans.append([(table, ids) for _, table, ids in bags])
        start = cycle
        checks = [cocotb.start_soon(bench.check_unit(c, plans[c]))
                  for c in range(cfg.channels)]
        for t in checks:
            await t
        return cycle - start, max(len(p) for p in plans)

    await stream(spec["warm"])
    cp = Packer(counters_layout(cfg)) if cfg.cached else None

    def counters():
        if cp is None:
            return None
        return [cp.unpack(int(getattr(dut, f"c{c}").value)) for c in range(cfg.channels)]
    before = counters()
    cycles, rounds = await stream(spec["measure"])
    after = counters()
    counter.cancel()
    bench.check_counters()
    report = {"cycles": cycles, "rounds": rounds, "cycles_per_round": cycles / rounds,
              "counters": None if after is None else
              {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in after[0]}}
    with open(tb["report"], "w") as f:
        json.dump(report, f, indent=2)
