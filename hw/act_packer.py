"""Candidate rows of int8 features into an MLP engine's activation buffer.

The stage engine computes, per candidate, the int8 input of the first top
layer (the item part of :meth:`host.models.QuantizedStageModel.top_inputs`:
the interaction's item pairs, or the item features concatenated). This unit
turns those rows into ``WRITE_ACT`` commands in the engine's activation
layout (:mod:`hw.mlp_isa`; the engine's streamer reads input chunk ``k`` of
row ``r`` of a RUN from word ``k * rows + r`` of buffer ``l % 2`` for layer
``l``, so a RUN's input goes to buffer 0): for row ``r`` of a sub-batch
(counted from 0) and chunk ``c = 0 .. ceil(n/S) - 1``, one command with
address ``c * rows + base + r`` and lanes ``0 .. S-1`` = elements ``c*S ..
c*S + S - 1`` (zero past ``n``), lanes ``S ..`` zero. A row with ``n = 0``
writes nothing. This is :meth:`host.mlp_program.MLPProgram.input_commands`
(base 0), a row at a time instead of a chunk column at a time.

Streams
    ``ctl`` (:func:`control_layout`): one beat per sub-batch, taken before
    its first row: ``side`` S (the engine's sub-array side in the active
    split, one of :func:`engine_sides`), ``rows`` (the row count the RUN
    will be given: the buffer stride), ``base`` (the sub-batch's first row
    in the buffer) and ``buf``. Several sub-batches with the same ``rows``
    and different ``base`` fill one RUN.
    ``i`` (:func:`row_layout`): one beat per row, ``n`` elements of
    ``elems`` valid; ``last`` on the sub-batch's last row. The payload is
    :func:`hw.interaction.output_layout`'s with ``pairs`` named ``elems``
    (``n`` is one bit wider, to carry a too-long row), plus ``last``.
    ``o``: :func:`hw.mlp_isa.command_layout` beats, all ``WRITE_ACT``; in
    order (row by row, chunks ascending), one a cycle while rows of equal
    length keep coming.
    ``done`` (:func:`done_layout`): one beat per sub-batch, once the last of
    its commands has left ``o``: the time to send the RUN. ``status`` is the
    first error of the sub-batch (:class:`PackStatus`, ``OK`` if none),
    ``first_bad`` that row's index, ``rows`` the rows received and
    ``dropped`` the rows dropped (both saturate at the field's maximum).
    The next ``ctl`` beat is taken after ``done`` is.
    ``err``: high for a cycle each time a row is dropped.

A bad row (:class:`PackStatus`) is dropped whole: none of its commands is
sent, so nothing is ever written outside the buffer or over another row's
chunk; later rows go on. The address check is exact per row (the engine's
own, at RUN, is ``ceil(in_dim/S) * rows <= act_words`` for the whole batch).
Each row is checked before its first command: while row ``i`` is sent, row
``i + 1``'s last address is found by adding ``rows`` once a chunk (no
multiplier), so checking keeps pace with sending.

Pipeline: ``i`` -> row register (masks elements past ``n``; checks) ->
sender (a shift register moved down ``S`` elements a command; addresses by
adding ``rows``) -> ``o``. Every command field comes from a register (the
data through one AND with the lane mask).
"""

from amaranth.hdl import Module, Mux, Signal, unsigned, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig
from .mlp_isa import Opcode, command_layout, field_bits

__all__ = ["PackStatus", "engine_sides", "row_layout", "control_layout", "done_layout",
           "ActPacker"]


class PackStatus(enum.Enum, shape=3):
    OK = 0
    #: ``side`` is not one of the engine's sides, or ``rows`` is 0 or more
    #: than ``max_rows``: every row of the sub-batch is dropped.
    BAD_CONTROL = 1
    #: ``n`` > ``max_elems``.
    TOO_LONG = 2
    #: ``base + r >= rows``: the row would land on another row's chunk.
    BAD_ROW = 3
    #: The row's last chunk, ``(ceil(n/S) - 1) * rows + base + r``, is past
    #: the packer's ``words`` (the engine's ``act_words`` by default).
    BAD_ADDRESS = 4


