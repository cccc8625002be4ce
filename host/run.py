"""``recaccel run``, the main job: a MovieLens model compiled onto the
accelerator's top level, queries streamed through it in Verilator, every
answer checked, and the report a user reads.

The model
---------
:func:`movielens_setup` picks, in this order, what it can have:

* the data: MovieLens-100K (:func:`host.movielens.load_movielens`), one
  query per user of 1 held-out positive and ``candidates - 1`` unseen items;
  else (:class:`host.datasets.DatasetUnavailable`) synthetic queries with
  Zipf ids (:func:`host.movielens.synthetic_queries`);
* the pipeline: as many stages as the preset's top level runs
  (``config.stage.stages``, :data:`MODELS`): ``ml-med`` keeping 10, or the
  cheap ``ml-filter`` keeping :data:`FILTER_KEEP` and ``ml-med`` re-ranking
  those and keeping 10;
* the weights: those models trained on that data (:func:`host.train.trained_params`,
  from the model cache, or trained when torch is installed); else
  (:class:`host.train.TorchUnavailable`) synthetic weights of the same shapes
  (:func:`host.models.init_params`); and when they do not fit the preset's
  stage engines (``config.stage``), the synthetic pipeline of
  :func:`benchmarks.e2e.pipeline_for`.

``setup.notes`` says which, and the summary prints it. Calibration uses
other users' queries than the ones streamed; when the preset has static
caches, the rows those calibration queries look up most are pinned in them
(:meth:`host.device_format.DeviceFormat.pin_hot_rows`, RPAccel's profiled
static cache), and the dynamic caches catch the rest.

The run
-------
:func:`hardware_run` loads the model through the driver
(:class:`host.driver.Accelerator` over the simulation transport, the
device format) and streams the queries: once at ``rate_qps`` (open-loop
Poisson arrivals; all at once when ``None``) for the latency report, and,
with ``sweep``, again at fractions of the measured saturation rate for
throughput against offered load. Every answer is compared with the golden
pipeline on the host, bit for bit (``answers_wrong`` must be 0); quality is
measured against the float model and, with MovieLens, against the held-out
positives (HR@10, NDCG@10). The CPU baseline (:func:`benchmarks.e2e.cpu_baseline`)
runs the same pipeline on this machine in the same job, and the modelled
queries per second are the measured cycles per query at the synthesis
report's Fmax (or the config's clock, labelled so).

Array utilization is the model's MACs over ``dim**2`` times the cycles of
the run; channel utilization is the bytes the AXI ports read (the device's
``lookup_bytes`` counter) over ``channels * bus_bytes`` per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hw.config import Config

from .driver import CompiledModel, compile_model, query_cost
from .models import Query, StageModelParams, init_params, stage_preset
from .pipeline import PipelineSpec, run_pipeline

__all__ = ["RunSetup", "movielens_setup", "prebuild", "hardware_run", "format_run",
           "write_plots"]

#: The stage models of a one-stage and a two-stage top level (the default
#: preset's stage engines are sized for them), and what the filter keeps.
MODELS = {1: ("ml-med",), 2: ("ml-filter", "ml-med")}
FILTER_KEEP = 64


def models_for(config: Config) -> tuple[str, ...]:
    return MODELS[config.stage.stages]


def keeps_for(config: Config, n_candidates: int, keep: int = 10) -> tuple[int, ...]:
    """What each stage keeps: ``keep`` (one stage), or :data:`FILTER_KEEP`
    then ``keep`` (two), within the top-k filter's ``k_max`` and the
    candidates."""
    keep = min(keep, config.topk.k_max, n_candidates)
    if config.stage.stages == 1:
        return (keep,)
    keep1 = min(FILTER_KEEP, config.topk.k_max, n_candidates)
    return keep1, min(keep, keep1)


@dataclass
class RunSetup:
    """A compiled pipeline, its float weights (by stage), the queries and
    (with MovieLens) each query's held-out positive."""

    model: CompiledModel
    params: dict[str, StageModelParams]
    queries: list[Query]
    positives: np.ndarray | None
    data: str
    weights: str
    notes: list[str] = field(default_factory=list)


def _fits(config: Config, model: CompiledModel, sb_rows: int) -> str | None:
    """``None`` when the device format takes ``model``, else why not."""
    from .device_format import DeviceFormat
    try:
        DeviceFormat(config, sb_rows=sb_rows).compile(model)
    except ValueError as e:
        return str(e)
    return None


