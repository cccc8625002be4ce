"""Sustained lookup rate and round latency of the embedding lookup unit.

:func:`bench_lookup` simulates (Verilator, :func:`sim.tb_embedding.bench_uniform`)
one table of int8 rows of ``max_dim`` elements per channel and bags of one
uniform random row streamed to every channel at once, with a fixed memory
latency (200 cycles: HBM), no idle cycles and no backpressure; every answer
is checked against the golden model. ``rows_per_cycle`` is the rows pooled
over all channels per cycle, from the first lookup sent to the last vector
received; ``peak_rows_per_cycle`` is what the channels can deliver (a beat
a cycle each: ``channels / row_beats``); ``round_latency_cycles`` is one
lookup round alone (a one-row bag on every channel, the unit idle before).

The Cartesian report (merging the table-size lists of MicroRec, Criteo
Kaggle and Terabyte) is :mod:`benchmarks.cartesian`; ``recaccel bench
lookup`` prints both.
"""

from __future__ import annotations

import dataclasses

from hw.config import EmbeddingConfig

__all__ = ["bench_lookup", "format_lookup"]


def bench_lookup(cfg: EmbeddingConfig, *, latency: int = 200, lookups: int = 2000,
                 rows: int = 1000, seed: int = 1) -> dict:
    """Measure the unit of ``cfg``; see the module documentation."""
    if latency < 1 or lookups < 1 or rows < 1:
        raise ValueError("latency, lookups and rows must be positive")
    from sim import runner
    from sim.tb_embedding import build_embedding
    cfg = dataclasses.replace(cfg, static_rows=0, cache_sets=0)
    sim_runner, top = build_embedding(cfg)
    report = runner.run_report(
        sim_runner, test_module="sim.tb_embedding", toplevel=top, test="bench_uniform",
        tb={"embedding": dataclasses.asdict(cfg), "seed": seed,
            "bench": {"latency": latency, "lookups": lookups, "rows": rows}})
    return {**report, "exact": True, "outstanding": cfg.outstanding}


def format_lookup(r: dict) -> str:
    return "\n".join([
        f"Embedding lookup: {r['channels']} channels, rows of {r['row_beats']} beats, "
        f"{r['latency']}-cycle memory latency, {r['outstanding']} bursts in flight per "
        f"channel (at most {r['max_in_flight']} used)",
        f"  rows per cycle {r['rows_per_cycle']:.3f} of a peak {r['peak_rows_per_cycle']:.3f}: "
        f"efficiency {r['efficiency']:.3f} ({r['lookups']} lookups in {r['cycles']} cycles, "
        f"all exact)",
        f"  one lookup round alone: {r['round_latency_cycles']} cycles"])
