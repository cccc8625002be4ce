"""``recaccel``: generate, synthesize, run and benchmark the accelerator."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hw.config import Config, PRESETS
from hw.synth import PLACERS

__all__ = ["main"]


def _config(args) -> Config:
    if getattr(args, "config", None):
        return Config.from_toml(args.config)
    return Config.preset(args.preset)


def _add_config_args(p, default="default"):
    p.add_argument("--preset", default=default, choices=sorted(PRESETS),
                   help=f"named config (default: {default})")
    p.add_argument("--config", metavar="TOML", help="a config file (overrides --preset)")


def _sb_rows(args, cfg: Config) -> int:
    """The sub-batch: ``--sb-rows``, else 128 candidates (the best of 64, 128
    and 256 on the default preset, README "End to end") or the array's
    ``max_rows`` if fewer."""
    return args.sb_rows if args.sb_rows is not None else min(128, cfg.array.max_rows)


def _write_json(path, obj):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2) + "\n")
        print(f"wrote {path}")


def cmd_generate(args):
    from hw.generate import generate
    cfg = _config(args)
    t = time.time()
    files = generate(cfg, args.output, blocks=not args.no_blocks)
    print(f"generated {cfg.name} into {args.output} in {time.time() - t:.1f} s:")
    for f in files:
        print(f"  {f} ({f.stat().st_size // 1024} KiB)")
    if args.lint:
        from sim.runner import lint
        from sim.build import simulation_config
        from hw.generate import TOP_NAME, top_component
        from hw.verilog import to_verilog
        scfg = simulation_config(cfg)
        text = files[0].read_text() if scfg == cfg else to_verilog(top_component(scfg), TOP_NAME)
        path = Path(args.output) / "lint_top.v"
        path.write_text(text)
        lint(path, TOP_NAME)
        path.unlink()
        print("Verilator lint: clean")


def _seed_list(text):
    """``"1-4"``, ``"1,3,5"`` or both (``"1-3,7"``): distinct seeds, in order."""
    seeds = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                raise ValueError
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of seeds (like 1-4 or 1,3,5)") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return seeds


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def cmd_synth(args):
    from hw.generate import TOP_NAME, constraint_texts, top_component
    from hw.narrow_io import NarrowIO
    from hw.synth import synth_ecp5
    from hw.verilog import to_verilog
    cfg = _config(args)
    work = Path(args.workdir or f"build/synth-{cfg.name}")
    work.mkdir(parents=True, exist_ok=True)
    print(f"elaborating {cfg.name} ({cfg.array.dim}x{cfg.array.dim} array, "
          f"dsp={cfg.array.dsp}) ...", flush=True)
    wrapper = NarrowIO(top_component(cfg))
    verilog = to_verilog(wrapper, TOP_NAME)
    lpf = work / "clock.lpf"
    lpf.write_text(constraint_texts(cfg)["ecp5.lpf"])
    seeds = args.seeds or [args.seed]
    res = synth_ecp5(verilog, TOP_NAME, workdir=work, freq_mhz=cfg.clock_mhz, lpf=lpf,
                     progress=lambda s: print(f"  {s}", flush=True), seed=seeds,
                     router=args.router, placer=args.placer, tmg_ripup=args.tmg_ripup,
                     jobs=args.jobs or min(len(seeds), os.cpu_count() or 1))
    out = {k: res[k] for k in ("fmax_mhz", "lut", "ff", "dsp", "bram", "seed", "synth_s",
                               "pnr_s")}
    out.update({"target_mhz": cfg.clock_mhz, "device": "LFE5U-85F-6BG381", "router": args.router,
                "placer": args.placer, "tmg_ripup": args.tmg_ripup,
                "preset": cfg.name, "wrapped_port_bits": wrapper.in_bits + wrapper.out_bits,
                "wrapper_ff": wrapper.in_bits + wrapper.out_bits})
    if len(seeds) > 1:
        out["seeds"] = [{k: r[k] for k in ("seed", "fmax_mhz", "pnr_s")} for r in res["runs"]]
        print("seed sweep: " + ", ".join(f"seed {r['seed']} {r['fmax_mhz']:.1f} MHz"
                                          for r in res["runs"]))
    print(f"Fmax {out['fmax_mhz']:.1f} MHz (target {cfg.clock_mhz:g}"
          + (f"; seed {out['seed']}, the best of {len(seeds)}" if len(seeds) > 1 else "")
          + f"); LUT4 {out['lut']}, FF {out['ff']}, MULT18X18D {out['dsp']}, "
          f"DP16KD {out['bram']}")
    print(f"(includes the narrow-I/O wrapper: {out['wrapper_ff']} FF for "
          f"{out['wrapped_port_bits']} port bits)")
    _write_json(args.json, out)


def cmd_bench(args):
    cfg = _config(args)
    if args.what == "array":
        from benchmarks.array import bench_array, format_array
        report = bench_array(cfg, rows_list=tuple(args.rows))
        print(format_array(report))
        _write_json(args.json, report)
        if not all(l["exact"] for l in report["layers"]):
            print("error: some outputs differ from the golden model", file=sys.stderr)
            return 1
    elif args.what == "topk":
        from benchmarks.topk import DEFAULT_VARIANTS, bench_topk, format_topk
        variants = list(DEFAULT_VARIANTS)
        own = (cfg.topk.k_max, cfg.topk.lanes, cfg.topk.score_bits)
        rows = bench_topk(variants + [cfg.topk] * (own not in variants),
                          synth=not args.no_synth, list_len=args.list_len,
                          lists=args.lists, freq_mhz=args.freq,
                          workdir=args.workdir or "build/bench-topk",
                          progress=lambda s: print(s, flush=True))
        print(format_topk(rows))
        _write_json(args.json, rows)
    elif args.what == "lookup":
        from benchmarks.lookup import bench_lookup, format_lookup
        from benchmarks.cartesian import cartesian_report, format_cartesian
        report = bench_lookup(cfg.embedding, latency=args.latency)
        print(format_lookup(report))
        cartesian = cartesian_report()
        print(format_cartesian(cartesian))
        _write_json(args.json, {**report, "cartesian": cartesian})
    elif args.what == "cache":
        from benchmarks.cache import TRACES, bench_cache, format_cache
        rows = bench_cache(cfg.embedding, tuple(args.traces or TRACES), cycles=not args.no_sim,
                           warm=args.window, measure=args.window, latency=args.latency,
                           mem_rate=args.mem_rate, progress=lambda s: print(s, flush=True))
        print(format_cache(cfg.embedding, rows))
        _write_json(args.json, rows)
    elif args.what == "quality":
        from benchmarks.quality import bench_quality, format_quality
        from host.datasets import DatasetUnavailable
        from host.train import TorchUnavailable
        try:
            rows = bench_quality(progress=lambda s: print(s, flush=True))
        except (DatasetUnavailable, TorchUnavailable) as e:
            print(f"recaccel: error: {e}", file=sys.stderr)
            return 2
        print(format_quality(rows))
        _write_json(args.json, rows)
    elif args.what == "e2e":
        from benchmarks.e2e import format_hardware_e2e, hardware_e2e
        fmax = None
        if args.synth_json:
            fmax = json.loads(Path(args.synth_json).read_text())["fmax_mhz"]
        report = hardware_e2e(cfg, n_queries=args.queries, n_candidates=args.candidates,
                              sb_rows=_sb_rows(args, cfg), fmax_mhz=fmax,
                              progress=lambda s: print(s, flush=True))
        print(format_hardware_e2e(report))
        _write_json(args.json, report)
        if report["answers_wrong"]:
            print("error: some answers differ from the golden pipeline", file=sys.stderr)
            return 1
    return 0


def cmd_run(args):
    from host.run import format_run, hardware_run, movielens_setup, prebuild, write_plots
    cfg = _config(args)
    say = lambda s: print(s, flush=True)  # noqa: E731
    fmax = json.loads(Path(args.synth_json).read_text())["fmax_mhz"] if args.synth_json else None
    sb_rows = _sb_rows(args, cfg)
    # the simulator builds on one core while the models load or train
    build_log = Path(args.out) / "build.log"
    say(f"building the simulator of {cfg.name}'s top level in the background "
        f"(cached after the first time; output: {build_log})")
    builder = prebuild(cfg, build_log)
    try:
        setup = movielens_setup(cfg, n_queries=args.queries, n_candidates=args.candidates,
                                sb_rows=sb_rows, seed=args.seed, progress=say)
        if builder.is_alive():
            say("waiting for the simulator build ...")
        builder.join()
    finally:
        if builder.is_alive():
            builder.terminate()
    report = hardware_run(cfg, setup, load=args.load, rate_qps=args.rate, sweep=args.sweep,
                          sb_rows=sb_rows, seed=args.seed, cpu=not args.no_cpu,
                          log_file=Path(args.out) / "simulator.log",
                          fmax_mhz=fmax, progress=say)
    report["plots"] = write_plots(report, args.out)
    print(format_run(report))
    for p in report.get("plots", []):
        print(f"  plot: {p}")
    print(f"  simulator output: {report['simulator_log']}")
    _write_json(args.json, report)
    if report["answers_wrong"]:
        print("error: some answers differ from the golden pipeline", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="recaccel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write Verilog, file list, config and constraints")
    _add_config_args(p)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--no-blocks", action="store_true", help="only the top level")
    p.add_argument("--lint", action="store_true", help="lint the top level with Verilator")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("synth", help="open FPGA flow (Yosys + nextpnr-ecp5): Fmax, resources")
    _add_config_args(p, default="ecp5")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--workdir")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=1, help="placement seed")
    seed.add_argument("--seeds", type=_seed_list, metavar="LIST",
                      help="a seed sweep: place and route once per seed (\"1-4\", "
                           "\"1,3,5\"), report every seed's Fmax and keep the best")
    p.add_argument("--jobs", type=_positive_int, metavar="N",
                   help="seed sweep: runs at a time (default: the seeds or the cores, "
                        "whichever is fewer; each run uses a core)")
    p.add_argument("--router", choices=["router1", "router2"], default="router1",
                   help="nextpnr router (router2 is much faster on a congested die; "
                        "the delays it reaches may differ)")
    p.add_argument("--placer", choices=list(PLACERS), default="static",
                   help="nextpnr placer (static: electrostatic, the default here: "
                        "10-40%% higher Fmax than heap on the ecp5 preset at the same "
                        "seed; heap: analytic, nextpnr's own default)")
    p.add_argument("--tmg-ripup", action="store_true",
                   help="nextpnr: rip up and reroute nets for timing (routing takes longer)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("bench", help="benchmarks (cycles, utilization, resources, Fmax)")
    p.add_argument("what", choices=["array", "topk", "lookup", "cache", "quality", "e2e"],
                   help="array: MLP layers on the systolic array; topk: the top-k "
                        "filter at K_max 64/256/512, 16/32-bit scores, and the preset's own; "
                        "lookup: the embedding unit's row rate against the channels' peak; "
                        "cache: the embedding caches' hit rates against Belady's on Zipf, "
                        "MovieLens and uniform traces, and cycles per round with and without; "
                        "quality: NDCG@10 / HR@10 / MACs of the MovieLens-100K pipelines at "
                        "float, int8 and int4 (trains the models once and caches them; "
                        "training needs torch); e2e: queries through the top level in "
                        "Verilator, cycles per query against the roofline, with and without "
                        "sub-batching, and the CPU's queries per second")
    _add_config_args(p)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--rows", type=int, nargs="+", default=[512, 4096],
                   help="array: rows per layer run")
    p.add_argument("--no-synth", action="store_true",
                   help="topk: simulation only (synthesis takes minutes per variant)")
    p.add_argument("--list-len", type=int, default=4096, help="topk: pairs per list")
    p.add_argument("--lists", type=int, default=3, help="topk: lists back to back")
    p.add_argument("--freq", type=float, default=200.0,
                   help="topk: clock constraint for place and route, MHz")
    p.add_argument("--workdir", help="topk: synthesis work directory")
    p.add_argument("--latency", type=int, default=200,
                   help="lookup, cache: memory latency, cycles")
    p.add_argument("--traces", nargs="+", default=None,
                   help="cache: traces (zipf, movielens, uniform)")
    p.add_argument("--mem-rate", type=float, default=0.25,
                   help="cache: beats per cycle each channel's memory delivers")
    p.add_argument("--window", type=int, default=1000,
                   help="cache: lookups per channel simulated (after as many to warm up)")
    p.add_argument("--no-sim", action="store_true",
                   help="cache: hit rates only (no Verilator cycles)")
    p.add_argument("--queries", type=int, default=16, help="e2e: queries")
    p.add_argument("--candidates", type=int, default=None,
                   help="e2e: candidates per query (default: array.max_rows)")
    p.add_argument("--sb-rows", type=int, default=None,
                   help="e2e: candidates per sub-batch (default: 128, at most array.max_rows)")
    p.add_argument("--synth-json", metavar="PATH",
                   help="e2e: a `recaccel synth --json` report whose Fmax gives the "
                        "modelled queries per second (default: the config's clock)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="the main job: the MovieLens model through the simulated "
                                   "top level, every answer checked, latency, throughput, "
                                   "quality, CPU baseline")
    _add_config_args(p)
    p.add_argument("--queries", type=int, default=32, help="queries (one per user)")
    p.add_argument("--candidates", type=int, default=256, help="candidates per query")
    p.add_argument("--sb-rows", type=int, default=None,
                   help="candidates per sub-batch (default: 128, at most array.max_rows)")
    p.add_argument("--load", type=float, default=0.5,
                   help="offered load of the latency run, as a fraction of the measured "
                        "saturation throughput (Poisson arrivals)")
    p.add_argument("--rate", type=float, default=None, metavar="QPS",
                   help="offered load of the latency run in queries/s (overrides --load)")
    p.add_argument("--sweep", type=float, nargs="*", default=[0.75, 1.2],
                   help="more runs at these fractions of saturation (throughput against "
                        "offered load)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU baseline")
    p.add_argument("--synth-json", metavar="PATH",
                   help="a `recaccel synth --json` report whose Fmax gives the modelled "
                        "queries per second (default: the config's clock)")
    p.add_argument("--out", metavar="DIR", default="build/run",
                   help="where the plots (latency CDF, throughput against load) and the "
                        "simulator's output go")
    p.add_argument("--json", metavar="PATH", default="build/run/report.json")
    p.set_defaults(func=cmd_run)

    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"recaccel: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
