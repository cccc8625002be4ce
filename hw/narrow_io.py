"""A narrow-I/O wrapper for measuring a wide design on a real FPGA package.

The ECP5-85F in CABGA381 has 205 user I/O; the MLP cluster has several
hundred port bits. For resource and Fmax figures the wrapper feeds every
input port from one long shift register (serial in) and captures every output
port into a shift register (parallel load, serial out), so that no logic is
optimized away and every port still has a registered path. The wrapper's
registers (two per port bit) are part of the figures: the synthesis report
says how many port bits were wrapped.
"""

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["NarrowIO"]


class NarrowIO(wiring.Component):
    """Wraps ``inner`` (a ``wiring.Component``) behind three pins.

    Attributes
    ----------
    si : In(1)
        Serial input shifted into the input chain every cycle.
    load : In(1)
        Capture all outputs (else the output chain shifts).
    so : Out(1)
        Serial output.
    """

    si: In(1)
    load: In(1)
    so: Out(1)

    def __init__(self, inner: wiring.Component):
        if not isinstance(inner, wiring.Component):
            raise TypeError(f"inner must be a wiring.Component, not {inner!r}")
        self._inner = inner
        self.in_bits = sum(len(v) for v in self._ports(inner, In))
        self.out_bits = sum(len(v) for v in self._ports(inner, Out))
        super().__init__()

    @staticmethod
    def _ports(inner, flow):
        return [Value.cast(v) for _, member, v in inner.signature.flatten(inner)
                if member.flow == flow]

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self._inner
        ins, outs = self._ports(inner, In), self._ports(inner, Out)
        chain_in = Signal(max(1, self.in_bits))
        m.d.sync += chain_in.eq(Cat(self.si, chain_in[:-1]))
        m.d.comb += Cat(*ins).eq(chain_in)
        chain_out = Signal(max(1, self.out_bits))
        with m.If(self.load):
            m.d.sync += chain_out.eq(Cat(*outs))
        with m.Else():
            m.d.sync += chain_out.eq(chain_out >> 1)
        m.d.comb += self.so.eq(chain_out[0])
        return m
