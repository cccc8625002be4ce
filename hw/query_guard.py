"""A query's frame, made whole: between the record router
(:class:`hw.loader.RecordRouter`) and the stage engines, so that every
``SUBMIT_QUERY`` frame is exactly one query to every stage, whatever the
frame holds.

The stage engines trust a query's own delimiters: one ``q`` beat, dense
chunks up to the one with ``last``, user bags up to the last of the last
group (``group_last``), candidates whose ``left`` counts down to 0. A frame
that breaks them (cut short, a record missing, out of order or repeated, a
wrong delimiter) would leave a stage waiting for a part that never comes,
or run two queries as one, and every answer after it would be wrong. Here
a query's parts go in their wire order (:attr:`QueryGuard.parts`: ``q``,
``dense``, ``ubags``, ``cand``, then stage 2's ``s2_q``, ``s2_dense``,
``s2_ubags``), each checked against the stage's configuration
(``n_pooled``, ``dense_chunks``, snooped from its ``conf`` record) and its
delimiters set from the counts:

* a beat for a part that is complete, or for a part before the current one
  (out of order), or for stage 2 while stage 1 runs alone (``one``), is
  dropped;
* a beat for a later part, or the frame's end (``i_qtag``, which the router
  sends once the frame's beats are out), first completes the parts before
  it with stand-ins: ``q`` with ``k = 1``; dense chunks of zeros; empty bags (a
  bag cut short is ended by an empty beat, which carries no row); and
  candidates at position 0 with ids 0 (every table has a row 0) counting
  ``left`` down to 0;
* ``dense`` ``last``, ``ubags`` ``group_last`` (and ``item``, 0) and
  ``cand`` ``left`` are set from the counts (the first candidate's
  ``left`` at most ``limit - 1``: a query's candidates at most).

Any of these makes the query's status ``BAD_PAYLOAD`` (``o_qtag``), unless
the router's is already an error; the stages run the query as it now is,
and its answer is that error. A well-formed frame passes unchanged, a beat
a cycle (a cycle more at each part's start).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .command import Status
from .loader import qtag_layout

__all__ = ["QueryGuard"]

#: A query's parts per stage, in wire order (stage 2 has no ``cand``: its
#: candidates are stage 1's survivors).
_KINDS = ("q", "dense", "ubags", "cand")


class QueryGuard(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    stages : list of StageEngine
        The top level's stage engines (one or two), for their ports' layouts.
    limit : int or (int, int)
        Most candidates a query may have; two values: with two stages, and
        with stage 1 alone (``one``).

    Attributes
    ----------
    i_<part>, o_<part> : the query's streams from the router, to the stages
    i_qtag, o_qtag : a frame's end (:func:`hw.loader.qtag_layout`), from the
        router and (once the query is whole) to the answer
    n_pooled, dense_chunks : In, one value per stage
        User bags and dense chunks of a query (the stages' ``conf``).
    one : In(1)
        Stage 1 runs alone: stage 2's parts are not the query's.
    """

    def __init__(self, stages, *, limit):
        if len(stages) not in (1, 2):
            raise ValueError(f"stages: one or two, not {len(stages)}")
        limits = (limit, limit) if isinstance(limit, int) else tuple(limit)
        if len(limits) != 2 or not all(isinstance(v, int) and v >= 1 for v in limits):
            raise ValueError(f"limit: a positive integer or two, not {limit!r}")
        self._limits = limits
        self._parts = []
        for s, st in enumerate(stages):
            for kind in _KINDS:
                if s == 0 or kind != "cand":
                    self._parts.append(("s2_" * s + kind, kind, s,
                                        getattr(st, kind).signature.members["payload"].shape))
        conf = stages[0].conf.signature.members["payload"].shape
        members = {}
        for name, _, _, layout in self._parts:
            members[f"i_{name}"] = In(stream.Signature(layout))
            members[f"o_{name}"] = Out(stream.Signature(layout))
        members.update({
            "i_qtag": In(stream.Signature(qtag_layout())),
            "o_qtag": Out(stream.Signature(qtag_layout())),
            "n_pooled": In(data.ArrayLayout(conf["n_pooled"].shape, len(stages))),
            "dense_chunks": In(data.ArrayLayout(conf["dense_chunks"].shape, len(stages))),
            "one": In(1),
        })
        super().__init__(members)

    @property
    def parts(self):
        """The parts' names, in wire order."""
        return [name for name, *_ in self._parts]

    def elaborate(self, platform):
        m = Module()
        parts = self._parts
        P = len(parts)
        two = any(s for _, _, s, _ in parts)
        cur = Signal(range(P + 1))          # the part under way (P: all done)
        bad = Signal()
        end_at = Signal(range(P + 1))       # the frame's end comes after this many parts
        m.d.comb += end_at.eq(Mux(self.one, len(_KINDS), P) if two else P)

        ins = [getattr(self, f"i_{name}") for name, *_ in parts]
        outs = [getattr(self, f"o_{name}") for name, *_ in parts]
        any_in = Cat(i.valid for i in ins).any()
        j = Signal(range(P + 1))            # the part of the beat that came (one at a time)
        for p in reversed(range(P)):
            with m.If(ins[p].valid):
                m.d.comb += j.eq(p)
        done = Signal(P)                    # per part: complete
        cur_done = done.bit_select(cur, 1)
        skip = (self.one & (j >= len(_KINDS))) if two else 0
        drop = any_in & (skip | (j < cur) | ((j == cur) & cur_done))
        event = Mux(any_in, ~drop, self.i_qtag.valid)
        tgt = Mux(any_in, j, end_at)        # where the event belongs
        reset = Signal()                    # the frame's end went out

        with m.If(drop):
            m.d.sync += bad.eq(1)
        with m.If(event & (tgt > cur) & cur_done):
            m.d.sync += cur.eq(cur + 1)
        with m.If(event & ~any_in & (cur == end_at)):
            q = self.o_qtag.payload
            m.d.comb += [self.o_qtag.valid.eq(1), q.tag.eq(self.i_qtag.payload.tag),
                         q.status.eq(Mux(self.i_qtag.payload.status != Status.OK,
                                         self.i_qtag.payload.status,
                                         Mux(bad, Status.BAD_PAYLOAD, Status.OK))),
                         self.i_qtag.ready.eq(self.o_qtag.ready), reset.eq(self.o_qtag.ready)]
        with m.If(reset):
            m.d.sync += [cur.eq(0), bad.eq(0)]

        for p, (name, kind, s, layout) in enumerate(parts):
            i, o = ins[p], outs[p]
            fwd = event & any_in & (j == p) & (cur == p)
            stand_in = event & (cur == p) & (tgt > p) & ~done[p]
            with m.If(drop & (j == p)):
                m.d.comb += i.ready.eq(1)
            with m.If(fwd):
                m.d.comb += [o.valid.eq(1), o.payload.eq(i.payload), i.ready.eq(o.ready)]
            with m.If(stand_in):
                m.d.comb += o.valid.eq(1)
            take = o.valid & o.ready
            mismatch = Signal(name=f"{name}_mismatch")
            with m.If(take & (stand_in | mismatch)):
                m.d.sync += bad.eq(1)
            getattr(self, f"_{kind}")(m, i, o, s, done, p, fwd, stand_in, take, mismatch, reset)
        return m

    # -- each part: its delimiters and stand-ins -------------------------------------
    # (``o.payload`` is ``i.payload`` while a beat is forwarded, zero for a
    # stand-in; these set the fields the counts decide)

    def _q(self, m, i, o, s, done, p, fwd, stand_in, take, mismatch, reset):
        n = Signal(name=f"q{s}_n")
        m.d.comb += done[p].eq(n)
        with m.If(stand_in):
            m.d.comb += o.payload.k.eq(1)
        with m.If(take):
            m.d.sync += n.eq(1)
        with m.If(reset):
            m.d.sync += n.eq(0)

    def _dense(self, m, i, o, s, done, p, fwd, stand_in, take, mismatch, reset):
        want = self.dense_chunks[s]
        n = Signal.like(want, name=f"dense{s}_n")
        last = n == want - 1
        m.d.comb += [done[p].eq(n == want), o.payload.last.eq(last),
                     mismatch.eq(fwd & (i.payload.last != last))]
        with m.If(take):
            m.d.sync += n.eq(n + 1)
        with m.If(reset):
            m.d.sync += n.eq(0)

    def _ubags(self, m, i, o, s, done, p, fwd, stand_in, take, mismatch, reset):
        want = self.n_pooled[s]
        n = Signal.like(want, name=f"ubags{s}_n")            # bags ended
        open_ = Signal(name=f"ubags{s}_open")               # a bag is under way
        table = Signal.like(i.payload.lookup.table, name=f"ubags{s}_table")
        group_last = n == want - 1
        lk = o.payload.lookup
        m.d.comb += [done[p].eq(n == want), o.payload.item.eq(0),
                     o.payload.group_last.eq(group_last),
                     mismatch.eq(fwd & ((i.payload.group_last != group_last) | i.payload.item))]
        with m.If(stand_in):
            # an empty beat ends the bag under way, or is an empty bag
            m.d.comb += [lk.table.eq(Mux(open_, table, 0)), lk.last.eq(1), lk.empty.eq(1)]
        with m.If(take):
            m.d.sync += [open_.eq(~lk.last), table.eq(lk.table)]
            with m.If(lk.last):
                m.d.sync += n.eq(n + 1)
        with m.If(reset):
            m.d.sync += [n.eq(0), open_.eq(0)]

    def _cand(self, m, i, o, s, done, p, fwd, stand_in, take, mismatch, reset):
        left = Signal.like(i.payload.left, name="cand_left")    # the next one's
        started = Signal(name="cand_started")
        fin = Signal(name="cand_done")
        top = (1 << len(left)) - 1

        def clamp(lim):
            return i.payload.left if lim - 1 >= top else \
                Mux(i.payload.left > lim - 1, lim - 1, i.payload.left)
        lim_two, lim_one = self._limits
        first = Mux(self.one, clamp(lim_one), clamp(lim_two)) if lim_one != lim_two \
            else clamp(lim_two)
        want = Mux(started, left, Mux(stand_in, 0, first))
        m.d.comb += [done[p].eq(fin), o.payload.left.eq(want),
                     mismatch.eq(fwd & (i.payload.left != want))]
        with m.If(take):
            m.d.sync += [started.eq(1), left.eq(want - 1), fin.eq(want == 0)]
        with m.If(reset):
            m.d.sync += [started.eq(0), fin.eq(0)]
