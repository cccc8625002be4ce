"""The embedding-cache model (host/cache.py) against a brute-force reference
written from the spec in its docstring: set hash bit by bit, ways scanned
with explicit timestamps (LRU) or an explicit tree walk (PLRU); hand-worked
LRU and PLRU sequences; the static-first rule; counters; Belady's MIN
against an exhaustive search; the static selection and its errors."""

from functools import lru_cache

import numpy as np
import pytest

from host.cache import (TABLE_SALT, CacheModel, CacheStats, Outcome,
                        belady_hit_rate, belady_hits, check_pinned, compiled_profile,
                        select_pinned, set_index, static_cache_load, static_cache_writes,
                        static_lines, table_salt)
from host.table_compiler import TableSpec, compile_tables
from host.traces import Trace, zipf_trace
from hw.config import EmbeddingConfig

M, S, D = Outcome.MISS, Outcome.STATIC_HIT, Outcome.DYNAMIC_HIT


# -- a reference written from the docstring -------------------------------------

def ref_set(table, row, sets):
    """Bit j of the set is the XOR of the row's bits i = j (mod b), over
    its 32 bits, and of bit j of table * 0x9E3779B1."""
    b = sets.bit_length() - 1
    s = (table * 0x9E3779B1) % 2**32 % sets
    for i in range(32):
        if b and (row >> i) & 1:
            s ^= 1 << (i % b)
    return s


class RefCache:
    def __init__(self, static_rows, sets, ways, policy, pinned):
        assert len(pinned) <= static_rows
        self.pinned = set(pinned)
        self.sets, self.ways = (sets, ways) if sets and ways else (1, 0)
        self.policy = policy
        self.line = [[None] * self.ways for _ in range(self.sets)]
        self.used = [[0] * self.ways for _ in range(self.sets)]
        self.tree = [[0] * max(self.ways, 1) for _ in range(self.sets)]   # node 1 .. ways-1
        self.time = 0
        self.evictions = 0

    def _plru_touch(self, s, w):
        node, lo, hi = 1, 0, self.ways
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if w < mid:                        # w in the lower half: victim in the upper
                self.tree[s][node], node, hi = 1, 2 * node, mid
            else:
                self.tree[s][node], node, lo = 0, 2 * node + 1, mid

    def _plru_victim(self, s):
        node, lo, hi = 1, 0, self.ways
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.tree[s][node] == 0:
                node, hi = 2 * node, mid
            else:
                node, lo = 2 * node + 1, mid
        return lo

    def access(self, table, row):
        self.time += 1
        if (table, row) in self.pinned:
            return S
        if not self.ways:
            return M
        s = ref_set(table, row, self.sets)
        lines = self.line[s]
        if (table, row) in lines:
            w, out = lines.index((table, row)), D
        else:
            out = M
            if None in lines:
                w = lines.index(None)
            else:
                self.evictions += 1
                if self.policy == "lru":
                    w = min(range(self.ways), key=lambda v: self.used[s][v])
                else:
                    w = self._plru_victim(s)
            lines[w] = (table, row)
        self.used[s][w] = self.time
        if self.policy == "plru":
            self._plru_touch(s, w)
        return out


def random_trace(rng, n, tables=3, rows=16, skew=1.2):
    p = np.arange(1, rows + 1, dtype=float) ** -skew
    t = rng.integers(0, tables, n)
    r = rng.choice(rows, n, p=p / p.sum())
    return Trace(t, r, tuple(f"t{k}" for k in range(tables)), (rows,) * tables)


# -- the set index --------------------------------------------------------------

@pytest.mark.parametrize("sets", [1, 2, 8, 32, 64, 1024, 1 << 20])
def test_set_index_is_the_documented_fold(sets):
    rng = np.random.default_rng(sets)
    tables = rng.integers(0, 4096, 300)
    rows = rng.integers(0, 2**32, 300)
    vec = set_index(tables, rows, sets)
    for t, r, v in zip(tables.tolist(), rows.tolist(), vec.tolist()):
        assert v == set_index(t, r, sets) == ref_set(t, r, sets)


