"""cocotb bus functional models for Amaranth ``lib.stream`` ports.

``amaranth.back.verilog.convert(component, name=...)`` flattens a stream port named
``cmd`` into ``cmd__valid``, ``cmd__ready`` and ``cmd__payload`` (one vector, however
structured the payload is). The models here drive and sample those signals and
convert payloads with the Amaranth shape of the stream, so tests exchange the same
values the gateware sees (``data.Const`` for a ``data.Layout``, ``int`` otherwise).

Timing: every model wakes once per rising clock edge, reads the handshake signals as
the design saw them at that edge, then writes its outputs for the next edge. A source
with nothing to send sleeps on an :class:`~cocotb.triggers.Event` instead of waking
every cycle. Do not call :meth:`StreamSource.send_nowait` from a ``ReadOnly`` phase,
where writes are not allowed.

Random flow control comes from pause generators: infinite iterators of ``bool``
(``True`` = pause this cycle), e.g. :func:`random_pauses` with a seeded
:class:`random.Random`, so a failing case reproduces from its seed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.triggers import ClockCycles, Event, ReadOnly, RisingEdge
from amaranth.hdl import Const, Shape, ShapeCastable
from amaranth.lib import data

__all__ = [
    "PayloadCodec",
    "StreamSource",
    "StreamSink",
    "StreamRuleChecker",
    "random_pauses",
    "start_clock",
    "reset",
]


def random_pauses(rng: random.Random, probability: float) -> Iterator[bool]:
    """Yield ``True`` (pause) with the given probability each cycle, forever.

    Parameters
    ----------
    rng : random.Random
        Seeded generator; the model draws one number per cycle it could transfer.
    probability : float
        In ``[0, 1)``; 1 would never transfer.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"Pause probability must be in [0, 1), not {probability!r}")
    draw = rng.random
    while True:
        yield draw() < probability


class PayloadCodec:
    """Converts between Python payload values and the flat ``__payload`` vector.

    Parameters
    ----------
    shape : shape-like or None
        ``None``: payloads are raw unsigned ``int``. A ``data.Layout``: values are
        packed with ``layout.const(value).as_bits()`` (``value`` a mapping/sequence,
        a ``data.Const`` of that layout, or a raw ``int``) and unpacked with
        ``layout.from_bits(bits)`` into a ``data.Const``. Another ``ShapeCastable``
        (e.g. an Amaranth enum) uses its own ``const`` / ``from_bits``. A plain
        ``Shape`` maps to ``int``, signed or not.
    width : int
        Width of the payload vector in the design (checked against the shape).
    """

    def __init__(self, shape: Any, width: int) -> None:
        self._shape = shape
        self._width = width
        self._mask = (1 << width) - 1
        if shape is None:
            self._signed = False
            return
        cast = Shape.cast(shape)
        if cast.width != width:
            raise ValueError(f"Payload shape {shape!r} is {cast.width} bits wide, the port {width}")
        self._signed = cast.signed

    @property
    def width(self) -> int:
        return self._width

    def encode(self, value: Any) -> int:
        """Return the payload bits for ``value`` as an unsigned ``int``."""
        shape = self._shape
        if isinstance(value, int) and (shape is None or not isinstance(shape, ShapeCastable)
                                       or isinstance(shape, data.Layout)):
            if not -(1 << self._width) < value <= self._mask:
                raise ValueError(f"Payload {value!r} does not fit in {self._width} bits")
            return value & self._mask
        if isinstance(shape, data.Layout):
            if isinstance(value, data.Const):
                if value.shape() != shape:
                    raise TypeError(f"Payload {value!r} has layout {value.shape()!r}, expected {shape!r}")
                return value.as_bits()
            return shape.const(value).as_bits()
        if isinstance(shape, ShapeCastable):
            return Const.cast(shape.const(value)).value & self._mask
        raise TypeError(f"Cannot encode {value!r} as a payload of shape {shape!r}")

    def decode(self, bits: int) -> Any:
        """Return the Python value for payload ``bits`` (an unsigned ``int``)."""
        shape = self._shape
        if isinstance(shape, ShapeCastable):
            return shape.from_bits(bits)
        if self._signed and bits >> (self._width - 1):
            return bits - (1 << self._width)
        return bits


def _find(dut: SimHandleBase, name: str) -> SimHandleBase | None:
    try:
        return getattr(dut, name)
    except AttributeError:
        return None


