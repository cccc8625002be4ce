"""Technology primitives chosen per target platform.

The rest of the hardware uses these components instead of writing ``a * b``
so that the FPGA flow gets a fully pipelined hard multiplier where the
synthesis tool would not infer one (``synth_ecp5`` maps ``$mul`` to a
combinational MULT18X18D and leaves the surrounding registers in the fabric).
"""

from amaranth.hdl import ClockSignal, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PipelinedMultiplier"]


class PipelinedMultiplier(wiring.Component):
    """Signed multiplier with a fixed latency of :attr:`LATENCY` cycles.

    ``p`` holds ``a * b`` sampled :attr:`LATENCY` clock cycles earlier, in the
    ``sync`` domain. There is no clock enable: the multiplier advances on
    every cycle, which is what an array that never stalls needs and what
    keeps the DSP's register stages free of enable logic.

    The three register stages mirror the ECP5 sysDSP MULT18X18D: input
    registers on A and B, the pipeline register after the multiplier array
    and the output register. None of them is reset by the domain reset (the
    DSP registers only see the configuration-time global reset), so ``p`` is
    meaningful from :attr:`LATENCY` cycles after the first valid operands.

    Parameters
    ----------
    a_width : int
        Width of the signed operand ``a``.
    b_width : int
        Width of the signed operand ``b``.
    target : str
        ``"generic"``: plain Amaranth registers and ``*``, simulates
        anywhere. ``"ecp5"``: a Lattice ``MULT18X18D`` instance with all
        its registers enabled; both operands must fit in 18 bits.

    Attributes
    ----------
    a : In(signed(a_width))
    b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
    """

    #: Cycles from ``a``/``b`` to ``p`` (input, pipeline and output registers).
    LATENCY = 3

    TARGETS = ("generic", "ecp5")

    # Operand width of one MULT18X18D.
    _ECP5_MAX_WIDTH = 18

    def __init__(self, *, a_width, b_width, target="generic"):
        for name, width in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise ValueError(f"{name} must be a positive integer, not {width!r}")
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS!r}, not {target!r}")
        if target == "ecp5":
            for name, width in (("a_width", a_width), ("b_width", b_width)):
                if width > self._ECP5_MAX_WIDTH:
                    raise ValueError(
                        f"{name} must be at most {self._ECP5_MAX_WIDTH} for target 'ecp5' "
                        f"(one MULT18X18D), not {width!r}")
        self._a_width = a_width
        self._b_width = b_width
        self._target = target
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "p": Out(signed(a_width + b_width)),
        })

    @property
    def a_width(self):
        return self._a_width

    @property
    def b_width(self):
        return self._b_width

    @property
    def target(self):
        return self._target

    def elaborate(self, platform):
        if self._target == "ecp5":
            return self._elaborate_ecp5()
        return self._elaborate_generic()

    def _elaborate_generic(self):
        m = Module()
        # reset_less: the DSP's registers ignore the domain reset as well, and
        # a reset mux in front of each register would only cost fabric.
        a_reg = Signal.like(self.a, reset_less=True)
        b_reg = Signal.like(self.b, reset_less=True)
        product = Signal.like(self.p, reset_less=True)
        p_reg = Signal.like(self.p, reset_less=True)
        m.d.sync += [
            a_reg.eq(self.a),
            b_reg.eq(self.b),
            product.eq(a_reg * b_reg),
            p_reg.eq(product),
        ]
        m.d.comb += self.p.eq(p_reg)
        return m

    def _elaborate_ecp5(self):
        m = Module()
        n = self._ECP5_MAX_WIDTH
        a_ext = Signal(signed(n))
        b_ext = Signal(signed(n))
        p_full = Signal(2 * n)
        m.d.comb += [
            a_ext.eq(self.a),          # sign-extends: both sides are signed
            b_ext.eq(self.b),
            self.p.eq(p_full[:self._a_width + self._b_width]),
        ]
        # MULT18X18D's pins are single bits (A0..A17, P0..P35), see yosys
        # techlibs/ecp5/cells_bb.v.
        ports = {}
        for i in range(n):
            ports[f"i_A{i}"] = a_ext[i]
            ports[f"i_B{i}"] = b_ext[i]
            ports[f"i_C{i}"] = 0
        for i in range(2 * n):
            ports[f"o_P{i}"] = p_full[i]
        m.submodules.mult = Instance(
            "MULT18X18D",
            # A, B input registers -> pipeline register -> output register.
            p_REG_INPUTA_CLK="CLK0",
            p_REG_INPUTA_CE="CE0",
            p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0",
            p_REG_INPUTB_CE="CE0",
            p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE",
            p_REG_PIPELINE_CLK="CLK0",
            p_REG_PIPELINE_CE="CE0",
            p_REG_PIPELINE_RST="RST0",
            p_REG_OUTPUT_CLK="CLK0",
            p_REG_OUTPUT_CE="CE0",
            p_REG_OUTPUT_RST="RST0",
            p_CLK0_DIV="ENABLED",
            p_CLK1_DIV="ENABLED",
            p_CLK2_DIV="ENABLED",
            p_CLK3_DIV="ENABLED",
            p_HIGHSPEED_CLK="NONE",
            p_GSR="ENABLED",
            p_CAS_MATCH_REG="FALSE",
            p_SOURCEB_MODE="B_SHIFT",
            p_MULT_BYPASS="DISABLED",
            p_RESETMODE="SYNC",
            i_SIGNEDA=1,
            i_SIGNEDB=1,
            i_SOURCEA=0,
            i_SOURCEB=0,
            i_CLK0=ClockSignal("sync"),
            i_CE0=1,
            i_RST0=0,
            **ports,
        )
        return m