def test_set_index_hardware_form():
    """set = fold(row) ^ (salt(table) mod sets): a per-table constant XORed in."""
    rng = np.random.default_rng(1)
    for sets in (16, 128):
        for t, r in zip(rng.integers(0, 32, 50).tolist(), rng.integers(0, 2**32, 50).tolist()):
            assert set_index(t, r, sets) == set_index(0, r, sets) ^ (table_salt(t) % sets)
    assert table_salt(1) == TABLE_SALT == 0x9E3779B1 and table_salt(0) == 0
    assert table_salt(3) == (3 * 0x9E3779B1) % 2**32


def test_set_index_spreads():
    # consecutive ids fill every set equally (the low field cycles through all values)
    assert np.all(np.bincount(set_index(5, np.arange(4096), 64), minlength=64) == 64)
    # ids differing only in high bits (a Cartesian table's a * rows_B) still spread
    assert np.unique(set_index(0, np.arange(64) << 20, 64)).size == 64
    # the same row of tables 0 .. sets-1 lands in different sets
    for sets in (4, 64, 1024):
        assert np.unique(set_index(np.arange(min(sets, 4096)), 7, sets)).size == min(sets, 4096)
    with pytest.raises(ValueError, match="power of two"):
        set_index(0, 0, 12)


# -- the model against the reference ---------------------------------------------

CONFIGS = [  # static_rows, sets, ways, policy
    (0, 1, 1, "lru"), (0, 1, 4, "lru"), (0, 4, 1, "lru"), (0, 8, 2, "lru"),
    (0, 1, 1, "plru"), (0, 4, 4, "plru"), (0, 2, 8, "plru"), (0, 1, 2, "plru"),
    (6, 0, 0, "lru"), (4, 4, 2, "lru"), (5, 2, 4, "plru"), (3, 1, 3, "lru"), (0, 0, 0, "lru"),
]


@pytest.mark.parametrize("static_rows,sets,ways,policy", CONFIGS)
def test_model_matches_reference(static_rows, sets, ways, policy):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tr = random_trace(rng, 500)
        sel = select_pinned(tr[:100], static_rows)
        model = CacheModel(static_rows=static_rows, sets=sets, ways=ways, policy=policy,
                           pinned=sel, tables=tr)
        ref = RefCache(static_rows, sets, ways, policy, sel.pairs())
        want = [ref.access(t, r) for t, r in zip(tr.table.tolist(), tr.row.tolist())]
        # in two runs: the state carries over
        a, b = model.run(tr[:217]), model.run(tr[217:])
        got = np.concatenate([a.outcome, b.outcome])
        assert got.tolist() == want
        c = model.counters
        assert (c.static_hits, c.dynamic_hits, c.misses) == \
            (want.count(S), want.count(D), want.count(M))
        assert c.evictions == ref.evictions == a.evictions + b.evictions
        assert c.accesses == len(tr)


def test_two_way_plru_is_lru():
    tr = random_trace(np.random.default_rng(7), 2000, rows=40)
    lru = CacheModel(sets=4, ways=2).run(tr)
    plru = CacheModel(sets=4, ways=2, policy="plru").run(tr)
    assert np.array_equal(lru.outcome, plru.outcome)


def keys_trace(seq):
    """One table of 16 rows, rows named by letters."""
    return Trace(np.zeros(len(seq), np.int64), [ord(c) - ord("A") for c in seq], ("t",), (16,))


def test_lru_order():
    # A B C fill; A hit (B C A); D evicts B (C A D); C hit (A D C);
    # B evicts A (D C B); A evicts D
    s = CacheModel(sets=1, ways=3).run(keys_trace("ABCADCBA"))
    assert s.outcome.tolist() == [M, M, M, D, M, D, M, M]
    assert (s.dynamic_hits, s.misses, s.evictions) == (2, 6, 3)