def movielens_setup(config: Config, *, n_queries: int = 32, n_candidates: int = 256,
                    keep: int = 10, sb_rows: int = 64, seed: int = 0, download: bool = True,
                    progress: Callable[[str], None] = print) -> RunSetup:
    """The model and queries of a run (module docstring)."""
    from .datasets import DatasetUnavailable
    from .movielens import load_movielens, movielens_queries, synthetic_queries
    from .train import TorchUnavailable, trained_params
    if not 1 <= n_candidates <= config.array.max_rows:
        raise ValueError(f"candidates: 1 .. {config.array.max_rows} (array.max_rows) on "
                         f"{config.name}, not {n_candidates}")
    if n_queries < 1:
        raise ValueError(f"queries: must be >= 1, not {n_queries}")
    names = models_for(config)
    keeps = keeps_for(config, n_candidates, keep)
    spec = PipelineSpec(", ".join(f"{n} keeps {k}" for n, k in zip(names, keeps)), names,
                        keeps)
    quant = {"score_bits": config.topk.score_bits, "max_bag": config.embedding.max_bag}
    notes: list[str] = []
    split = None
    try:
        split = load_movielens(download=download)
    except DatasetUnavailable as e:
        notes.append(f"synthetic queries: MovieLens-100K unavailable ({e})")
    params, weights = None, None
    if split is not None:
        try:
            params = {n: trained_params(n, split, seed=seed, progress=progress) for n in names}
            weights = f"{' and '.join(names)} trained on MovieLens-100K"
        except TorchUnavailable:
            notes.append(f"synthetic weights: {' and '.join(names)} neither cached nor "
                         f"trainable without torch (pip install 'recaccel[torch]')")
    if params is None:
        params = {n: init_params(stage_preset(n), seed=seed + i, table_scale=0.5)
                  for i, n in enumerate(names)}
        weights = f"{' and '.join(names)} shapes, synthetic weights"

    def queries_for(p: StageModelParams):
        if split is not None and p.config.tables == stage_preset(names[0]).tables:
            rng = np.random.default_rng([seed, 3])
            users = rng.permutation(split.n_users)
            if n_queries + 64 > users.size:
                raise ValueError(f"queries: at most {users.size - 64} MovieLens users")
            history = min(32, config.embedding.max_bag)
            q, pos = movielens_queries(split, users=users[:n_queries], history=history,
                                       negatives=n_candidates - 1, seed=seed)
            cal, _ = movielens_queries(split, users=users[-64:], history=history,
                                       negatives=n_candidates - 1, seed=seed + 1)
            return q, pos, cal, "MovieLens-100K (one query per user, 1 held-out positive)"
        bag = min(8, config.embedding.max_bag)
        return (synthetic_queries(p.config, n_queries, n_candidates, user_bag=bag, seed=seed),
                None, synthetic_queries(p.config, 64, 32, user_bag=bag, seed=seed + 100),
                "synthetic (Zipf ids)")

    queries, positives, cal, data = queries_for(params[names[0]])
    try:
        model = compile_model(params, spec, cal, "int8", **quant)
        why = _fits(config, model, sb_rows)
    except ValueError as e:
        why = str(e)
    if why is not None:
        from benchmarks.e2e import pipeline_for
        notes.append(f"synthetic models: {' and '.join(names)} do not fit {config.name}'s "
                     f"stage engines ({why})")
        params, spec = pipeline_for(config, seed=seed, n_candidates=n_candidates)
        weights = "synthetic (pipeline_for)"
        queries, positives, cal, data = queries_for(params[spec.stages[0]])
        model = compile_model(params, spec, cal, "int8", **quant)
    if config.embedding.static_rows:
        from .device_format import DeviceFormat
        model = DeviceFormat(config, sb_rows=sb_rows).pin_hot_rows(model, cal)
    return RunSetup(model, params, queries, positives, data, weights, notes)


