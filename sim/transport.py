"""The host driver's transport over a cocotb simulation
(:class:`host.driver.Transport`): the driver's frames go into the design as
AXI4-Stream words on its ``i`` stream (:func:`hw.command.word_layout`:
``data``, ``last``) and its answers come out of ``o``; time is the
simulation's clock, so latencies are *measured*, in cycles.

The driver is plain blocking Python. Run it inside a cocotb test through
``cocotb.task.bridge`` (a thread the simulator waits on); every transport
call that needs the simulation to move resumes the simulator with
``cocotb.task.resume`` and returns when it is done, so the driver code is the
same as over the golden transport::

    transport = SimTransport(dut, dut.clk, clock_mhz=200.0)
    result = await bridge(lambda: Accelerator(transport).ping())()
"""

from __future__ import annotations

from collections import deque

import numpy as np

import cocotb
from cocotb.task import resume
from cocotb.triggers import RisingEdge

from host.driver import Transport
from host.protocol import WORD_BYTES
from hw.command import word_layout
from host.packing import Packer

from .streams import StreamSink, StreamSource

__all__ = ["SimTransport"]

_WORD = WORD_BYTES


class SimTransport(Transport):
    """See the module documentation. ``idle`` and ``backpressure`` are the
    pause generators of the input and output streams (random stalls)."""

    name = "simulation"
    latency_source = "measured: simulation cycles"

    def __init__(self, dut, clock, *, clock_mhz: float, reset=None, idle=None,
                 backpressure=None, inp: str = "i", out: str = "o",
                 payload_format=None, memories=None):
        self.clock_mhz = float(clock_mhz)
        self.payload_format = payload_format
        self._memories = list(memories or ())
        self._clock = clock
        self._words = Packer(word_layout())
        self._src = StreamSource(dut, inp, clock, reset=reset, idle=idle)
        self._sink = StreamSink(dut, out, clock, reset=reset, backpressure=backpressure)
        self._cycle = 0
        self._frames: deque[tuple[bytes, int]] = deque()
        self._tasks = [cocotb.start_soon(self._count()), cocotb.start_soon(self._collect())]

    async def _count(self):
        while True:
            await RisingEdge(self._clock)
            self._cycle += 1

    async def _collect(self):
        words = []
        while True:
            w = self._words.unpack(await self._sink.recv())
            words.append(int(w["data"]).to_bytes(_WORD, "little"))
            if w["last"]:
                self._frames.append((b"".join(words), self._cycle))
                words = []

    def stop(self):
        for t in self._tasks:
            t.cancel()
        self._src.stop()
        self._sink.stop()

    # -- Transport -----------------------------------------------------------------
    def write_memory(self, channel: int, image) -> None:
        """Into the memory model's buffer (``memories[channel]``, the array an
        :class:`sim.axi_mem.AxiReadMemory` reads)."""
        data = np.frombuffer(bytes(image), np.uint8)
        if not 0 <= channel < len(self._memories):
            raise ValueError(f"no memory channel {channel} ({len(self._memories)} given)")
        mem = self._memories[channel]
        if data.size > mem.size:
            raise ValueError(f"channel {channel}: an image of {data.size} bytes, the "
                             f"memory holds {mem.size}")
        mem[:data.size] = data

    def now(self) -> int:
        return self._cycle

    def advance(self, cycle: int) -> None:
        if cycle > self._cycle:
            resume(self._run_to)(cycle)

    async def _run_to(self, cycle: int):
        while self._cycle < cycle:
            await RisingEdge(self._clock)

    def send(self, frame: bytes) -> None:
        frame = bytes(frame)
        if not frame or len(frame) % _WORD:
            # the stream carries whole words: a frame that is not is cut
            # to them (or to one zero word), as a 64-bit AXI4-Stream would
            frame = frame[:len(frame) - len(frame) % _WORD] or bytes(_WORD)
        resume(self._queue)(frame)

    async def _queue(self, frame: bytes):
        n = len(frame) // _WORD
        for k in range(n):
            self._src.send_nowait(self._words.pack({
                "data": int.from_bytes(frame[k * _WORD:(k + 1) * _WORD], "little"),
                "last": int(k == n - 1)}))

    def receive(self) -> tuple[bytes, int] | None:
        return self._frames.popleft() if self._frames else None

    def wait(self, deadline: int) -> bool:
        return resume(self._wait)(deadline)

    async def _wait(self, deadline: int) -> bool:
        while not self._frames and self._cycle < deadline:
            await RisingEdge(self._clock)
        return bool(self._frames)
