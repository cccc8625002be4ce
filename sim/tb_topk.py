"""cocotb tests of the top-k filter (:mod:`hw.topk`) against the golden model
(:mod:`host.topk`), and the back-to-back measurement the benchmark uses.

:func:`build_topk` (plain Python, for pytest and the benchmark) builds the
Verilator model of a :class:`~hw.config.TopKConfig`, cached.

Configuration of the cocotb tests (JSON through ``RECACCEL_TB_CONFIG``, see
:mod:`sim.runner`):

``topk``
    The :class:`~hw.config.TopKConfig` fields the design was built from.
``seed``, ``idle``, ``backpressure``
    Randomness, and the probability of an idle input cycle / a stalled
    output ready in the tests that use random flow control.
``lists``
    Random lists in :func:`test_random_lists`.
``bench``
    For :func:`bench_back_to_back`: ``list_len`` (pairs), ``lists``, ``k``.
``report``
    Optional path: the tests that measure write their figures there (JSON).
"""

from __future__ import annotations

import dataclasses
import json
import random

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from host.packing import Packer
from host.topk import score_range, topk_list
from hw.config import Config, TopKConfig
from hw.topk import Status, TopKFilter, input_layout, k_bits, output_layout
from sim import runner
from sim.build import design_verilog
from sim.runner import read_tb_config
from sim.streams import StreamSink, StreamSource, random_pauses, reset, start_clock

__all__ = ["TOPLEVEL", "build_topk", "TopKBench"]

TOPLEVEL = "topk_filter"


def build_topk(config: TopKConfig, *, waves: bool = False):
    """The Verilator build of ``TopKFilter(config)``: ``(runner, toplevel)``.

    The Verilog and the build are cached (:func:`sim.build.design_verilog`,
    :func:`sim.runner.build`), keyed by the config and the sources.
    """
    name = "topk-{k_max}x{lanes}-{score_bits}{s}-{id_bits}".format(
        s="s" if config.signed else "u", **dataclasses.asdict(config))
    cfg = Config(name=name, topk=config)
    src = design_verilog(cfg, lambda c: TopKFilter(c.topk), TOPLEVEL, "topk")
    build_dir = runner.default_build_root() / "builds" / f"{TOPLEVEL}-{name}"
    return runner.build([src], TOPLEVEL, build_dir, waves=waves), TOPLEVEL


