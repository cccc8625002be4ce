"""The MLP engine's command and response formats.

One command is one stream beat (no framing to get wrong). The same layouts
pack and unpack on the host, so no side hand-codes a bit offset::

    layout = command_layout(cfg, engine)
    bits = layout.const({"op": Opcode.RUN,
                         "args": {"run": {"layers": 2, "rows": 64}}}).as_value().value

Address and count fields are one bit wider than their range needs where the
range is a power of two, so that an out-of-range value can be sent and is
answered with an error status instead of wrapping silently.

Memory layouts (the host compiler writes them; ``K`` x ``S`` = the rows and
columns of the engine's sub-array in the active mode, ``K = S`` but in a row
split, :attr:`hw.config.ArrayConfig.modes`; ``lanes`` = the engine's port
width, ``K <= S <= lanes``):

* weights: tile ``(k, n)`` of a layer (input rows ``k*K ..``, output columns
  ``n*S ..``) is ``K`` words at ``w_base + (n * KT + k) * K``; word ``i`` is
  row ``i`` of the tile in lanes ``0 .. S-1``; ``KT = ceil(in/K)``. Rows and
  columns past the layer's size are zero.
* params: output chunk ``n`` is entry ``p_base + n``; lane ``j`` holds output
  channel ``n*S + j``. Channels past ``out_dim`` have bias 0.
* activations: chunk ``c`` (features ``c*S ..``) of row ``r`` is word
  ``base + c * rows + r`` of a buffer, ``base`` the RUN's; features past the
  layer's size are zero. Layer ``l`` reads buffer ``l % 2`` and writes
  buffer ``(l + 1) % 2``. A RUN's *window* is the words ``base ..`` up to
  the widest of its layers' inputs and outputs, in both buffers.

Overlap: the engine takes a ``WRITE_ACT`` while a RUN computes when it
lands outside the RUN's window (while the RUN is checked, outside a bound
of it: ``rows`` words for each of ``max_dim / S`` chunks, rounded up to a
power of two), and it takes the next RUN (and writes)
once the last one's final tiles are loaded, while their rows still go into
the array and are in flight, and then while its response goes out; a
write into the rows being sent, or into the input rows the last tile has
still to read, waits for them, a RUN whose window overlaps the rows being
sent waits until they are sent, and a ``WRITE_PARAM`` into the parameter
entries of the layer whose rows are still to go in or in flight waits for
them (one into other entries is taken at once: a driver that keeps a
layer's parameters in two regions, chosen by its ``SET_LAYER``, writes the
next batch's while one runs).
So a driver that alternates two windows (:meth:`host.engine_driver.EngineDriver.run`
with ``overlap``) writes the next batch while one runs and runs it while
that one's answer leaves. Every other command waits for the RUN to finish,
and responses keep the order of their commands.

Responses: a RUN answers with ``rows * ceil(out/S)`` data beats (row-major:
all chunks of row 0, then row 1, ...) and a trailer beat with ``last`` set,
``status`` OK and ``info`` = cycles from RUN to the last result written.
``base`` plus the window must fit ``act_words`` (else ``BAD_LAYER``).
A SET_SPLIT (engine 0 only) waits until no other engine is busy, applies
the split and answers with an OK trailer. A bad command answers with a single
trailer beat with an error ``status`` and ``info`` = the opcode (or the
failing layer's index for BAD_LAYER). Writes that succeed are not answered.
Every beat of an answer carries its command's ``tag`` (a bit the engine
does not otherwise look at), so that a user with two senders on one engine
knows whose command an answer answers, however many beats wait between them
(:mod:`hw.mlp_cluster` buffers both streams).
"""

from amaranth.lib import enum

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .config import ArrayConfig

__all__ = ["Opcode", "Status", "command_layout", "response_layout",
           "field_bits"]


class Opcode(enum.Enum, shape=3):
    WRITE_WEIGHTS = 1
    WRITE_PARAM = 2
    WRITE_ACT = 3
    SET_LAYER = 4
    RUN = 5
    SET_SPLIT = 6


class Status(enum.Enum, shape=3):
    OK = 0
    BAD_OPCODE = 1      #: unknown opcode
    BAD_ADDRESS = 2     #: a write outside its memory, or a bad layer slot/lane
    BAD_LAYER = 3       #: a layer descriptor that cannot run (info = layer)
    BAD_RUN = 4         #: rows or layer count out of range
    NOT_AVAILABLE = 5   #: no sub-array for this engine in this split, or
                        #: SET_SPLIT sent to an engine other than 0
    BAD_SPLIT = 6       #: split index out of range


def field_bits(limit: int) -> int:
    """Bits for a field whose legal values are below or equal to ``limit``,
    with room for at least one illegal value above it."""
    return (limit + 1).bit_length()


def command_layout(config: ArrayConfig, engine: int) -> data.StructLayout:
    lanes = config.engine_lanes(engine)
    row = data.ArrayLayout(signed(8), lanes)
    waddr = unsigned(field_bits(config.weight_words - 1))
    paddr = unsigned(field_bits(config.param_words - 1))
    aaddr = unsigned(field_bits(config.act_words(engine) - 1))
    dim = unsigned(field_bits(config.max_dim))
    return data.StructLayout({
        "op": Opcode,
        "args": data.UnionLayout({
            "weights": data.StructLayout({"addr": waddr, "data": row}),
            "param": data.StructLayout({
                "addr": paddr,
                "lane": unsigned(field_bits(lanes - 1)),
                "bias": signed(32),
                "mult": unsigned(16),
                "shift": unsigned(6),
            }),
            "act": data.StructLayout({"buf": 1, "addr": aaddr, "data": row}),
            "layer": data.StructLayout({
                "index": unsigned(field_bits(config.max_layers - 1)),
                "in_dim": dim,
                "out_dim": dim,
                "w_base": waddr,
                "p_base": paddr,
                "relu": 1,
            }),
            "run": data.StructLayout({
                "layers": unsigned(field_bits(config.max_layers)),
                "rows": unsigned(field_bits(config.max_rows)),
                "base": aaddr,
            }),
            "split": data.StructLayout({
                "index": unsigned(field_bits(len(config.modes) - 1)),
            }),
        }),
        "tag": 1,
    })


def response_layout(config: ArrayConfig, engine: int) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(8), config.engine_lanes(engine)),
        "status": Status,
        "last": 1,
        "info": unsigned(32),
        "tag": 1,
    })
