"""Technology primitives chosen per target platform.

The rest of the hardware uses these components instead of writing ``a * b``
so that the FPGA flow gets a fully pipelined hard multiplier where the
synthesis tool would not infer one (``synth_ecp5`` maps ``$mul`` to a
combinational MULT18X18D and leaves the surrounding registers in the fabric).
"""

from types import SimpleNamespace

from amaranth.hdl import ClockSignal, Instance, Module, Signal, Value, signed, unsigned
from amaranth.lib.memory import Memory
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PipelinedMultiplier", "BlockRAM", "Skid", "Replica"]


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


class BlockRAM(wiring.Component):
    """Simple dual-port RAM: one write port, one read port with a latency of
    :attr:`LATENCY` cycles.

    Both ports are registered twice in the fabric before the RAM, and the
    read data once more after it, so that every path between the block RAMs
    and the logic around them is a register-to-register hop: on a crowded
    ECP5 the routes to and from a row of DP16KD blocks take most of a cycle
    on their own (measured: 4.5 ns RAM to logic, 5 ns logic to RAM). In
    order:

    1. an input register (fabric, one copy), so that the logic driving the
       port (an address or write multiplexer) ends at a flip-flop beside
       it, and not at the clock enables of the bank copies far away;
    2. ``r_addr`` register (fabric), a :class:`Replica` per group of four
       blocks, so that no copy drives more than four;
    3. the RAM's address register;
    4. the RAM's output register (``REGMODE_B = "OUTREG"``: without it, its
       5.8 ns clock-to-data bounds the design);
    5. a fabric register per bank, then, if there are several banks, the
       bank multiplexer (its select delayed like the data, the last stage a
       :class:`Replica` per column beside that column's multiplexer).

    On ECP5 the blocks take the DP16KD shape (1024 x 18 down to 16384 x 1)
    that needs the fewest of them, and of those the fewest banks
    (:meth:`ecp5_shape`): 4096 words of 64 bits are 16 blocks of 4096 x 4,
    one bank, no multiplexer, rather than 4 banks of 1024 x 18.

    The write port has the same two register stages (the second a copy of
    the data per bank, and of the address and the bank's write enable per
    group of four blocks), so a write lands two cycles after it is
    presented. Reads are delayed by the same stages, so the
    contract is that of a RAM without these registers: a read presented in
    a later cycle than a write to its address returns the written word; a
    read and a write of one address presented in the same cycle return
    undefined data (callers never do that). ``"generic"`` is an Amaranth
    ``Memory`` with the same registers: the same latency and contents. The
    contents start undefined.

    Attributes
    ----------
    w_addr, w_data, w_en : In
    r_addr : In
    r_data : Out(width)
        The word at the ``r_addr`` of :attr:`LATENCY` cycles earlier.
    """

    LATENCY = 5
    TARGETS = ("generic", "ecp5")
    #: DP16KD's shapes: (depth, width, the address pin of a word address's
    #: lowest bit).
    _MODES = ((1024, 18, 4), (2048, 9, 3), (4096, 4, 2), (8192, 2, 1), (16384, 1, 0))
    #: Blocks one copy of a bank's addresses and write enable drives at most.
    _GROUP = 4

    def __init__(self, *, width, depth, target="generic"):
        for name, v in (("width", width), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS!r}, not {target!r}")
        self._width, self._depth, self._target = width, depth, target
        super().__init__({
            "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(depth)), "r_data": Out(width),
        })

    @property
    def width(self):
        return self._width

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        if self._target == "ecp5":
            return self._elaborate_ecp5()
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self._width), depth=self._depth,
                                        init=[])
        wr, rd = mem.write_port(), mem.read_port()
        i = self._input_stage(m)
        w_addr = Signal.like(self.w_addr, reset_less=True)
        w_data = Signal.like(self.w_data, reset_less=True)
        w_en = Signal()
        r_addr = Signal.like(self.r_addr, reset_less=True)
        q = [Signal(self._width, reset_less=True) for _ in range(2)]
        m.d.sync += [w_addr.eq(i.w_addr), w_data.eq(i.w_data), w_en.eq(i.w_en),
                     r_addr.eq(i.r_addr)]
        m.d.comb += [wr.addr.eq(w_addr), wr.data.eq(w_data), wr.en.eq(w_en),
                     rd.addr.eq(r_addr)]
        m.d.sync += [q[0].eq(rd.data), q[1].eq(q[0])]
        m.d.comb += self.r_data.eq(q[1])
        return m

    def _input_stage(self, m):
        """Stage 1 (class docstring): the ports, registered once."""
        i = SimpleNamespace(w_addr=Signal.like(self.w_addr, name="in_waddr", reset_less=True),
                            w_data=Signal.like(self.w_data, name="in_wdata", reset_less=True),
                            w_en=Signal(name="in_we"),
                            r_addr=Signal.like(self.r_addr, name="in_raddr", reset_less=True))
        m.d.sync += [i.w_addr.eq(self.w_addr), i.w_data.eq(self.w_data), i.w_en.eq(self.w_en),
                     i.r_addr.eq(self.r_addr)]
        return i

    @classmethod
    def ecp5_shape(cls, width, depth):
        """The DP16KD shape of a RAM of ``width`` x ``depth`` on ECP5:
        ``(block depth, block width, banks, columns)``. The fewest blocks,
        then the fewest banks: a deep, narrow shape where it costs no more
        blocks, so that the read data needs no bank multiplexer."""
        _, banks, depth_b, width_b, cols = min(
            (-(-depth // d) * -(-width // w), -(-depth // d), d, w, -(-width // w))
            for d, w, _ in cls._MODES)
        return depth_b, width_b, banks, cols

    def _elaborate_ecp5(self):
        m = Module()
        i = self._input_stage(m)
        bd, bw, banks, cols = self.ecp5_shape(self._width, self._depth)
        abits = (bd - 1).bit_length()
        a_lsb = {d: a for d, _, a in self._MODES}[bd]

        def bank_of(addr):
            return addr[abits:] if banks > 1 else 0

        def replica(value, name):
            m.submodules[name] = r = Replica(len(value), target="ecp5")
            m.d.comb += r.i.eq(value)
            return r.o

        # Which bank the read data comes from, delayed like the data; the
        # last stage is a replica per column, beside that column's
        # multiplexer.
        r_bank_q = [Signal(range(banks), name=f"r_bank_{k}") for k in range(self.LATENCY - 2)]
        m.d.sync += r_bank_q[0].eq(bank_of(i.r_addr))
        for k in range(1, self.LATENCY - 2):
            m.d.sync += r_bank_q[k].eq(r_bank_q[k - 1])
        outs = []
        for b in range(banks):
            # Stage 2: the write data per bank, and the addresses and write
            # enable once per group of ``_GROUP`` columns, so that no copy
            # drives more blocks than that (``Replica``s: Yosys would merge
            # equal flip-flops). A bank's copies load in every cycle; its
            # write enable is the port's, for its own addresses.
            w_en = i.w_en & (bank_of(i.w_addr) == b)
            w_data = replica(i.w_data, f"bank{b}_wdata")
            q = Signal(cols * bw, name=f"bank{b}_q")
            q_r = Signal(cols * bw, name=f"bank{b}_q_r", reset_less=True)
            m.d.sync += q_r.eq(q)
            outs.append(q_r)
            for c in range(cols):
                g = c // self._GROUP
                if c % self._GROUP == 0:
                    g_we = replica(w_en, f"bank{b}_we{g}")
                    g_waddr = replica(i.w_addr[:abits], f"bank{b}_waddr{g}")
                    g_raddr = replica(i.r_addr[:abits], f"bank{b}_raddr{g}")
                ports = {
                    "i_CLKA": ClockSignal(), "i_CLKB": ClockSignal(),
                    "i_WEA": g_we, "i_CEA": 1, "i_OCEA": 1, "i_RSTA": 0,
                    "i_WEB": 0, "i_CEB": 1, "i_OCEB": 1, "i_RSTB": 0,
                }
                for k in range(3):
                    ports[f"i_CSA{k}"] = 0
                    ports[f"i_CSB{k}"] = 0
                # The word address sits on AD[13:a_lsb] (x18: AD[13:4], x9:
                # AD[13:3], x4: AD[13:2], x2: AD[13:1], x1: AD[13:0], as
                # Yosys maps its own memories); in x18, AD[1:0] are a
                # write's byte enables (both on). The data is DI/DO[bw-1:0].
                for k in range(14):
                    bit = k - a_lsb
                    if bit >= 0:
                        ports[f"i_ADA{k}"] = g_waddr[bit] if bit < len(g_waddr) else 0
                        ports[f"i_ADB{k}"] = g_raddr[bit] if bit < len(g_raddr) else 0
                    else:
                        ports[f"i_ADA{k}"] = int(bw == 18 and k < 2)
                        ports[f"i_ADB{k}"] = 0
                for k in range(bw):
                    bit = c * bw + k
                    ports[f"i_DIA{k}"] = w_data[bit] if bit < self._width else 0
                    ports[f"i_DIB{k}"] = 0
                    ports[f"o_DOB{k}"] = q[bit]
                m.submodules[f"ram_{b}_{c}"] = Instance(
                    "DP16KD",
                    p_DATA_WIDTH_A=bw, p_DATA_WIDTH_B=bw,
                    p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                    p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
                    p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                    p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL",
                    p_GSR="DISABLED",
                    **ports)
        sel = outs[0]
        if banks > 1:
            sel = Signal(cols * bw)
            for c in range(cols):
                with m.Switch(replica(r_bank_q[-1], f"r_bank_col{c}")):
                    for b in range(banks):
                        with m.Case(b):
                            m.d.comb += sel[c * bw:(c + 1) * bw].eq(outs[b][c * bw:(c + 1) * bw])
        m.d.comb += self.r_data.eq(sel[:self._width])
        return m


class Skid(wiring.Component):
    """A two-register stream buffer: ``o.valid``, ``o.payload`` and
    ``i.ready`` all come from flip-flops, so it cuts every combinational path
    between the stages it joins (valid, payload and ready), at full
    throughput and one cycle of latency. The spare register loads whenever
    it is empty, so its enable is a register too: what decides ``o.ready``
    reaches only the output register's enables.

    Parameters
    ----------
    shape : shape-like
        The payload's shape.

    Attributes
    ----------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)),
                          "o": Out(stream.Signature(shape))})
        self._shape = shape

    def elaborate(self, platform):
        m = Module()
        spare = Signal(self._shape, reset_less=True)
        spare_valid = Signal()
        m.d.comb += self.i.ready.eq(~spare_valid)
        with m.If(~spare_valid):
            m.d.sync += spare.eq(self.i.payload)
        with m.If(~self.o.valid | self.o.ready):
            with m.If(spare_valid):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(spare),
                             spare_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        with m.Elif(self.i.valid & ~spare_valid):
            m.d.sync += spare_valid.eq(1)
        return m


class Replica(wiring.Component):
    """A copy of ``i`` a cycle late, in flip-flops of its own.

    Several replicas of one signal, each placed beside the logic it feeds,
    cut the fan-out of one register across the die. Yosys merges identical
    flip-flops (``opt_merge``), so for the ``"ecp5"`` target each bit is an
    instance of the ECP5 flip-flop (``TRELLIS_FF``) marked ``keep``; for
    ``"generic"`` it is a plain register. No reset: a replica follows its
    source a cycle later.

    Parameters
    ----------
    shape : shape-like
    target : str
        ``"generic"`` or ``"ecp5"``.

    Attributes
    ----------
    i : In(shape)
    o : Out(shape)
    """

    TARGETS = ("generic", "ecp5")

    def __init__(self, shape, *, target="generic"):
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS!r}, not {target!r}")
        self._target = target
        super().__init__({"i": In(shape), "o": Out(shape)})

    def elaborate(self, platform):
        m = Module()
        i, o = Value.cast(self.i), Value.cast(self.o)
        if self._target == "ecp5":
            for b in range(len(i)):
                m.submodules[f"ff{b}"] = Instance(
                    "TRELLIS_FF", a_keep=1, p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK",
                    p_LSRMUX="LSR", p_REGSET="RESET", p_SRMODE="LSR_OVER_CE",
                    i_CLK=ClockSignal(), i_DI=i[b], i_LSR=0, o_Q=o[b])
        else:
            q = Signal(len(i), reset_less=True)
            m.d.sync += q.eq(i)
            m.d.comb += o.eq(q)
        return m