class TopKBench:
    """Drives lists into the filter and checks every answer.

    Input beats are packed and queued on a :class:`StreamSource`; the output
    beats of each list are collected from a :class:`StreamSink` and compared
    with :func:`host.topk.topk_list`, bit for bit. With ``monitor=True`` a
    coroutine also counts, per clock edge, input stalls (valid and not ready)
    and the cycles of each list's last input beat and of its trailer.
    """

    def __init__(self, dut, config: TopKConfig, *, seed: int = 0, idle: float = 0.0,
                 backpressure: float = 0.0, monitor: bool = False):
        self.dut = dut
        self.config = config
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.in_packer = Packer(input_layout(config))
        self.out_packer = Packer(output_layout(config))
        self.clock = start_clock(dut, 10)
        self.source = StreamSource(dut, "i", dut.clk, reset=dut.rst,
                                   idle=random_pauses(random.Random(seed * 31 + 1), idle)
                                   if idle else None)
        self.sink = StreamSink(dut, "o", dut.clk, reset=dut.rst,
                               backpressure=random_pauses(random.Random(seed * 37 + 2),
                                                          backpressure)
                               if backpressure else None)
        self.expected: list[tuple] = []   # per list sent: (result, n pairs)
        self.last_beats: list[int] = []   # index (in beats sent) of each list's last beat
        self.beats_queued = 0
        self.checked = 0
        self.stall_cycles = 0
        self.in_last_cycles: list[int] = []
        self.out_last_cycles: list[int] = []
        self.first_in_cycle: int | None = None
        self.last_in_cycle: int | None = None
        self._monitor = cocotb.start_soon(self._watch()) if monitor else None

    async def reset(self):
        await reset(self.dut, self.dut.clk, 3)

    # -- lists in -------------------------------------------------------------

    def send_list(self, scores, ids, k: int, *, density: float = 1.0,
                  junk_k: bool = False):
        """Queue one list: pairs in order over the lanes, each lane slot
        filled with probability ``density`` (at least one pair a beat while
        pairs are left), ``k`` on every beat (or random on all but the last
        with ``junk_k``: the filter reads it on the last beat only)."""
        cfg = self.config
        scores = [int(s) for s in scores]
        ids = [int(i) for i in ids]
        pairs = list(zip(scores, ids))
        rng = self.rng
        k_top = (1 << k_bits(cfg)) - 1
        pos = 0
        while True:
            beat, mask = [], 0
            for j in range(cfg.lanes):
                if pos < len(pairs) and (density >= 1.0 or rng.random() < density
                                         or (mask == 0 and j == cfg.lanes - 1)):
                    score, ident = pairs[pos]
                    pos += 1
                    mask |= 1 << j
                    beat.append({"score": score, "id": ident})
                else:
                    beat.append({"score": 0, "id": 0})
            last = pos == len(pairs)
            self.source.send_nowait(self.in_packer.pack({
                "pairs": beat, "valid": mask, "last": int(last),
                "k": k if last or not junk_k else rng.randrange(k_top + 1)}))
            self.beats_queued += 1
            if last:
                break
        self.last_beats.append(self.beats_queued - 1)
        self.expected.append(topk_list(scores, ids, k, cfg.k_max))

    # -- answers out ----------------------------------------------------------

    async def check_all(self):
        """Receive and check the answer of every list sent and not checked."""
        while self.checked < len(self.expected):
            want = self.expected[self.checked]
            beats = []
            while True:
                beat = self.out_packer.unpack(await self.sink.recv())
                beats.append(beat)
                if beat["last"]:
                    break
            *pairs, trailer = beats
            where = f"list {self.checked}"
            got = [(b["score"], b["id"]) for b in pairs]
            ref = list(zip(want.scores.tolist(), want.ids.tolist()))
            assert got == ref, f"{where}: pairs\n got {got}\nwant {ref}"
            assert [b["rank"] for b in pairs] == list(range(len(pairs))), where
            assert all(b["status"] == Status.OK for b in pairs), where
            assert trailer["status"] == Status(want.status.value), \
                f"{where}: status {trailer['status']}, want {want.status.name}"
            assert trailer["rank"] == len(ref), f"{where}: count {trailer['rank']}"
            assert (trailer["score"], trailer["id"]) == (0, 0), where
            self.checked += 1

    # -- measurement ----------------------------------------------------------

    async def _watch(self):
        dut = self.dut
        last_bit = output_layout(self.config)["last"].offset
        cycle = 0
        taken = 0
        last_beats = self.last_beats
        in_valid, in_ready = dut.i__valid, dut.i__ready
        out_valid, out_ready, out_payload = dut.o__valid, dut.o__ready, dut.o__payload
        while True:
            await RisingEdge(dut.clk)
            cycle += 1
            if dut.rst.value:
                continue
            if in_valid.value:
                if in_ready.value:
                    if self.first_in_cycle is None:
                        self.first_in_cycle = cycle
                    self.last_in_cycle = cycle
                    if len(self.in_last_cycles) < len(last_beats) and \
                            taken == last_beats[len(self.in_last_cycles)]:
                        self.in_last_cycles.append(cycle)
                    taken += 1
                else:
                    self.stall_cycles += 1
            if out_valid.value and out_ready.value and \
                    (out_payload.value.to_unsigned() >> last_bit) & 1:
                self.out_last_cycles.append(cycle)

    def stop(self):
        if self._monitor is not None:
            self._monitor.cancel()


def _bench(dut, tb: dict, *, flow: bool, monitor: bool = False) -> TopKBench:
    return TopKBench(dut, TopKConfig(**tb["topk"]), seed=tb["seed"],
                     idle=tb["idle"] if flow else 0.0,
                     backpressure=tb["backpressure"] if flow else 0.0, monitor=monitor)


