"""The answer of a query: the last stage's top-k filter output, written as a
``SUBMIT_QUERY`` answer for the command processor's
:class:`~hw.command.AnswerEncoder`, in the wire format of
:func:`host.protocol.encode_result`: ``[k]`` then ``[position, score]`` per
result, best first, the score a two's-complement 64-bit word.

The filter sends its pairs before its trailer, which alone says how many
there are and whether the list was good; the answer's header, which comes
first, needs that count. So the writer keeps a list's pairs (at most
``k_max``, in a small RAM) until its trailer, then answers:

* trailer ``OK``: the answer frame, ``1 + 2 n`` words for ``n`` pairs, its
  tag taken from ``meta`` (one beat per list, in the order the lists were
  sent to the filter);
* trailer ``BAD_K``: an error answer on ``err`` (``BAD_CONFIG``, the same tag:
  a ``k`` the filter cannot give is a stage configuration it cannot run),
  for the command processor to write with its text;
* a ``meta`` status other than ``OK`` (the query failed upstream, say a bad
  id): an error answer with that status; the list is dropped.

Either way the writer then takes the next list; nothing waits on anything
but its own streams. Pairs beyond ``k_max`` before a trailer cannot come
from a :class:`~hw.topk.TopKFilter`; if they do, the extra ones are
dropped and the answer is ``DEVICE_ERROR`` (a bug reported, not a hang).

Streams
    ``i``: :func:`hw.topk.output_layout` beats; ``meta``: :func:`meta_layout` per list;
    ``ans``: :func:`hw.command.answer_layout` beats; ``err``:
    :func:`hw.command.error_layout` beats.

One word a cycle out; a pair a cycle in.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .command import Opcode, Status, answer_layout, error_layout
from .config import TopKConfig
from .topk import Status as TopKStatus, output_layout, pair_layout

__all__ = ["meta_layout", "ResultWriter"]


def meta_layout() -> data.StructLayout:
    """Per list: the query's tag, and its status so far (anything but ``OK``
    answers the query with that error instead of its list)."""
    return data.StructLayout({"tag": 16, "status": Status})


class ResultWriter(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    config : TopKConfig
        The filter's config (``k_max``, score and id widths).
    """

    def __init__(self, config: TopKConfig):
        if not isinstance(config, TopKConfig):
            raise TypeError(f"config must be a TopKConfig, not {config!r}")
        if config.id_bits > 64 or config.score_bits > 64:
            raise ValueError("ids and scores travel as 64-bit words: at most 64 bits")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(output_layout(config))),
            "meta": In(stream.Signature(meta_layout())),
            "ans": Out(stream.Signature(answer_layout())),
            "err": Out(stream.Signature(error_layout())),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        beat = self.i.payload
        m.submodules.pairs = mem = Memory(shape=pair_layout(cfg), depth=cfg.k_max, init=[])
        wp = mem.write_port()
        rp = mem.read_port(domain="comb")

        count = Signal(range(cfg.k_max + 1))        # pairs kept of this list
        overflow = Signal()                         # more pairs than k_max came
        status = Signal(Status)
        at = Signal(range(2 * cfg.k_max + 1))       # payload word being sent
        tag = Signal(16)

        m.d.comb += [wp.addr.eq(count), wp.data.score.eq(beat.score),
                     wp.data.id.eq(beat.id)]
        pair = rp.data
        m.d.comb += rp.addr.eq(at >> 1)
        a = self.ans.payload
        # every field from registers (no constant drivers: they lint badly)
        hdr = Signal(answer_layout())
        m.d.sync += [hdr.opcode.eq(Opcode.SUBMIT_QUERY), hdr.status.eq(Status.OK)]
        m.d.comb += [a.eq(hdr), a.tag.eq(tag), a.length.eq(1 + 2 * count)]

        with m.FSM():
            with m.State("COLLECT"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    with m.If(~beat.last):
                        with m.If(count < cfg.k_max):
                            m.d.comb += wp.en.eq(1)
                            m.d.sync += count.eq(count + 1)
                        with m.Else():
                            m.d.sync += overflow.eq(1)
                    with m.Else():
                        m.d.sync += status.eq(Mux(
                            overflow, Status.DEVICE_ERROR,
                            Mux(beat.status == TopKStatus.OK, Status.OK, Status.BAD_CONFIG)))
                        m.next = "META"
            with m.State("META"):
                m.d.comb += self.meta.ready.eq(1)
                with m.If(self.meta.valid):
                    m.d.sync += [tag.eq(self.meta.payload.tag), at.eq(0)]
                    with m.If(self.meta.payload.status != Status.OK):
                        m.d.sync += status.eq(self.meta.payload.status)
                        m.next = "ERROR"
                    with m.Elif(status == Status.OK):
                        m.next = "COUNT"
                    with m.Else():
                        m.next = "ERROR"
            with m.State("COUNT"):
                m.d.comb += [self.ans.valid.eq(1), a.data.eq(count),
                             a.last.eq(count == 0)]
                with m.If(self.ans.ready):
                    with m.If(count == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "PAIRS"
            with m.State("PAIRS"):
                # (a signed score is sign-extended to the 64-bit word)
                word = Mux(at[0], pair.score, pair.id)
                m.d.comb += [self.ans.valid.eq(1), a.data.eq(word),
                             a.last.eq(at == 2 * count - 1)]
                with m.If(self.ans.ready):
                    m.d.sync += at.eq(at + 1)
                    with m.If(at == 2 * count - 1):
                        m.next = "DONE"
            with m.State("ERROR"):
                e = self.err.payload
                m.d.comb += [self.err.valid.eq(1), e.opcode.eq(Opcode.SUBMIT_QUERY),
                             e.tag.eq(tag), e.status.eq(status)]
                with m.If(self.err.ready):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.sync += [count.eq(0), overflow.eq(0)]
                m.next = "COLLECT"
        return m