class _StreamModel:
    def __init__(self, dut: SimHandleBase, name: str, clock: SimHandleBase, *,
                 layout: Any, reset: SimHandleBase | None) -> None:
        self.name = name
        self._valid = _find(dut, f"{name}__valid")
        self._ready = _find(dut, f"{name}__ready")
        self._payload = _find(dut, f"{name}__payload")
        if self._valid is None and self._ready is None and self._payload is None:
            raise AttributeError(f"{dut._path} has no stream {name!r} (no {name}__valid/ready/payload)")
        self._codec = PayloadCodec(layout, 0 if self._payload is None else len(self._payload))
        self._edge = RisingEdge(clock)
        self._reset = reset
        self._queue: deque[Any] = deque()
        self._task: cocotb.task.Task[None] | None = None

    def _in_reset(self) -> bool:
        return self._reset is not None and bool(self._reset.value)

    def stop(self) -> None:
        """Stop the model's coroutine (it starts with the model)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


class StreamSource(_StreamModel):
    """Drives an Amaranth stream *into* the design (an ``In(stream.Signature(...))`` port).

    Parameters
    ----------
    dut : handle
        The toplevel (``dut``) or the scope holding ``<name>__valid`` etc.
    name : str
        Port name as in the component, e.g. ``"i"`` for ``i__valid``.
    clock : handle
        The clock signal (``dut.clk``).
    layout : shape-like, optional
        Payload shape; see :class:`PayloadCodec`.
    idle : iterator of bool, optional
        Pause generator; a ``True`` keeps ``valid`` low for a cycle between items.
    reset : handle, optional
        While this is high, handshakes do not count.

    Notes
    -----
    Once ``valid`` is up it stays up, with the payload unchanged, until the design
    takes the item (the stream rules); idle pauses only fall between items.
    """

    def __init__(self, dut: SimHandleBase, name: str, clock: SimHandleBase, *,
                 layout: Any = None, idle: Iterator[bool] | None = None,
                 reset: SimHandleBase | None = None) -> None:
        super().__init__(dut, name, clock, layout=layout, reset=reset)
        if self._valid is None:
            raise AttributeError(f"{dut._path} has no {name}__valid; is {name!r} an input stream?")
        self._idle_pauses = idle
        self._pending = Event()
        self._idle = Event()
        self._idle.set()
        self._high = False  # valid as last written: an item is on the bus
        self.sent = 0
        """Items the design has taken."""
        self._valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_idle(self, idle: Iterator[bool] | None) -> None:
        """Replace the idle pause generator (``None``: no pauses)."""
        self._idle_pauses = idle

    def send_nowait(self, payload: Any) -> None:
        """Queue one payload; encoding errors raise here, not in the model's task."""
        self._queue.append(self._codec.encode(payload))
        self._idle.clear()
        self._pending.set()

    async def send(self, payload: Any) -> None:
        """Queue one payload (returns at once; use :meth:`wait_idle` to wait for it)."""
        self.send_nowait(payload)

    def count(self) -> int:
        """Payloads queued and not yet on the bus."""
        return len(self._queue)

    def idle(self) -> bool:
        """Nothing queued and nothing waiting on the bus."""
        return not self._queue and not self._high

    async def wait_idle(self) -> None:
        """Wait until the design has taken every queued payload."""
        while not self.idle():
            await self._idle.wait()

    async def _run(self) -> None:
        valid, ready, payload = self._valid, self._ready, self._payload
        queue, edge = self._queue, self._edge
        while True:
            if not self._high and not queue:
                self._idle.set()
                self._pending.clear()
                await self._pending.wait()
            await edge
            if self._high:
                if (ready is not None and not ready.value) or self._in_reset():
                    continue  # hold valid and payload until the design takes the item
                self.sent += 1
            pauses = self._idle_pauses
            if queue and (pauses is None or not next(pauses)):
                bits = queue.popleft()
                if payload is not None:
                    payload.value = bits
                if not self._high:
                    valid.value = 1
                    self._high = True
            elif self._high:
                valid.value = 0
                self._high = False