def _random_list(bench: TopKBench, n: int):
    cfg = bench.config
    lo, hi = score_range(cfg.score_bits, cfg.signed)
    rng = bench.np_rng
    if rng.random() < 0.5:       # a narrow band of scores: many ties
        base = int(rng.integers(lo, max(lo, hi - 3), endpoint=True))
        scores = np.minimum(rng.integers(base, base + 4, n), hi)
    else:
        scores = rng.integers(lo, hi, n, endpoint=True)
    id_top = (1 << cfg.id_bits) - 1
    if rng.random() < 0.3:       # few distinct ids: duplicate pairs
        ids = rng.integers(0, min(3, id_top) + 1, n)
    else:
        ids = rng.integers(0, id_top, n, endpoint=True)
    return scores, ids


def _write_report(tb: dict, report: dict):
    if tb.get("report"):
        with open(tb["report"], "w") as f:
            json.dump(report, f, indent=2)


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_random_lists(dut):
    """Random lists (lengths 0 .. 3 k_max P, random k, ties, duplicate ids,
    sparse lane masks, a few bad k) with random idle cycles and backpressure."""
    tb = read_tb_config()
    bench = _bench(dut, tb, flow=True)
    await bench.reset()
    cfg = bench.config
    rng = bench.rng
    for _ in range(tb["lists"]):
        n = rng.randrange(0, 3 * cfg.k_max * cfg.lanes + 1)
        k = rng.randrange(1, cfg.k_max + 1) if rng.random() < 0.9 else \
            rng.choice([0, cfg.k_max + 1])
        scores, ids = _random_list(bench, n)
        bench.send_list(scores, ids, k, density=rng.choice([1.0, 0.6, 0.25]),
                        junk_k=rng.random() < 0.5)
    await bench.check_all()
    assert bench.checked == tb["lists"]


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_special_lists(dut):
    """Equal, ascending and descending scores; k above the length, 1 and
    k_max; empty and one-pair lists; scores at the ends of the range; the
    same pair many times. With idle cycles and backpressure."""
    tb = read_tb_config()
    bench = _bench(dut, tb, flow=True)
    await bench.reset()
    cfg = bench.config
    lo, hi = score_range(cfg.score_bits, cfg.signed)
    id_top = (1 << cfg.id_bits) - 1
    kmax = cfg.k_max
    n = 2 * kmax * cfg.lanes + 3
    ids = [(7 * i + 3) & id_top for i in range(n)]
    cases = [
        ([5] * n, ids, kmax),                                   # all equal: by id
        ([5] * n, ids, 1),
        (list(range(lo, lo + n)), ids, kmax),                   # ascending
        (list(range(hi, hi - n, -1)), ids, kmax),               # descending
        (list(range(hi, hi - n, -1)), ids, 1),
        ([3, 1, 2], [0, 1, 2], kmax),                           # k > length
        ([3, 1, 2], [0, 1, 2], 2),
        ([], [], 1),                                            # empty
        ([], [], kmax),
        ([lo], [id_top], kmax),                                 # one pair
        ([hi], [0], 1),
        ([lo, hi, lo, hi, 0, lo + 1, hi - 1] * 3,              # extremes
         [(5 * i) & id_top for i in range(21)], kmax),
        ([lo] * n, [id_top] * n, kmax),                         # all at the bottom
        ([hi] * 5 + [lo] * 5, [id_top, 0, id_top, 1, 0] * 2, 3),
        ([9] * n, [4] * n, kmax),                               # one pair, many times
        ([lo] * (kmax + 1), list(range(kmax + 1)), kmax),       # k_max + 1 ties
    ]
    for scores, pair_ids, k in cases:
        bench.send_list(scores, pair_ids, k, density=0.7)
    await bench.check_all()
    assert bench.checked == len(cases)


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_bad_k(dut):
    """k = 0 and k > k_max (up to the widest value) give BAD_K and no pairs;
    the list after each is still right."""
    tb = read_tb_config()
    bench = _bench(dut, tb, flow=True)
    await bench.reset()
    cfg = bench.config
    k_top = (1 << k_bits(cfg)) - 1
    for k in (0, cfg.k_max + 1, k_top, 0):
        for bad in (True, False):
            scores, ids = _random_list(bench, bench.rng.randrange(0, 2 * cfg.k_max + 2))
            bench.send_list(scores, ids, k if bad else bench.rng.randrange(1, cfg.k_max + 1))
    bench.send_list([], [], 0)
    bench.send_list([], [], cfg.k_max)
    await bench.check_all()
    assert bench.checked == 10


