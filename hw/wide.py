"""A matrix-vector unit with a wide (up to 32-bit) requantized output: the
score head and the user pass of a stage (:mod:`host.models`, steps 6 and 7),
which the int8 MLP engine cannot do; and :class:`RowMLP`, a chain of them
with ReLU that runs a stage's small bottom MLP on one row (step 1) beside
the engine.

Per row ``x`` (int8, ``in_dim`` long) and output ``j < out_dim``::

    acc_j = wrap_int32(sum_i x[i] * W[i, j])
    y[j]  = clamp(((acc_j + bias[j]) * mult[j] + 2**(shift[j]-1)) >> shift[j],
                  -2**(bits-1), 2**(bits-1) - 1)

(round half up, an arithmetic shift; no rounding term when ``shift`` is 0;
and with ``relu``, ``max(y[j], 0)``): :func:`host.models.requantize_wide`
of :func:`host.numerics.wrap_int32` of ``x @ W``, bit for bit. The score
head is ``out_dim = 1``, ``mult = 1``, ``shift`` the score's shift and
``bits`` its width
(:meth:`host.models.QuantizedStageModel.scores`); the user pass is the user
rows of the first top layer with ``bits = 32``
(:meth:`host.models.QuantizedStageModel.user_bias`).

Streams
-------
``w`` (:func:`write_layout`, always ready): by ``kind``
    ``WEIGHT``: word ``(j, c)`` of the weights, ``data.weight[l] = W[c *
    lanes + l, j]`` (rows past ``in_dim`` zero), at ``addr = j * chunks +
    c`` (:meth:`WideMatVec.weight_address`; ``chunks = ceil(max_in /
    lanes)``: the host computes the address, which keeps a multiplier off
    the write path); ``PARAM``: ``bias``, ``mult``, ``shift`` of output
    ``j = addr`` (:func:`param_layout`); ``DIMS``: ``in_dim`` and
    ``out_dim`` (:func:`dims_layout`). Writes past the memories (``addr >=
    chunks * max_out``, or ``>= max_out`` for ``PARAM``) are dropped. A
    write applies to the rows whose last beat is taken after it; a row taken
    before a weight or parameter write that changes its layer gives
    undefined values (drain the outputs first). The dimensions start at 0
    (bad) until written.
``i`` (:func:`input_layout`)
    A row is ``ceil(in_dim / lanes)`` chunk beats of ``lanes`` int8 values
    (features past ``in_dim`` zero), ``last`` on its last chunk, whose
    ``tag`` (opaque, e.g. the candidate's position) and ``end`` (end of a
    list) the row's outputs carry. Rows follow each other directly.
``o`` (:func:`output_layout`)
    Per good row ``out_dim`` beats, ``j = 0 .. out_dim - 1``, ``value`` the
    ``bits``-bit result, ``last`` on ``j = out_dim - 1``, ``status = OK``.
    A row taken while the dimensions are out of range (0 or above
    ``max_in`` / ``max_out``) gives a single beat with ``status =
    BAD_DIMS``, a row of the wrong number of chunks (not ``ceil(in_dim /
    lanes)``) a single beat with ``status = BAD_LENGTH``; such a beat has
    ``j = 0``, ``value = 0``, ``last = 1`` and the row's ``tag`` and ``end``.
    The unit then goes on with the next row. Rows leave in order.

How it works
------------
The input is double-buffered: a row loads into one half of a row buffer
while the one before it is computed from the other half. The sequencer steps
through ``(j, c)``, one step a cycle: it reads chunk ``c`` of the row and
weight word ``(j, c)`` (block RAMs, :class:`hw.primitives.BlockRAM`),
multiplies the ``lanes`` pairs (registered products), adds them in a tree of
two adders per register stage and into a wrapping int32 accumulator; after
the row's last chunk the accumulator goes through the wide requantizer (bias
add; the 33 x 16-bit product split over two
:class:`hw.primitives.PipelinedMultiplier`; rounding; the shift in two
steps; saturation from registered flags) into an output FIFO. A row costs
``out_dim * ceil(in_dim / lanes)`` cycles (a bad row one), so the score head
takes a chunk a cycle. A result enters the output FIFO
:attr:`WideMatVec.latency` cycles after its row's last step. Backpressure:
the sequencer starts an output only with a free FIFO slot reserved for it (a
credit count), so the pipeline itself never stalls and nothing is lost.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .config import ceil_div, clog2
from .primitives import BlockRAM, PipelinedMultiplier

__all__ = ["Status", "WriteKind", "param_layout", "dims_layout", "write_layout",
           "input_layout", "output_layout", "WideMatVec", "mlp_write_layout",
           "mlp_output_layout", "RowMLP"]

#: Width of the ``in_dim`` and ``out_dim`` fields of a ``DIMS`` write.
DIM_BITS = 16
#: The largest shift that changes the result: ``|(acc + bias) * mult| <
#: 2**48``, so any shift of 50 or more gives 0, as 51 does.
_MAX_SHIFT = 51


class Status(enum.Enum, shape=2):
    OK = 0
    BAD_DIMS = 1
    BAD_LENGTH = 2


class WriteKind(enum.Enum, shape=2):
    WEIGHT = 0
    PARAM = 1
    DIMS = 2


def param_layout() -> data.StructLayout:
    return data.StructLayout({"bias": signed(32), "mult": unsigned(16),
                              "shift": unsigned(6)})


def dims_layout() -> data.StructLayout:
    return data.StructLayout({"in_dim": unsigned(DIM_BITS), "out_dim": unsigned(DIM_BITS)})


def write_layout(lanes: int, max_in: int, max_out: int) -> data.StructLayout:
    return data.StructLayout({
        "kind": WriteKind,
        "addr": unsigned(clog2(ceil_div(max_in, lanes) * max_out)),
        "data": data.UnionLayout({"weight": data.ArrayLayout(signed(8), lanes),
                                  "param": param_layout(),
                                  "dims": dims_layout()}),
    })


def input_layout(lanes: int, tag_bits: int) -> data.StructLayout:
    return data.StructLayout({"x": data.ArrayLayout(signed(8), lanes), "last": 1,
                              "end": 1, "tag": unsigned(tag_bits)})


def output_layout(bits: int, max_out: int, tag_bits: int) -> data.StructLayout:
    return data.StructLayout({"value": signed(bits), "j": unsigned(clog2(max_out)),
                              "last": 1, "end": 1, "tag": unsigned(tag_bits),
                              "status": Status})


class WideMatVec(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    lanes : int
        int8 elements per input chunk and weight word (1 .. 64).
    max_in, max_out : int
        Largest ``in_dim`` and ``out_dim`` (1 .. 65535).
    bits : int
        Output width, 2 .. 32.
    relu : bool
        Clamp the outputs below at 0 as well (an int8 ReLU layer with ``bits
        = 8``: :func:`host.numerics.requantize` with ``relu``).
    tag_bits : int
        Width of the opaque row tag, 1 .. 64.
    target : str
        ``"generic"`` or ``"ecp5"``: the block RAMs and multipliers
        (:mod:`hw.primitives`).

    Attributes
    ----------
    w : In(stream.Signature(write_layout(...)))
    i : In(stream.Signature(input_layout(...)))
    o : Out(stream.Signature(output_layout(...)))
    """

    def __init__(self, *, lanes: int, max_in: int, max_out: int, bits: int = 32,
                 relu: bool = False, tag_bits: int = 16, target: str = "generic"):
        for name, v, lo, hi in (("lanes", lanes, 1, 64),
                                ("max_in", max_in, 1, (1 << DIM_BITS) - 1),
                                ("max_out", max_out, 1, (1 << DIM_BITS) - 1),
                                ("bits", bits, 2, 32), ("tag_bits", tag_bits, 1, 64)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer in {lo} .. {hi}, not {v!r}")
        if not isinstance(relu, bool):
            raise TypeError(f"relu: must be a bool, not {relu!r}")
        if target not in BlockRAM.TARGETS:
            raise ValueError(f"target: must be one of {BlockRAM.TARGETS!r}, not {target!r}")
        if ceil_div(max_in, lanes) * max_out > 1 << 24:
            raise ValueError(f"max_in, max_out: {ceil_div(max_in, lanes) * max_out} weight "
                             f"words, more than 2**24")
        self._lanes, self._max_in, self._max_out = lanes, max_in, max_out
        self._bits, self._relu, self._tag_bits, self._target = bits, relu, tag_bits, target
        super().__init__({
            "w": In(stream.Signature(write_layout(lanes, max_in, max_out))),
            "i": In(stream.Signature(input_layout(lanes, tag_bits))),
            "o": Out(stream.Signature(output_layout(bits, max_out, tag_bits))),
        })

    lanes = property(lambda self: self._lanes)
    max_in = property(lambda self: self._max_in)
    max_out = property(lambda self: self._max_out)
    bits = property(lambda self: self._bits)
    relu = property(lambda self: self._relu)
    tag_bits = property(lambda self: self._tag_bits)
    target = property(lambda self: self._target)

    @property
    def chunks(self) -> int:
        """Weight words per output (chunks of the longest row)."""
        return ceil_div(self._max_in, self._lanes)

    def weight_address(self, j: int, c: int) -> int:
        """The ``addr`` of weight word ``(j, c)``: chunk ``c`` of output ``j``."""
        if not (0 <= j < self._max_out and 0 <= c < self.chunks):
            raise ValueError(f"(j, c): ({j!r}, {c!r}) out of range for max_out "
                             f"{self._max_out} and {self.chunks} chunks")
        return j * self.chunks + c

    @property
    def tree_stages(self) -> int:
        """Register stages of the adder tree (two adder levels each)."""
        n, k = self._lanes, 0
        while n > 1:
            n, k = ceil_div(n, 4), k + 1
        return k

    @property
    def latency(self) -> int:
        """Cycles from a step's issue to its result's write into the output FIFO."""
        return BlockRAM.LATENCY + 2 + self.tree_stages + 8 + PipelinedMultiplier.LATENCY

    @property
    def fifo_depth(self) -> int:
        # The credit loop: issue .. FIFO write .. FIFO read .. credit back;
        # one output a cycle needs a slot for every output in flight.
        return self.latency + 6

    def elaborate(self, platform):
        m = Module()
        L, C, MO = self._lanes, self.chunks, self._max_out
        lat = BlockRAM.LATENCY
        vec_l = data.ArrayLayout(signed(8), L)
        prm_l = param_layout()
        out_l = output_layout(self._bits, MO, self._tag_bits)
        tag_s = unsigned(self._tag_bits)

        # (depth 2 at least: a 1-word RAM would have a 0-bit address)
        m.submodules.wmem = wmem = BlockRAM(width=vec_l.size, depth=max(2, C * MO),
                                            target=self._target)
        m.submodules.xmem = xmem = BlockRAM(width=vec_l.size, depth=2 * C,
                                            target=self._target)
        m.submodules.pmem = pmem = BlockRAM(width=prm_l.size, depth=max(2, MO),
                                            target=self._target)

        # -- writes: dimensions at once, memories through a register stage ----
        wr = self.w.payload
        m.d.comb += self.w.ready.eq(1)
        in_dim = Signal(DIM_BITS)
        in_lo = Signal(signed(DIM_BITS + 1))        # in_dim - lanes
        out_m1 = Signal(clog2(MO))                  # out_dim - 1, when good
        dims_ok = Signal()
        with m.If(self.w.valid & (wr.kind == WriteKind.DIMS)):
            d = wr.data.dims
            m.d.sync += [in_dim.eq(d.in_dim), in_lo.eq(d.in_dim - L),
                         out_m1.eq(d.out_dim - 1),
                         dims_ok.eq((d.in_dim >= 1) & (d.in_dim <= self._max_in)
                                    & (d.out_dim >= 1) & (d.out_dim <= MO))]
        wq = Signal.like(wr, reset_less=True)
        wq_valid = Signal()
        m.d.sync += [wq.eq(wr), wq_valid.eq(self.w.valid)]
        m.d.comb += [
            wmem.w_addr.eq(wq.addr),
            wmem.w_data.eq(wq.data.weight.as_value()),
            wmem.w_en.eq(wq_valid & (wq.kind == WriteKind.WEIGHT) & (wq.addr < C * MO)),
            pmem.w_addr.eq(wq.addr),
            pmem.w_data.eq(wq.data.param.as_value()),
            pmem.w_en.eq(wq_valid & (wq.kind == WriteKind.PARAM) & (wq.addr < MO)),
        ]

        # -- the row buffer's two halves ---------------------------------------
        c_s, j_s = unsigned(clog2(C)), unsigned(clog2(MO))     # never 0 bits wide
        bank_l = data.StructLayout({"status": Status, "tag": tag_s, "end": 1,
                                    "chunks_m1": c_s, "out_m1": j_s})
        full = Signal(2)
        banks = [Signal(bank_l, name=f"bank{b}") for b in range(2)]

        # -- loader: chunks into half wb ----------------------------------------
        beat = self.i.payload
        wb = Signal()
        k = Signal(range(C + 1))                    # chunks taken (saturates at C)
        kl = Signal(range(C * L + 1))               # k * lanes
        m.d.comb += [self.i.ready.eq(~full.bit_select(wb, 1)),
                     xmem.w_addr.eq(Mux(wb, C, 0) + k),
                     xmem.w_data.eq(beat.x.as_value()),
                     xmem.w_en.eq(self.i.valid & self.i.ready & (k < C))]
        with m.If(self.i.valid & self.i.ready):
            with m.If(beat.last):
                # k + 1 = ceil(in_dim / lanes) chunks: (k + 1) * lanes >= in_dim >
                # k * lanes; k = C: more chunks than the buffer holds (dropped)
                length_ok = (k < C) & (kl < in_dim) & (kl >= in_lo)
                status = Mux(~dims_ok, Status.BAD_DIMS,
                             Mux(length_ok, Status.OK, Status.BAD_LENGTH))
                good = dims_ok & length_ok
                for b in range(2):
                    with m.If(wb == b):
                        m.d.sync += [banks[b].status.eq(status), banks[b].tag.eq(beat.tag),
                                     banks[b].end.eq(beat.end),
                                     banks[b].chunks_m1.eq(Mux(good, k, 0)),
                                     banks[b].out_m1.eq(Mux(good, out_m1, 0))]
                m.d.sync += [full.bit_select(wb, 1).eq(1), wb.eq(~wb), k.eq(0), kl.eq(0)]
            with m.Elif(k < C):
                m.d.sync += [k.eq(k + 1), kl.eq(kl + L)]

        # -- sequencer: one (j, c) step a cycle from half rb ---------------------
        meta_l = data.StructLayout({"valid": 1, "first": 1, "last_c": 1, "last_j": 1,
                                    "j": j_s, "tag": tag_s, "end": 1,
                                    "status": Status})
        rb = Signal()
        c = Signal(c_s)
        j = Signal(j_s)
        base = Signal(range(max(2, C * MO)))        # j * C
        credits = Signal(range(self.fifo_depth + 1), init=self.fifo_depth)
        row = Signal(bank_l)
        m.d.comb += row.eq(Mux(rb, banks[1].as_value(), banks[0].as_value()))
        go = Signal()
        m.d.comb += go.eq(full.bit_select(rb, 1) & ((c != 0) | (credits != 0)))
        meta0 = Signal(meta_l)
        m.d.comb += [meta0.valid.eq(go), meta0.first.eq(c == 0),
                     meta0.last_c.eq(c == row.chunks_m1), meta0.last_j.eq(j == row.out_m1),
                     meta0.j.eq(j), meta0.tag.eq(row.tag), meta0.end.eq(row.end),
                     meta0.status.eq(row.status),
                     wmem.r_addr.eq(base + c),
                     xmem.r_addr.eq(Mux(rb, C, 0) + c)]
        with m.If(go):
            with m.If(meta0.last_c):
                m.d.sync += c.eq(0)
                with m.If(meta0.last_j):
                    m.d.sync += [j.eq(0), base.eq(0), full.bit_select(rb, 1).eq(0),
                                 rb.eq(~rb)]
                with m.Else():
                    m.d.sync += [j.eq(j + 1), base.eq(base + C)]
            with m.Else():
                m.d.sync += c.eq(c + 1)
        release = self.o.valid & self.o.ready
        m.d.sync += credits.eq(credits - (go & meta0.first) + release)

        def delay(value, cycles, name):
            """``value`` and its copies 1 .. ``cycles`` cycles later."""
            stages = [value]
            for n in range(cycles):
                t = Signal.like(value, name=f"{name}_d{n + 1}")
                m.d.sync += t.eq(stages[-1])
                stages.append(t)
            return stages

        # -- products, adder tree, accumulator ---------------------------------
        T = self.tree_stages
        acc_at = lat + 2 + T                        # the accumulator's stage
        meta = delay(meta0, acc_at, "meta")
        xv = vec_l(xmem.r_data)
        wv = vec_l(wmem.r_data)
        level = []
        for n in range(L):
            p = Signal(signed(16), name=f"prod{n}", reset_less=True)
            m.d.sync += p.eq(xv[n] * wv[n])
            level.append(p)
        for s in range(T):
            nxt = []
            for g in range(0, len(level), 4):
                part = level[g:g + 4]
                if len(part) == 4:      # two adder levels: (a + b) + (c + d)
                    v = (part[0] + part[1]) + (part[2] + part[3])
                else:
                    v = sum(part[1:], part[0])
                st = Signal(signed(Shape.cast(v.shape()).width), name=f"sum{s}_{g // 4}",
                            reset_less=True)
                m.d.sync += st.eq(v)
                nxt.append(st)
            level = nxt
        psum = level[0]
        sm = meta[acc_at - 1]                       # aligned with psum
        acc = Signal(signed(32))                    # wraps, as the golden int32
        with m.If(sm.valid):
            m.d.sync += acc.eq(Mux(sm.first, psum, acc + psum))

        # -- wide requantization --------------------------------------------------
        # Parameters read so as to arrive with the accumulator.
        m.d.comb += pmem.r_addr.eq(meta[acc_at - lat].j)
        prm = prm_l(pmem.r_data)
        am = meta[acc_at]
        rq0 = Signal(meta_l)
        m.d.comb += [rq0.eq(am), rq0.valid.eq(am.valid & am.last_c)]
        rq = delay(rq0, 8 + PipelinedMultiplier.LATENCY, "rq")
        t = Signal(signed(33), reset_less=True)
        mult = Signal(16, reset_less=True)
        sh = Signal(range(_MAX_SHIFT + 1), reset_less=True)
        m.d.sync += [t.eq(acc + prm.bias), mult.eq(prm.mult),      # stage 1
                     sh.eq(Mux(prm.shift > _MAX_SHIFT, _MAX_SHIFT, prm.shift))]
        lo = PipelinedMultiplier(a_width=18, b_width=17, target=self._target)
        hi = PipelinedMultiplier(a_width=16, b_width=17, target=self._target)
        m.submodules.rq_lo, m.submodules.rq_hi = lo, hi
        m.d.comb += [lo.a.eq(Cat(t[:17], Const(0, 1))), hi.a.eq(t[17:33]),
                     lo.b.eq(Cat(mult, Const(0, 1))), hi.b.eq(Cat(mult, Const(0, 1)))]
        k_p = 1 + PipelinedMultiplier.LATENCY        # the stage of the products
        shs = delay(sh, k_p + 3, "rq_sh")
        lo_p = Signal.like(lo.p, reset_less=True)
        hi_p = Signal.like(hi.p, reset_less=True)
        m.d.sync += [lo_p.eq(lo.p), hi_p.eq(hi.p)]                    # stage k_p + 1
        prod = Signal(signed(50), reset_less=True)
        half = Signal(signed(_MAX_SHIFT + 1), reset_less=True)
        m.d.sync += [prod.eq((hi_p << 17) + lo_p),                   # stage k_p + 2
                     half.eq((Const(1, _MAX_SHIFT + 2) << shs[k_p])[1:])]
        rounded = Signal(signed(_MAX_SHIFT + 1), reset_less=True)
        m.d.sync += rounded.eq(prod + half)                          # stage k_p + 3
        # the arithmetic shift in two steps: by a multiple of 8, then by the rest
        coarse = Signal(signed(_MAX_SHIFT + 1), reset_less=True)
        m.d.sync += coarse.eq(rounded >> Cat(Const(0, 3), shs[k_p + 2][3:]))   # k_p + 4
        shifted = Signal(signed(_MAX_SHIFT + 1), reset_less=True)
        m.d.sync += shifted.eq(coarse >> shs[k_p + 3][:3])            # stage k_p + 5
        # saturation from registered flags: shifted fits iff its bits
        # bits-1 .. top all equal its sign
        B = self._bits
        upper = shifted[B - 1:]
        over_f, under_f, shifted_neg = Signal(), Signal(), Signal()
        low = Signal(signed(B), reset_less=True)
        m.d.sync += [over_f.eq(~shifted[-1] & upper.any()),          # stage k_p + 6
                     under_f.eq(shifted[-1] & ~upper.all()), shifted_neg.eq(shifted[-1]),
                     low.eq(shifted[:B])]
        fm = rq[k_p + 6]
        out_q = Signal(out_l, reset_less=True)
        if self._relu:
            # (ReLU: any negative value is 0)
            value = Mux(over_f, (1 << (B - 1)) - 1, Mux(shifted_neg, 0, low))
        else:
            value = Mux(over_f, (1 << (B - 1)) - 1, Mux(under_f, -(1 << (B - 1)), low))
        m.d.sync += [out_q.value.eq(Mux(fm.status == Status.OK, value, 0)),   # k_p + 7
                     out_q.j.eq(fm.j), out_q.last.eq(fm.last_j), out_q.tag.eq(fm.tag),
                     out_q.end.eq(fm.end), out_q.status.eq(fm.status)]
        assert len(rq) - 1 == k_p + 7 and acc_at + k_p + 7 == self.latency

        # -- output FIFO, with a slot reserved for every output in flight ------
        m.submodules.ofifo = ofifo = SyncFIFOBuffered(width=out_l.size,
                                                      depth=self.fifo_depth)
        m.d.comb += [ofifo.w_data.eq(out_q.as_value()), ofifo.w_en.eq(rq[-1].valid),
                     self.o.valid.eq(ofifo.r_rdy), self.o.payload.eq(ofifo.r_data),
                     ofifo.r_en.eq(self.o.ready)]
        return m


def mlp_write_layout(lanes: int, max_dim: int, layers: int) -> data.StructLayout:
    """A :class:`RowMLP` write: ``w`` (:func:`write_layout`) to layer ``layer``."""
    return data.StructLayout({"layer": unsigned(clog2(layers)),
                              "w": write_layout(lanes, max_dim, max_dim)})


def mlp_output_layout(max_dim: int) -> data.StructLayout:
    return data.StructLayout({"value": signed(8), "j": unsigned(clog2(max_dim)), "last": 1,
                              "bad": 1})


class RowMLP(wiring.Component):
    """An int8 MLP with ReLU on every layer, one row at a time: ``layers``
    :class:`WideMatVec` units (``bits = 8``, ``relu``) in a chain, each
    layer's outputs cut into ``lanes``-wide chunks for the next.

    Per row ``x``, with ``n = n_layers`` (the layers in use, 1 ..
    ``layers``; the outputs of layer ``n - 1`` leave), each layer is
    :func:`host.numerics.requantize` with ReLU of :func:`host.numerics.wrap_int32`
    of ``x @ W``, bit for bit: :func:`host.numerics.int8_mlp`, the golden
    model's bottom MLP (:meth:`host.models.QuantizedStageModel.scores`).

    ``w`` (:func:`mlp_write_layout`): write ``w`` of layer ``layer``'s unit
    (the :class:`WideMatVec` write, with ``max_in = max_out = max_dim``;
    :meth:`weight_address`). ``i``: a row as ``ceil(in_dim / lanes)``
    chunks (:func:`input_layout`; ``tag`` and ``end`` are ignored). ``o``
    (:func:`mlp_output_layout`): per row ``out_dim`` beats of the last
    layer, ``j = 0 ..``, ``last`` on the final one; ``bad`` on every beat
    of a row that some layer refused (its dimensions, or a row of the wrong
    length): such a row leaves as whatever beats the refusing layer's error
    beat gives downstream (at least one, the last with ``last``), so nothing
    waits. Rows leave in order; a row costs each layer ``out_dim *
    ceil(in_dim / lanes)`` cycles, and a layer starts on a row while the
    layer after it still works on the row before.
    """

    def __init__(self, *, lanes: int, max_dim: int, layers: int, target: str = "generic"):
        for name, v, lo, hi in (("lanes", lanes, 1, 64), ("max_dim", max_dim, 1, 4096),
                                ("layers", layers, 1, 16)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer in {lo} .. {hi}, not {v!r}")
        self._units = [WideMatVec(lanes=lanes, max_in=max_dim, max_out=max_dim, bits=8,
                                  relu=True, tag_bits=1, target=target)
                       for _ in range(layers)]
        self._lanes, self._max_dim, self._layers = lanes, max_dim, layers
        super().__init__({
            "n_layers": In(range(layers + 1)),
            "w": In(stream.Signature(mlp_write_layout(lanes, max_dim, layers))),
            "i": In(stream.Signature(input_layout(lanes, 1))),
            "o": Out(stream.Signature(mlp_output_layout(max_dim))),
        })

    lanes = property(lambda self: self._lanes)
    max_dim = property(lambda self: self._max_dim)
    layers = property(lambda self: self._layers)

    def weight_address(self, j: int, c: int) -> int:
        """The ``addr`` of weight word ``(j, c)`` of any layer's unit
        (:meth:`WideMatVec.weight_address`)."""
        return self._units[0].weight_address(j, c)

    def elaborate(self, platform):
        m = Module()
        L, units = self._lanes, self._units
        for n, u in enumerate(units):
            m.submodules[f"layer{n}"] = u
            m.d.comb += [u.w.valid.eq(self.w.valid & (self.w.payload.layer == n)),
                         u.w.payload.eq(self.w.payload.w)]
        m.d.comb += self.w.ready.eq(1)
        m.d.comb += [units[0].i.valid.eq(self.i.valid), self.i.ready.eq(units[0].i.ready),
                     units[0].i.payload.x.eq(self.i.payload.x),
                     units[0].i.payload.last.eq(self.i.payload.last),
                     units[0].i.payload.end.eq(1), units[0].i.payload.tag.eq(0)]
        for n, u in enumerate(units):
            uo = u.o.payload
            bad = uo.tag[0] | (uo.status != Status.OK)      # (the tag carries it on)
            final = self.n_layers == n + 1
            with m.If(final):
                op = self.o.payload
                m.d.comb += [self.o.valid.eq(u.o.valid), u.o.ready.eq(self.o.ready),
                             op.value.eq(uo.value), op.j.eq(uo.j), op.last.eq(uo.last),
                             op.bad.eq(bad)]
            if n + 1 == len(units):
                continue
            # the outputs into lanes-wide chunks for the next layer: ``buf``
            # holds the chunk's values so far (lanes past them zero)
            nxt = units[n + 1].i
            buf = Signal(data.ArrayLayout(signed(8), L), name=f"chunk{n}")
            p = Signal(range(L), name=f"lane{n}")
            emit = (p == L - 1) | uo.last
            x = Signal.like(buf, name=f"x{n}")
            m.d.comb += x.eq(buf)
            for e in range(L):
                with m.If(p == e):
                    m.d.comb += x[e].eq(uo.value)
            with m.If(~final):
                m.d.comb += [nxt.valid.eq(u.o.valid & emit), nxt.payload.x.eq(x),
                             nxt.payload.last.eq(uo.last), nxt.payload.end.eq(1),
                             nxt.payload.tag.eq(bad),
                             u.o.ready.eq(Mux(emit, nxt.ready, 1))]
                with m.If(u.o.valid & u.o.ready):
                    with m.If(emit):
                        m.d.sync += [buf.eq(0), p.eq(0)]
                    with m.Else():
                        m.d.sync += [buf.eq(x), p.eq(p + 1)]
        return m
