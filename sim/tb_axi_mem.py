"""cocotb tests of the AXI4 read memory model (:mod:`sim.axi_mem`) on the wire-through
design of :mod:`sim.axi_loop`.

Each channel ``n`` of the loop has an :class:`~sim.axi_mem.AxiReadMemory` on ``m<n>``
and a test-only :class:`AxiReadManager` on ``s<n>`` that issues bursts, takes beats
with random ``rready`` backpressure and checks each beat against the memory
contents: data, ``rresp``, ``rlast``, ``rid``, per-ID order, no interleaving.

Configuration (JSON through ``RECACCEL_TB_CONFIG``, see :mod:`sim.runner`):
``channels`` (of the build), ``seed``, ``bursts`` (per channel in
:func:`test_random_bursts`).

The ``strict_violation`` tests are meant to fail (the pytest side checks their
messages); the ``test_*`` tests must pass.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, Event, RisingEdge

from hw.axi import Burst, Resp
from sim.axi_mem import AxiReadMemory, attach_read_memories
from sim.runner import read_tb_config
from sim.streams import reset, start_clock

MEMORY_BYTES = 1 << 16
CLOCK_NS = 10


class Issued:
    """One burst issued by the manager, and what was seen of it."""

    __slots__ = ("seq", "id", "addr", "beats", "size", "accepted", "first", "done", "got", "resps")

    def __init__(self, seq: int, ident: int, addr: int, beats: int, size: int) -> None:
        self.seq, self.id, self.addr, self.beats, self.size = seq, ident, addr, beats, size
        self.accepted: int | None = None   # edge of the AR handshake
        self.first: int | None = None      # edge at which the first beat was taken
        self.done: int | None = None       # edge at which the last beat was taken
        self.got = 0
        self.resps: list[Resp] = []

    def __repr__(self) -> str:
        return f"burst #{self.seq} id={self.id} addr={self.addr:#x} beats={self.beats}"


class AxiReadManager:
    """Plays the AXI4 read manager on the loop's ``s<n>`` port, checking every beat.

    Parameters
    ----------
    dut, channel
        The loop and the channel number.
    memory : numpy.ndarray
        The bytes the memory model serves (checked against at each beat).
    seed : int
    ar_idle : float
        Probability of leaving ``arvalid`` low for a cycle between requests.
    backpressure : float
        Probability of holding ``rready`` low in a cycle.
    expect_resp : callable, optional
        ``(addr, beats) -> Resp`` expected for a burst (default OKAY).
    """

    def __init__(self, dut, channel: int, memory: np.ndarray, *, seed: int, ar_idle: float = 0.0,
                 backpressure: float = 0.0,
                 expect_resp: Callable[[int, int], Resp] | None = None) -> None:
        self.dut = dut
        self.memory = memory
        self.rng = random.Random(seed)
        self.ar_idle = ar_idle
        self.backpressure = backpressure
        self.expect_resp = expect_resp or (lambda addr, beats: Resp.OKAY)
        prefix = f"s{channel}__"
        sig = lambda name: getattr(dut, prefix + name)   # noqa: E731
        self._araddr, self._arlen, self._arsize = sig("araddr"), sig("arlen"), sig("arsize")
        self._arburst, self._arid, self._arvalid = sig("arburst"), sig("arid"), sig("arvalid")
        self._arready = sig("arready")
        self._rdata, self._rid, self._rresp = sig("rdata"), sig("rid"), sig("rresp")
        self._rlast, self._rvalid, self._rready = sig("rlast"), sig("rvalid"), sig("rready")
        self.data_bytes = len(self._rdata) // 8
        self.size = self.data_bytes.bit_length() - 1
        self.cycle = 0
        self.queue: deque[Issued] = deque()
        self.issued: list[Issued] = []
        self.pending: dict[int, deque[Issued]] = {}
        self.completed: list[Issued] = []     # in order of their last beat
        self.beat_edges: list[int] = []
        self.current: Issued | None = None    # burst whose beats are under way
        self._ar: Issued | None = None        # request on the bus
        self._rready_high = False
        self._all_done = Event()
        self._arvalid.value = 0
        self._rready.value = 0
        self._task = cocotb.start_soon(self._run())

    def issue(self, ident: int, addr: int, beats: int, *, size: int | None = None) -> Issued:
        """Queue a burst; ``size`` overrides ``arsize`` (default: the data width)."""
        burst = Issued(len(self.issued), ident, addr, beats, self.size if size is None else size)
        self.issued.append(burst)
        self.queue.append(burst)
        self._all_done.clear()
        return burst

    def outstanding(self) -> int:
        return len(self.issued) - len(self.completed)

    async def wait_done(self) -> None:
        while self.outstanding():
            self._all_done.clear()
            await self._all_done.wait()

    def drop_all(self) -> None:
        """Forget every burst (before a reset); ``arvalid`` falls at the next edge."""
        self.queue.clear()
        self.pending.clear()
        self.current = None
        self._ar = None
        self._arvalid.value = 0
        self.issued = list(self.completed)
        self._all_done.set()

    def stop(self) -> None:
        self._task.cancel()

    def _beat(self) -> None:
        ident = self._rid.value.to_unsigned()
        queue = self.pending.get(ident)
        assert queue, f"beat with rid={ident} at edge {self.cycle}, no burst of that ID pending"
        burst = queue[0]
        assert self.current is None or self.current is burst, (
            f"edge {self.cycle}: beat of {burst!r} interleaved into {self.current!r}")
        index = burst.got
        resp = Resp(self._rresp.value.to_unsigned())
        data = self._rdata.value.to_unsigned()
        expected_resp = self.expect_resp(burst.addr, burst.beats)
        assert resp == expected_resp, f"{burst!r} beat {index}: rresp {resp.name}, want {expected_resp.name}"
        if resp == Resp.OKAY:
            start = burst.addr + index * self.data_bytes
            want = int.from_bytes(self.memory[start:start + self.data_bytes].tobytes(), "little")
        else:
            want = 0
        assert data == want, f"{burst!r} beat {index}: rdata {data:#x}, want {want:#x}"
        last = bool(self._rlast.value)
        assert last == (index == burst.beats - 1), f"{burst!r} beat {index}: rlast={int(last)}"
        assert burst.accepted is not None and self.cycle > burst.accepted, \
            f"{burst!r}: beat at edge {self.cycle} before its AR was accepted"
        burst.resps.append(resp)
        if index == 0:
            burst.first = self.cycle
        burst.got += 1
        self.beat_edges.append(self.cycle)
        self.current = burst
        if last:
            queue.popleft()
            burst.done = self.cycle
            self.completed.append(burst)
            self.current = None
            if not self.outstanding():
                self._all_done.set()

    async def _run(self) -> None:
        edge = RisingEdge(self.dut.clk)
        rst = self.dut.rst
        rng = self.rng
        while True:
            await edge
            self.cycle += 1
            if rst.value:
                continue
            if self._ar is not None and self._arready.value:
                burst = self._ar
                burst.accepted = self.cycle
                self.pending.setdefault(burst.id, deque()).append(burst)
                self._ar = None
            if self._rready_high and self._rvalid.value:
                self._beat()
            if self._ar is None:
                if self.queue and not (self.ar_idle and rng.random() < self.ar_idle):
                    burst = self._ar = self.queue.popleft()
                    self._araddr.value = burst.addr
                    self._arlen.value = burst.beats - 1
                    self._arsize.value = burst.size
                    self._arburst.value = Burst.INCR.value
                    self._arid.value = burst.id
                    self._arvalid.value = 1
                else:
                    self._arvalid.value = 0
            want = not (self.backpressure and rng.random() < self.backpressure)
            if want != self._rready_high:
                self._rready.value = int(want)
                self._rready_high = want


class Bench:
    """Clock, reset, a memory model and a manager per channel."""

    def __init__(self, dut, *, seed: int, channels: int | None = None, manager: dict | None = None,
                 **model_args) -> None:
        tb = read_tb_config()
        self.dut = dut
        self.channels = tb["channels"] if channels is None else channels
        self.rng = random.Random(seed)
        start_clock(dut, CLOCK_NS)
        dut.rst.value = 1
        np_rng = np.random.default_rng(seed)
        self.memories = [np_rng.integers(0, 256, MEMORY_BYTES, dtype=np.uint8)
                         for _ in range(self.channels)]
        self.models = attach_read_memories(dut, dut.clk, self.memories, seed=seed * 10,
                                           reset=dut.rst, **model_args)
        self.managers = [AxiReadManager(dut, n, self.memories[n], seed=seed * 10 + 5 + n,
                                        **(manager or {}))
                         for n in range(self.channels)]
        self.data_bytes = self.managers[0].data_bytes

    async def reset(self) -> None:
        await reset(self.dut, self.dut.clk, 3)

    def random_burst(self, *, ids: int = 16, max_beats: int = 16) -> tuple[int, int, int]:
        """A random INCR burst inside memory that does not cross 4 KiB."""
        rng = self.rng
        beats = rng.randint(1, max_beats)
        nbytes = beats * self.data_bytes
        while True:
            addr = rng.randrange(0, MEMORY_BYTES - nbytes + 1, self.data_bytes)
            if addr // 4096 == (addr + nbytes - 1) // 4096:
                return rng.randrange(ids), addr, beats

    def check_clean(self) -> None:
        for model, manager in zip(self.models, self.managers):
            model.check()
            assert model.idle() and not manager.outstanding()
            assert model.stats.bursts == model.stats.bursts_done == len(manager.issued)
            assert model.stats.beats == sum(b.beats for b in manager.issued) == len(manager.beat_edges)


def overtakes(completed: list[Issued]) -> int:
    """Bursts finished before a burst issued earlier (necessarily of another ID)."""
    count, highest = 0, -1
    for burst in completed:
        if burst.seq < highest:
            count += 1
        highest = max(highest, burst.seq)
    return count


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_random_bursts(dut):
    """Random IDs, lengths and addresses on every channel at once, with AR
    backpressure, R gaps, random rready and idle cycles between requests: every
    beat right, IDs kept in order, other IDs overtaken."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"], latency=(4, 60), ar_backpressure=0.3, r_gaps=0.2,
                  manager={"ar_idle": 0.3, "backpressure": 0.3})
    await bench.reset()
    for manager in bench.managers:
        for _ in range(tb["bursts"]):
            # Few IDs half the time, so that same-ID bursts queue up behind each other.
            manager.issue(*bench.random_burst(ids=bench.rng.choice([3, 16])))
    for manager in bench.managers:
        await manager.wait_done()
    bench.check_clean()
    for model, manager in zip(bench.models, bench.managers):
        stats = model.stats
        assert stats.max_in_flight >= 4, stats
        assert max(stats.max_outstanding.values()) >= 2, stats
        assert stats.ar_stall_cycles > 0 and stats.r_stall_cycles > 0, stats
        assert stats.reordered > 0 and overtakes(manager.completed) > 0, stats
        assert not stats.outstanding and stats.error_bursts == 0, stats


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_in_order_when_not_reordering(dut):
    """With ``reorder=False`` bursts of all IDs come back in the order issued."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"] + 1, latency=(4, 60), reorder=False, r_gaps=0.2,
                  manager={"backpressure": 0.3})
    await bench.reset()
    for manager in bench.managers:
        for _ in range(60):
            manager.issue(*bench.random_burst(max_beats=4))
    for manager in bench.managers:
        await manager.wait_done()
    bench.check_clean()
    for model, manager in zip(bench.models, bench.managers):
        assert [b.seq for b in manager.completed] == list(range(60))
        assert model.stats.reordered == 0
        assert model.stats.max_in_flight >= 4


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_latency_bounds(dut):
    """HBM-like latency 100..300 on channel 0, a fixed 7 on channel 1: one burst
    at a time, the first beat comes exactly within the bounds, with jitter; then
    64 bursts back to back overlap (many in flight) and none comes early."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"] + 2, channels=1, latency=(100, 300))
    fixed = AxiReadMemory(dut, "m1", dut.clk, memory=bench.memories[0], reset=dut.rst, latency=7)
    fixed_manager = AxiReadManager(dut, 1, bench.memories[0], seed=3)
    await bench.reset()
    hbm = bench.managers[0]
    for _ in range(24):
        burst = hbm.issue(*bench.random_burst())
        fixed_burst = fixed_manager.issue(*bench.random_burst())
        await hbm.wait_done()
        await fixed_manager.wait_done()
        assert 100 <= burst.first - burst.accepted <= 300, (burst, burst.first - burst.accepted)
        assert fixed_burst.first - fixed_burst.accepted == 7, (fixed_burst, fixed_burst.first
                                                              - fixed_burst.accepted)
    latencies = {b.first - b.accepted for b in hbm.completed}
    assert len(latencies) >= 12, f"no jitter: {sorted(latencies)}"

    start = hbm.cycle
    batch = [hbm.issue(*bench.random_burst(max_beats=2)) for _ in range(64)]
    await hbm.wait_done()
    assert all(b.first - b.accepted >= 100 for b in batch)
    assert bench.models[0].stats.max_in_flight >= 48, bench.models[0].stats
    beats = sum(b.beats for b in batch)
    assert hbm.cycle - start <= 300 + beats + 64 + 20, (hbm.cycle - start, beats)


