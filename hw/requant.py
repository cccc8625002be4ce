"""Pooled embedding sums to int8: the step between the embedding lookup unit
and the interaction of a stage (:meth:`host.models.QuantizedStageModel`,
step 3, :func:`host.embedding.requantize_pooled`).

Each element ``p`` of a pooled vector (an exact sum in units of
``2**-frac_bits``) becomes ``clamp((p * mult + 2**(shift-1)) >> shift, -128,
127)``: half up, no rounding term when ``shift`` is 0, with the bag's own
``mult`` (1 .. 65535) and ``shift`` (0 .. 63), one pair per table, which the
stage's scheduler sends with the vector. A bag with a bad status stays bad,
its vector zero. A vector a cycle, one register stage.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import EmbeddingConfig
from .embedding import Status

__all__ = ["requantize_int8", "requant_in_layout", "requant_out_layout", "PooledRequant"]


def requantize_int8(value, mult, shift):
    """``clamp((value * mult + 2**(shift-1)) >> shift, -128, 127)``, combinational:
    :func:`host.numerics.requantize`'s rounding (half up, none at ``shift``
    0) and saturation, without bias or ReLU. ``value`` signed, ``mult`` and
    ``shift`` unsigned (``shift`` below 64)."""
    half = (Const(1, 64) << shift) >> 1                 # 2**(shift-1), or 0
    r = (value * mult + half) >> shift
    return Mux(r > 127, 127, Mux(r < -128, -128, r))[:8].as_signed()


def requant_in_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({
        "status": Status,
        "pooled": data.ArrayLayout(signed(cfg.acc_bits), cfg.max_dim),
        "mult": unsigned(16),
        "shift": unsigned(6),
    })


def requant_out_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({"status": Status,
                              "vec": data.ArrayLayout(signed(8), cfg.max_dim)})


class PooledRequant(wiring.Component):
    """See the module documentation."""

    def __init__(self, config: EmbeddingConfig):
        if not isinstance(config, EmbeddingConfig):
            raise TypeError(f"config must be an EmbeddingConfig, not {config!r}")
        self._cfg = config
        super().__init__({"i": In(stream.Signature(requant_in_layout(config))),
                          "o": Out(stream.Signature(requant_out_layout(config)))})

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        x = self.i.payload
        out = Signal(requant_out_layout(cfg))
        valid = Signal()
        take = self.i.valid & (~valid | self.o.ready)
        m.d.comb += self.i.ready.eq(~valid | self.o.ready)
        with m.If(take):
            m.d.sync += [valid.eq(1), out.status.eq(x.status)]
            ok = x.status == Status.OK
            for e in range(cfg.max_dim):
                m.d.sync += out.vec[e].eq(Mux(ok, requantize_int8(x.pooled[e], x.mult,
                                                                  x.shift), 0))
        with m.Elif(self.o.ready):
            m.d.sync += valid.eq(0)
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.eq(out)]
        return m