def test_plru_differs_from_lru_as_documented():
    # After A B C D (ways 0..3) every bit is 0; the hit on A points the root at
    # the upper half and node 3 still at its lower child: the victim is C (way
    # 2), where LRU evicts B.
    lru = CacheModel(sets=1, ways=4).run(keys_trace("ABCDAEB"))
    plru = CacheModel(sets=1, ways=4, policy="plru").run(keys_trace("ABCDAEB"))
    assert lru.outcome.tolist() == [M, M, M, M, D, M, M]
    assert plru.outcome.tolist() == [M, M, M, M, D, M, D]
    assert plru.counters()["evictions"] == 1


def test_static_first():
    # P is pinned: its lookups never allocate nor touch the LRU order.
    pinned = [(0, ord("P") - ord("A"))]
    s = CacheModel(static_rows=1, sets=1, ways=2, pinned=pinned).run(keys_trace("ABPAPCBA"))
    # A B fill; P static; A hit (B A); P static; C evicts B (A C); B evicts A; A evicts C
    assert s.outcome.tolist() == [M, M, S, D, S, M, M, M]
    # in general: removing the pinned lookups leaves every other outcome unchanged
    rng = np.random.default_rng(3)
    for policy in ("lru", "plru"):
        tr = random_trace(rng, 3000, rows=30)
        sel = select_pinned(tr, 10)
        both = CacheModel(static_rows=10, sets=4, ways=4, policy=policy, pinned=sel).run(tr)
        rest = both.outcome != S
        assert np.array_equal(both.outcome == S,
                              CacheModel(static_rows=10, pinned=sel).run(tr).outcome == S)
        alone = CacheModel(sets=4, ways=4, policy=policy).run(
            (tr.table[rest], tr.row[rest]))
        assert np.array_equal(both.outcome[rest], alone.outcome)


def test_counters_and_reset():
    tr = random_trace(np.random.default_rng(4), 1000, rows=50)
    m = CacheModel(sets=8, ways=2)
    s = m.run(tr)
    # every miss fills a way; only those into a full set evict
    assert s.evictions == s.misses - 16
    assert s.hit_rate == s.dynamic_hit_rate == s.dynamic_hits / 1000
    m.run(tr)
    assert m.counters.accesses == 2000
    m.reset()
    assert m.counters.counters() == CacheStats().counters()
    assert np.array_equal(m.run(tr).outcome, s.outcome)       # empty again after reset
    total = s + s
    assert (total.accesses, total.evictions, total.outcome) == (2000, 2 * s.evictions, None)


def test_sizes_zero_remove_caches():
    tr = random_trace(np.random.default_rng(5), 200)
    none = CacheModel(sets=0, ways=0).run(tr)
    assert none.misses == 200 and none.evictions == 0
    m = CacheModel(sets=64, ways=0)
    assert (m.sets, m.dynamic_rows, m.capacity_rows) == (0, 0, 0)
    static = CacheModel(static_rows=3, pinned=[(0, 0), (1, 0), (2, 0)]).run(tr)
    hits = (tr.row == 0)
    assert np.array_equal(static.outcome == S, hits) and static.dynamic_hits == 0
    assert CacheModel(static_rows=2, sets=16, ways=4).capacity_rows == 66


def test_parameter_errors():
    with pytest.raises(ValueError, match="sets: must be a power of two, not 6"):
        CacheModel(sets=6, ways=2)
    with pytest.raises(ValueError, match="tree PLRU needs a power of two, not 3"):
        CacheModel(sets=4, ways=3, policy="plru")
    with pytest.raises(ValueError, match="policy"):
        CacheModel(sets=4, ways=2, policy="fifo")
    with pytest.raises(ValueError, match="ways: must be an integer >= 0"):
        CacheModel(sets=4, ways=-1)
    with pytest.raises(ValueError, match="rows"):
        CacheModel(sets=4, ways=1).run(([0], [2**32]))


# -- Belady ---------------------------------------------------------------------

def brute_min(keys, capacity, bypass):
    """The most hits over every choice of victim (and, with bypass, of
    not caching)."""
    keys = tuple(keys)

    @lru_cache(maxsize=None)
    def best(i, cache):
        if i == len(keys):
            return 0
        k = keys[i]
        if k in cache:
            return 1 + best(i + 1, cache)
        if len(cache) < capacity:
            return best(i + 1, cache | {k})
        options = [best(i + 1, (cache - {v}) | {k}) for v in cache] if capacity else []
        if bypass or not capacity:
            options.append(best(i + 1, cache))
        return max(options)

    return best(0, frozenset())


