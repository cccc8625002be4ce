"""One feature fetch shared by several stage engines: RPAccel's two stages
(stage 1 on MLP engine 0, stage 2 on engine 1) look their candidates up in
the same embedding tables, through one :class:`hw.feature_fetch.FeatureFetch`
and so one lookup unit.

Bags (``i<c>`` in, ``o`` out)
    Each client ``c`` sends bags (:func:`hw.feature_fetch.bag_layout`
    beats, a bag ending with ``lookup.last``) on ``i<c>``. The arbiter
    passes whole bags to ``o`` (the fetch's ``bags``): once a bag's first
    beat is offered on ``o`` its client owns ``o`` until the bag's last
    beat is taken, so the beats of two bags never interleave. Between bags
    the next owner is chosen round-robin among the clients with a beat
    waiting (the search starts after the client of the last bag). Bags pass
    through without a buffer: no latency, one beat a cycle, back to back.
    A client that stops in the middle of a bag stops everyone's bags.

In flight
    Each client has ``depth`` credits: a bag spends one when its first beat
    is taken on ``o``, and its feature gives it back when the client takes
    it from ``r<c>``. A client's bags in flight (sent, their feature not yet
    back on ``r``) plus its features waiting for it are thus at most
    ``depth``; a client out of credits starts no bag and is passed over in
    the round robin, the others' bags go ahead. The client of each bag is
    written into an order FIFO (``clients * depth`` entries, never full)
    when the bag's first beat is taken. (The fetch's own ``depth`` need not
    match: it backpressures ``o``.)

Features (``r`` in, ``r<c>`` out)
    The fetch answers one :func:`hw.feature_fetch.feature_layout` beat per
    bag, in the order the bags went out; each goes, unchanged, into the
    return FIFO (``depth`` features) of the client at the head of the order
    FIFO, and from there, in that client's bag order, to ``r<c>`` (two
    cycles after it came on ``r``; one a cycle). The return never waits on
    a client: ``r`` is ready whenever the order FIFO knows the bag's client
    (two cycles after the bag's first beat was taken, sooner than the fetch
    can answer), and the credits leave room in that client's FIFO. A client
    that holds its features back only runs out of credits and stops its own
    bags; the other clients' bags and features keep flowing. The clients
    need not take their features in step with each other, each must only
    take its own eventually (stage 1 may wait on stage 2, say, while its
    features wait in its FIFO).

Resources: per client a FIFO of ``depth`` features and a credit counter;
an order FIFO of ``clients * depth`` client numbers.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .config import EmbeddingConfig, clog2
from .feature_fetch import bag_layout, feature_layout

__all__ = ["BagArbiter"]


class BagArbiter(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    config : EmbeddingConfig
        The lookup unit's config (the bags' layout).
    dim : int
        The features' dimension (the fetch's ``dim``).
    clients : int
        Stage engines sharing the fetch (ports ``i0``/``r0`` ...).
    depth : int
        Each client's credits: its bags in flight (sent on ``o``, their
        feature not yet taken back) plus its features waiting; also the
        depth of its return FIFO (a :class:`SyncFIFOBuffered`, at least 3).
    """

    def __init__(self, config: EmbeddingConfig, dim: int, *, clients: int = 2,
                 depth: int = 32):
        if not isinstance(config, EmbeddingConfig):
            raise TypeError(f"config must be an EmbeddingConfig, not {config!r}")
        # depth >= 3: a SyncFIFOBuffered of depth 2 may refuse a write while
        # holding one feature, which would break the return's guarantee
        for name, v, lo, hi, why in (
                ("dim", dim, 1, config.max_dim, ""), ("clients", clients, 2, 16, ""),
                ("depth", depth, 3, 1 << 16, " (the return FIFOs need at least 3)")):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer in {lo} .. {hi}{why}, not {v!r}")
        self._cfg, self._dim, self._clients, self._depth = config, dim, clients, depth
        bag = stream.Signature(bag_layout(config))
        feat = stream.Signature(feature_layout(dim))
        members = {"o": Out(bag), "r": In(feat)}
        for c in range(clients):
            members[f"i{c}"] = In(bag)
            members[f"r{c}"] = Out(feat)
        super().__init__(members)

    @property
    def config(self):
        return self._cfg

    @property
    def dim(self):
        return self._dim

    @property
    def clients(self):
        return self._clients

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        n, depth = self._clients, self._depth
        ins = [getattr(self, f"i{c}") for c in range(n)]
        outs = [getattr(self, f"r{c}") for c in range(n)]
        # Each client holds at most ``depth`` bags in flight, so ``n * depth``
        # entries never fill: no write needs to check ``order.w_rdy``.
        m.submodules.order = order = SyncFIFOBuffered(width=clog2(n), depth=n * depth)
        rets = []
        for c in range(n):
            ret = SyncFIFOBuffered(width=self.r.payload.shape().size, depth=depth)
            m.submodules[f"ret{c}"] = ret
            rets.append(ret)

        # -- credits: a client's bags in flight plus its features waiting ----------
        used = [Signal(range(depth + 1), name=f"used{c}") for c in range(n)]
        credit = [Signal(name=f"credit{c}") for c in range(n)]
        for c in range(n):
            m.d.comb += credit[c].eq(used[c] != depth)

        # -- the grant: locked from a bag's first offer to its last beat taken -------
        mid = Signal()              # beats of the bag on o were taken, not its last
        offered = Signal()          # a bag's first beat waits on o
        cur = Signal(range(n))      # the client owning o while locked
        prio = Signal(range(n))     # the round-robin search starts here
        pick = Signal(range(n))
        with m.Switch(prio):
            for p in range(n):
                with m.Case(p):
                    # the first client with a beat waiting and a credit, from p on
                    for j in reversed(range(n)):
                        c = (p + j) % n
                        with m.If(ins[c].valid & credit[c]):
                            m.d.comb += pick.eq(c)
        grant = Signal(range(n))
        m.d.comb += grant.eq(cur)
        with m.If(~mid & ~offered):
            m.d.comb += grant.eq(pick)

        # A new bag needs its client's credit. Once offered it keeps it: only
        # that client's own bags spend its credits, and none starts meanwhile.
        room = Signal()
        for c in range(n):
            with m.If(grant == c):
                m.d.comb += room.eq(mid | credit[c])
        last = self.o.payload.lookup.last
        for c in range(n):
            with m.If(grant == c):
                m.d.comb += [self.o.valid.eq(ins[c].valid & room),
                             self.o.payload.eq(ins[c].payload),
                             ins[c].ready.eq(self.o.ready & room)]
        take = self.o.valid & self.o.ready
        start = take & ~mid
        m.d.comb += [order.w_en.eq(start), order.w_data.eq(grant)]
        m.d.sync += cur.eq(grant)
        with m.If(take):
            m.d.sync += [mid.eq(~last), offered.eq(0)]
            with m.If(last):
                m.d.sync += prio.eq(Mux(grant == n - 1, 0, grant + 1))
        with m.Elif(self.o.valid):
            m.d.sync += offered.eq(1)

        # -- the features back: in bag order into the clients' own FIFOs ------------
        # Always accepted once the bag's client is known. The head client's
        # FIFO has room: its features waiting plus its bags in flight (this one
        # among them) are at most ``depth``, so it holds at most ``depth - 1``,
        # and a SyncFIFOBuffered of depth >= 3 takes a write whenever its
        # level is below its depth.
        head = order.r_data
        m.d.comb += [self.r.ready.eq(order.r_rdy),
                     order.r_en.eq(self.r.valid & order.r_rdy)]
        for c in range(n):
            m.d.comb += [rets[c].w_en.eq(self.r.valid & order.r_rdy & (head == c)),
                         rets[c].w_data.eq(self.r.payload),
                         outs[c].valid.eq(rets[c].r_rdy),
                         outs[c].payload.eq(rets[c].r_data),
                         rets[c].r_en.eq(outs[c].ready)]
            given = outs[c].valid & outs[c].ready
            with m.If(start & (grant == c) & ~given):
                m.d.sync += used[c].eq(used[c] + 1)
            with m.Elif(given & ~(start & (grant == c))):
                m.d.sync += used[c].eq(used[c] - 1)
        return m
