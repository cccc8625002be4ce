"""End to end on the host: the CPU baseline (issue 7, item 4) and a golden
run of the driver, on a synthetic multi-stage model when no trained one is
given.

CPU baseline
------------
:func:`cpu_baseline` runs the same multi-stage pipeline
(:func:`host.pipeline.run_pipeline`: stage by stage, one query at a time,
selection between stages by the top-k rule) on this machine and reports
queries per second, **measured** with ``time.perf_counter`` over the whole
query list, repeated until ``min_seconds`` have passed (the best of the
repeats is reported, as ``timeit`` advises):

* ``numpy_float``: the float model (:class:`host.models.StageModel`, float64);
* ``numpy_golden``: the quantized golden model
  (:class:`host.models.QuantizedStageModel`, every integer the accelerator
  computes: what a CPU would do to give bit-exact answers);
* ``torch_float``: the float model as the torch module of
  :mod:`host.train` (float32, one query a forward pass, ``torch.no_grad``),
  only when torch can be imported (the ``recaccel[torch]`` extra); the
  report says so otherwise. Its thread count is reported.

These are timings of this machine under whatever else runs on it; they are
never asserted in tests. The accelerator's figure beside them (from the
golden transport) is *modelled* (:mod:`host.driver`), and the report labels
it so.

Synthetic setup
---------------
:func:`synthetic_setup`: the ``ml-small -> ml-med`` pipeline (a cheap
stage then a larger one) with tables capped at ``max_rows`` rows, weights
from :func:`host.models.init_params` (rows in ``+-0.5`` so candidates
differ), queries from :func:`host.movielens.synthetic_queries` (Zipf ids);
no data set and no torch needed.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from host.driver import Accelerator, CompiledModel, GoldenTransport, compile_model
from host.models import Query, StageModelParams, init_params, stage_preset
from host.movielens import synthetic_queries
from host.pipeline import PipelineSpec, run_pipeline, select_top

__all__ = ["synthetic_setup", "cpu_baseline", "golden_e2e", "stage_for", "hardware_e2e",
           "phases_per_query",
           "format_hardware_e2e"]


def synthetic_setup(*, n_queries: int = 64, n_candidates: int = 512, keep=(64, 10),
                    max_rows: int = 2000, user_bag: int = 8, seed: int = 0,
                    precision: str = "int8"):
    """``(params, compiled model, queries)`` of a synthetic two-stage pipeline
    (module docstring); calibration uses other queries than ``queries``."""
    names = ("ml-small", "ml-med")
    params = {n: init_params(stage_preset(n, max_rows), seed=seed + i, table_scale=0.5)
              for i, n in enumerate(names)}
    spec = PipelineSpec("synthetic 2-stage", names, tuple(keep))
    cfg = params[names[0]].config
    calibration = synthetic_queries(cfg, 64, 32, user_bag=user_bag, seed=seed + 100)
    queries = synthetic_queries(cfg, n_queries, n_candidates, user_bag=user_bag, seed=seed)
    return params, compile_model(params, spec, calibration, precision), queries


def _qps(fn, queries: Sequence[Query], min_seconds: float, max_repeats: int) -> float:
    best, spent, n = float("inf"), 0.0, 0
    while n < max_repeats and (n == 0 or spent < min_seconds):
        t = time.perf_counter()
        for q in queries:
            fn(q)
        dt = time.perf_counter() - t
        best, spent, n = min(best, dt), spent + dt, n + 1
    return len(queries) / best if best > 0 else float("inf")


def _torch_pipeline(spec: PipelineSpec, params: Mapping[str, StageModelParams]):
    """A query -> final positions function running the stages in torch (float32)."""
    import torch  # noqa: F401  (ImportError here: torch is not installed)

    from host.train import _module

    mods = {n: _module(torch, params[n]).eval() for n in dict.fromkeys(spec.stages)}

    def run(q: Query):
        with torch.no_grad():
            dense = torch.from_numpy(np.asarray(q.dense, np.float32))[None]
            bags = [(torch.from_numpy(np.asarray(b, np.int64)), torch.zeros(1, dtype=torch.int64))
                    for b in q.user_ids]
            items, pos = q.item_ids, q.positions
            for name, keep in zip(spec.stages, spec.keep):
                s = mods[name](dense, bags, torch.from_numpy(items)[None])[0].numpy()
                idx = select_top(s.astype(np.float64), pos, keep)
                items, pos = items[idx], pos[idx]
        return pos

    return run


def cpu_baseline(model: CompiledModel, queries: Sequence[Query],
                 params: Mapping[str, StageModelParams] | None = None, *,
                 min_seconds: float = 1.0, max_repeats: int = 20,
                 torch: bool = True, torch_threads: int | None = 1) -> dict:
    """Queries per second of ``model``'s pipeline on this CPU (module
    docstring). ``params`` (the float weights) are needed for torch only;
    ``torch_threads`` is set for the torch timing and restored after (None:
    torch's default; one thread by default because on this shared 2-core
    machine two threads ran these small per-query forwards about 30x slower,
    measured: 28 against 750-960 queries/s).
    Returns ``{"numpy_float_qps", "numpy_golden_qps", "torch_float_qps"
    (None without torch), "torch_threads", "queries", "candidates_per_query",
    "notes"}``."""
    if model.float_stages is None:
        raise ValueError("cpu_baseline: the model has no float stages")
    spec = model.spec
    out = {"queries": len(queries),
           "candidates_per_query": float(np.mean([q.n_candidates for q in queries])),
           "pipeline": spec.name, "stages": list(spec.stages), "keep": list(spec.keep),
           "source": "measured: time.perf_counter on this machine, best of repeats",
           "notes": []}
    out["numpy_float_qps"] = _qps(lambda q: run_pipeline(spec, model.float_stages, q),
                                  queries, min_seconds, max_repeats)
    out["numpy_golden_qps"] = _qps(lambda q: run_pipeline(spec, model.stages, q),
                                   queries, min_seconds, max_repeats)
    out["torch_float_qps"] = out["torch_threads"] = None
    if not torch:
        out["notes"].append("torch: not requested")
    elif params is None:
        out["notes"].append("torch: skipped, no float weights given")
    else:
        try:
            run = _torch_pipeline(spec, params)
        except ImportError:
            out["notes"].append("torch: not installed (pip install 'recaccel[torch]')")
        else:
            import torch as _torch
            before = _torch.get_num_threads()
            if torch_threads is not None:
                _torch.set_num_threads(torch_threads)
            try:
                out["torch_threads"] = _torch.get_num_threads()
                out["torch_float_qps"] = _qps(run, queries, min_seconds, max_repeats)
            finally:
                _torch.set_num_threads(before)
    return out


def golden_e2e(*, preset: str = "default", n_queries: int = 64, n_candidates: int = 512,
               rate_qps: float | None = None, seed: int = 0, progress: bool = False,
               cpu: bool = True, min_seconds: float = 1.0) -> dict:
    """The synthetic model through :class:`host.driver.Accelerator` on the
    golden transport (latency modelled), with the CPU baseline (measured)
    beside it."""
    params, model, queries = synthetic_setup(n_queries=n_queries, n_candidates=n_candidates,
                                             seed=seed)
    acc = Accelerator(GoldenTransport(preset))
    acc.load(model)
    report = acc.run(queries, rate_qps=rate_qps, seed=seed, progress=progress)
    out = {"model": "synthetic (init_params + synthetic_queries)", "preset": preset,
           "accelerator": report.to_dict()}
    busy = report.counters["busy_cycles"] / max(report.counters["queries"], 1)
    out["modelled_cycles_per_query"] = busy
    out["modelled_qps"] = report.clock_mhz * 1e6 / busy if busy else None
    if cpu:
        out["cpu"] = cpu_baseline(model, queries, params, min_seconds=min_seconds)
    return out


# -- the hardware top level in Verilator ----------------------------------------------

def stage_for(config, *, seed: int = 0):
    """A MovieLens-sized one-stage "dot" model that fits ``config.stage``
    (for the ``default`` preset: ml-med's shape), with synthetic weights."""
    from host.models import StageModelConfig, TableSpec
    st = config.stage
    users = [TableSpec("user_id", 943, "user"), TableSpec("user_history", 1682, "user")]
    tables = tuple(users[:max(0, st.max_users - 1)] + [TableSpec("item_id", 1682, "item")])
    hidden = min(64, st.max_hidden, st.max_pen)
    mcfg = StageModelConfig("one-stage", 3, (min(64, config.array.max_dim), st.dim), tables,
                            st.dim, "dot", (hidden, 1))
    return init_params(mcfg, seed=seed, table_scale=0.5)


def pipeline_for(config, *, seed: int = 0, n_candidates: int | None = None):
    """``(params, spec)``: synthetic weights of a pipeline of as many stages
    as ``config``'s top level runs, keeping what ``recaccel run`` keeps
    (:func:`host.run.keeps_for`). One stage: :func:`stage_for`. Two: a cheap
    filter (its top layer 16 wide), then :func:`stage_for`'s model."""
    import dataclasses
    from host.run import keeps_for
    keeps = keeps_for(config, n_candidates or config.topk.k_max)
    big = stage_for(config, seed=seed)
    if config.stage.stages == 1:
        return {"s": big}, PipelineSpec("one stage", ("s",), keeps)
    mcfg = big.config
    small = dataclasses.replace(mcfg, name="filter", top_mlp=(min(16, mcfg.top_mlp[0]), 1))
    return ({"s1": init_params(small, seed=seed + 1, table_scale=0.5), "s2": big},
            PipelineSpec("two stages", ("s1", "s2"), keeps))


def hardware_e2e(config, *, n_queries: int = 16, n_candidates: int | None = None,
                 sb_rows: int = 64, latency=(20, 60), seed: int = 0, cpu: bool = True,
                 fmax_mhz: float | None = None, min_seconds: float = 1.0,
                 progress=print) -> dict:
    """``recaccel bench e2e``: the pipeline of :func:`pipeline_for` (one or two
    stages, as the top level runs) on the top level of ``config`` in
    Verilator (cycles **measured**), every answer checked against the golden
    pipeline:

    * ``cycles_per_query``: all queries submitted at once, sub-batches of
      ``sb_rows``: simulated cycles from the first submission to the last
      answer, per query (throughput);
    * ``cycles_between_answers``: the same run's mean interval between
      consecutive answers (the first answer's latency, the pipeline's
      fill, left out: the steady state ``cycles_per_query`` tends to with
      more queries);
    * ``cycles_per_query_no_pipelining``: the same queries one at a time
      (no query overlaps another, so no stage 2 overlaps the next query's
      stage 1) in one sub-batch each (no lookup overlaps the MLP): mean
      latency;
    * ``roofline_cycles_per_query``: the mean over queries of
      ``max(MACs / dim**2, lookup bytes / (channels * bus bytes))``
      (:func:`host.driver.roofline_cycles`);
    * ``cpu_qps``: the same pipeline on this CPU, measured: the fastest of
      the float NumPy, int8 golden NumPy and float torch runs
      (:func:`cpu_baseline`), and ``modelled_qps``: ``fmax_mhz`` (the synthesis report's,
      else the config's clock) over ``cycles_per_query``, modelled.
    """
    from host.driver import query_cost, roofline_cycles
    from sim.tb_top import run_job
    n_candidates = n_candidates or min(config.array.max_rows, 1 << config.topk.id_bits)
    params, spec = pipeline_for(config, seed=seed, n_candidates=n_candidates)
    first = params[spec.stages[0]].config
    bag = min(8, config.embedding.max_bag)
    calibration = synthetic_queries(first, 64, 32, user_bag=bag, seed=seed + 100)
    queries = synthetic_queries(first, n_queries, n_candidates, user_bag=bag, seed=seed)
    model = compile_model(params, spec, calibration, "int8",
                          score_bits=config.topk.score_bits, max_bag=config.embedding.max_bag)
    stages = [model.stages[n] for n in spec.stages]
    roof = []
    for q in queries:
        res = run_pipeline(spec, model.stages, q)
        roof.append(roofline_cycles(*query_cost(stages, res, q, config), config))
    progress(f"top level of {config.name}: {n_queries} queries of {n_candidates} candidates, "
             f"sub-batches of {sb_rows} (the Verilator build is cached after the first run)")
    (piped,) = run_job(config, model, queries, sb_rows=sb_rows, latency=latency,
                       quality=False, seed=seed)
    progress("the same, one query at a time in one sub-batch each (no pipelining)")
    (plain,) = run_job(config, model, queries,
                       sb_rows=min(n_candidates, config.array.max_rows), latency=latency,
                       sequential=True, seed=seed)
    cpq = piped["run_cycles"] / n_queries
    clock = fmax_mhz or config.clock_mhz
    out = {
        "preset": config.name, "model": f"synthetic dot models (pipeline_for): {spec.name}",
        "queries": n_queries, "candidates": n_candidates, "keep": list(spec.keep),
        "sb_rows": sb_rows,
        "memory_latency_cycles": list(latency),
        "cycles_per_query": cpq,
        "cycles_between_answers": (float(np.ptp(piped["done_cycles"])) / (n_queries - 1)
                                   if n_queries > 1 else None),
        "cycles_per_query_no_pipelining": float(np.mean(plain["latency_cycles"])),
        "roofline_cycles_per_query": float(np.mean(roof)),
        "answers_checked": piped["answers_checked"] + plain["answers_checked"],
        "answers_wrong": piped["answers_wrong"] + plain["answers_wrong"],
        "latency_p50_cycles": piped.get("p50_cycles"), "latency_p99_cycles": piped.get("p99_cycles"),
        "clock_mhz_for_qps": clock,
        "clock_source": "synthesis report" if fmax_mhz else "config clock (not synthesized)",
        "modelled_qps": clock * 1e6 / cpq,
        "cycles_source": "measured: Verilator cycles of the top level",
    }
    out["roofline_ratio"] = cpq / out["roofline_cycles_per_query"]
    out["pipelining_gain"] = out["cycles_per_query_no_pipelining"] / cpq
    out["phases_per_query"] = phases_per_query(piped["counters_delta"], config, n_queries)
    if cpu:
        c = cpu_baseline(model, queries, params, min_seconds=min_seconds)
        out["cpu"] = c
        # the fastest CPU run (float NumPy, int8 golden NumPy, float torch)
        runs = {k: v for k, v in c.items() if k.endswith("_qps") and v}
        out["cpu_source"] = max(runs, key=runs.get)
        out["cpu_qps"] = runs[out["cpu_source"]]
    return out


def phases_per_query(counters: dict, config, n_queries: int) -> dict:
    """Per stage of the top level, the cycles per query of each phase of the
    stage engine (:class:`hw.stage.StagePhase`) and its MLP engine's busy
    cycles, from the device's counters over a run."""
    return {f"stage{s}": {n: counters[f"s{s}_{n}_cycles"] / n_queries
                          for n in ("bottom", "user", "items", "engine")}
            for s in range(1, config.stage.stages + 1)}


def format_hardware_e2e(r: dict) -> str:
    lines = [f"top level of {r['preset']}: {r['queries']} queries x {r['candidates']} "
             f"candidates, keep {' then '.join(map(str, r['keep']))}, sub-batches of "
             f"{r['sb_rows']} "
             f"(cycles measured in Verilator)",
             f"  cycles per query: {r['cycles_per_query']:.0f} (roofline "
             f"{r['roofline_cycles_per_query']:.0f}: {r['roofline_ratio']:.2f}x)"
             + (f"; between answers {r['cycles_between_answers']:.0f}"
                if r.get("cycles_between_answers") else ""),
             f"  without sub-batching or query overlap: "
             f"{r['cycles_per_query_no_pipelining']:.0f} ({r['pipelining_gain']:.2f}x slower)",
             *(f"  {s}, cycles per query (device counters): bottom MLP {p['bottom']:.0f}, "
               f"user side {p['user']:.0f}, candidates {p['items']:.0f}; "
               f"its MLP engine busy {p['engine']:.0f}"
               for s, p in r.get("phases_per_query", {}).items()),
             f"  answers checked {r['answers_checked']}, wrong {r['answers_wrong']}",
             f"  modelled: {r['modelled_qps']:.0f} queries/s at {r['clock_mhz_for_qps']:g} MHz "
             f"({r['clock_source']})"]
    if "cpu_qps" in r:
        c = r["cpu"]
        runs = ", ".join(f"{k[:-4].replace('_', ' ')} {c[k]:.0f}" for k in
                         ("numpy_float_qps", "numpy_golden_qps", "torch_float_qps") if c.get(k))
        lines.append(f"  CPU, measured on this machine: {runs} queries/s "
                     f"(best: {r['cpu_qps']:.0f})")
    return "\n".join(lines)
