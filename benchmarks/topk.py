"""Throughput, drain latency, resources and Fmax of the top-k filter.

For each variant (``k_max``, ``lanes``, ``score_bits``; 16-bit ids, signed
scores):

* simulated (Verilator, :func:`sim.tb_topk.bench_back_to_back`): ``lists``
  random lists of ``list_len`` pairs with ``k = k_max``, back to back, every
  lane full, no idle cycles and no backpressure; every answer is checked
  against the golden model. ``pairs_per_cycle`` = pairs / cycles from the
  first input beat taken to the last; ``drain_cycles`` = cycles from a
  list's last input beat to its trailer (the largest over the lists).
* synthesized (``synth=True``): :func:`hw.synth.synth_ecp5` on
  ``NarrowIO(TopKFilter(config))`` for the ECP5-85F, speed 6, constrained
  to ``freq_mhz``: LUT4, FF, DP16KD and Fmax. The figures include the
  narrow-I/O wrapper (a flip-flop per port bit, ``wrapper_ff``). A variant
  that does not go through place and route (does not fit the device)
  reports ``None``, the reason, and Yosys's counts (``yosys_lut``,
  ``yosys_ff``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from hw.config import TopKConfig

__all__ = ["DEFAULT_VARIANTS", "bench_topk", "format_topk"]

#: (k_max, lanes, score_bits)
DEFAULT_VARIANTS = (
    (64, 1, 16), (64, 1, 32), (256, 1, 16), (256, 1, 32), (512, 1, 16), (512, 1, 32),
    (64, 2, 16), (64, 4, 16),
)

_ID_BITS = 16


def _config(variant) -> TopKConfig:
    if isinstance(variant, TopKConfig):
        return variant
    if isinstance(variant, dict):
        return TopKConfig(**{"id_bits": _ID_BITS, **variant})
    k_max, lanes, score_bits = variant
    return TopKConfig(k_max=k_max, lanes=lanes, score_bits=score_bits, signed=True,
                      id_bits=_ID_BITS)


def _simulate(cfg: TopKConfig, list_len: int, lists: int, seed: int) -> dict:
    from sim import runner
    from sim.tb_topk import build_topk
    sim_runner, top = build_topk(cfg)
    return runner.run_report(
        sim_runner, test_module="sim.tb_topk", toplevel=top, test="bench_back_to_back",
        tb={"topk": {"k_max": cfg.k_max, "lanes": cfg.lanes, "score_bits": cfg.score_bits,
                     "signed": cfg.signed, "id_bits": cfg.id_bits},
            "seed": seed, "idle": 0.0, "backpressure": 0.0,
            "bench": {"list_len": list_len, "lists": lists, "k": cfg.k_max}})


_STAT = re.compile(r"^\s+(\d+)\s+(LUT4|CCU2C|TRELLIS_FF|TRELLIS_DPR16X4|PFUMX|L6MUX21|DP16KD)\s*$",
                   re.M)


def _yosys_estimate(log: Path) -> dict:
    """LUT4 sites and flip-flops from Yosys's last cell count, for a design
    that did not go through place and route (a CCU2C and a distributed-RAM
    block take two LUT4 sites each)."""
    counts = {}
    for number, cell in _STAT.findall(log.read_text(errors="replace")):
        counts[cell] = int(number)       # the last statistics block wins
    if "TRELLIS_FF" not in counts:
        return {}
    return {"lut": counts.get("LUT4", 0) + 2 * counts.get("CCU2C", 0)
            + 2 * counts.get("TRELLIS_DPR16X4", 0),
            "ff": counts["TRELLIS_FF"], "bram": counts.get("DP16KD", 0)}


def _synthesize(cfg: TopKConfig, workdir: Path, freq_mhz: float, seed: int,
                progress) -> dict:
    from hw.narrow_io import NarrowIO
    from hw.synth import ToolError, synth_ecp5
    from hw.topk import TopKFilter
    from hw.verilog import to_verilog
    wrapper = NarrowIO(TopKFilter(cfg))
    verilog = to_verilog(wrapper, "topk_top")
    out = {"wrapper_ff": wrapper.in_bits + wrapper.out_bits}
    try:
        res = synth_ecp5(verilog, "topk_top", workdir=workdir, freq_mhz=freq_mhz,
                         seed=seed, progress=progress)
    except ToolError as error:
        # Typically: does not fit the device. Keep Yosys's figures, marked.
        reason = str(error).splitlines()[0]
        log = Path(workdir) / "yosys.log"
        estimate = _yosys_estimate(log) if log.is_file() else {}
        return {**out, "lut": None, "ff": None, "bram": None, "fmax_mhz": None,
                "synth_error": reason,
                **{f"yosys_{k}": v for k, v in estimate.items()}}
    return {**out, **{k: res[k] for k in ("lut", "ff", "bram", "fmax_mhz", "synth_s",
                                          "pnr_s")}}


def bench_topk(variants=DEFAULT_VARIANTS, *, synth: bool = True, list_len: int = 4096,
               lists: int = 3, freq_mhz: float = 200.0, workdir="build/bench-topk",
               seed: int = 1, progress=print) -> list[dict]:
    """Measure each variant; one dict per variant.

    Parameters
    ----------
    variants : iterable
        ``(k_max, lanes, score_bits)`` tuples (16-bit ids, signed scores), or
        :class:`~hw.config.TopKConfig` objects, or dicts of its fields.
    synth : bool
        Also run the open FPGA flow (minutes per variant); ``False`` skips it
        and leaves ``lut``, ``ff``, ``bram``, ``fmax_mhz`` at ``None``.
    list_len, lists : int
        The back-to-back run: ``lists`` lists of ``list_len`` pairs.
    freq_mhz : float
        Clock constraint for place and route.
    workdir : path-like
        Synthesis work directories go to ``workdir/<variant>/``.
    seed : int
        Seed of the random lists and of the placement.
    progress : callable or None
        Called with one status line at a time.

    Returns
    -------
    list of dict
        ``k_max``, ``lanes``, ``score_bits``, ``id_bits``, ``pairs_per_cycle``,
        ``drain_cycles``, ``stall_cycles``, ``exact`` (every answer matched the
        golden model), ``lut``, ``ff``, ``bram``, ``fmax_mhz`` (``None`` when
        not synthesized or not fitting; then ``synth_error`` says why),
        ``wrapper_ff``.
    """
    say = progress or (lambda message: None)
    rows = []
    for variant in variants:
        cfg = _config(variant)
        name = f"k{cfg.k_max}-p{cfg.lanes}-s{cfg.score_bits}"
        row = {"k_max": cfg.k_max, "lanes": cfg.lanes, "score_bits": cfg.score_bits,
               "id_bits": cfg.id_bits}
        t = time.monotonic()
        say(f"{name}: simulating {lists} lists of {list_len} pairs ...")
        sim = _simulate(cfg, list_len, lists, seed)
        row.update({"pairs_per_cycle": round(sim["pairs_per_cycle"], 4),
                    "drain_cycles": max(sim["drain_cycles"]),
                    "stall_cycles": sim["stall_cycles"],
                    # bench_back_to_back fails the run on any wrong answer
                    "exact": True,
                    "sim_s": round(time.monotonic() - t, 1)})
        if synth:
            say(f"{name}: synthesis, place and route (ECP5-85F, {freq_mhz:g} MHz) ...")
            row.update(_synthesize(cfg, Path(workdir) / name, freq_mhz, seed,
                                   lambda s, name=name: say(f"{name}:   {s}")))
        else:
            row.update({"lut": None, "ff": None, "bram": None, "fmax_mhz": None})
        rows.append(row)
    return rows


def _cell(value, fmt="{}"):
    return "-" if value is None else fmt.format(value)


def format_topk(rows) -> str:
    """A table of :func:`bench_topk`'s rows."""
    lines = ["Top-k filter: back-to-back lists, k = k_max, 16-bit ids; ECP5-85F speed 6 "
             "(LUT4/FF include the narrow-I/O wrapper)",
             f"{'k_max':>5} {'P':>2} {'bits':>4} {'pairs/cyc':>9} {'drain':>6} "
             f"{'LUT4':>7} {'FF':>7} {'BRAM':>4} {'Fmax MHz':>8}"]
    for r in rows:
        line = (f"{r['k_max']:5d} {r['lanes']:2d} {r['score_bits']:4d} "
                f"{r['pairs_per_cycle']:9.4f} {r['drain_cycles']:6d} "
                f"{_cell(r['lut']):>7} {_cell(r['ff']):>7} {_cell(r['bram']):>4} "
                f"{_cell(r['fmax_mhz'], '{:.1f}'):>8}")
        if r.get("synth_error"):
            line += f"  (no place and route: {r['synth_error']}"
            if r.get("yosys_lut") is not None:
                line += f"; Yosys: {r['yosys_lut']} LUT4, {r['yosys_ff']} FF"
            line += ")"
        lines.append(line)
    lines.append("Reference: AMD Vitis insertion sort, 512 x 32-bit, one item a clock: "
                 "16,477 LUT / 51,885 FF (UltraScale+ LUT6, not comparable one to one "
                 "with ECP5 LUT4)")
    return "\n".join(lines)
