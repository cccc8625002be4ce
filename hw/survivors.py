"""Stage 1's survivors as stage 2's candidates: the step between the two
stages of RPAccel's pipeline.

Stage 1 (a cheap model) scores every candidate of a query and its top-k
filter keeps the best ``k1``; stage 2 (a bigger model) re-scores only those.
The filter's list names a survivor by its position (the pair's ``id`` is the
candidate's ``pos``), but stage 2 also needs the candidate's item ids, which
stage 1 saw long before. So this unit records them on their way into stage 1
and gives them back, by position, once the list is known.

Recording (``cand`` in, ``cand_o`` out)
    ``cand_o`` is ``cand`` passed straight through to stage 1 (no buffer,
    no latency: ``cand_o.valid = cand.valid`` and ``cand.ready =
    cand_o.ready``, both gated by one register, below); each candidate
    taken is written, by its ``pos``, into the *query buffer*: a RAM of
    ``max_candidates`` item-id entries per half, two halves. Query ``n``
    writes half ``n % 2``; its candidate with ``left == 0`` ends it and
    marks the half *held*, and the next query writes the other half. A
    held half is released once all the query's survivors were sent (or
    its error beat, for a query that has none); recording waits (the gate)
    only while the half it would write is still held, i.e. while stage 1
    is two queries ahead of the reads. A ``pos >= max_candidates`` is not
    written: it makes its query an error (``BAD_POS``).

Survivors (``topk`` in, ``o`` and ``err`` out)
    The filter's output (:func:`hw.topk.output_layout`): a query's pairs
    best first, then its trailer. The pairs' ids are kept (at most
    ``k_max``, in a small RAM) until the trailer; once the query's
    recording has also ended (its half is held), the unit sends

    * on ``err``, always exactly one :func:`status_layout` beat per query,
      in query order: ``OK`` with ``count`` = the survivors sent on ``o``,
      or an error with ``count = 0``;
    * on ``o``, for an ``OK`` query only, one :func:`hw.stage.cand_layout`
      beat per survivor, best first: ``pos`` = the pair's id (the
      candidate's position in stage 1, which stage 2 carries as its tag),
      ``ids`` read back from the query buffer, ``left`` = survivors after
      it (so the beats are a well-formed candidate list for
      :class:`hw.stage.StageEngine`).

    The two streams of a query are independent (either may be taken
    first, or both together); the next list is taken once both are done,
    and the query's half is then released. Errors, first that applies:
    ``BAD_POS`` (a candidate's position, or a survivor's id, at or past
    ``max_candidates``), ``BAD_K`` (the trailer's status), ``OVERFLOW``
    (more than ``k_max`` pairs before a trailer: not from a
    :class:`~hw.topk.TopKFilter`; the extra ones are dropped), ``EMPTY``
    (no survivors: stage 2 would have no candidate to run). A survivor's id
    below ``max_candidates`` that its query never recorded is not detected:
    its ``ids`` are whatever that entry last held.

Flow and deadlock
    A query's list must pair with its recording: the ``n``-th list belongs
    to the ``n``-th query recorded (every query has at least one
    candidate, its ``left == 0`` one). A list may arrive before its
    recording ended (the unit then waits for it), but with a real stage 1
    it comes after: the filter's pairs follow the query's last candidate.
    Stage 1 may thus record query ``n + 1`` while query ``n``'s list comes
    and its survivors leave; it stalls on query ``n + 2``'s first candidate
    until query ``n``'s half is released. This never deadlocks as long as
    the consumer of ``o`` and ``err`` takes query ``n``'s beats without
    waiting for stage 1 to take a candidate of query ``n + 2`` (stage 1
    finishes queries ``n`` and ``n + 1``, and sends their lists, without
    taking any more candidates). While a query's survivors leave, ``topk``
    waits (the filter's own FIFOs hold the next list), so stage 1 must
    also not wait on stage 2 in any other way. The feature fetch the two
    share (:class:`hw.bag_arbiter.BagArbiter`) does not make it: each stage
    has its own return FIFO and credits there, so a stage holding its
    features back stops only its own bags. Each stage need only take its
    own features eventually, not in step with the other (and must not stop
    in the middle of a bag, which stops both stages' bags).

One survivor a cycle out; one pair a cycle in; the query buffer's read port
is synchronous (block RAM), its list RAM combinational (at most ``k_max``
ids: distributed RAM).
"""

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import Config
from .stage import cand_layout
from .topk import Status as TopKStatus, output_layout

