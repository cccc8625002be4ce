"""DLRM's dot interaction of a stage (the ``"dot"`` model of
:mod:`host.models`), per candidate, in int8.

A query's features are ``T = [user features (U), item features (I)]``, each
``dim`` int8 values. The user part of the top input (the user-user pairs) is
per query and goes with the user pass; this unit computes the item part of
every candidate: the pairs ``(i, j)``, ``i >= U``, ``j < i``, in DLRM's
row-major lower-triangle order (for item ``a``: its dot products with the
user features ``0 .. U-1``, then with the items before it), each
requantized to int8 with its own ``mult`` and ``shift`` (pair ``k`` of the
item part: ``clamp((z * mult + 2**(shift-1)) >> shift, -128, 127)``, half
up, as :func:`host.numerics.requantize` with no bias and no ReLU). It is
:meth:`host.models.QuantizedStageModel.top_inputs`'s item part, bit for bit.

Streams
    ``i``: :func:`input_layout` beats: ``user`` beats load the query's user
    features (the first user beat after anything else starts a new set);
    ``item`` beats are a candidate's item features, ``last`` on its last one.
    ``params``: always ready, writes pair ``k``'s ``mult`` and ``shift``.
    ``o``: one beat per candidate, its ``n`` pairs (the rest zero).

One pair a cycle (``dim`` multipliers and an adder tree).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import clog2
from .requant import requantize_int8

__all__ = ["input_layout", "param_layout", "output_layout", "item_pairs",
           "DotInteraction"]


def item_pairs(users: int, items: int) -> int:
    """Pairs in the item part: ``I U + I (I - 1) / 2``."""
    return items * users + items * (items - 1) // 2


def input_layout(dim: int) -> data.StructLayout:
    return data.StructLayout({"item": 1, "last": 1,
                              "vec": data.ArrayLayout(signed(8), dim)})


def param_layout(max_pairs: int) -> data.StructLayout:
    return data.StructLayout({"pair": unsigned(max(1, clog2(max_pairs))),
                              "mult": unsigned(16), "shift": unsigned(6)})


def output_layout(max_pairs: int) -> data.StructLayout:
    return data.StructLayout({"n": unsigned(clog2(max_pairs + 1)),
                              "pairs": data.ArrayLayout(signed(8), max_pairs)})


class DotInteraction(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    dim : int
        Elements per feature (the embedding dimension).
    max_users, max_items : int
        Most user and item features.
    """

    def __init__(self, dim: int, max_users: int, max_items: int):
        for name, v, lo in (("dim", dim, 1), ("max_users", max_users, 0),
                            ("max_items", max_items, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: must be an integer >= {lo}, not {v!r}")
        if dim > 4096 or max_users > 64 or max_items > 64:
            raise ValueError("dim at most 4096, max_users and max_items at most 64")
        if item_pairs(max_users, max_items) == 0:
            raise ValueError("one item feature and no user feature make no pair")
        self.dim, self.max_users, self.max_items = dim, max_users, max_items
        self.max_pairs = item_pairs(max_users, max_items)
        super().__init__({
            "i": In(stream.Signature(input_layout(dim))),
            "params": In(stream.Signature(param_layout(self.max_pairs))),
            "o": Out(stream.Signature(output_layout(self.max_pairs))),
        })

    def elaborate(self, platform):
        m = Module()
        d, U, I, P = self.dim, self.max_users, self.max_items, self.max_pairs
        beat = self.i.payload

        # -- pair parameters ----------------------------------------------------
        m.submodules.mult = mult_mem = Memory(shape=unsigned(16), depth=P, init=[])
        m.submodules.shift = shift_mem = Memory(shape=unsigned(6), depth=P, init=[])
        for mem, field in ((mult_mem, "mult"), (shift_mem, "shift")):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(self.params.payload.pair),
                         wp.data.eq(getattr(self.params.payload, field)),
                         wp.en.eq(self.params.valid)]
        m.d.comb += self.params.ready.eq(1)
        mult_rp = mult_mem.read_port(domain="comb")
        shift_rp = shift_mem.read_port(domain="comb")

        # -- features -------------------------------------------------------------
        vec_l = data.ArrayLayout(signed(8), d)
        users = [Signal(vec_l, name=f"user{j}") for j in range(U)]
        items = [Signal(vec_l, name=f"item{a}") for a in range(I)]
        n_users = Signal(range(max(U, 1) + 1))   # (1 bit at least: U may be 0)
        n_items = Signal(range(I + 1))
        user_open = Signal()                    # the last beat was a user beat

        # -- the pair sequence: item a with user j, then with item b < a --------
        a = Signal(range(max(I, 2)))      # (1 bit at least: I may be 1)
        j = Signal(range(max(U, I) + 1))
        with_user = Signal()                    # pairing with users (else items)
        k = Signal(range(P + 1))                # pair index
        out = Signal(output_layout(P))

        def pick(sigs, idx):
            v = Signal(vec_l)
            for n, s in enumerate(sigs):
                with m.If(idx == n):
                    m.d.comb += v.eq(s)
            return v

        lhs = pick(items, a)
        rhs = Mux(with_user, pick(users, j).as_value(), pick(items, j).as_value())
        rhs = vec_l(rhs)
        acc_bits = 16 + clog2(d) + 1
        z = Signal(signed(acc_bits))
        m.d.comb += z.eq(sum(lhs[e] * rhs[e] for e in range(d)))
        m.d.comb += [mult_rp.addr.eq(k), shift_rp.addr.eq(k)]
        q = Signal(signed(8))
        m.d.comb += q.eq(requantize_int8(z, mult_rp.data, shift_rp.data))

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    with m.If(~beat.item):
                        # (without user features, user beats are dropped)
                        with m.If(~user_open):
                            if U:
                                m.d.sync += [n_users.eq(1), users[0].eq(beat.vec)]
                        with m.Else():
                            for n in range(1, U):
                                with m.If(n_users == n):
                                    m.d.sync += users[n].eq(beat.vec)
                            if U:
                                m.d.sync += n_users.eq(n_users + 1)
                        m.d.sync += user_open.eq(1)
                    with m.Else():
                        m.d.sync += user_open.eq(0)
                        for n in range(I):
                            with m.If(n_items == n):
                                m.d.sync += items[n].eq(beat.vec)
                        m.d.sync += n_items.eq(n_items + 1)
                        with m.If(beat.last):
                            m.d.sync += [a.eq(0), j.eq(0), k.eq(0), with_user.eq(n_users != 0),
                                         out.eq(0)]
                            m.next = "PAIRS"
            with m.State("PAIRS"):
                # one pair a cycle; a pairing with no partner is skipped
                partner = Mux(with_user, j < n_users, j < a) if U else j < a
                with m.If(partner):
                    for n in range(P):
                        with m.If(k == n):
                            m.d.sync += out.pairs[n].eq(q)
                    m.d.sync += [k.eq(k + 1), j.eq(j + 1)]
                with m.Elif(with_user):
                    m.d.sync += [with_user.eq(0), j.eq(0)]
                with m.Elif(a + 1 < n_items):
                    m.d.sync += [a.eq(a + 1), j.eq(0), with_user.eq(n_users != 0)]
                with m.Else():
                    m.d.sync += out.n.eq(k)
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(out)]
                with m.If(self.o.ready):
                    m.d.sync += n_items.eq(0)
                    m.next = "LOAD"
        return m