def test_belady_matches_exhaustive_search():
    rng = np.random.default_rng(11)
    for _ in range(150):
        n = int(rng.integers(1, 11))
        keys = rng.integers(0, int(rng.integers(1, 6)), n)
        cap = int(rng.integers(0, 4))
        for bypass in (False, True):
            assert belady_hits(keys, cap, bypass) == brute_min(keys.tolist(), cap, bypass)
    assert (belady_hits([1, 2, 1], 1), belady_hits([1, 2, 1], 1, bypass=True)) == (0, 1)


def test_belady_bounds_lru():
    tr = zipf_trace([500, 300], 5000, alpha=0.9, seed=2)
    keys = tr.keys()
    for cap in (1, 16, 64, 256):
        lru = CacheModel(sets=1, ways=cap).run(tr).hits
        assert lru <= belady_hits(tr, cap) <= belady_hits(tr, cap, bypass=True)
    # a cache holding every key misses each key once
    assert belady_hits(keys, 800) == len(keys) - np.unique(keys).size
    assert belady_hit_rate(tr, 0) == 0.0 and belady_hit_rate(np.zeros(0, np.int64), 4) == 0.0


# -- the static selection ---------------------------------------------------------

def test_select_pinned_known_answer():
    profile = {"a": np.array([5, 0, 9, 1]), "b": np.array([9, 2, 0])}
    sel = select_pinned(profile, 3, tables={"a": 4, "b": 3})
    # count descending, ties by table then row; zero counts never pinned
    assert sel.pairs() == [(0, 2), (1, 0), (0, 0)]
    assert sel.count.tolist() == [9, 9, 5]
    assert sel.hit_rate == pytest.approx(23 / 26)
    assert {k: v.tolist() for k, v in sel.by_table().items()} == {"a": [0, 2], "b": [0]}
    everything = select_pinned(profile, 100, tables={"a": 4, "b": 3})
    assert len(everything) == 5 and everything.hit_rate == 1.0
    assert len(select_pinned(profile, 0)) == 0
    # the index follows `tables`, not the profile's order
    assert select_pinned({"b": [1, 0, 0]}, 1, tables={"a": 4, "b": 3}).pairs() == [(1, 0)]


def test_select_pinned_from_trace_matches_counts():
    tr = zipf_trace([1000, 200], 20_000, alpha=1.0, seed=3)
    sel = select_pinned(tr, 50)
    counts = np.concatenate(list(tr.counts().values()))
    assert sel.count.sum() == np.sort(counts)[-50:].sum()
    served = CacheModel(static_rows=50, pinned=sel, tables=tr).run(tr)
    assert served.static_hit_rate == pytest.approx(sel.hit_rate)


def test_pinned_set_errors_before_loading():
    tables = {"item": 10, "user": 4}
    with pytest.raises(ValueError, match="3 pinned rows do not fit the static cache of 2 rows"):
        CacheModel(static_rows=2, sets=1, ways=1, pinned=[(0, 1), (0, 2), (1, 3)],
                   tables=tables)
    with pytest.raises(ValueError, match="pinned row 4 of table 'user' does not exist: "
                                         "the table has 4 rows"):
        check_pinned({"item": [1], "user": [3, 4]}, 8, tables)
    with pytest.raises(ValueError, match="table 'movie' does not exist"):
        check_pinned({"movie": [1]}, 8, tables)
    with pytest.raises(ValueError, match="table 2 does not exist"):
        check_pinned([(2, 0)], 8, tables)
    with pytest.raises(ValueError, match="row 1 of table 'item' is pinned twice"):
        check_pinned([("item", 1), (0, 1)], 8, tables)
    with pytest.raises(ValueError, match="pinned row -1 of table 0"):
        check_pinned([(0, -1)], 8)
    with pytest.raises(ValueError, match="give tables= to pin by name"):
        check_pinned([("item", 1)], 8)
    t, r = check_pinned({"user": [3], "item": [0]}, 2, tables)
    assert t.tolist() == [1, 0] and r.tolist() == [3, 0]
    t, r = check_pinned(np.array([[1, 3], [0, 9]]), 2, tables)
    assert t.tolist() == [1, 0] and r.tolist() == [3, 9]


