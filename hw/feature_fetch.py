"""A stage's int8 features from its bags: the step between a stage's
sequencer and its interaction (:meth:`host.models.QuantizedStageModel.int8_features`,
steps 2 and 3).

The sequencer sends bags (a user bag, or a candidate's one-row bag of an
item table) on ``bags``; each goes to the lookup unit its table lives on
(:class:`hw.embedding.EmbeddingLookup`'s ``i<u>``, from the same
descriptors, written to both through ``desc``), so that the units work in
parallel (MicroRec). The pooled vectors come back on each unit's ``o<u>``
in the order that unit got its bags, so the fetch keeps the order in which
it sent the bags (a FIFO of units) and takes the vectors back in that
order: the features leave in the order their bags came, whatever unit
answered first. (No deadlock: the vector waited for was sent before any
bag still waiting to go, and each unit answers in order.)

Each pooled vector becomes int8 with its table's ``mult`` and ``shift``
(written through ``params``), exactly as :func:`host.embedding.requantize_pooled`
(:func:`hw.requant.requantize_int8`), and leaves on ``o`` as an
interaction input beat (:func:`hw.interaction.input_layout`: ``item`` for a
candidate's bag, ``last`` on the last bag of a group, both from the bag's
flags) with the unit's ``status``: a bag the unit refused (``BAD_ID``,
``BAD_TABLE``, ...) leaves with its status and a zero vector, for the
sequencer to answer the query with an error.

Streams
    ``bags``: :func:`bag_layout` beats, one row each; ``table`` of the bag's
    first beat routes the whole bag; ``item``/``group_last`` are read on the
    bag's last beat. ``o``: :func:`feature_layout`, one beat per bag.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import EmbeddingConfig, clog2
from .embedding import (Status, _units, desc_write_layout, lookup_layout,
                        pooled_layout)
from .requant import requantize_int8

__all__ = ["bag_layout", "param_layout", "feature_layout", "FeatureFetch"]


def bag_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({"lookup": lookup_layout(cfg), "item": 1, "group_last": 1})


def param_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({"table": unsigned(clog2(cfg.max_tables)),
                              "mult": unsigned(16), "shift": unsigned(6)})


def feature_layout(dim: int) -> data.StructLayout:
    return data.StructLayout({"item": 1, "last": 1, "status": Status,
                              "vec": data.ArrayLayout(signed(8), dim)})


class FeatureFetch(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    config : EmbeddingConfig
        The lookup unit's config.
    dim : int
        The stage's embedding dimension (elements kept of each pooled
        vector, at most ``config.max_dim``).
    depth : int
        Bags in flight (sent, their vectors not yet taken back).
    """

    def __init__(self, config: EmbeddingConfig, dim: int, depth: int = 32):
        if not isinstance(config, EmbeddingConfig):
            raise TypeError(f"config must be an EmbeddingConfig, not {config!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= config.max_dim:
            raise ValueError(f"dim: must be an integer in 1 .. {config.max_dim}, not {dim!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth: must be a positive integer, not {depth!r}")
        self._cfg, self._dim, self._depth = config, dim, depth
        members = {
            "bags": In(stream.Signature(bag_layout(config))),
            "desc": In(stream.Signature(desc_write_layout(config))),
            "params": In(stream.Signature(param_layout(config))),
            "o": Out(stream.Signature(feature_layout(dim))),
        }
        for u in range(_units(config)):
            members[f"i{u}"] = Out(stream.Signature(lookup_layout(config)))
            members[f"o{u}"] = In(stream.Signature(pooled_layout(config)))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg, dim = self._cfg, self._dim
        units = _units(cfg)
        unit_shape = unsigned(clog2(units))

        # -- where each table lives, from the descriptors -----------------------
        m.submodules.route = route = Memory(shape=unit_shape, depth=cfg.max_tables, init=[])
        rw = route.write_port()
        d = self.desc.payload
        m.d.comb += [self.desc.ready.eq(1), rw.addr.eq(d.table), rw.en.eq(self.desc.valid),
                     rw.data.eq(Mux(d.desc.onchip, cfg.channels + d.desc.unit, d.desc.unit))]
        m.submodules.prm = prm = Memory(shape=data.StructLayout({"mult": 16, "shift": 6}),
                                        depth=cfg.max_tables, init=[])
        pw = prm.write_port()
        p = self.params.payload
        m.d.comb += [self.params.ready.eq(1), pw.addr.eq(p.table), pw.en.eq(self.params.valid),
                     pw.data.mult.eq(p.mult), pw.data.shift.eq(p.shift)]

        # -- the sender: a bag to its table's unit, its unit into the order FIFO --
        order_l = data.StructLayout({"unit": unit_shape,
                                     "table": unsigned(clog2(cfg.max_tables))})
        m.submodules.order = order = SyncFIFOBuffered(width=order_l.size, depth=self._depth)
        b = self.bags.payload
        rr = route.read_port(domain="comb")
        m.d.comb += rr.addr.eq(b.lookup.table)
        first = Signal(init=1)          # the next beat starts a bag
        bag_unit = Signal(unit_shape)
        unit = Mux(first, rr.data, bag_unit)
        # a bag's first beat takes a place in the order FIFO, its last one a
        # place in the flags FIFO (below)
        m.submodules.flags = flags = SyncFIFOBuffered(width=2, depth=self._depth)
        room = (~first | order.w_rdy) & (~b.lookup.last | flags.w_rdy)
        outs = [getattr(self, f"i{u}") for u in range(units)]
        ready = Signal()
        for u, s in enumerate(outs):
            m.d.comb += s.payload.eq(b.lookup)
            with m.If(unit == u):
                m.d.comb += [s.valid.eq(self.bags.valid & room), ready.eq(s.ready & room)]
        m.d.comb += self.bags.ready.eq(ready)
        entry = Signal(order_l)
        m.d.comb += [entry.unit.eq(unit), entry.table.eq(b.lookup.table),
                     order.w_data.eq(entry), order.w_en.eq(self.bags.valid & ready & first)]
        with m.If(self.bags.valid & ready):
            m.d.sync += first.eq(b.lookup.last)
            with m.If(first):
                m.d.sync += bag_unit.eq(rr.data)

        # -- the collector: vectors back in order, to int8 -----------------------
        # A bag's flags, from its last beat, wait in a second FIFO: a bag is
        # taken back once both FIFOs hold it.
        m.d.comb += [flags.w_data.eq(Cat(b.item, b.group_last)),
                     flags.w_en.eq(self.bags.valid & ready & b.lookup.last)]
        head = order_l(order.r_data)
        ins = [getattr(self, f"o{u}") for u in range(units)]
        got = Signal()
        vec = Signal(pooled_layout(cfg))
        for u, s in enumerate(ins):
            with m.If(head.unit == u):
                m.d.comb += [got.eq(s.valid), vec.eq(s.payload)]
        pr = prm.read_port(domain="comb")
        m.d.comb += pr.addr.eq(head.table)
        out = Signal(feature_layout(dim))
        valid = Signal()
        can = order.r_rdy & flags.r_rdy & got & (~valid | self.o.ready)
        for u, s in enumerate(ins):
            m.d.comb += s.ready.eq(can & (head.unit == u))
        m.d.comb += [order.r_en.eq(can), flags.r_en.eq(can)]
        with m.If(can):
            ok = vec.status == Status.OK
            m.d.sync += [valid.eq(1), out.status.eq(vec.status),
                         out.item.eq(flags.r_data[0]), out.last.eq(flags.r_data[1])]
            for e in range(dim):
                m.d.sync += out.vec[e].eq(Mux(ok, requantize_int8(vec.pooled[e], pr.data.mult,
                                                                  pr.data.shift), 0))
        with m.Elif(self.o.ready):
            m.d.sync += valid.eq(0)
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.eq(out)]
        return m
