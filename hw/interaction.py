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

A candidate a cycle: every pair at once (``max_pairs * dim`` multipliers,
an adder tree per pair; the pairs' ``mult`` and ``shift`` in registers), so
a candidate of ``I`` item beats is taken in ``I`` cycles, back to back with
the next. Three register stages, moving together whenever ``o`` is free
(``i.ready = ~o.valid | o.ready``): the candidate's items, the pair sums
(gathered into their output places by the number of users), the
requantized output. The beat of a candidate whose last item beat is taken
in cycle ``t`` is on ``o`` from cycle ``t + 3``. A new query's user beats
may follow a candidate at once: the candidate's sums read the user features
in the cycle it leaves the first stage, before the edge that writes the
next user beat.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
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
        vec_l = data.ArrayLayout(signed(8), d)

        # -- pair parameters: registers, since every pair reads its own at once --
        mult = [Signal(unsigned(16), name=f"mult{k}") for k in range(P)]
        shift = [Signal(unsigned(6), name=f"shift{k}") for k in range(P)]
        m.d.comb += self.params.ready.eq(1)
        with m.If(self.params.valid):
            with m.Switch(self.params.payload.pair):
                for k in range(P):
                    with m.Case(k):
                        m.d.sync += [mult[k].eq(self.params.payload.mult),
                                     shift[k].eq(self.params.payload.shift)]

        # -- input: the query's user features, a candidate's items but its last --
        users = [Signal(vec_l, name=f"user{j}") for j in range(U)]
        n_users = Signal(range(max(U, 1) + 1))   # (1 bit at least: U may be 0)
        user_open = Signal()                    # the last beat was a user beat
        loading = [Signal(vec_l, name=f"loading{a}") for a in range(I - 1)]
        n_loading = Signal(range(max(I, 2)))    # items so far (saturates at I - 1)

        # every stage moves when the output register is free
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready),
                     self.i.ready.eq(advance)]
        take = self.i.valid & advance

        # -- stage 1: the candidate --------------------------------------------
        c_valid = Signal()
        c_items = [Signal(vec_l, name=f"c_item{a}") for a in range(I)]
        c_n_items = Signal(range(I + 1))

        with m.If(take & ~beat.item):
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
        with m.If(take & beat.item):
            m.d.sync += user_open.eq(0)
            with m.If(beat.last):
                for a in range(I - 1):
                    m.d.sync += c_items[a].eq(Mux(n_loading == a, beat.vec.as_value(),
                                                  loading[a].as_value()))
                # (when n_loading < I - 1, item I - 1 is absent and unread)
                m.d.sync += [c_items[I - 1].eq(beat.vec), c_n_items.eq(n_loading + 1),
                             n_loading.eq(0)]
            with m.Else():
                for a in range(I - 1):
                    with m.If(n_loading == a):
                        m.d.sync += [loading[a].eq(beat.vec), n_loading.eq(a + 1)]
        with m.If(advance):
            m.d.sync += c_valid.eq(take & beat.item & beat.last)

        # -- stage 2: every pair's sum, in its place in the output -----------------
        # Pair (a, partner) of the full order; with n_users users present, the
        # present pairs are packed from 0 in the same order, so a pair's place
        # depends on n_users alone (and it is present if a < c_n_items).
        acc_bits = 16 + clog2(d) + 1
        full = []                               # (a, partner vector), full order
        for a in range(I):
            full += [(a, users[j]) for j in range(U)]
            full += [(a, c_items[b]) for b in range(a)]
        assert len(full) == P
        sums = []
        for p, (a, rhs) in enumerate(full):
            dot = Signal(signed(acc_bits), name=f"sum{p}")
            m.d.comb += dot.eq(sum(c_items[a][e] * rhs[e] for e in range(d)))
            sums.append(Mux(a < c_n_items, dot, 0))

        z_valid = Signal()
        z = [Signal(signed(acc_bits), name=f"z{k}") for k in range(P)]
        z_n = Signal.like(self.o.payload.n)
        with m.If(advance):
            m.d.sync += [z_valid.eq(c_valid),
                         z_n.eq(sum(Mux(a < c_n_items, n_users + a, 0) for a in range(I)))]
            with m.Switch(n_users):
                for nu in range(U + 1):
                    with m.Case(nu):
                        k = 0
                        for a in range(I):
                            first = a * U + a * (a - 1) // 2    # item a's first pair
                            for j in [*range(nu), *range(U, U + a)]:
                                m.d.sync += z[k].eq(sums[first + j])
                                k += 1
                        for rest in range(k, P):
                            m.d.sync += z[rest].eq(0)

        # -- stage 3: requantized -------------------------------------------------
        o_valid = Signal()
        out = Signal(output_layout(P))
        with m.If(advance):
            m.d.sync += [o_valid.eq(z_valid), out.n.eq(z_n)]
            for k in range(P):
                # (an absent pair's sum is 0, which requantizes to 0)
                m.d.sync += out.pairs[k].eq(requantize_int8(z[k], mult[k], shift[k]))
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(out)]
        return m