def test_profile_errors():
    with pytest.raises(ValueError, match="profile of table 'a': 3 counts for a table of 4 rows"):
        select_pinned({"a": [1, 2, 3]}, 1, tables={"a": 4})
    with pytest.raises(ValueError, match="profile of table 'a': counts must be finite and >= 0"):
        select_pinned({"a": [1, -2]}, 1)
    with pytest.raises(ValueError, match="profile: table 'z' does not exist"):
        select_pinned({"z": [1]}, 1, tables={"a": 4})
    with pytest.raises(ValueError, match="capacity_rows"):
        select_pinned({"a": [1]}, -1)


def compiled_pair():
    rng = np.random.default_rng(9)
    cfg = EmbeddingConfig(channels=2, data_bits=64, addr_bits=20, id_bits=3, outstanding=8,
                          onchip_banks=1, onchip_words=64, max_tables=4, max_dim=16, max_bag=8)
    freq = rng.integers(0, 50, 2000)
    specs = [TableSpec("tiny", rng.standard_normal((5, 4)).astype(np.float32), 8,
                       frequencies=np.ones(5, np.int64)),
             TableSpec("big", rng.standard_normal((2000, 16)).astype(np.float32), 8,
                       frequencies=freq)]
    return compile_tables(specs, cfg), freq


def test_selection_and_load_from_compiled_tables():
    c, freq = compiled_pair()
    amap = c.address_map
    kinds = {t.name: t.kind for t in amap.tables}
    assert kinds == {"tiny": "onchip", "big": "channel"}
    profile = compiled_profile(c)
    assert list(profile) == ["big"]
    big = amap.feature("big")[0]
    sel = select_pinned(c.frequencies, 20, tables=amap)     # on-chip "tiny" left out
    assert set(sel.table.tolist()) == {big}
    assert sel.count.sum() == np.sort(freq)[-20:].sum()
    load = static_cache_load(c, sel, 20)
    assert np.array_equal(load.address, c.row_addresses(big, sel.row))
    assert load.channel.tolist() == [amap.tables[big].unit] * 20
    assert np.array_equal(np.stack(load.data), c.read_rows(big, sel.row))
    with pytest.raises(ValueError, match="20 pinned rows do not fit the static cache of 19"):
        static_cache_load(c, sel, 19)
    with pytest.raises(ValueError, match="table 'tiny', which is on chip"):
        static_cache_load(c, {"tiny": [0]}, 4)
    with pytest.raises(ValueError, match="pinned row 2000 of table 'big'"):
        static_cache_load(c, {"big": [2000]}, 4)


# -- the hardware's set-associative static cache --------------------------------

