"""cocotb tests for the simulation infrastructure's self-test design.

The design (built in ``tests/test_sim_infra.py``) takes a stream ``i`` of
:data:`SAMPLE` payloads, negates ``value`` (wrapping to 16 bits), passes ``last``
through, and offers the result on stream ``o`` through a 2-deep queue.

Configuration (JSON through ``RECACCEL_TB_CONFIG``, see :mod:`sim.runner`):
``items`` (samples per test) and ``seed`` (for payloads and flow control).
"""

from __future__ import annotations

import random

import cocotb
from amaranth.hdl import signed
from amaranth.lib import data
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, RisingEdge

from sim.runner import read_tb_config
from sim.streams import StreamRuleChecker, StreamSink, StreamSource, random_pauses, reset, start_clock

SAMPLE = data.StructLayout({"value": signed(16), "last": 1})
"""Payload of both streams of the self-test design."""

CLOCK_PERIOD_NS = 10


def negate_sample(value: int, last: int) -> tuple[int, int]:
    """Golden model: two's complement negation in 16 bits (-32768 stays -32768)."""
    return ((-value + 0x8000) & 0xFFFF) - 0x8000, last


def _samples(rng: random.Random, count: int) -> list[tuple[int, int]]:
    corners = [0, 1, -1, 0x7FFF, -0x8000]
    values = corners + [rng.randrange(-0x8000, 0x8000) for _ in range(max(0, count - len(corners)))]
    return [(value, int(rng.random() < 0.2)) for value in values[:count]]


class SelfTestBench:
    """Clock, reset, stream models and rule checkers around the self-test design."""

    def __init__(self, dut, *, seed: int, idle: float, backpressure: float) -> None:
        self.dut = dut
        self.clock = start_clock(dut, CLOCK_PERIOD_NS)
        self.rng = random.Random(seed)
        # Separate generators so the payloads do not depend on the pause settings.
        self.source = StreamSource(dut, "i", dut.clk, layout=SAMPLE, reset=dut.rst,
                                   idle=random_pauses(random.Random(seed + 1), idle) if idle else None)
        self.sink = StreamSink(dut, "o", dut.clk, layout=SAMPLE, reset=dut.rst,
                               backpressure=random_pauses(random.Random(seed + 2), backpressure)
                               if backpressure else None)
        self.checkers = [StreamRuleChecker(dut, name, dut.clk, reset=dut.rst) for name in ("i", "o")]

    async def reset(self) -> None:
        await reset(self.dut, self.dut.clk, 3)

    async def check_negation(self, count: int) -> None:
        samples = _samples(self.rng, count)
        for value, last in samples:
            self.source.send_nowait({"value": value, "last": last})
        for index, (value, last) in enumerate(samples):
            got = await self.sink.recv()
            assert (got.value, got.last) == negate_sample(value, last), (
                f"item {index}: sent {(value, last)}, got {(got.value, got.last)}")
        await self.source.wait_idle()
        await ClockCycles(self.dut.clk, 8)
        assert self.sink.empty(), f"design produced {self.sink.count()} extra items"
        for checker in self.checkers:
            assert not checker.violations, checker.violations[:5]
        assert self.checkers[0].transfers == self.source.sent == count
        assert self.checkers[1].transfers == self.sink.received == count


@cocotb.test(timeout_time=2, timeout_unit="ms")
@cocotb.parametrize(
    (("idle", "backpressure"), [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.3, 0.7)]),
)
async def test_negation_with_random_flow(dut, idle: float, backpressure: float) -> None:
    """Every item arrives once, negated, under random idle cycles and backpressure."""
    config = read_tb_config()
    tb = SelfTestBench(dut, seed=config["seed"], idle=idle, backpressure=backpressure)
    await tb.reset()
    await tb.check_negation(config["items"])


@cocotb.test(timeout_time=200, timeout_unit="us")
async def test_full_throughput(dut) -> None:
    """Without pauses the models and the design move one item per clock cycle."""
    config = read_tb_config()
    count = config["items"]
    tb = SelfTestBench(dut, seed=config["seed"], idle=0.0, backpressure=0.0)
    await tb.reset()
    start = get_sim_time("ns")
    await tb.check_negation(count)
    # check_negation waits 8 cycles at the end, plus a few cycles of latency.
    cycles = (get_sim_time("ns") - start) / CLOCK_PERIOD_NS
    assert cycles <= count + 8 + 6, f"{count} items took {cycles:.0f} cycles"


@cocotb.test(timeout_time=100, timeout_unit="us")
async def test_source_sleeps_when_empty(dut) -> None:
    """A source with nothing to send leaves valid low and resumes on send()."""
    tb = SelfTestBench(dut, seed=read_tb_config()["seed"], idle=0.0, backpressure=0.0)
    await tb.reset()
    await ClockCycles(dut.clk, 20)
    assert not dut.i__valid.value
    await tb.check_negation(3)
    await ClockCycles(dut.clk, 50)  # long idle gap, then more data
    tb.source.send_nowait({"value": 1234, "last": 1})
    got = await tb.sink.recv()
    assert (got.value, got.last) == (-1234, 1)
    await RisingEdge(dut.clk)


@cocotb.test(timeout_time=10, timeout_unit="us", skip=True)
async def test_deliberate_failure(dut) -> None:
    """Fails on purpose; run only by name, to check that failures are reported."""
    start_clock(dut, CLOCK_PERIOD_NS)
    await ClockCycles(dut.clk, 2)
    assert 1 + 1 == 3, "deliberate failure for the runner self-test"
