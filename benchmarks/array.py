"""MAC utilization of the MLP engine on the RecPipe models' layers.

Every MLP layer of RM-small, RM-med and RM-large (PAPERS.md) runs on the
simulated engine (whole array, engine 0) at 512 and 4096 rows; cycles are
the engine's own count from RUN to the last result written (weights and
inputs are already on chip; a batch larger than the buffers runs as several
RUNs and their cycles add up). Utilization = useful MACs / (dim^2 x cycles).
Beside it: the roofline (MACs / dim^2 cycles) and the tile bound
(rows x ceil(in/dim) x ceil(out/dim) cycles: what padding to whole tiles
allows). Every output is also checked against the golden model.
"""

from __future__ import annotations

import numpy as np

from host.numerics import QuantLayer, int8_layer
from hw.config import Config, ceil_div

__all__ = ["RECPIPE_LAYERS", "bench_array"]

#: (model, layer name, in, out) for each MLP layer of RecPipe's models.
RECPIPE_LAYERS = [
    ("RM-small", "bottom.0", 13, 64), ("RM-small", "bottom.1", 64, 4),
    ("RM-small", "top.0", 64, 1),
    ("RM-med", "bottom.0", 13, 64), ("RM-med", "bottom.1", 64, 16),
    ("RM-med", "top.0", 64, 1),
    ("RM-large", "bottom.0", 13, 512), ("RM-large", "bottom.1", 512, 256),
    ("RM-large", "bottom.2", 256, 128), ("RM-large", "bottom.3", 128, 64),
    ("RM-large", "bottom.4", 64, 32), ("RM-large", "top.0", 96, 1),
]


def _layer(rng, i, o):
    w = rng.integers(-128, 128, (i, o)).astype(np.int8)
    return QuantLayer(w, rng.integers(-1000, 1000, o), rng.integers(1 << 15, 1 << 16, o),
                      np.full(o, 24), True)


def bench_array(cfg: Config, rows_list=(512, 4096), seed: int = 0) -> dict:
    from sim.jobs import Job, run_jobs
    rng = np.random.default_rng(seed)
    n = cfg.array.dim
    cases, jobs = [], []
    for model, name, i, o in RECPIPE_LAYERS:
        if max(i, o) > cfg.array.max_dim:
            continue
        for rows in rows_list:
            layer = _layer(rng, i, o)
            x = rng.integers(-128, 128, (rows, i)).astype(np.int8)
            cases.append((model, name, i, o, rows, layer, x))
            jobs.append(Job([layer], x))
    results = run_jobs(cfg, jobs)
    layers = []
    for (model, name, i, o, rows, layer, x), res in zip(cases, results):
        cycles = int(sum(res.cycles))
        macs = rows * i * o
        layers.append({
            "model": model, "layer": name, "rows": rows, "in": i, "out": o,
            "cycles": cycles,
            "utilization": macs / (n * n * cycles),
            "roofline_cycles": macs / (n * n),
            "tile_bound_cycles": rows * ceil_div(i, n) * ceil_div(o, n),
            "runs": len(res.cycles),
            "exact": bool(np.array_equal(res.y, int8_layer(x, layer))),
        })
    return {"preset": cfg.name, "array": f"{n}x{n}", "clock_mhz": cfg.clock_mhz,
            "layers": layers}


def format_array(report: dict) -> str:
    lines = [f"MLP engine on a {report['array']} array ({report['preset']}): "
             "cycles from RUN to last result",
             f"{'model':9} {'layer':9} {'rows':>5} {'in':>4} {'out':>4} {'cycles':>9} "
             f"{'roofline':>9} {'tiles':>9} {'util':>6} {'exact':>5}"]
    for l in report["layers"]:
        lines.append(f"{l['model']:9} {l['layer']:9} {l['rows']:5d} {l['in']:4d} {l['out']:4d} "
                     f"{l['cycles']:9d} {l['roofline_cycles']:9.0f} {l['tile_bound_cycles']:9d} "
                     f"{l['utilization']:6.3f} {str(l['exact']):>5}")
    return "\n".join(lines)