def test_static_lines_place_by_set_index():
    table = np.array([0, 1, 0, 2, 1, 0], np.int64)
    row = np.array([5, 5, 9, 0, 77, 3], np.int64)       # sets 0 1 3 2 2 3
    line = static_lines(table, row, 8, 2)                 # 4 sets of 2 ways
    sets = set_index(table, row, 4)
    assert np.array_equal(line % 4, sets)
    assert len(set(line.tolist())) == line.size and line.max() < 8
    # the ways of a set in pinned order
    for s in range(4):
        ways = (line[sets == s] // 4).tolist()
        assert ways == list(range(len(ways)))


def test_set_overflow_is_an_error_before_loading():
    # rows 0, 4, 8 of table 0 fall in the same set of a 4-set cache
    rows = [r for r in range(64) if set_index(0, r, 4) == set_index(0, 0, 4)][:3]
    with pytest.raises(ValueError, match=f"3 pinned rows fall in set {set_index(0, 0, 4)} "
                                         "of the static cache, which has 2 ways"):
        check_pinned([(0, r) for r in rows], 8, ways=2)
    with pytest.raises(ValueError, match="3 pinned rows fall in set"):
        CacheModel(static_rows=8, pinned=[(0, r) for r in rows], static_ways=2)
    with pytest.raises(ValueError, match="power-of-two number of sets"):
        check_pinned([], 6, ways=2)
    check_pinned([(0, r) for r in rows], 8)             # fully associative: fits


def test_select_pinned_fills_sets_greedily():
    rng = np.random.default_rng(3)
    counts = {0: rng.integers(0, 100, 300), 1: rng.integers(0, 100, 50)}
    free = select_pinned(counts, 16)
    sel = select_pinned(counts, 16, ways=2)               # 8 sets of 2
    assert len(sel) == 16
    sets = set_index(sel.table, sel.row, 8)
    assert np.bincount(sets, minlength=8).max() <= 2
    check_pinned(sel, 16, ways=2)
    # the reference: walk the keys hottest first, taking each whose set has room
    keys = [(int(c), t, r) for t, cs in counts.items() for r, c in enumerate(cs) if c]
    keys.sort(key=lambda k: (-k[0], k[1], k[2]))
    room, want = [2] * 8, []
    for c, t, r in keys:
        s = set_index(t, r, 8)
        if room[s] and len(want) < 16:
            room[s] -= 1
            want.append((t, r))
    assert sel.pairs() == want
    assert sel.hit_rate <= free.hit_rate
    # with one set of 16 ways nothing is passed over
    assert select_pinned(counts, 16, ways=16).pairs() == free.pairs()


def test_static_cache_writes():
    from hw.embedding import cache_write_layout
    from host.packing import Packer
    c, freq = compiled_pair()
    cfg = c.config.__class__(**{**c.config.__dict__, "static_rows": 8, "static_ways": 2})
    big = c.address_map.feature("big")[0]
    sel = select_pinned(c.frequencies, 8, tables=c.address_map, ways=2)
    with pytest.raises(ValueError, match="the load has no lines"):
        static_cache_writes(static_cache_load(c, sel, 8), cfg)
    load = static_cache_load(c, sel, 8, ways=2)
    assert np.array_equal(load.line, static_lines(load.table, load.row, 8, 2))
    writes = [Packer(cache_write_layout(cfg)).unpack(w) for w in static_cache_writes(load, cfg)]
    beats = cfg.row_beats(16, 8)
    slot = 1 << (cfg.max_row_beats - 1).bit_length()
    assert len(writes) == 8 * (beats + 1)
    for i in range(8):
        rows = writes[i * (beats + 1):(i + 1) * (beats + 1)]
        line = int(load.line[i])
        for b, w in enumerate(rows[:-1]):
            assert (w["tag"], w["addr"], w["channel"]) == (0, line * slot + b,
                                                           c.address_map.tables[big].unit)
            assert w["data"] == int.from_bytes(load.data[i][b * 8:(b + 1) * 8].tobytes(),
                                               "little")
        tag = rows[-1]
        assert (tag["tag"], tag["addr"]) == (1, line)
        assert tag["data"] == 1 | (big << 1) | (int(load.row[i]) << (1 + 2))
    with pytest.raises(ValueError, match="no static cache"):
        static_cache_writes(load, c.config)


def test_model_for_config():
    cfg = EmbeddingConfig(static_rows=8, static_ways=2, cache_sets=4, cache_ways=2,
                          cache_policy="plru")
    m = CacheModel.for_config(cfg, pinned=[(0, 1)])
    assert (m.static_rows, m.sets, m.ways, m.policy) == (8, 4, 2, "plru")
    assert CacheModel.for_config(EmbeddingConfig()).capacity_rows == 0


def test_hardware_salt_is_the_models():
    from hw.embedding import TABLE_SALT as HW_SALT
    assert HW_SALT == TABLE_SALT


def test_static_cache_writes_checks_the_lines():
    c, _ = compiled_pair()
    cfg = c.config.__class__(**{**c.config.__dict__, "static_rows": 4, "static_ways": 2})
    sel = select_pinned(c.frequencies, 8, tables=c.address_map, ways=2)
    with pytest.raises(ValueError, match="make the load with this config's static_rows"):
        static_cache_writes(static_cache_load(c, sel, 8, ways=2), cfg)
