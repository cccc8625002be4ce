"""The embedding caches: hit rates against Belady's bound, and cycles per
lookup round with and without the caches.

Per trace (:data:`TRACES`):

* ``zipf``: four tables of 65,536 rows, Zipf(1.0) ids
  (:func:`host.traces.zipf_trace`);
* ``movielens``: MovieLens-100K's item and user ids in timestamp order
  (:func:`host.traces.movielens_trace`; left out, and said so, when the
  dataset cannot be had);
* ``uniform``: the Zipf tables with uniform ids, the worst case.

Table ``k`` lives on channel ``k mod channels`` (each channel has its own
caches). The first ``profile_share`` of the trace is the profile
(:func:`host.cache.select_pinned`, by set, as the hardware places the rows);
the rest is measured, with the caches starting empty and the static one
loaded. ``belady_hit_rate`` is MIN's (:func:`host.cache.belady_hits`) on the
same lookups, per channel, at the channel's whole cache capacity (static +
dynamic rows). Every rate comes from :class:`host.cache.CacheModel`, whose
counters the cocotb tests check exactly against the hardware's.

Cycles (Verilator, :func:`sim.tb_embedding.bench_cache_rounds`): a window of
the measured lookups after a warm-up, in bags of ``bag`` rows, a round being
a bag on every channel, streamed back to back through the unit of the preset
and through the same unit without caches, with a fixed memory latency and
``mem_rate`` beats per cycle per channel (random short bursts reach only a
part of an HBM or DDR channel's peak); every answer checked.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from host.cache import CacheModel, belady_hits, select_pinned
from host.traces import Trace, movielens_trace, uniform_trace, zipf_trace
from hw.config import EmbeddingConfig

__all__ = ["TRACES", "make_trace", "cache_hit_rates", "bench_cache", "format_cache"]

TRACES = ("zipf", "movielens", "uniform")
_ZIPF_TABLES = [1 << 16] * 4
_ZIPF_LOOKUPS = 50_000          # per table


def make_trace(name: str, seed: int = 0) -> Trace:
    """One of :data:`TRACES` (``movielens`` raises
    :class:`host.datasets.DatasetUnavailable` when it cannot be had)."""
    if name == "zipf":
        return zipf_trace(_ZIPF_TABLES, _ZIPF_LOOKUPS, alpha=1.0, seed=seed)
    if name == "uniform":
        return uniform_trace(_ZIPF_TABLES, _ZIPF_LOOKUPS, seed=seed)
    if name == "movielens":
        return movielens_trace()
    raise ValueError(f"trace: unknown trace {name!r}; known: {', '.join(TRACES)}")


def _channel_parts(cfg: EmbeddingConfig, trace: Trace, profile_share: float):
    """Per channel with lookups: (channel, profile counts, measured (table, row))."""
    n = int(round(trace.row.size * profile_share))
    parts = []
    for c in range(cfg.channels):
        tables = [k for k in range(len(trace.names)) if k % cfg.channels == c]
        mine = np.isin(trace.table, tables)
        if not mine.any():
            continue
        table, row = trace.table[mine], trace.row[mine]
        k = int(mine[:n].sum())
        profile = {t: np.bincount(row[:k][table[:k] == t], minlength=trace.rows[t])
                   for t in tables}
        parts.append((c, profile, (table[k:], row[k:])))
    return parts


def cache_hit_rates(cfg: EmbeddingConfig, trace: Trace, profile_share: float = 0.2) -> dict:
    """Hit rates of the caches of ``cfg`` on ``trace`` (module documentation),
    with the pinned rows and measured lookups per channel (for the cycle
    benchmark)."""
    if not 0 <= profile_share < 1:
        raise ValueError(f"profile_share: must be in [0, 1), not {profile_share!r}")
    if not cfg.cached:
        raise ValueError("the config has no caches (embedding.static_rows and "
                         "embedding.cache_sets are 0)")
    capacity = cfg.static_rows + cfg.dynamic_rows
    totals = {"static_hits": 0, "dynamic_hits": 0, "misses": 0, "evictions": 0}
    belady = 0
    pinned: dict[int, list] = {}
    measured: dict[int, tuple] = {}
    for c, profile, lookups in _channel_parts(cfg, trace, profile_share):
        sel = (select_pinned(profile, cfg.static_rows, ways=cfg.static_ways)
               if cfg.static_rows else ())
        pinned[c] = sel.pairs() if cfg.static_rows else []
        stats = CacheModel.for_config(cfg, pinned=pinned[c]).run(lookups)
        for k in totals:
            totals[k] += getattr(stats, k)
        belady += belady_hits(lookups, capacity)
        measured[c] = lookups
    n = sum(totals[k] for k in ("static_hits", "dynamic_hits", "misses"))
    if not n:
        raise ValueError(f"trace: no lookups left to measure after the profile "
                         f"({trace.row.size} lookups, profile_share {profile_share})")
    hits = totals["static_hits"] + totals["dynamic_hits"]
    return {"lookups": n, **totals,
            "static_hit_rate": totals["static_hits"] / n,
            "dynamic_hit_rate": totals["dynamic_hits"] / n,
            "hit_rate": hits / n, "belady_hit_rate": belady / n,
            "of_belady": hits / belady if belady else 1.0,
            "capacity_rows_per_channel": capacity,
            "pinned": pinned, "measured": measured}


def _cycles(cfg: EmbeddingConfig, trace: Trace, rates: dict, *, warm: int, measure: int,
            bag: int, latency: int, mem_rate: float, seed: int) -> dict:
    from sim import runner
    from sim.tb_embedding import build_embedding
    lookups = {c: list(zip(t.tolist(), r.tolist())) for c, (t, r) in rates["measured"].items()}
    spec = {"tables": list(trace.rows), "bag": bag, "latency": latency, "mem_rate": mem_rate,
            "pinned": [rates["pinned"].get(c, []) for c in range(cfg.channels)],
            "warm": [lookups.get(c, [])[:warm] for c in range(cfg.channels)],
            "measure": [lookups.get(c, [])[warm:warm + measure]
                        for c in range(cfg.channels)]}
    sim_runner, top = build_embedding(cfg)
    return runner.run_report(sim_runner, test_module="sim.tb_embedding", toplevel=top,
                             test="bench_cache_rounds",
                             tb={"embedding": dataclasses.asdict(cfg), "seed": seed,
                                 "bench": spec})


def bench_cache(cfg: EmbeddingConfig, traces=TRACES, *, cycles: bool = True,
                profile_share: float = 0.2, warm: int = 1000, measure: int = 1000,
                bag: int = 4, latency: int = 200, mem_rate: float = 0.25,
                seed: int = 0, progress=print) -> list[dict]:
    """One row per trace (module documentation): ``traces`` holds names of
    :data:`TRACES` or ``(name, Trace)`` pairs. With ``cycles``, simulates
    the unit of ``cfg`` and the same unit without caches (``warm`` and
    ``measure`` lookups per channel)."""
    from host.datasets import DatasetUnavailable
    uncached = dataclasses.replace(cfg, static_rows=0, cache_sets=0)
    out = []
    for item in traces:
        if isinstance(item, tuple):             # (name, Trace)
            name, trace = item
        else:
            name = item
            try:
                trace = make_trace(name, seed)
            except DatasetUnavailable as e:
                progress(f"{name}: left out: {e}")
                continue
        progress(f"{name}: {trace.row.size} lookups over {len(trace.names)} tables ...")
        rates = cache_hit_rates(cfg, trace, profile_share)
        row = {"trace": name, **{k: v for k, v in rates.items()
                                 if k not in ("pinned", "measured")}}
        if cycles:
            kw = dict(warm=warm, measure=measure, bag=bag, latency=latency,
                      mem_rate=mem_rate, seed=seed)
            progress(f"{name}: simulating with caches ...")
            c = _cycles(cfg, trace, rates, **kw)
            progress(f"{name}: simulating without caches ...")
            u = _cycles(uncached, trace, rates, **kw)
            row.update({"cycles_per_round_cached": c["cycles_per_round"],
                        "cycles_per_round_uncached": u["cycles_per_round"],
                        "speedup": u["cycles_per_round"] / c["cycles_per_round"],
                        "window_counters": c["counters"], "rounds": c["rounds"],
                        "bag": bag, "latency": latency, "mem_rate": mem_rate})
        out.append(row)
    return out


def format_cache(cfg: EmbeddingConfig, rows: list[dict]) -> str:
    lines = [f"Embedding caches per channel: static {cfg.static_rows} rows "
             f"({cfg.static_ways} ways), dynamic {cfg.cache_sets} sets x {cfg.cache_ways} "
             f"ways ({cfg.cache_policy}); {cfg.channels} channels",
             f"{'trace':<10} {'lookups':>8} {'static':>7} {'dynamic':>7} {'both':>6} "
             f"{'Belady':>7} {'of MIN':>7} {'cyc/round':>10} {'uncached':>9} {'speed-up':>9}"]
    for r in rows:
        cyc = (f"{r['cycles_per_round_cached']:>10.1f} {r['cycles_per_round_uncached']:>9.1f} "
               f"{r['speedup']:>8.2f}x" if "speedup" in r else f"{'-':>10} {'-':>9} {'-':>9}")
        lines.append(f"{r['trace']:<10} {r['lookups']:>8} {r['static_hit_rate']:>7.3f} "
                     f"{r['dynamic_hit_rate']:>7.3f} {r['hit_rate']:>6.3f} "
                     f"{r['belady_hit_rate']:>7.3f} {r['of_belady']:>7.3f} {cyc}")
    if rows and "speedup" in rows[0]:
        r = rows[0]
        lines.append(f"cycles: bags of {r['bag']} rows, a round = a bag on every channel, "
                     f"{r['latency']}-cycle memory at {r['mem_rate']} beats/cycle per "
                     f"channel; every answer checked")
    return "\n".join(lines)