async def measure_back_to_back(bench: TopKBench, lists: list[tuple]) -> dict:
    """Send ``lists`` [(scores, ids, k)] with every lane full, no idle cycles
    and an always-ready output; check them and return the figures."""
    for scores, ids, k in lists:
        bench.send_list(scores, ids, k)
    await bench.check_all()
    bench.stop()
    pairs = sum(len(s) for s, _, _ in lists)
    cycles = bench.last_in_cycle - bench.first_in_cycle + 1
    drains = [o - i for i, o in zip(bench.in_last_cycles, bench.out_last_cycles)]
    return {"pairs": pairs, "beats": bench.beats_queued, "cycles": cycles,
            "stall_cycles": bench.stall_cycles, "pairs_per_cycle": pairs / cycles,
            "drain_cycles": drains}


def full_rate_beats(config: TopKConfig) -> int:
    """Beats a list needs so that the next one never waits, whatever its k
    (see :mod:`hw.topk`), with k = k_max."""
    k = config.k_max
    return max(4 * (k + 1), 2 * config.lanes * (k + 1) + k, 3 * k + 5) + 8


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_back_to_back_full_rate(dut):
    """Lists of at least :func:`full_rate_beats` beats back to back, every
    lane full: the input is never held, and lists of 4096 pairs go at P
    pairs a cycle."""
    tb = read_tb_config()
    bench = _bench(dut, tb, flow=False, monitor=True)
    await bench.reset()
    cfg = bench.config
    rng = bench.rng
    shortest = full_rate_beats(cfg)
    lists = []
    for _ in range(12):
        n = cfg.lanes * rng.randrange(shortest, shortest + 2 * cfg.k_max)
        lists.append((*_random_list(bench, n), rng.randrange(1, cfg.k_max + 1)))
    for k in (cfg.k_max, 1, cfg.k_max):
        lists.append((*_random_list(bench, 4096), k))
    figures = await measure_back_to_back(bench, lists)
    _write_report(tb, figures)
    assert figures["stall_cycles"] == 0, figures
    assert figures["pairs_per_cycle"] >= 0.99 * cfg.lanes, figures


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_short_lists_back_to_back(dut):
    """Short lists (0 .. 2 k_max pairs, often shorter than k) with no idle
    cycles and random backpressure: exact, and nothing hangs."""
    tb = read_tb_config()
    bench = TopKBench(dut, TopKConfig(**tb["topk"]), seed=tb["seed"] + 5,
                      backpressure=tb["backpressure"])
    await bench.reset()
    cfg = bench.config
    rng = bench.rng
    count = 3 * tb["lists"]
    for _ in range(count):
        n = rng.randrange(0, 2 * cfg.k_max + 1)
        bench.send_list(*_random_list(bench, n), rng.randrange(1, cfg.k_max + 1),
                        density=rng.choice([1.0, 0.5]))
    await bench.check_all()
    assert bench.checked == count


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def bench_back_to_back(dut):
    """Benchmark: ``bench.lists`` random lists of ``bench.list_len`` pairs
    with ``k = bench.k``, back to back at full rate; writes the figures."""
    tb = read_tb_config()
    bench = _bench(dut, tb, flow=False, monitor=True)
    await bench.reset()
    spec = tb["bench"]
    lists = [(*_random_list(bench, spec["list_len"]), spec["k"])
             for _ in range(spec["lists"])]
    figures = await measure_back_to_back(bench, lists)
    _write_report(tb, figures)
