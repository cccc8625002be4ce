"""The reconfigurable int8 weight-stationary systolic array.

Dataflow (one sub-array of S x S processing elements, local coordinates)::

    activations of one row r ->  PE(0,0) -> PE(0,1) -> ... (move right, one PE a cycle)
                                    |          |
                                 PE(1,0) -> PE(1,1) -> ...
                                    |  partial sums move down, one PE a cycle
                                    v
                              column sums out at the bottom

PE(i, j) holds weight W[i, j] and adds a[i] * W[i, j] to the partial sum
coming from above, so column ``j`` leaves the bottom with
``sum_i a[i] * W[i, j]``: one output row of ``x @ W`` per cycle.

* Skew and de-skew are inside the array: a port takes one unskewed row of
  activations per cycle and gives back one row of column sums per cycle,
  :meth:`SystolicArray.latency` cycles later. The array never stalls; the
  engine in front of it only injects a row when it can take the result.
* Each PE has two weight registers. A one-bit tag (``sel``) travels with every
  activation and picks the register, so a new weight tile takes over exactly
  at the first row that belongs to it, with no bubble: tiles double-buffer.
* Weights are shifted in from the top of a sub-array, one tile row a cycle,
  into the register named by ``w_buf`` while the other register computes.
  The tile's last row is pushed first (it ends at the bottom). A load is
  registered beside each block: a row's shift happens a cycle after its
  ``w_load``, so the weights a row of activations uses must be loaded the
  cycle before it is presented, or earlier.
* The product is computed by :class:`~hw.primitives.PipelinedMultiplier`
  (input, pipeline and output registers) from operands in registers of
  their own (the activation passed on to the right, the weight register
  chosen by the tag); only an adder sits between the product register and
  the partial-sum register.
* Reconfiguration (RPAccel): the grid is built of ``block`` x ``block``
  blocks. In mode ``(r, c)`` (:attr:`~hw.config.ArrayConfig.modes`: ``(f, f)``
  for a square split ``f``, ``(f, 1)`` for a row split) it acts as ``r * c``
  independent sub-arrays of ``dim/r`` rows x ``dim/c`` columns; sub-array
  ``p`` sits at block row ``p // c`` and block column ``p % c``. At every
  boundary that some mode uses, each PE row takes its activation either from
  its left neighbour or from a port, each column takes its partial sum from
  above or zero, and weights come from above or from a port. The mode is the
  ``split`` input (an index into ``ArrayConfig.modes``), registered beside
  each block: a new mode takes effect in the cycle after ``split`` changes.
  Change it only while the array is empty.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring, data
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig
from .primitives import PipelinedMultiplier, Replica

__all__ = ["SubArrayPort", "SystolicArray"]


class SubArrayPort(wiring.Signature):
    """What an engine drives on one sub-array port (from the engine's side).

    Members
    -------
    act : Out(ArrayLayout(signed(8), lanes))
        One unskewed row of activations; lane ``i`` feeds sub-array row ``i``.
    sel : Out(1)
        Which weight register the row of ``act`` uses.
    weights : Out(ArrayLayout(signed(8), lanes))
        One row of a weight tile, shifted in at the top when ``w_load``
        (in the next cycle: the load is registered beside each block).
    w_load : Out(1)
    w_buf : Out(1)
        Which weight register the shift loads.
    psum : In(ArrayLayout(signed(psum_bits), lanes))
        One row of column sums, ``latency`` cycles after its ``act`` row.
    """

    def __init__(self, *, lanes: int, psum_bits: int):
        if lanes < 1:
            raise ValueError(f"lanes must be positive, not {lanes!r}")
        self._lanes = lanes
        self._psum_bits = psum_bits
        super().__init__({
            "act": Out(data.ArrayLayout(signed(8), lanes)),
            "sel": Out(1),
            "weights": Out(data.ArrayLayout(signed(8), lanes)),
            "w_load": Out(1),
            "w_buf": Out(1),
            "psum": In(data.ArrayLayout(signed(psum_bits), lanes)),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def psum_bits(self):
        return self._psum_bits

    def __eq__(self, other):
        return (isinstance(other, SubArrayPort) and self.lanes == other.lanes
                and self.psum_bits == other.psum_bits)

    def __repr__(self):
        return f"SubArrayPort(lanes={self.lanes}, psum_bits={self.psum_bits})"


class SystolicArray(wiring.Component):
    """``dim`` x ``dim`` reconfigurable weight-stationary int8 MAC grid.

    Parameters
    ----------
    config : ArrayConfig

    Attributes
    ----------
    split : In(range(len(config.modes)))
        Index of the mode in ``config.modes``; it takes effect a cycle
        later.
    sub_<p> : In(SubArrayPort)
        Port of sub-array ``p``, for ``p`` in ``range(config.sub_arrays)``;
        ``config.engine_lanes(p)`` lanes. In a mode with sub-arrays of ``K``
        rows and ``S`` columns only activation lanes ``0 .. K-1`` and weight
        and sum lanes ``0 .. S-1`` are used; the other outputs read zero.
    """

    def __init__(self, config: ArrayConfig):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        self._config = config
        members = {"split": In(range(len(config.modes)))}
        for p in range(config.sub_arrays):
            members[f"sub_{p}"] = In(SubArrayPort(
                lanes=config.engine_lanes(p), psum_bits=config.psum_bits))
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def port(self, p):
        return getattr(self, f"sub_{p}")

    @staticmethod
    def latency(config: ArrayConfig, port: int, split) -> int:
        """Cycles from a row on ``act`` to its sums on ``psum`` for sub-array
        port ``port`` in mode ``split`` (a square split factor or a mode, as
        :meth:`~hw.config.ArrayConfig.mode` takes; not an index)."""
        rows, _ = config.mode_sides(split)
        lanes = config.engine_lanes(port)
        # rows - 1 cycles of skew to the last row, one in the operand
        # registers, LATENCY in the multiplier, one in the product register,
        # one in the sum register, lanes in the fixed de-skew (and output
        # register) of the port.
        return rows + PipelinedMultiplier.LATENCY + lanes + 2

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.dim
        pbits = cfg.psum_bits

        # Skew: lane i of a port reaches its PE row i cycles late, with its tag.
        skewed_act = {}
        skewed_sel = {}
        for p in range(cfg.sub_arrays):
            port = self.port(p)
            acts, sels = [], []
            for i in range(port.signature.lanes):
                a, s = port.act[i], port.sel
                for k in range(i):
                    a_r = Signal(signed(8), name=f"skew{p}_{i}_{k}", reset_less=True)
                    s_r = Signal(name=f"skew{p}_{i}_{k}_sel", reset_less=True)
                    m.d.sync += [a_r.eq(a), s_r.eq(s)]
                    a, s = a_r, s_r
                acts.append(a)
                sels.append(s)
            skewed_act[p] = acts
            skewed_sel[p] = sels

        # Per-PE state.
        # Datapath registers have no reset: nothing reads them before a valid
        # row or a weight load has passed, and the reset net stays small.
        def grid(name, shape=1, reset_less=False):
            return [[Signal(shape, name=f"{name}_{i}_{j}", reset_less=reset_less)
                     for j in range(n)] for i in range(n)]
        a_reg, s_reg = grid("a", signed(8), True), grid("s", 1, True)
        w = [grid("w0", signed(8), True), grid("w1", signed(8), True)]
        ps = grid("ps", signed(pbits), True)
        # Per-PE control chosen by the mode: does this PE start a sub-array
        # row (takes activations from a port) or column (takes weights from a
        # port, zero partial sum), and which port owns it.
        left, left_a, left_s = grid("left"), grid("left_a", signed(8)), grid("left_s")
        top, top_w = grid("top"), grid("top_w", signed(8))
        w_load, w_buf = grid("w_load"), grid("w_buf")

        outputs = {p: [Signal(signed(pbits), name=f"out{p}_{c}")
                       for c in range(self.port(p).signature.lanes)]
                   for p in range(cfg.sub_arrays)}
        # The mode, registered once per block beside it (the split register
        # would otherwise fan out to every PE's multiplexers across the
        # array): a new mode takes effect a cycle after ``split`` changes,
        # long before a row can reach the array.
        def replica(name):
            m.submodules[name] = r = Replica(self.split.shape(), target=cfg.dsp)
            m.d.comb += r.i.eq(self.split)
            return r.o

        nb, bk = n // cfg.block, cfg.block
        split_blk = [[replica(f"split_{bi}_{bj}") for bj in range(nb)] for bi in range(nb)]
        # A weight load, registered once per block beside it (a port's load
        # enable would otherwise reach the clock enables of every weight
        # register of its sub-array across the array): the port's
        # ``w_load``, ``w_buf`` and, for a block at the top of its
        # sub-array, its columns' ``weights``, taking effect a cycle later.
        for bi in range(nb):
            # (weights only for a block at the top of a sub-array in some mode)
            on_top = any(bi * bk % (n // fr) == 0 for fr, _ in cfg.modes)
            load_l = data.StructLayout({"load": 1, "buf": 1,
                                        **({"w": data.ArrayLayout(signed(8), bk)} if on_top else {})})
            for bj in range(nb):
                m.submodules[f"load_{bi}_{bj}"] = rep = Replica(load_l, target=cfg.dsp)
                pre = rep.i
                blk = rep.o
                with m.Switch(split_blk[bi][bj]):
                    for idx, (fr, fc) in enumerate(cfg.modes):
                        rows, cols = n // fr, n // fc
                        assert rows % bk == 0 and cols % bk == 0
                        i0, j0 = bi * bk, bj * bk
                        port = self.port((i0 // rows) * fc + j0 // cols)
                        with m.Case(idx):
                            m.d.comb += [pre.load.eq(port.w_load), pre.buf.eq(port.w_buf)]
                            if i0 % rows == 0:
                                m.d.comb += [pre.w[c].eq(port.weights[(j0 + c) % cols])
                                             for c in range(bk)]
                for i in range(bi * bk, (bi + 1) * bk):
                    for j in range(bj * bk, (bj + 1) * bk):
                        m.d.comb += [w_load[i][j].eq(blk.load), w_buf[i][j].eq(blk.buf)]
                        if on_top and i == bi * bk:
                            m.d.comb += top_w[i][j].eq(blk.w[j - bj * bk])
        for i in range(n):
            for j in range(n):
                with m.Switch(split_blk[i // cfg.block][j // cfg.block]):
                    for idx, (fr, fc) in enumerate(cfg.modes):
                        rows, cols = n // fr, n // fc
                        with m.Case(idx):
                            p = (i // rows) * fc + j // cols
                            if j % cols == 0:
                                m.d.comb += [left[i][j].eq(1),
                                             left_a[i][j].eq(skewed_act[p][i % rows]),
                                             left_s[i][j].eq(skewed_sel[p][i % rows])]
                            if i % rows == 0:
                                m.d.comb += top[i][j].eq(1)
        # (the outputs: each port's from the last row of its sub-array, by
        # a copy of the mode per port)
        for p in range(cfg.sub_arrays):
            split_out = replica(f"split_out{p}")
            for c in range(self.port(p).signature.lanes):
                with m.Switch(split_out):
                    for idx, (fr, fc) in enumerate(cfg.modes):
                        rows, cols = n // fr, n // fc
                        if p < fr * fc and c < cols:
                            r0, c0 = (p // fc) * rows, (p % fc) * cols
                            with m.Case(idx):
                                m.d.comb += outputs[p][c].eq(ps[r0 + rows - 1][c0 + c])

        # The processing elements.
        for i in range(n):
            for j in range(n):
                a_in = Signal(signed(8), name=f"a_in_{i}_{j}")
                s_in = Signal(name=f"s_in_{i}_{j}")
                ps_in = Signal(signed(pbits), name=f"ps_in_{i}_{j}")
                m.d.comb += [
                    a_in.eq(Mux(left[i][j], left_a[i][j], a_reg[i][j - 1] if j else 0)),
                    s_in.eq(Mux(left[i][j], left_s[i][j], s_reg[i][j - 1] if j else 0)),
                    ps_in.eq(Mux(top[i][j], 0, ps[i - 1][j] if i else 0)),
                ]
                for b in range(2):
                    above = Mux(top[i][j], top_w[i][j], w[b][i - 1][j] if i else 0)
                    with m.If(w_load[i][j] & (w_buf[i][j] == b)):
                        m.d.sync += w[b][i][j].eq(above)
                m.submodules[f"mul_{i}_{j}"] = mul = PipelinedMultiplier(
                    a_width=8, b_width=8, target=cfg.dsp)
                # The operands reach the multiplier from flip-flops of their
                # own (the activation's is the one passed on to the right), so
                # the mode's and the weight register's multiplexers stay in
                # the fabric with their inputs, a register-to-register hop
                # away from the DSP (measured on ECP5: the DSPs sit up to 80
                # tiles from the logic that feeds them).
                b_op = Signal(signed(8), name=f"b_{i}_{j}", reset_less=True)
                m.d.sync += b_op.eq(Mux(s_in, w[1][i][j], w[0][i][j]))
                m.d.comb += [mul.a.eq(a_reg[i][j]), mul.b.eq(b_op)]
                # A fabric register after the DSP: the product's path to the
                # adder then stays local (measured on ECP5: 175 -> 220 MHz).
                prod = Signal(signed(16), name=f"prod_{i}_{j}", reset_less=True)
                m.d.sync += [
                    a_reg[i][j].eq(a_in),
                    s_reg[i][j].eq(s_in),
                    prod.eq(mul.p),
                    ps[i][j].eq(ps_in + prod),
                ]

        # De-skew: lane c waits lanes-c cycles (one of them a register at
        # the port, so the sums leave the array registered), so that a whole
        # row of sums leaves together; lanes past the active side read zero.
        for p in range(cfg.sub_arrays):
            port = self.port(p)
            lanes = port.signature.lanes
            for c in range(lanes):
                v = outputs[p][c]
                for k in range(lanes - c):
                    v_r = Signal(signed(pbits), name=f"deskew{p}_{c}_{k}", reset_less=True)
                    m.d.sync += v_r.eq(v)
                    v = v_r
                m.d.comb += port.psum[c].eq(v)
        return m