class StreamSink(_StreamModel):
    """Receives an Amaranth stream *from* the design (an ``Out(stream.Signature(...))`` port).

    Parameters
    ----------
    dut, name, clock, layout, reset
        As for :class:`StreamSource`.
    backpressure : iterator of bool, optional
        Pause generator; a ``True`` holds ``ready`` low for a cycle.
    """

    def __init__(self, dut: SimHandleBase, name: str, clock: SimHandleBase, *,
                 layout: Any = None, backpressure: Iterator[bool] | None = None,
                 reset: SimHandleBase | None = None) -> None:
        super().__init__(dut, name, clock, layout=layout, reset=reset)
        self._backpressure = backpressure
        self._received = Event()
        self.received = 0
        """Items taken from the design since the start."""
        if self._ready is not None:
            self._ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_backpressure(self, backpressure: Iterator[bool] | None) -> None:
        """Replace the backpressure generator (``None``: always ready)."""
        self._backpressure = backpressure

    def count(self) -> int:
        """Payloads received and not yet taken with :meth:`recv`."""
        return len(self._queue)

    def empty(self) -> bool:
        return not self._queue

    def recv_nowait(self) -> Any:
        """Return the oldest received payload; raises ``IndexError`` if there is none."""
        if not self._queue:
            raise IndexError(f"Stream {self.name!r} has received nothing")
        return self._queue.popleft()

    async def recv(self) -> Any:
        """Wait for and return the oldest received payload."""
        while not self._queue:
            self._received.clear()
            await self._received.wait()
        return self._queue.popleft()

    async def wait_count(self, count: int) -> None:
        """Wait until at least ``count`` payloads are queued for :meth:`recv`."""
        while len(self._queue) < count:
            self._received.clear()
            await self._received.wait()

    async def _run(self) -> None:
        valid, ready, payload = self._valid, self._ready, self._payload
        queue, edge, decode = self._queue, self._edge, self._codec.decode
        driven = False
        while True:
            await edge
            if ((ready is None or driven) and (valid is None or valid.value)
                    and not self._in_reset()):
                queue.append(decode(payload.value.to_unsigned()) if payload is not None else None)
                self.received += 1
                self._received.set()
            pauses = self._backpressure
            want = pauses is None or not next(pauses)
            if ready is not None and want != driven:
                ready.value = int(want)
                driven = want
            if valid is not None and not valid.value:
                # Nothing on offer: sleep until the design raises valid,
                # instead of waking on every clock edge of a long computation.
                await ReadOnly()
                if not valid.value:
                    await RisingEdge(valid)


class StreamRuleChecker:
    """Checks the stream rules on a port, whoever drives it.

    Records a violation when ``valid`` falls, or the payload changes, while an item
    waits for ``ready``. Also counts transfers. Wakes once per rising edge.

    Attributes
    ----------
    violations : list of str
    transfers : int
    """

    def __init__(self, dut: SimHandleBase, name: str, clock: SimHandleBase, *,
                 reset: SimHandleBase | None = None) -> None:
        self.name = name
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = _find(dut, f"{name}__ready")
        self._payload = _find(dut, f"{name}__payload")
        self._edge = RisingEdge(clock)
        self._reset = reset
        self.violations: list[str] = []
        self.transfers = 0
        self._task = cocotb.start_soon(self._run())

    def stop(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        waiting: int | None = None  # payload of an item that was not taken
        cycle = 0
        while True:
            await self._edge
            cycle += 1
            if self._reset is not None and self._reset.value:
                waiting = None
                continue
            valid = bool(self._valid.value)
            bits = self._payload.value.to_unsigned() if self._payload is not None else 0
            if waiting is not None:
                if not valid:
                    self.violations.append(f"{self.name}: valid fell before a transfer (edge {cycle})")
                elif bits != waiting:
                    self.violations.append(
                        f"{self.name}: payload changed from {waiting:#x} to {bits:#x} while waiting (edge {cycle})")
            ready = self._ready is None or bool(self._ready.value)
            if valid and ready:
                self.transfers += 1
            waiting = bits if valid and not ready else None


def start_clock(dut: SimHandleBase, period_ns: float = 10, *, name: str = "clk") -> Clock:
    """Start a clock on Amaranth's default-domain clock port and return it."""
    clock = Clock(getattr(dut, name), period_ns, unit="ns")
    clock.start()
    return clock


async def reset(dut: SimHandleBase, clock: SimHandleBase, cycles: int = 2, *, name: str = "rst") -> None:
    """Hold Amaranth's synchronous reset (``rst``) high for ``cycles`` rising edges.

    Returns right after the last reset edge with ``rst`` already released, so the
    next rising edge is the first one out of reset.
    """
    if cycles < 1:
        raise ValueError(f"Reset needs at least one cycle, not {cycles!r}")
    rst = getattr(dut, name)
    rst.value = 1
    await ClockCycles(clock, cycles)
    rst.value = 0
