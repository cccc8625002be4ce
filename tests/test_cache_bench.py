"""The cache benchmark's plumbing (:mod:`benchmarks.cache`) on small traces:
the rates add up and agree with the model run by hand, and one short
simulated run with and without the caches checks every answer and the
counters (the figures themselves come from ``recaccel bench cache``)."""

import dataclasses

import numpy as np
import pytest

from benchmarks.cache import bench_cache, cache_hit_rates, make_trace
from host.cache import CacheModel, belady_hits, select_pinned
from host.traces import zipf_trace
from hw.config import Config

CACHED = dataclasses.replace(Config.preset("tiny").embedding, static_rows=8, static_ways=2,
                             cache_sets=4, cache_ways=2)


def test_hit_rates_by_hand():
    trace = zipf_trace([100, 60, 30], 2000, alpha=1.0, seed=2)
    r = cache_hit_rates(CACHED, trace, profile_share=0.25)
    n = int(round(trace.row.size * 0.25))
    hits = belady = 0
    for c in range(CACHED.channels):
        tables = [t for t in range(3) if t % CACHED.channels == c]
        mine = np.isin(trace.table, tables)
        k = int(mine[:n].sum())
        t, row = trace.table[mine], trace.row[mine]
        prof = {x: np.bincount(row[:k][t[:k] == x], minlength=trace.rows[x]) for x in tables}
        pinned = select_pinned(prof, 8, ways=2)
        s = CacheModel(static_rows=8, static_ways=2, sets=4, ways=2,
                       pinned=pinned).run((t[k:], row[k:]))
        hits += s.hits
        belady += belady_hits((t[k:], row[k:]), 16)
    assert r["lookups"] == trace.row.size - n
    assert r["static_hits"] + r["dynamic_hits"] == hits
    assert r["hit_rate"] == pytest.approx(hits / r["lookups"])
    assert r["belady_hit_rate"] == pytest.approx(belady / r["lookups"])
    assert 0 < r["static_hit_rate"] and 0 < r["dynamic_hit_rate"]
    assert r["hit_rate"] <= r["belady_hit_rate"] + 8 * 2 / r["lookups"]


def test_errors():
    with pytest.raises(ValueError, match="no caches"):
        cache_hit_rates(Config.preset("tiny").embedding, zipf_trace([10], 10))
    with pytest.raises(ValueError, match="profile_share"):
        cache_hit_rates(CACHED, zipf_trace([10], 10), profile_share=1.0)
    with pytest.raises(ValueError, match="unknown trace 'zipfian'"):
        make_trace("zipfian")


def test_simulated_rounds():
    trace = zipf_trace([300, 200], 1200, alpha=1.0, seed=3)
    rows = bench_cache(CACHED, [("small", trace)], warm=60, measure=120, bag=3,
                       latency=30, mem_rate=0.5, progress=lambda s: None)
    (r,) = rows
    assert r["trace"] == "small" and r["rounds"] == 40
    assert r["cycles_per_round_cached"] > 0 and r["cycles_per_round_uncached"] > 0
    w = r["window_counters"]
    assert w["static_hits"] + w["dynamic_hits"] + w["misses"] == 2 * 120


def test_nothing_to_measure():
    with pytest.raises(ValueError, match="no lookups left to measure"):
        cache_hit_rates(CACHED, zipf_trace([10], 1), profile_share=0.9)