def _build_quietly(config: Config, log_path: str) -> None:
    # (in a child process: the build's output goes to its own log)
    import os
    with open(log_path, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        from sim.tb_top import build_top
        build_top(config)


def prebuild(config: Config, log_path) -> "multiprocessing.Process":
    """Start building the top level's simulator (its Verilog, then
    Verilator; both cached) in a child process, with its output in
    ``log_path``, so that it runs on one core while the models are trained
    on the other. :func:`hardware_run` builds (or finds the build) itself:
    join the process first; if it failed, that build says why."""
    import multiprocessing
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    p = multiprocessing.get_context("spawn").Process(
        target=_build_quietly, args=(config, str(log_path)), daemon=True)
    p.start()
    return p


def hardware_run(config: Config, setup: RunSetup, *, load: float = 0.5,
                 rate_qps: float | None = None, sweep: Sequence[float] = (),
                 sb_rows: int = 64, latency=(20, 60), seed: int = 0, cpu: bool = True,
                 fmax_mhz: float | None = None, log_file=None,
                 progress: Callable[[str], None] = print) -> dict:
    """Stream ``setup``'s queries through the top level (module docstring),
    in one simulation: first all at once (the saturation throughput
    ``S``), then the latency run at ``rate_qps`` queries/s, or at ``load *
    S`` (Poisson), then once at each ``f * S`` of ``sweep``. Returns the
    report (JSON-able); ``run`` is the latency run. ``log_file``: where the
    simulator's output goes (default: stdout)."""
    from sim.tb_top import run_job
    if rate_qps is not None and not rate_qps > 0:
        raise ValueError(f"rate: must be positive, not {rate_qps!r}")
    for f in [load, *sweep]:
        if not f > 0:
            raise ValueError(f"load and sweep: fractions of saturation must be positive, "
                             f"not {f!r}")
    model, queries = setup.model, setup.queries
    stages = [model.stages[n] for n in model.spec.stages]
    macs = 0
    for q in queries:
        macs += query_cost(stages, run_pipeline(model.spec, model.stages, q), q, config)[0]
    fractions = ([] if rate_qps is not None else [load]) + list(sweep)
    progress(f"streaming {len(queries)} queries through the top level of {config.name} in "
             f"Verilator, {1 + (rate_qps is not None) + len(fractions)} times (the "
             f"simulator build is cached after the first run) ...")
    runs = run_job(config, model, queries, sb_rows=sb_rows, latency=latency,
                   rates=[None] + ([rate_qps] if rate_qps is not None else []),
                   fractions=fractions, positives=setup.positives, seed=seed,
                   log_file=log_file)
    sat, main = runs[0], runs[1]
    cycles = sat["run_cycles"]
    emb = config.embedding
    out = {
        "preset": config.name, "clock_mhz": config.clock_mhz,
        "data": setup.data, "weights": setup.weights, "notes": list(setup.notes),
        "queries": len(queries),
        "candidates_per_query": float(np.mean([q.n_candidates for q in queries])),
        "pipeline": model.spec.name, "keep": list(model.spec.keep), "sb_rows": sb_rows, "memory_latency_cycles": list(latency),
        "cycles_source": "measured: Verilator cycles of the top level",
        "simulator_log": str(log_file) if log_file else None,
        "pinned_rows": sum(int(len(t)) for t, _ in (model.pinned or {}).values()),
        "run": main, "saturation": sat,
        "cycles_per_query": cycles / len(queries),
        "saturation_qps": sat["throughput_qps"],
        "array_utilization": macs / (config.array.dim ** 2 * cycles),
        "channel_utilization": sat["counters_delta"]["lookup_bytes"] / (
            emb.channels * emb.bus_bytes * cycles),
        "answers_checked": sum(r["answers_checked"] for r in runs),
        "answers_wrong": sum(r["answers_wrong"] for r in runs),
        "load_sweep": [{"offered_qps": r["offered_qps"], "throughput_qps": r["throughput_qps"],
                        "p50_us": r.get("p50_us"), "p99_us": r.get("p99_us"),
                        "queries": r["queries"], "answers_ok": r["answers_ok"]}
                       for r in runs],
    }
    clock = fmax_mhz or config.clock_mhz
    out["modelled_qps"] = clock * 1e6 / out["cycles_per_query"]
    out["modelled_clock_mhz"] = clock
    out["modelled_clock_source"] = ("synthesis report" if fmax_mhz
                                    else "config clock (not synthesized)")
    if cpu:
        from benchmarks.e2e import cpu_baseline
        progress("CPU baseline: the same pipeline on this machine ...")
        out["cpu"] = cpu_baseline(model, queries, setup.params)
        runs_ = {k: v for k, v in out["cpu"].items() if k.endswith("_qps") and v}
        out["cpu_qps"] = max(runs_.values())
    return out


def write_plots(report: dict, directory) -> list[str]:
    """The latency CDF of the latency run and, with a sweep, throughput
    against offered load, as PNG files in ``directory``."""
    from .plots import latency_cdf, throughput_vs_load
    directory = Path(directory)
    paths = [latency_cdf(report["run"]["latency_us"], directory / "latency_cdf.png",
                         xlabel=f"latency, us at {report['clock_mhz']:g} MHz (Verilator cycles)",
                         title=f"{report['preset']}: {report['queries']} queries, "
                               f"{_rate(report['run']['offered_qps'])}")]
    sweep = sorted((r for r in report["load_sweep"] if r["offered_qps"]),
                   key=lambda r: r["offered_qps"])
    if sweep:
        paths.append(throughput_vs_load([r["offered_qps"] for r in sweep],
                                        [r["throughput_qps"] for r in sweep],
                                        [r["p99_us"] for r in sweep], report["saturation_qps"],
                                        directory / "throughput_vs_load.png"))
    return paths


def format_run(r: dict) -> str:
    """The summary ``recaccel run`` prints."""
    run, sat = r["run"], r["saturation"]
    lines = [
        f"preset {r['preset']} at {r['clock_mhz']:g} MHz: {r['weights']}; queries: {r['data']}",
        *(f"  note: {n}" for n in r["notes"]),
        f"  {r['queries']} queries x {r['candidates_per_query']:.0f} candidates, "
        f"{r['pipeline']}, sub-batches of {r['sb_rows']}, AXI latency "
        f"{r['memory_latency_cycles'][0]}-{r['memory_latency_cycles'][1]} cycles; "
        f"cycles measured in Verilator, us at {r['clock_mhz']:g} MHz",
        f"  answers: {r['answers_checked']} checked against the golden pipeline over "
        f"{len(r['load_sweep'])} runs, {r['answers_wrong']} wrong",
        f"  saturation (all at once): {sat['throughput_qps']:.0f} queries/s, "
        f"{r['cycles_per_query']:.0f} cycles per query; array utilization "
        f"{r['array_utilization']:.3f}, channel utilization {r['channel_utilization']:.3f}",
        f"  latency at {_rate(run['offered_qps'])}: p50 {run['p50_us']:.1f} us, "
        f"p95 {run['p95_us']:.1f}, p99 {run['p99_us']:.1f}; throughput "
        f"{run['throughput_qps']:.0f} queries/s",
    ]
    c = sat["counters_delta"]
    looked = c.get("cache_hits", 0) + c.get("cache_misses", 0)
    if looked:
        lines.append(f"  embedding caches: hit rate {c['cache_hits'] / looked:.3f} "
                     f"({c['cache_hits']} hits, {c['cache_misses']} misses; "
                     f"{r['pinned_rows']} rows pinned in the static caches)")
    q = run.get("quality") or {}
    if q:
        lines.append("  quality at k=10: " + ", ".join(
            f"{k} {v:.3f}" for k, v in q.items() if k != "k" and v is not None))
    for s in r["load_sweep"][2:]:
        lines.append(f"  offered {_rate(s['offered_qps'])}: throughput "
                     f"{s['throughput_qps']:.0f} queries/s, p99 {s['p99_us']:.1f} us, "
                     f"{s['answers_ok']} of {s['queries']} answered")
    lines.append(f"  modelled: {r['modelled_qps']:.0f} queries/s at "
                 f"{r['modelled_clock_mhz']:g} MHz ({r['modelled_clock_source']})")
    if "cpu" in r:
        c = r["cpu"]
        runs = ", ".join(f"{k[:-4].replace('_', ' ')} {c[k]:.0f}" for k in
                         ("numpy_float_qps", "numpy_golden_qps", "torch_float_qps") if c.get(k))
        lines.append(f"  CPU, measured on this machine: {runs} queries/s"
                     + "".join(f"; {n}" for n in c["notes"]))
    return "\n".join(lines)


def _rate(qps: float | None) -> str:
    return "all at once" if qps is None else f"{qps:.0f} queries/s Poisson"