@cocotb.test(timeout_time=5, timeout_unit="ms")
@cocotb.parametrize(rate=[0.4, 0.25])
async def test_bandwidth_limit(dut, rate: float):
    """A saturated channel with ``beats_per_cycle`` below 1: beat ``i + k`` no
    sooner than ``floor(k / rate)`` cycles after beat ``i``, and the rate reached."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"] + 3, channels=1, latency=(2, 6), beats_per_cycle=rate)
    await bench.reset()
    manager = bench.managers[0]
    for _ in range(40):
        manager.issue(*bench.random_burst(max_beats=8))
    await manager.wait_done()
    bench.check_clean()
    edges = manager.beat_edges
    exact = Fraction(rate).limit_denominator(1000)
    for i in range(len(edges)):
        for k in range(1, min(24, len(edges) - i)):
            assert edges[i + k] - edges[i] >= int(k / exact), (i, k, edges[i:i + k + 1])
    measured = (len(edges) - 1) / (edges[-1] - edges[0])
    assert rate * 0.97 <= measured <= rate, measured


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_error_ranges(dut):
    """Bursts touching an error range get its response on every beat, data zero;
    neighbours ending right before or starting right after it do not."""
    tb = read_tb_config()
    slverr, decerr = (0x1100, 0x1140), (0x3200, 0x3300)

    def expect(addr: int, beats: int) -> Resp:
        end = addr + beats * 32
        if slverr[0] < end and addr < slverr[1]:
            return Resp.SLVERR
        if decerr[0] < end and addr < decerr[1]:
            return Resp.DECERR
        return Resp.OKAY

    bench = Bench(dut, seed=tb["seed"] + 4, channels=1, latency=(3, 20), r_gaps=0.2,
                  error_ranges=[slverr, (*decerr, Resp.DECERR)],
                  manager={"backpressure": 0.3, "expect_resp": expect})
    assert bench.data_bytes == 32
    await bench.reset()
    manager = bench.managers[0]
    cases = [(0, 0x10c0, 2), (1, 0x10e0, 2), (2, 0x1100, 1), (3, 0x1120, 4),
             (4, 0x1140, 3), (5, 0x31e0, 2), (6, 0x32e0, 1), (7, 0x3300, 1), (8, 0x10e0, 1)]
    for case in cases:
        manager.issue(*case)
    for _ in range(100):
        manager.issue(*bench.random_burst())
    await manager.wait_done()
    bench.check_clean()
    want = [Resp.OKAY, Resp.SLVERR, Resp.SLVERR, Resp.SLVERR, Resp.OKAY, Resp.DECERR,
            Resp.DECERR, Resp.OKAY, Resp.OKAY]
    by_seq = sorted(manager.completed, key=lambda b: b.seq)
    assert [b.resps[0] for b in by_seq[:len(cases)]] == want
    errors = sum(expect(b.addr, b.beats) != Resp.OKAY for b in manager.issued)
    assert bench.models[0].stats.error_bursts == errors >= 5


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_lenient_violations(dut):
    """``strict=False``: an out-of-bounds burst gets DECERR, a bad arsize / an
    unaligned / a 4 KiB-crossing burst SLVERR, each recorded with a clear message;
    a request that changes or falls while waiting for arready is recorded too."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"] + 5, channels=1, latency=(3, 10), strict=False)
    end = MEMORY_BYTES

    def expect(addr: int, beats: int) -> Resp:
        if addr + 32 * beats > end:
            return Resp.DECERR
        if addr % 32 or addr // 4096 != (addr + 32 * beats - 1) // 4096:
            return Resp.SLVERR
        return Resp.OKAY

    manager = bench.managers[0]
    manager.expect_resp = expect
    model = bench.models[0]
    await bench.reset()
    manager.issue(1, end - 64, 2)          # the last two beats: fine
    manager.issue(2, end - 64, 3)          # one beat past the end
    manager.issue(3, 0x20000, 1)           # wholly outside
    manager.issue(4, 0x0ff0 + 0x10, 1)     # fine (0x1000)
    manager.issue(5, 0x1010, 1)            # unaligned
    manager.issue(6, 0x1fe0, 2)            # crosses 4 KiB
    await manager.wait_done()
    resps = [b.resps[0] for b in sorted(manager.completed, key=lambda b: b.seq)]
    assert resps == [Resp.OKAY, Resp.DECERR, Resp.DECERR, Resp.OKAY, Resp.SLVERR, Resp.SLVERR]
    messages = "\n".join(model.violations)
    assert "burst id=2 araddr=0xffc0 arlen=2: reads past the end of memory" in messages, messages
    assert "burst id=3 araddr=0x20000" in messages, messages
    assert "address not aligned" in messages and "crosses a 4 KiB boundary" in messages, messages
    # Burst 2 also crosses 4 KiB (0xffc0..0x1001f): two violations.
    assert len(model.violations) == 5, messages

    # A bad arsize, and a request that changes and then falls while arready is low:
    # drive the port by hand with one burst keeping the only slot busy.
    manager.stop()
    model.violations.clear()
    hand = AxiReadMemory(dut, "m1", dut.clk, memory=bench.memories[0], latency=40,
                         max_in_flight=1, strict=False)
    s1 = lambda name: getattr(dut, f"s1__{name}")  # noqa: E731
    s1("rready").value = 1

    async def request(ident: int, addr: int, size: int = 5) -> None:
        s1("arid").value, s1("araddr").value, s1("arlen").value = ident, addr, 0
        s1("arsize").value, s1("arburst").value, s1("arvalid").value = size, Burst.INCR.value, 1
        await RisingEdge(dut.clk)
        while not s1("arready").value:
            await RisingEdge(dut.clk)
        s1("arvalid").value = 0

    await ClockCycles(dut.clk, 3)
    await request(1, 0x40, size=4)
    await RisingEdge(dut.clk)              # the model has seen the handshake edge
    assert "arsize=4, the data width needs 5" in hand.violations[-1], hand.violations
    await request(2, 0x80)                 # fills the only slot for 40 cycles
    s1("araddr").value, s1("arvalid").value = 0xc0, 1
    await ClockCycles(dut.clk, 3)
    assert not s1("arready").value
    s1("araddr").value = 0xe0
    await ClockCycles(dut.clk, 2)
    s1("arvalid").value = 0
    await ClockCycles(dut.clk, 2)
    assert any("AR payload changed while arvalid waited" in v and "0xc0" in v and "0xe0" in v
               for v in hand.violations), hand.violations
    assert any("arvalid fell before arready" in v for v in hand.violations), hand.violations
    try:
        hand.check()
    except AssertionError as exc:
        assert "3 AXI violations" in str(exc), exc
    else:
        raise AssertionError("check() passed with violations recorded")
    await hand.wait_idle()
    hand.stop()


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_reset_flushes(dut):
    """A reset with bursts in flight drops them; traffic after it is served."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"] + 6, channels=1, latency=(30, 50))
    await bench.reset()
    manager, model = bench.managers[0], bench.models[0]
    for _ in range(10):
        manager.issue(*bench.random_burst())
    while model.stats.bursts < 10:
        await RisingEdge(dut.clk)
    manager.drop_all()
    await reset(dut, dut.clk, 3)
    assert model.stats.flushed == 10 and model.idle(), model.stats
    assert not dut.m0__rvalid.value
    model.reset_stats()
    for _ in range(20):
        manager.issue(*bench.random_burst())
    await manager.wait_done()
    assert model.stats.bursts == model.stats.bursts_done == 20
    model.check()


@cocotb.test(timeout_time=2, timeout_unit="ms")
@cocotb.parametrize(kind=["oob", "hold", "arsize"])
async def strict_violation(dut, kind: str):
    """Meant to FAIL: a strict model ends the test at the first violation."""
    tb = read_tb_config()
    bench = Bench(dut, seed=tb["seed"] + 7, channels=1, latency=(3, 10), max_in_flight=1)
    manager = bench.managers[0]
    await bench.reset()
    manager.issue(0, 0x100, 2)
    if kind == "oob":                      # past the end of memory
        manager.issue(5, MEMORY_BYTES - 32, 2)
    elif kind == "arsize":                 # 8-byte beats on a 32-byte bus
        manager.issue(6, 0x200, 1, size=3)
    else:                                  # AR payload changed while waiting
        await RisingEdge(dut.clk)
        await RisingEdge(dut.clk)
        manager.stop()
        # The first burst holds the only slot: arready stays low for a while.
        dut.s0__araddr.value, dut.s0__arid.value, dut.s0__arvalid.value = 0x400, 7, 1
        await ClockCycles(dut.clk, 2)
        dut.s0__araddr.value = 0x420
    await ClockCycles(dut.clk, 200)