def engine_sides(config: ArrayConfig, engine: int) -> tuple[int, ...]:
    """The sub-array sides ``engine`` runs with (its columns: an activation
    word), one per mode that has its sub-array, widest first."""
    return tuple(sorted({config.dim // c for r, c in config.modes if engine < r * c},
                        reverse=True))


def row_layout(max_elems: int) -> data.StructLayout:
    return data.StructLayout({"n": unsigned(field_bits(max_elems)),
                              "elems": data.ArrayLayout(signed(8), max_elems),
                              "last": 1})


def control_layout(config: ArrayConfig, engine: int) -> data.StructLayout:
    return data.StructLayout({"side": unsigned(field_bits(config.engine_lanes(engine))),
                              "rows": unsigned(field_bits(config.max_rows)),
                              "base": unsigned(field_bits(config.max_rows - 1)),
                              "buf": 1})


def done_layout(config: ArrayConfig) -> data.StructLayout:
    count = unsigned(field_bits(config.max_rows))
    return data.StructLayout({"status": PackStatus, "first_bad": count,
                              "rows": count, "dropped": count})


class ActPacker(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    config : ArrayConfig
    engine : int
        The MLP engine written to (its lanes, sides and ``act_words``).
    max_elems : int
        Longest row, 1 .. ``config.max_dim``.
    words : int
        The activation words the packer writes, ``0 .. words - 1`` (default:
        the engine's ``act_words``; the stage engine gives it half, and adds
        the half its sub-batch runs in).

    Attributes
    ----------
    ctl : In(stream.Signature(control_layout(config, engine)))
    i : In(stream.Signature(row_layout(max_elems)))
    o : Out(stream.Signature(command_layout(config, engine)))
    done : Out(stream.Signature(done_layout(config)))
    err : Out(1)
    """

    def __init__(self, config: ArrayConfig, *, engine: int = 0, max_elems: int,
                 words: int | None = None):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        if (not isinstance(engine, int) or isinstance(engine, bool)
                or not 0 <= engine < config.engines):
            raise ValueError(f"engine must be in 0..{config.engines - 1}, not {engine!r}")
        if (not isinstance(max_elems, int) or isinstance(max_elems, bool)
                or not 1 <= max_elems <= config.max_dim):
            raise ValueError(f"max_elems must be an integer in 1..{config.max_dim} "
                             f"(array.max_dim), not {max_elems!r}")
        act_words = config.act_words(engine)
        words = act_words if words is None else words
        if not isinstance(words, int) or isinstance(words, bool) or not 1 <= words <= act_words:
            raise ValueError(f"words must be an integer in 1..{act_words} (the engine's "
                             f"act_words), not {words!r}")
        self._config = config
        self._engine = engine
        self._max_elems = max_elems
        self._words = words
        self._lanes = config.engine_lanes(engine)
        super().__init__({
            "ctl": In(stream.Signature(control_layout(config, engine))),
            "i": In(stream.Signature(row_layout(max_elems))),
            "o": Out(stream.Signature(command_layout(config, engine))),
            "done": Out(stream.Signature(done_layout(config))),
            "err": Out(1),
        })

    @property
    def config(self):
        return self._config

    @property
    def engine(self):
        return self._engine

    @property
    def max_elems(self):
        return self._max_elems

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        cfg, E, lanes = self._config, self._max_elems, self._lanes
        sides = engine_sides(cfg, self._engine)
        act_words = self._words
        vec = data.ArrayLayout(signed(8), E)
        count_shape = done_layout(cfg)["rows"].shape
        count_max = (1 << count_shape.width) - 1

        # -- the sub-batch: control registers, set up in two steps -----------
        ctl = Signal(control_layout(cfg, self._engine))
        side_idx = Signal(range(max(len(sides), 2)))   # (never 0 bits wide)
        ctl_bad = Signal()
        rows = Signal(range(cfg.max_rows + 1))
        rows_m1 = Signal.like(rows)
        lim = Signal(range(act_words + 1))        # act_words - rows
        buf = Signal()
        lane_mask = Signal(lanes)
        p_next = Signal.like(ctl.base)            # base + r of the next row
        row_ok_next = Signal()                    # p_next < rows, sticky once false
        r_next = Signal(count_shape)              # r of the next row (saturating)
        dropped = Signal(count_shape)
        first_status = Signal(PackStatus)
        first_bad = Signal(count_shape)

        # -- the row register and checker --------------------------------------
        a_valid = Signal()
        a_elems = Signal(vec)
        a_p = Signal(range(cfg.max_rows))
        a_r = Signal(count_shape)
        a_chunks_m1 = Signal(range(E))            # ceil(n/S) - 1
        a_single = Signal()                       # one chunk
        a_empty = Signal()                        # n == 0
        a_status = Signal(PackStatus)
        a_steps = Signal(range(E))                # additions left to the last chunk
        a_done = Signal()                         # a_steps == 0, registered
        a_addr = Signal(range(act_words + cfg.max_rows + 1))
        a_inrange = Signal()

        # -- the sender ----------------------------------------------------------
        e_valid = Signal()
        e_sr = Signal(vec)
        e_addr = Signal(range(act_words))
        e_left = Signal(range(E))                 # chunks after the current one
        e_last = Signal()                         # e_left == 0, registered

        a_bad = (a_status != PackStatus.OK) | ~a_inrange
        e_free = ~e_valid | (e_last & self.o.ready)
        a_move = Signal()
        a_to_e = Signal()
        m.d.comb += [
            a_move.eq(a_valid & a_done & (a_bad | a_empty | e_free)),
            a_to_e.eq(a_move & ~a_bad & ~a_empty),
        ]
        accepting = Signal()
        take = Signal()
        m.d.comb += [self.i.ready.eq(accepting & (~a_valid | a_move)),
                     take.eq(self.i.valid & self.i.ready)]

        with m.FSM():
            with m.State("CTL"):
                m.d.comb += self.ctl.ready.eq(1)
                with m.If(self.ctl.valid):
                    m.d.sync += ctl.eq(self.ctl.payload)
                    m.next = "SETUP"
            with m.State("SETUP"):
                known = 0
                for k, s in enumerate(sides):
                    with m.If(ctl.side == s):
                        m.d.sync += [side_idx.eq(k),
                                     lane_mask.eq((1 << s) - 1)]
                    known = known | (ctl.side == s)
                bad = ~known | (ctl.rows == 0) | (ctl.rows > cfg.max_rows)
                m.d.sync += [
                    ctl_bad.eq(bad), rows.eq(ctl.rows), rows_m1.eq(ctl.rows - 1),
                    lim.eq(act_words - ctl.rows), buf.eq(ctl.buf),
                    p_next.eq(ctl.base), row_ok_next.eq(ctl.base < ctl.rows),
                    r_next.eq(0), dropped.eq(0), first_status.eq(PackStatus.OK),
                    first_bad.eq(0),
                ]
                m.next = "ROWS"
            with m.State("ROWS"):
                m.d.comb += accepting.eq(1)
                with m.If(take & self.i.payload.last):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(~a_valid & ~e_valid):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [
                    self.done.valid.eq(1),
                    self.done.payload.status.eq(first_status),
                    self.done.payload.first_bad.eq(first_bad),
                    self.done.payload.rows.eq(r_next),
                    self.done.payload.dropped.eq(dropped),
                ]
                with m.If(self.done.ready):
                    m.next = "CTL"

        # -- accept a row: mask it, find its chunk count, flag what is wrong --
        beat = self.i.payload
        n = beat.n
        with m.If(take):
            m.d.sync += [
                a_valid.eq(1), a_p.eq(p_next), a_r.eq(r_next), a_empty.eq(n == 0),
                a_addr.eq(p_next), a_inrange.eq(1),
                p_next.eq(p_next + 1),
                row_ok_next.eq(row_ok_next & (p_next != rows_m1)),
                r_next.eq(Mux(r_next == count_max, r_next, r_next + 1)),
            ]
            for e in range(E):
                m.d.sync += a_elems[e].eq(Mux(n > e, beat.elems[e], 0))
            bad = Signal()
            with m.If(ctl_bad):
                m.d.sync += a_status.eq(PackStatus.BAD_CONTROL)
                m.d.comb += bad.eq(1)
            with m.Elif(n > E):
                m.d.sync += a_status.eq(PackStatus.TOO_LONG)
                m.d.comb += bad.eq(1)
            with m.Elif(~row_ok_next):
                m.d.sync += a_status.eq(PackStatus.BAD_ROW)
                m.d.comb += bad.eq(1)
            with m.Else():
                m.d.sync += a_status.eq(PackStatus.OK)
            # ceil(n/S) - 1 = (n - 1) >> log2(S) for n >= 1.
            for k, s in enumerate(sides):
                with m.If(side_idx == k):
                    chunks_m1 = ((n - 1) >> (s.bit_length() - 1))[:len(a_steps)]
                    single = n <= s
                    m.d.sync += [a_chunks_m1.eq(chunks_m1), a_steps.eq(chunks_m1),
                                 a_single.eq(single), a_done.eq(single | bad)]
        with m.Elif(a_move):
            m.d.sync += a_valid.eq(0)

        # -- check: the last chunk's address, one addition a cycle ------------
        with m.If(a_valid & ~a_done):
            m.d.sync += [a_steps.eq(a_steps - 1), a_done.eq(a_steps == 1),
                         a_addr.eq(a_addr + rows),
                         a_inrange.eq(a_inrange & (a_addr < lim))]

        # -- a dropped row: count it, keep the sub-batch's first error ---------
        m.d.sync += self.err.eq(a_move & a_bad)
        with m.If(a_move & a_bad):
            m.d.sync += dropped.eq(Mux(dropped == count_max, dropped, dropped + 1))
            with m.If(first_status == PackStatus.OK):
                m.d.sync += first_bad.eq(a_r)
                with m.If(a_status != PackStatus.OK):
                    m.d.sync += first_status.eq(a_status)
                with m.Else():
                    m.d.sync += first_status.eq(PackStatus.BAD_ADDRESS)

        # -- send: one chunk a command ------------------------------------------
        with m.If(a_to_e):
            m.d.sync += [e_valid.eq(1), e_sr.eq(a_elems), e_addr.eq(a_p),
                         e_left.eq(a_chunks_m1), e_last.eq(a_single)]
        with m.Elif(e_valid & self.o.ready):
            with m.If(e_last):
                m.d.sync += e_valid.eq(0)
            with m.Else():
                m.d.sync += [e_addr.eq(e_addr + rows), e_left.eq(e_left - 1),
                             e_last.eq(e_left == 1)]
                for k, s in enumerate(sides):
                    with m.If(side_idx == k):
                        for e in range(E):
                            m.d.sync += e_sr[e].eq(e_sr[e + s] if e + s < E else 0)
        act = self.o.payload.args.act
        m.d.comb += [
            self.o.valid.eq(e_valid),
            self.o.payload.op.eq(Opcode.WRITE_ACT),
            act.buf.eq(buf),
            act.addr.eq(e_addr),
        ]
        for j in range(min(lanes, E)):
            m.d.comb += act.data[j].eq(Mux(lane_mask[j], e_sr[j], 0))
        return m