__all__ = ["SurvivorStatus", "status_layout", "Survivors"]


class SurvivorStatus(enum.Enum, shape=3):
    OK = 0
    BAD_POS = 1     #: a candidate's position or a survivor's id >= max_candidates
    BAD_K = 2       #: the filter's trailer said BAD_K (stage 1's k)
    OVERFLOW = 3    #: more than k_max pairs before a trailer (a bug upstream)
    EMPTY = 4       #: the list had no pairs


def status_layout(config: Config) -> data.StructLayout:
    """Per query: its status and the survivors sent on ``o`` (0 unless ``OK``)."""
    return data.StructLayout({"status": SurvivorStatus,
                              "count": unsigned(config.topk.k_max.bit_length())})


class Survivors(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    config : Config
        The accelerator's config (``topk``: ``k_max``, ``id_bits``).
    max_items : int
        Item ids per candidate (stage 1's and stage 2's ``max_items``).
    max_candidates : int
        Entries of each half of the query buffer: a query's positions must be
        below it (at most ``2 ** topk.id_bits``).
    """

    def __init__(self, config: Config, *, max_items: int, max_candidates: int):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {config!r}")
        id_bits = config.topk.id_bits
        for name, v, lo, hi in (("max_items", max_items, 1, 16),
                                ("max_candidates", max_candidates, 1, 1 << id_bits)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer in {lo} .. {hi}, not {v!r}")
        self._cfg, self._I, self._N = config, max_items, max_candidates
        cand = stream.Signature(cand_layout(config, max_items))
        super().__init__({
            "cand": In(cand),
            "cand_o": Out(cand),
            "topk": In(stream.Signature(output_layout(config.topk))),
            "o": Out(cand),
            "err": Out(stream.Signature(status_layout(config))),
        })

    @property
    def config(self):
        return self._cfg

    @property
    def max_items(self):
        return self._I

    @property
    def max_candidates(self):
        return self._N

    def elaborate(self, platform):
        m = Module()
        tk, N = self._cfg.topk, self._N
        m.submodules.query = qbuf = Memory(shape=data.ArrayLayout(unsigned(32), self._I),
                                           depth=2 * N, init=[])
        qw = qbuf.write_port()
        qr = qbuf.read_port(domain="sync")

        def base(half):
            return Mux(half, N, 0)

        # -- recording: stage 1's candidates into the half of their query ----------
        held = Signal(2)            # per half: a whole query recorded, not yet released
        bad = Signal(2)             # per half: a position past the buffer
        wh = Signal()               # the half being written
        rh = Signal()               # the half being read
        c = self.cand.payload
        gate = ~held.bit_select(wh, 1)
        m.d.comb += [self.cand_o.payload.eq(c),
                     self.cand_o.valid.eq(self.cand.valid & gate),
                     self.cand.ready.eq(self.cand_o.ready & gate)]
        take = self.cand.valid & self.cand_o.ready & gate
        # (positions are id_bits wide: with a buffer of 2 ** id_bits all fit)
        in_range = (c.pos < N) if N < 1 << tk.id_bits else Const(1)
        m.d.comb += [qw.addr.eq(base(wh) + c.pos), qw.data.eq(c.ids),
                     qw.en.eq(take & in_range)]
        release = Signal()          # the read side is done with half rh
        for h in range(2):
            with m.If(release & (rh == h)):
                m.d.sync += [held[h].eq(0), bad[h].eq(0)]
            with m.If(take & (wh == h)):
                with m.If(~in_range):
                    m.d.sync += bad[h].eq(1)
                with m.If(c.left == 0):
                    m.d.sync += held[h].eq(1)
        with m.If(take & (c.left == 0)):
            m.d.sync += wh.eq(~wh)
        with m.If(release):
            m.d.sync += rh.eq(~rh)

        # -- the list: the pairs' ids until the trailer --------------------------------
        m.submodules.pairs = plist = Memory(shape=unsigned(tk.id_bits), depth=tk.k_max,
                                            init=[])
        pw = plist.write_port()
        pr = plist.read_port(domain="comb")
        beat = self.topk.payload
        count = Signal(range(tk.k_max + 1))         # pairs kept of this list
        overflow = Signal()
        bad_id = Signal()
        bad_k = Signal()
        status = Signal(SurvivorStatus)
        m.d.comb += [pw.addr.eq(count), pw.data.eq(beat.id)]

        # -- the survivors out ---------------------------------------------------------
        at = Signal(range(tk.k_max + 1))            # next survivor to read
        ov = Signal()                               # o holds a beat
        pos = Signal(tk.id_bits)
        left = Signal.like(self.o.payload.left)
        err_sent = Signal()
        n_out = Mux(status == SurvivorStatus.OK, count, 0)
        m.d.comb += [pr.addr.eq(at), qr.addr.eq(base(rh) + pr.data),
                     self.o.valid.eq(ov), self.o.payload.pos.eq(pos),
                     self.o.payload.ids.eq(qr.data), self.o.payload.left.eq(left),
                     self.err.payload.status.eq(status),
                     self.err.payload.count.eq(n_out)]
        # the query buffer's read data holds while its port is not enabled: the
        # beat waiting on o keeps its ids
        m.d.comb += qr.en.eq(0)

        with m.FSM():
            with m.State("COLLECT"):
                m.d.comb += self.topk.ready.eq(1)
                with m.If(self.topk.valid):
                    with m.If(~beat.last):
                        with m.If(count < tk.k_max):
                            m.d.comb += pw.en.eq(1)
                            m.d.sync += count.eq(count + 1)
                        with m.Else():
                            m.d.sync += overflow.eq(1)
                        if N < 1 << tk.id_bits:
                            with m.If(beat.id >= N):
                                m.d.sync += bad_id.eq(1)
                    with m.Else():
                        m.d.sync += bad_k.eq(beat.status != TopKStatus.OK)
                        m.next = "WAIT"
            with m.State("WAIT"):
                # the query's recording must have ended: its half is held
                with m.If(held.bit_select(rh, 1)):
                    with m.If(bad.bit_select(rh, 1) | bad_id):
                        m.d.sync += status.eq(SurvivorStatus.BAD_POS)
                    with m.Elif(bad_k):
                        m.d.sync += status.eq(SurvivorStatus.BAD_K)
                    with m.Elif(overflow):
                        m.d.sync += status.eq(SurvivorStatus.OVERFLOW)
                    with m.Elif(count == 0):
                        m.d.sync += status.eq(SurvivorStatus.EMPTY)
                    with m.Else():
                        m.d.sync += status.eq(SurvivorStatus.OK)
                    m.d.sync += [at.eq(0), err_sent.eq(0)]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += self.err.valid.eq(~err_sent)
                with m.If(self.err.ready):
                    m.d.sync += err_sent.eq(1)
                fire = (at < n_out) & (~ov | self.o.ready)
                with m.If(fire):
                    m.d.comb += qr.en.eq(1)
                    m.d.sync += [ov.eq(1), pos.eq(pr.data), left.eq(n_out - 1 - at),
                                 at.eq(at + 1)]
                with m.Elif(self.o.ready):
                    m.d.sync += ov.eq(0)
                err_done = err_sent | self.err.ready
                o_done = (at == n_out) & (~ov | self.o.ready)
                with m.If(err_done & o_done):
                    m.d.comb += release.eq(1)
                    m.d.sync += [count.eq(0), overflow.eq(0), bad_id.eq(0), bad_k.eq(0)]
                    m.next = "COLLECT"
        return m
