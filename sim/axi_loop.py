"""A test-only wire-through design for the AXI4 read memory model (:mod:`sim.axi_mem`).

:class:`AXI4ReadLoopback` has, per channel ``n``, a manager port ``m<n>`` of
:class:`hw.axi.AXI4ReadSignature` (where :class:`sim.axi_mem.AxiReadMemory`
attaches, exactly as it will to the embedding lookup unit) and a subordinate port
``s<n>`` of the same signature, wired straight through: the testbench plays the
manager on ``s<n>__ar*`` / ``s<n>__rready`` and sees the memory's answers on
``s<n>__r*``. :func:`build_axi_loop` (plain Python, for pytest) builds it into a
cached Verilator model.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, flipped
from filelock import FileLock

import hw.axi
from hw.axi import AXI4ReadSignature
from hw.verilog import to_verilog

from . import runner

__all__ = ["TOPLEVEL", "AXI4ReadLoopback", "build_axi_loop"]

TOPLEVEL = "axi_read_loop"


class AXI4ReadLoopback(wiring.Component):
    """``channels`` AXI4 read channels passed through from ``s<n>`` to ``m<n>``.

    Parameters
    ----------
    channels : int
        Number of channel pairs.
    addr_width, data_width, id_width : int
        As for :class:`~hw.axi.AXI4ReadSignature`.
    """

    def __init__(self, *, channels: int = 1, addr_width: int = 20, data_width: int = 64,
                 id_width: int = 4) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"Channels must be a positive integer, not {channels!r}")
        self._channels = channels
        self._bus = AXI4ReadSignature(addr_width=addr_width, data_width=data_width,
                                      id_width=id_width)
        ports = {}
        for n in range(channels):
            ports[f"s{n}"] = In(self._bus)
            ports[f"m{n}"] = Out(self._bus)
        # The design is combinational only; Amaranth adds clk/rst ports only for a
        # domain in use, and the memory model needs both.
        ports["tick"] = Out(1)
        super().__init__(ports)

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def bus(self) -> AXI4ReadSignature:
        return self._bus

    def elaborate(self, platform):
        m = Module()
        for n in range(self._channels):
            wiring.connect(m, flipped(getattr(self, f"s{n}")), flipped(getattr(self, f"m{n}")))
        # A register, so that the sync domain (clk, rst) exists in the ports.
        m.d.sync += self.tick.eq(~self.tick)
        return m


def _source_digest() -> str:
    import hashlib
    h = hashlib.sha256()
    for path in (Path(__file__), Path(hw.axi.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_axi_loop(*, channels: int = 2, addr_width: int = 20, data_width: int = 256,
                   id_width: int = 4, waves: bool = False):
    """The Verilator build of :class:`AXI4ReadLoopback`: ``(runner, toplevel)``.

    The Verilog is written once per parameter set and source version, under the
    build root's ``verilog/`` folder; :func:`sim.runner.build` caches the build.
    """
    params = f"c{channels}-a{addr_width}-d{data_width}-i{id_width}"
    root = runner.default_build_root()
    out = root / "verilog" / f"{TOPLEVEL}-{params}-{_source_digest()}.v"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            text = to_verilog(AXI4ReadLoopback(channels=channels, addr_width=addr_width,
                                               data_width=data_width, id_width=id_width),
                              TOPLEVEL)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(out)
    build_dir = root / "builds" / f"{TOPLEVEL}-{params}"
    return runner.build([out], TOPLEVEL, build_dir, waves=waves), TOPLEVEL
