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
    The client of each bag is written into an order FIFO when the bag's
    first beat is taken; ``depth`` bags may be in flight (sent, their
    feature not yet taken back), and no bag starts while the FIFO is full.
    (The fetch's own ``depth`` need not match: it backpressures ``o``.)

Features (``r`` in, ``r<c>`` out)
    The fetch answers one :func:`hw.feature_fetch.feature_layout` beat per
    bag, in the order the bags went out; each goes, unchanged, to the
    client at the head of the order FIFO. The return is in order: a client
    that does not take its feature blocks every feature after it, the other
    clients' too (and, once ``depth`` bags are in flight, every bag). Each
    client must therefore take its features without waiting for anything
    the other clients' features would give it; a stage engine waiting on
    its output (its top-k list, say) while it holds a feature back can
    stall the other stage. The top level must keep the clients' outputs
    flowing (a stage's consumer must not wait on the other stage's
    progress through this arbiter).
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
        Bags in flight: sent on ``o``, their feature not yet taken back.
    """

    def __init__(self, config: EmbeddingConfig, dim: int, *, clients: int = 2,
                 depth: int = 32):
        if not isinstance(config, EmbeddingConfig):
            raise TypeError(f"config must be an EmbeddingConfig, not {config!r}")
        for name, v, lo, hi in (("dim", dim, 1, config.max_dim), ("clients", clients, 2, 16),
                                ("depth", depth, 1, 1 << 16)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer in {lo} .. {hi}, not {v!r}")
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
        n = self._clients
        ins = [getattr(self, f"i{c}") for c in range(n)]
        outs = [getattr(self, f"r{c}") for c in range(n)]
        m.submodules.order = order = SyncFIFOBuffered(width=clog2(n), depth=self._depth)

        # -- the grant: locked from a bag's first offer to its last beat taken -------
        mid = Signal()              # beats of the bag on o were taken, not its last
        offered = Signal()          # a bag's first beat waits on o
        cur = Signal(range(n))      # the client owning o while locked
        prio = Signal(range(n))     # the round-robin search starts here
        pick = Signal(range(n))
        with m.Switch(prio):
            for p in range(n):
                with m.Case(p):
                    # the first client with a beat waiting, from p on
                    for j in reversed(range(n)):
                        c = (p + j) % n
                        with m.If(ins[c].valid):
                            m.d.comb += pick.eq(c)
        grant = Signal(range(n))
        m.d.comb += grant.eq(cur)
        with m.If(~mid & ~offered):
            m.d.comb += grant.eq(pick)

        room = mid | order.w_rdy    # a new bag takes a place in the order FIFO
        last = self.o.payload.lookup.last
        for c in range(n):
            with m.If(grant == c):
                m.d.comb += [self.o.valid.eq(ins[c].valid & room),
                             self.o.payload.eq(ins[c].payload),
                             ins[c].ready.eq(self.o.ready & room)]
        take = self.o.valid & self.o.ready
        m.d.comb += [order.w_en.eq(take & ~mid), order.w_data.eq(grant)]
        m.d.sync += cur.eq(grant)
        with m.If(take):
            m.d.sync += [mid.eq(~last), offered.eq(0)]
            with m.If(last):
                m.d.sync += prio.eq(Mux(grant == n - 1, 0, grant + 1))
        with m.Elif(self.o.valid):
            m.d.sync += offered.eq(1)

        # -- the features back, in bag order ----------------------------------------
        head = order.r_data
        for c in range(n):
            with m.If(head == c):
                m.d.comb += self.r.ready.eq(order.r_rdy & outs[c].ready)
            m.d.comb += [outs[c].valid.eq(self.r.valid & order.r_rdy & (head == c)),
                         outs[c].payload.eq(self.r.payload)]
        m.d.comb += order.r_en.eq(self.r.valid & self.r.ready)
        return m
