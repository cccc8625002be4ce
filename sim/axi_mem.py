"""cocotb model of an AXI4 memory channel, read side, for the embedding lookup unit.

One :class:`AxiReadMemory` serves one manager port of :class:`hw.axi.AXI4ReadSignature`
(Verilog ports ``<prefix>__araddr`` ... ``<prefix>__rready``, e.g. ``m0__araddr``) from
a byte buffer whose address 0 is the channel's first byte. It behaves like an HBM or
DDR channel behind its controller: many bursts in flight, a latency drawn per burst,
responses to different IDs out of order, a bandwidth cap, random flow control, error
responses on chosen address ranges, and a protocol checker on everything the manager
does.

Why not cocotbext-axi
---------------------
cocotbext-axi 0.1.28 (``AxiRamRead`` / ``AxiSlaveRead``) was tried on this project's
ports (``AxiReadBus.from_prefix(dut, "m0", bus_separator="__")`` maps the names) and
returns correct data, but it does not fit:

* under cocotb 2.1 it raises ``DeprecationWarning`` while it is constructed
  (``setimmediatevalue``, ``Edge``, ``Task.kill``), so it fails every test run with
  warnings as errors (``PYTHONWARNINGS=error``, as ``make test`` runs);
* it needs cocotb-bus, which this project does not use with cocotb 2.x;
* its read process takes one AR, sends all its beats, then takes the next: no
  latency, no bursts in flight, no reordering across IDs, no bandwidth cap. Adding
  those means replacing its private ``_process_read`` whole;
* a read past the end of memory wraps around (``address % size``) instead of being
  reported, and errors are only SLVERR from an overridden private ``_read``.

Timing conventions (as in :mod:`sim.streams`)
---------------------------------------------
The model wakes at a rising clock edge, samples the handshakes as the design saw them
at that edge, then writes its outputs for the next edge. It sleeps while nothing is
going on: no AR offered, no R beat on the bus, and no burst whose latency has run out.
It then waits for ``arvalid`` to rise or, with bursts pending, for the edge at which
the earliest one becomes due (one timer, not one wake-up per cycle). The clock period
is measured on the first two edges after the model starts; ``arready`` and ``rvalid``
are low until then.

Latency
    A burst accepted at edge ``a`` with a drawn latency ``L`` (uniform in
    ``latency``) has its first beat on the bus (``rvalid`` high) at edge ``a + L`` at
    the earliest; later if the R channel is busy with other bursts, capped by the
    bandwidth limit or paused by a random gap.
Ordering
    Bursts of one ID are answered in the order they were accepted (AXI). With
    ``reorder=True`` a burst whose latency has expired goes ahead of earlier bursts of
    other IDs still waiting; among due bursts the one due first (then the oldest)
    goes first. With ``reorder=False`` all bursts are answered in acceptance order.
    The beats of one burst are never interleaved with another's.
Bandwidth
    ``beats_per_cycle`` below 1 spaces the beats driven so that beat ``i + k`` goes
    out at least ``floor(k / beats_per_cycle)`` cycles after beat ``i``, and a
    saturated channel runs at exactly that rate (a virtual scheduling rate limiter
    with less than a cycle of credit: idle time does not save up beats). The value is
    taken as a fraction with a denominator of at most 1000.

Checks (strict or lenient)
--------------------------
The model checks what a subordinate can see of the manager's side:

* ``arvalid`` falling, or the AR payload changing, while an AR waits for ``arready``;
* ``arvalid`` high while the reset is asserted;
* ``arburst`` other than INCR, ``arsize`` other than ``log2(data bytes)``, ``araddr``
  not aligned to the data width;
* a burst that crosses a 4 KiB boundary (AXI forbids it; ``check_4k=False`` allows it);
* a burst that reads past the end of ``memory`` (the DUT must never read out of bounds).

There is nothing to check on ``rready``: AXI lets a manager hold it low for as long as
it likes and raise it before or after ``rvalid``; a design that never takes its beats
shows up as a test timeout, and in :attr:`AxiReadStats.r_stall_cycles`.

With ``strict=True`` (the default) a violation raises ``AssertionError`` with a message
naming the channel, the cycle and the burst; the exception ends the model's task, and
cocotb fails the running test with it. So a test needs no extra code to catch an
out-of-bounds read. With ``strict=False`` violations are logged and appended to
:attr:`AxiReadMemory.violations` (and :meth:`AxiReadMemory.check` asserts there were
none); a burst past the end of memory is answered with DECERR on every beat, and a
burst with a bad ``arburst`` / ``arsize`` / alignment / 4 KiB crossing with SLVERR,
data zero, as an interconnect's default subordinate would.

Error injection
---------------
``error_ranges`` holds half-open byte ranges ``(start, stop)`` or
``(start, stop, resp)``; a burst that touches any byte in one is answered with
``resp`` (default :attr:`hw.axi.Resp.SLVERR`) on every beat, data zero.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, First, ReadOnly, RisingEdge, Timer

from hw.axi import Burst, Resp

__all__ = ["AxiReadStats", "AxiReadMemory", "attach_read_memories"]

_BOUNDARY_4K = 4096


@dataclass
class AxiReadStats:
    """Counts kept by one :class:`AxiReadMemory` (since start or :meth:`~AxiReadMemory.reset_stats`).

    Attributes
    ----------
    bursts : int
        AR requests accepted.
    bursts_done : int
        Bursts whose last beat was taken.
    beats : int
        R beats taken by the manager.
    error_bursts : int
        Bursts answered with SLVERR or DECERR.
    in_flight : int
        Bursts accepted whose last beat has not been taken yet (current value).
    max_in_flight : int
        Largest ``in_flight`` seen.
    outstanding : dict of int to int
        Bursts in flight per ID (current value; IDs with none are removed).
    max_outstanding : dict of int to int
        Largest number of bursts in flight seen per ID.
    reordered : int
        Bursts whose first beat went out before that of a burst accepted earlier.
    ar_stall_cycles : int
        Edges with ``arvalid`` high and ``arready`` low.
    r_stall_cycles : int
        Edges with ``rvalid`` high and ``rready`` low.
    flushed : int
        Bursts dropped unfinished by a reset.
    """

    bursts: int = 0
    bursts_done: int = 0
    beats: int = 0
    error_bursts: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    outstanding: dict[int, int] = field(default_factory=dict)
    max_outstanding: dict[int, int] = field(default_factory=dict)
    reordered: int = 0
    ar_stall_cycles: int = 0
    r_stall_cycles: int = 0
    flushed: int = 0


class _Burst:
    __slots__ = ("seq", "id", "addr", "beats", "resp", "due", "accepted", "sent")

    def __init__(self, seq: int, ident: int, addr: int, beats: int, resp: Resp,
                 due: int, accepted: int) -> None:
        self.seq = seq
        self.id = ident
        self.addr = addr
        self.beats = beats
        self.resp = resp
        self.due = due              # first cycle at which its first beat may be driven
        self.accepted = accepted    # edge of the AR handshake
        self.sent = 0               # beats taken by the manager

    def __lt__(self, other: _Burst) -> bool:   # heap order: due first, then oldest
        return (self.due, self.seq) < (other.due, other.seq)


def _latency_range(latency: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(latency, int):
        lo = hi = latency
    else:
        try:
            lo, hi = (int(x) for x in latency)
        except (TypeError, ValueError):
            raise ValueError(f"Latency must be an int or a (min, max) pair, not {latency!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"Latency must satisfy 1 <= min <= max, not {latency!r}")
    return lo, hi


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), not {value!r}")
    return float(value)


class AxiReadMemory:
    """An AXI4 subordinate answering read bursts from a byte buffer.

    Parameters
    ----------
    dut : handle
        The toplevel (or the scope holding the ports).
    prefix : str
        Name of the component's AXI port, e.g. ``"m0"`` for ``m0__araddr``.
    clock : handle
        The clock signal (``dut.clk``).
    memory : buffer
        The channel's bytes, address 0 first: ``bytes``, ``bytearray``, a
        C-contiguous NumPy array of any dtype (read as its raw bytes), ... The model
        keeps a view, not a copy: changes the testbench makes are seen by beats
        driven afterwards.
    reset : handle, optional
        Active-high synchronous reset (``dut.rst``). While it is high at an edge the
        model drops all bursts (counted in ``flushed``) and holds ``arready`` and
        ``rvalid`` low.
    latency : int or (int, int)
        Cycles from AR acceptance to the first beat, drawn uniformly per burst from
        ``min .. max`` inclusive; see the module notes.
    seed : int
        Seed of the model's random draws (latency, flow control).
    ar_backpressure : float
        Probability of holding ``arready`` low in a cycle.
    r_gaps : float
        Probability of leaving ``rvalid`` low in a cycle when a beat could go out.
    beats_per_cycle : float
        Bandwidth cap in ``(0, 1]``.
    error_ranges : iterable of tuple
        ``(start, stop)`` or ``(start, stop, resp)`` half-open byte ranges answered
        with an error response (default SLVERR).
    reorder : bool
        Let due bursts of other IDs overtake ones still waiting for their latency.
    max_in_flight : int, optional
        Hold ``arready`` low while this many bursts are in flight (a controller's
        command queue). Default: no limit.
    strict : bool
        Raise ``AssertionError`` on a protocol violation or out-of-bounds burst
        (default), or record it in :attr:`violations` and answer with an error.
    check_4k : bool
        Treat a burst crossing a 4 KiB boundary as a violation.

    Attributes
    ----------
    stats : AxiReadStats
    violations : list of str
        Every violation seen, strict or not.
    ar_backpressure, r_gaps : float
        May be changed while the model runs.
    """

    def __init__(self, dut: SimHandleBase, prefix: str, clock: SimHandleBase, *,
                 memory: Any, reset: SimHandleBase | None = None,
                 latency: int | Sequence[int] = (100, 300), seed: int = 0,
                 ar_backpressure: float = 0.0, r_gaps: float = 0.0,
                 beats_per_cycle: float = 1.0, error_ranges: Iterable[tuple] = (),
                 reorder: bool = True, max_in_flight: int | None = None,
                 strict: bool = True, check_4k: bool = True) -> None:
        self.name = prefix
        self._latency = _latency_range(latency)
        self.ar_backpressure = _probability("ar_backpressure", ar_backpressure)
        self.r_gaps = _probability("r_gaps", r_gaps)
        if not 0.0 < beats_per_cycle <= 1.0:
            raise ValueError(f"beats_per_cycle must be in (0, 1], not {beats_per_cycle!r}")
        rate = Fraction(beats_per_cycle).limit_denominator(1000)
        # Virtual scheduling in units of 1/rate.numerator cycles, so all integer.
        self._rate_num, self._rate_den = rate.numerator, rate.denominator
        self._rate_limited = rate < 1
        if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
            raise ValueError(f"max_in_flight must be a positive integer or None, not {max_in_flight!r}")
        self._max_in_flight = max_in_flight
        self._reorder = bool(reorder)
        self._strict = bool(strict)
        self._check_4k = bool(check_4k)
        self._rng = random.Random(seed)

        view = memoryview(memory)
        if not view.c_contiguous:
            raise ValueError("memory must be C-contiguous")
        self._mem = view.cast("B") if view.format != "B" or view.ndim != 1 else view

        def port(member: str) -> SimHandleBase:
            try:
                return getattr(dut, f"{prefix}__{member}")
            except AttributeError:
                raise AttributeError(f"{dut._path} has no {prefix}__{member}; is {prefix!r} "
                                     f"an AXI4ReadSignature port?") from None

        self._araddr, self._arlen, self._arsize = port("araddr"), port("arlen"), port("arsize")
        self._arburst, self._arid = port("arburst"), port("arid")
        self._arvalid, self._arready = port("arvalid"), port("arready")
        self._rdata, self._rid, self._rresp = port("rdata"), port("rid"), port("rresp")
        self._rlast, self._rvalid, self._rready = port("rlast"), port("rvalid"), port("rready")
        self._bytes = len(self._rdata) // 8
        self._size = self._bytes.bit_length() - 1
        if len(self._rdata) % 8 or self._bytes != 1 << self._size:
            raise ValueError(f"{prefix}__rdata is {len(self._rdata)} bits, not a power of two bytes")

        self._error_ranges: list[tuple[int, int, Resp]] = []
        for entry in error_ranges:
            self.add_error_range(*entry)

        self._edge = RisingEdge(clock)
        self._reset = reset
        self.log = logging.getLogger(f"cocotb.axi_mem.{prefix}")
        self.stats = AxiReadStats()
        self.violations: list[str] = []
        self._idle = Event()
        self._idle.set()
        self._clear_state()
        self._arready.value = 0
        self._rvalid.value = 0
        self._task: cocotb.task.Task[None] | None = cocotb.start_soon(self._run())

    # -- public -----------------------------------------------------------------

    @property
    def data_bytes(self) -> int:
        """Bytes per beat."""
        return self._bytes

    @property
    def size(self) -> int:
        """Bytes of memory (the first out-of-bounds address)."""
        return len(self._mem)

    @property
    def latency(self) -> tuple[int, int]:
        return self._latency

    @property
    def beats_per_cycle(self) -> Fraction:
        return Fraction(self._rate_num, self._rate_den)

    def add_error_range(self, start: int, stop: int, resp: Resp = Resp.SLVERR) -> None:
        """Answer bursts touching bytes ``start .. stop - 1`` with ``resp`` (takes
        effect for bursts accepted afterwards)."""
        resp = Resp(resp)
        if resp not in (Resp.SLVERR, Resp.DECERR):
            raise ValueError(f"Error response must be SLVERR or DECERR, not {resp!r}")
        if not 0 <= start < stop:
            raise ValueError(f"Error range must satisfy 0 <= start < stop, not {(start, stop)!r}")
        self._error_ranges.append((int(start), int(stop), resp))

    def clear_error_ranges(self) -> None:
        self._error_ranges.clear()

    def reset_stats(self) -> None:
        """Zero the counters; the current in-flight figures carry over."""
        in_flight, outstanding = self.stats.in_flight, dict(self.stats.outstanding)
        self.stats = AxiReadStats(in_flight=in_flight, max_in_flight=in_flight,
                                  outstanding=outstanding, max_outstanding=dict(outstanding))

    def idle(self) -> bool:
        """No burst in flight."""
        return self.stats.in_flight == 0

    async def wait_idle(self) -> None:
        """Wait until every accepted burst has had its last beat taken."""
        while not self.idle():
            self._idle.clear()
            await self._idle.wait()

    def check(self) -> None:
        """Assert that no violation was seen (for ``strict=False``)."""
        assert not self.violations, (f"{self.name}: {len(self.violations)} AXI violations:\n"
                                     + "\n".join(self.violations[:10]))

    def stop(self) -> None:
        """Stop the model's coroutine (it starts with the model)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # -- internals ----------------------------------------------------------------

    def _clear_state(self) -> None:
        self._by_id: dict[int, deque[_Burst]] = {}
        self._heads: list[_Burst] = []          # heap of each ID's oldest burst
        self._unstarted: deque[_Burst] = deque()  # acceptance order, for `reordered`
        self._active: _Burst | None = None
        self._r_high = False
        self._ar_high = False                   # arready as driven
        self._ar_wait: tuple[int, ...] | None = None  # AR payload waiting for arready
        self._last_due = 0
        self._tat = 0                           # rate limiter's next allowed time * num
        self._seq = 0
        self._driven: dict[str, int] = {}

    def _violation(self, message: str) -> None:
        text = f"AXI read channel {self.name!r}, cycle {self._now}: {message}"
        self.violations.append(text)
        self.log.error("%s", text)
        if self._strict:
            raise AssertionError(text)

    def _drive(self, name: str, handle: SimHandleBase, value: int) -> None:
        if self._driven.get(name) != value:
            handle.value = value
            self._driven[name] = value

    def _accept(self, ident: int, addr: int, arlen: int, arsize: int, arburst: int) -> None:
        beats = arlen + 1
        nbytes = beats * self._bytes
        where = f"burst id={ident} araddr={addr:#x} arlen={arlen}"
        # Out of bounds first: in strict mode the first violation is the one reported.
        problems = []
        if addr + nbytes > len(self._mem):
            problems.append(f"reads past the end of memory (bytes {addr:#x}..{addr + nbytes - 1:#x}, "
                            f"memory size {len(self._mem):#x})")
        if arburst != Burst.INCR.value:
            problems.append(f"arburst={arburst}, only INCR ({Burst.INCR.value}) is served")
        if arsize != self._size:
            problems.append(f"arsize={arsize}, the data width needs {self._size} "
                            f"({self._bytes} bytes a beat)")
        if addr % self._bytes:
            problems.append(f"address not aligned to the {self._bytes}-byte data width")
        if self._check_4k and addr // _BOUNDARY_4K != (addr + nbytes - 1) // _BOUNDARY_4K:
            problems.append(f"crosses a 4 KiB boundary (bytes {addr:#x}..{addr + nbytes - 1:#x})")
        for problem in problems:
            self._violation(f"{where}: {problem}")
        if addr + nbytes > len(self._mem):
            resp = Resp.DECERR
        elif problems:
            resp = Resp.SLVERR
        else:
            resp = Resp.OKAY
        if resp is Resp.OKAY:
            for start, stop, error in self._error_ranges:
                if start < addr + nbytes and addr < stop:
                    resp = error
                    break

        lo, hi = self._latency
        due = self._now + (lo if lo == hi else self._rng.randint(lo, hi)) - 1
        queue = self._by_id.get(ident)
        if queue:
            due = max(due, queue[-1].due)       # same ID: never before the one ahead
        if not self._reorder:
            due = max(due, self._last_due)
            self._last_due = due
        burst = _Burst(self._seq, ident, addr, beats, resp, due, self._now)
        self._seq += 1
        if queue is None:
            queue = self._by_id[ident] = deque()
        queue.append(burst)
        if len(queue) == 1:
            heapq.heappush(self._heads, burst)
        self._unstarted.append(burst)

        stats = self.stats
        stats.bursts += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        count = stats.outstanding.get(ident, 0) + 1
        stats.outstanding[ident] = count
        if count > stats.max_outstanding.get(ident, 0):
            stats.max_outstanding[ident] = count
        if resp is not Resp.OKAY:
            stats.error_bursts += 1
        self._idle.clear()

    def _finish(self, burst: _Burst) -> None:
        queue = self._by_id[burst.id]
        queue.popleft()
        if queue:
            heapq.heappush(self._heads, queue[0])
        else:
            del self._by_id[burst.id]
        stats = self.stats
        stats.bursts_done += 1
        stats.in_flight -= 1
        count = stats.outstanding[burst.id] - 1
        if count:
            stats.outstanding[burst.id] = count
        else:
            del stats.outstanding[burst.id]
        if not stats.in_flight:
            self._idle.set()

    def _start_next(self) -> _Burst | None:
        heads = self._heads
        if not heads or heads[0].due > self._now:
            return None
        burst = heapq.heappop(heads)
        unstarted = self._unstarted
        if unstarted[0] is not burst:
            self.stats.reordered += 1
        unstarted.remove(burst)
        return burst

    def _present(self, burst: _Burst) -> None:
        index = burst.sent
        if burst.resp is Resp.OKAY:
            start = burst.addr + index * self._bytes
            data = int.from_bytes(self._mem[start:start + self._bytes], "little")
        else:
            data = 0
        self._rdata.value = data
        self._drive("rid", self._rid, burst.id)
        self._drive("rresp", self._rresp, burst.resp.value)
        self._drive("rlast", self._rlast, int(index == burst.beats - 1))
        if not self._r_high:
            self._rvalid.value = 1
            self._r_high = True

    def _flush(self) -> None:
        self.stats.flushed += self.stats.in_flight
        self.stats.in_flight = 0
        self.stats.outstanding.clear()
        self._clear_state()
        self._arready.value = 0
        self._rvalid.value = 0
        self._idle.set()

    def _cycle_at(self, time: int) -> int:
        return (time - self._t0 + self._period // 2) // self._period

    async def _run(self) -> None:
        edge = self._edge
        self._now = 0
        await edge
        self._t0 = get_sim_time()
        await edge
        self._period = get_sim_time() - self._t0
        self._now = 1
        rng = self._rng
        arvalid, arready, rready, rvalid = self._arvalid, self._arready, self._rready, self._rvalid
        reset = self._reset
        stats = self.stats
        resync = False
        reset_edges = 0
        while True:
            await edge
            if resync:
                self._now = self._cycle_at(get_sim_time())
                resync = False
            else:
                self._now += 1
            now = self._now
            stats = self.stats
            if reset is not None and reset.value:
                reset_edges += 1
                # The reset is synchronous: a registered arvalid falls at the first
                # reset edge, so it is sampled from the second one on.
                if reset_edges > 1 and arvalid.value:
                    self._violation("arvalid is high during reset")
                if stats.in_flight or self._r_high or self._ar_high:
                    self._flush()
                continue
            reset_edges = 0

            # R: the beat on the bus, if any, is taken at this edge when rready is high.
            bus_free = not self._r_high
            if self._r_high:
                if rready.value:
                    burst = self._active
                    burst.sent += 1
                    stats.beats += 1
                    if burst.sent == burst.beats:
                        self._finish(burst)
                        self._active = None
                    bus_free = True
                else:
                    stats.r_stall_cycles += 1

            # AR: sample the request; check that a waiting request holds.
            ar_offered = bool(arvalid.value)
            if ar_offered:
                payload = (self._arid.value.to_unsigned(), self._araddr.value.to_unsigned(),
                           self._arlen.value.to_unsigned(), self._arsize.value.to_unsigned(),
                           self._arburst.value.to_unsigned())
                waiting = self._ar_wait
                if waiting is not None and payload != waiting:
                    self._violation(
                        "AR payload changed while arvalid waited for arready: "
                        "(arid, araddr, arlen, arsize, arburst) = "
                        f"({waiting[0]}, {waiting[1]:#x}, {waiting[2]}, {waiting[3]}, {waiting[4]}) -> "
                        f"({payload[0]}, {payload[1]:#x}, {payload[2]}, {payload[3]}, {payload[4]})")
                if self._ar_high:
                    self._ar_wait = None
                    self._accept(*payload)
                else:
                    stats.ar_stall_cycles += 1
                    self._ar_wait = payload
            elif self._ar_wait is not None:
                self._ar_wait = None
                self._violation("arvalid fell before arready accepted the request")

            # arready for the next edge.
            want = ((self._max_in_flight is None or stats.in_flight < self._max_in_flight)
                    and not (self.ar_backpressure and rng.random() < self.ar_backpressure))
            if want != self._ar_high:
                arready.value = int(want)
                self._ar_high = want

            # R for the next edge.
            if bus_free:
                burst = self._active
                if burst is None:
                    burst = self._active = self._start_next()
                presented = False
                if burst is not None and not (self.r_gaps and rng.random() < self.r_gaps):
                    if self._rate_limited:
                        scaled = now * self._rate_num
                        if scaled >= self._tat:
                            # Less than a cycle of credit, so that a rate like 2/5
                            # comes out as gaps of 3, 2, 3, 2 rather than all 3.
                            self._tat = max(self._tat, scaled - self._rate_num + 1) + self._rate_den
                            presented = True
                    else:
                        presented = True
                if presented:
                    self._present(burst)
                elif self._r_high:
                    rvalid.value = 0
                    self._r_high = False

            # Sleep when nothing can happen before arvalid rises or a burst is due.
            if self._r_high or ar_offered or self._active is not None:
                continue
            deadline = self._heads[0].due if self._heads else None
            if deadline is not None and deadline <= now + 1:
                continue
            # Settled values of this time step: arvalid or the reset may have risen
            # since the edge, and their edge triggers would then never fire.
            await ReadOnly()
            if arvalid.value or (reset is not None and reset.value):
                resync = True
                continue
            triggers = [RisingEdge(arvalid)]
            if reset is not None:
                triggers.append(RisingEdge(reset))
            if deadline is not None:
                # Wake half a period before the edge at which the burst is due.
                wake = self._t0 + deadline * self._period - self._period // 2
                triggers.append(Timer(wake - get_sim_time(), unit="step"))
            await First(*triggers)
            resync = True


def attach_read_memories(dut: SimHandleBase, clock: SimHandleBase, memories: Sequence[Any], *,
                         prefix: str = "m", seed: int = 0, **kwargs: Any) -> list[AxiReadMemory]:
    """One :class:`AxiReadMemory` per channel: ``memories[n]`` on port ``<prefix><n>``.

    Each gets the seed ``seed + n``; other keyword arguments go to every model.
    """
    return [AxiReadMemory(dut, f"{prefix}{n}", clock, memory=memory, seed=seed + n, **kwargs)
            for n, memory in enumerate(memories)]
