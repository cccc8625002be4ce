"""The device-format payloads of the command processor: frames of *port
records*, routed to the blocks' write and input streams.

A device-format payload (``LOAD_WEIGHTS``, ``LOAD_TABLES``, ``LOAD_CACHE``,
``CONFIGURE_STAGES``, ``SUBMIT_QUERY``; :mod:`host.device_format` writes them)
is a sequence of records::

    word 0:  port | count << 8       (bits 32-63 zero)
    then     count beats of the port's layout, each in ceil(bits / 64)
             words, least significant word first

so that every block's data layout travels as it is (the host packs it with
:class:`host.packing.Packer`) and nothing here knows a field. A frame may
hold any number of records, for any ports.

The router takes the command beats of those opcodes (:class:`hw.command.CommandProcessor`'s
``cmd``), sends each record's beats on its port (waiting while the port is
not ready), and at the frame's end answers it: an empty ``OK`` answer on
``ans``. It takes a word in every cycle while the ports take their beats:
a beat leaves from a register in the cycle after its last word, while the
next one's words come in; a frame's answer waits until its beats have
gone. A frame that ends inside a record, a record for a port that does
not exist (or, with ``query_ports``, a query's port in another frame or
another port in a query's frame), a header word with bits above the count,
or an empty ``SUBMIT_QUERY`` is answered ``BAD_PAYLOAD`` on ``err`` (a bad
frame length ``MALFORMED_FRAME``), and the rest of the frame is dropped;
beats already sent stay sent. Nothing waits for a word that may never come.
A frame during which ``reject`` was high (a block refused a beat it took,
say a configuration it cannot run) is answered ``BAD_CONFIG``. A load
(``LOAD_*``, ``CONFIGURE_STAGES``) waits at its first word while ``hold``
is high (the top level: while queries or engine work are under way).

A ``SUBMIT_QUERY`` frame that starts while ``loaded`` ends instead with its tag
and status on ``qtag`` (:func:`qtag_layout`), whatever went wrong with it:
its beats may have gone out, so it is a query, answered later (by the
result writer) with that status unless it is ``OK``
(:class:`hw.query_guard.QueryGuard` makes whole what the frame left out).
One that starts before ``loaded`` is answered ``NOT_LOADED`` on ``err`` and
nothing of it goes out.
"""

from amaranth.hdl import Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .command import Opcode, Status, answer_layout, command_layout, error_layout
from .config import ceil_div

__all__ = ["record_layout", "record_header", "qtag_layout", "RecordRouter"]


def record_layout() -> data.StructLayout:
    """A record's header word."""
    return data.StructLayout({"port": 8, "count": 24, "zero": 32})


def record_header(port: int, count: int) -> int:
    """The header word of a record."""
    if not 0 <= port < 256 or not 0 <= count < 1 << 24:
        raise ValueError(f"record: port {port} (0..255), count {count} (0..2**24-1)")
    return record_layout().const({"port": port, "count": count}).as_bits()


def qtag_layout() -> data.StructLayout:
    """A query frame's end: its tag and its status."""
    return data.StructLayout({"tag": 16, "status": Status})


class RecordRouter(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    ports : sequence of (name, layout)
        Port ``p`` of the records is ``ports[p]``: an ``Out`` stream
        attribute ``name`` of that layout.
    counters : int
        Words of ``counters``, the ``READ_COUNTERS`` answer.
    query_ports : sequence of str
        The ports of a query's records: only ``SUBMIT_QUERY`` frames may
        write them, and those frames only them. Empty: any frame, any port.
    """

    def __init__(self, ports, *, counters: int = 0, query_ports=()):
        ports = [(str(n), l) for n, l in ports]
        if not ports or len(ports) > 256:
            raise ValueError(f"ports: 1 to 256 of them, not {len(ports)}")
        names = [n for n, _ in ports]
        if len(set(names)) != len(names):
            raise ValueError("ports: names must differ")
        if not isinstance(counters, int) or not 0 <= counters < 256:
            raise ValueError(f"counters: 0 .. 255 words, not {counters!r}")
        query_ports = [str(n) for n in query_ports]
        if not set(query_ports) <= set(names):
            raise ValueError(f"query_ports: {sorted(set(query_ports) - set(names))} are not "
                             f"ports")
        self._ports = ports
        self._counters = counters
        self._query = [n in query_ports for n in names] if query_ports else None
        members = {"loaded": In(1), "reject": In(1), "hold": In(1),
                   "counters": In(data.ArrayLayout(unsigned(64), max(counters, 1))),
                   "cmd": In(stream.Signature(command_layout())),
                   "ans": Out(stream.Signature(answer_layout())),
                   "err": Out(stream.Signature(error_layout())),
                   "qtag": Out(stream.Signature(qtag_layout()))}
        for name, layout in ports:
            if name in members:
                raise ValueError(f"ports: {name!r} is taken")
            members[name] = Out(stream.Signature(layout))
        super().__init__(members)

    @property
    def ports(self):
        return list(self._ports)

    def elaborate(self, platform):
        m = Module()
        c = self.cmd.payload
        words = [ceil_div(Shape.cast(l).width, 64) for _, l in self._ports]
        max_words = max(words)
        beat = Signal(64 * max_words)
        port = Signal(range(len(self._ports)))
        count = Signal(24)                      # beats left in the record
        at = Signal(range(max_words + 1))       # words of the beat so far
        need = Signal(range(max_words + 1))     # words of a beat of this port
        opcode = Signal(Opcode)
        tag = Signal(16)
        snapshot = Signal.like(self.counters)
        word = Signal(range(max(self._counters, 1) + 1))
        status = Signal(Status)
        # a block refused one of the frame's beats (``reject``): BAD_CONFIG
        rejected = Signal()
        with m.If(self.reject):
            m.d.sync += rejected.eq(1)
        with m.Elif(self.cmd.valid & self.cmd.ready & c.first):
            m.d.sync += rejected.eq(0)
        # a SUBMIT_QUERY frame that starts while ``loaded`` is a query: it
        # ends on ``qtag``, whatever its status
        query = Signal()
        with m.If(self.cmd.valid & self.cmd.ready & c.first):
            m.d.sync += query.eq((c.opcode == Opcode.SUBMIT_QUERY) & self.loaded)
        final = Signal(Status)
        m.d.comb += final.eq(Mux((status == Status.OK) & rejected, Status.BAD_CONFIG, status))
        with m.Switch(port):
            for p, w in enumerate(words):
                with m.Case(p):
                    m.d.comb += need.eq(w)

        def end_of_frame(st):
            m.d.sync += [opcode.eq(c.opcode), tag.eq(c.tag), status.eq(st)]
            m.next = "ANSWER"

        # A finished beat goes out from a register (``ob``, ``oport``, ``ov``)
        # while the next one's words come in: words are taken one a cycle
        # while the ports take their beats. A beat finished while the
        # register is full waits in ``beat`` (``full``), and no word is taken
        # until it has moved on, so ``cmd.ready`` comes from registers.
        ob = Signal(max(Shape.cast(l).width for _, l in self._ports))
        oport = Signal.like(port)
        ov = Signal()
        full = Signal()
        taken = Signal()
        for p, (pname, layout) in enumerate(self._ports):
            out = getattr(self, pname)
            m.d.comb += out.payload.eq(ob[:Shape.cast(layout).width])
            with m.If(oport == p):
                m.d.comb += [out.valid.eq(ov), taken.eq(ov & out.ready)]
        free = ~ov | taken                      # the register may load now
        with m.If(taken):
            m.d.sync += ov.eq(0)
        with m.If(full & free):
            m.d.sync += [ob.eq(beat), oport.eq(port), ov.eq(1), full.eq(0)]
        # the beat with the word coming in, at ``at``
        with_word = Signal.like(beat)
        m.d.comb += with_word.eq(beat)
        for w in range(max_words):
            with m.If(at == w):
                m.d.comb += with_word[64 * w:64 * (w + 1)].eq(c.data)

        with m.FSM():
            with m.State("HEADER"):
                # (a load waits at its first word while ``hold``; a header
                # waits while a finished beat of the record before does)
                is_load = ((c.opcode == Opcode.LOAD_WEIGHTS) | (c.opcode == Opcode.LOAD_TABLES)
                           | (c.opcode == Opcode.LOAD_CACHE)
                           | (c.opcode == Opcode.CONFIGURE_STAGES))
                m.d.comb += self.cmd.ready.eq(~full & ~(self.hold & c.first & is_load))
                with m.If(self.cmd.valid & self.cmd.ready):
                    rec = record_layout()(c.data)
                    hdr_port, hdr_count = rec.port, rec.count
                    bad_hdr = (hdr_port >= len(self._ports)) | (rec.zero != 0)
                    if self._query is not None:
                        is_q = Const(sum(int(q) << p for p, q in enumerate(self._query)),
                                     len(self._ports)).bit_select(hdr_port, 1)
                        bad_hdr |= is_q != (c.opcode == Opcode.SUBMIT_QUERY)
                    # (at the frame's start: a query taken is answered on ``qtag``)
                    refuse = (c.opcode == Opcode.SUBMIT_QUERY) & ~self.loaded & c.first
                    with m.If(c.opcode == Opcode.READ_COUNTERS):
                        # no payload; the answer is the counters, as they are now
                        m.d.sync += snapshot.eq(self.counters)
                        with m.If(c.last):
                            end_of_frame(Mux(c.bad, Status.MALFORMED_FRAME,
                                             Mux(c.empty, Status.OK, Status.BAD_PAYLOAD)))
                        with m.Else():
                            m.d.sync += status.eq(Status.BAD_PAYLOAD)
                            m.next = "DROP"
                    with m.Elif(refuse & ~c.bad):
                        # a query before the stages are configured
                        with m.If(c.last):
                            end_of_frame(Status.NOT_LOADED)
                        with m.Else():
                            m.d.sync += status.eq(Status.NOT_LOADED)
                            m.next = "DROP"
                    with m.Elif(c.empty):
                        end_of_frame(Mux(c.bad, Status.MALFORMED_FRAME,
                                         Mux(c.opcode == Opcode.SUBMIT_QUERY,
                                             Status.BAD_PAYLOAD, Status.OK)))
                    with m.Elif(bad_hdr):
                        with m.If(c.last):
                            end_of_frame(Mux(c.bad, Status.MALFORMED_FRAME, Status.BAD_PAYLOAD))
                        with m.Else():
                            m.d.sync += status.eq(Status.BAD_PAYLOAD)
                            m.next = "DROP"
                    with m.Elif(c.last):
                        # a header alone: fine if it announces no beats
                        end_of_frame(Mux(c.bad, Status.MALFORMED_FRAME,
                                         Mux(hdr_count == 0, Status.OK, Status.BAD_PAYLOAD)))
                    with m.Elif(hdr_count != 0):
                        m.d.sync += [port.eq(hdr_port), count.eq(hdr_count), at.eq(0)]
                        m.next = "WORDS"
            with m.State("WORDS"):
                m.d.comb += self.cmd.ready.eq(~full)
                with m.If(self.cmd.valid & ~full):
                    m.d.sync += [beat.eq(with_word), at.eq(at + 1)]
                    with m.If(at == need - 1):
                        # the frame's last word may end the record: answered
                        # once the beat has gone
                        m.d.sync += [opcode.eq(c.opcode), tag.eq(c.tag),
                                     status.eq(Mux(c.bad, Status.MALFORMED_FRAME,
                                                   Mux(count == 1, Status.OK,
                                                       Status.BAD_PAYLOAD))),
                                     count.eq(count - 1), at.eq(0)]
                        with m.If(free):
                            m.d.sync += [ob.eq(with_word), oport.eq(port), ov.eq(1)]
                        with m.Else():
                            m.d.sync += full.eq(1)
                        with m.If(c.last):
                            m.next = "ANSWER"
                        with m.Elif(count == 1):
                            m.next = "HEADER"
                    with m.Elif(c.last):
                        end_of_frame(Mux(c.bad, Status.MALFORMED_FRAME, Status.BAD_PAYLOAD))
            with m.State("DROP"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid & c.last):
                    m.d.sync += [opcode.eq(c.opcode), tag.eq(c.tag)]
                    with m.If(c.bad):
                        m.d.sync += status.eq(Status.MALFORMED_FRAME)
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                # (after the frame's beats have gone)
                with m.If(ov | full):
                    pass
                with m.Elif(query):
                    m.d.comb += [self.qtag.valid.eq(1), self.qtag.payload.tag.eq(tag),
                                 self.qtag.payload.status.eq(final)]
                    with m.If(self.qtag.ready):
                        m.next = "HEADER"
                with m.Elif(final != Status.OK):
                    e = self.err.payload
                    m.d.comb += [self.err.valid.eq(1), e.opcode.eq(opcode), e.tag.eq(tag),
                                 e.status.eq(final)]
                    with m.If(self.err.ready):
                        m.next = "HEADER"
                if self._counters:
                    with m.Elif(opcode == Opcode.READ_COUNTERS):
                        a = self.ans.payload
                        m.d.comb += [self.ans.valid.eq(1), a.opcode.eq(opcode),
                                     a.tag.eq(tag), a.status.eq(final),
                                     a.length.eq(self._counters), a.empty.eq(0),
                                     a.last.eq(word == self._counters - 1)]
                        for k in range(self._counters):
                            with m.If(word == k):
                                m.d.comb += a.data.eq(snapshot[k])
                        with m.If(self.ans.ready):
                            m.d.sync += word.eq(word + 1)
                            with m.If(word == self._counters - 1):
                                m.d.sync += word.eq(0)
                                m.next = "HEADER"
                with m.Else():
                    a = self.ans.payload
                    # (an empty answer: status is OK here)
                    m.d.comb += [self.ans.valid.eq(1), a.opcode.eq(opcode), a.tag.eq(tag),
                                 a.status.eq(final), a.length.eq(0), a.data.eq(0),
                                 a.empty.eq(self.ans.valid), a.last.eq(self.ans.valid)]
                    with m.If(self.ans.ready):
                        m.next = "HEADER"
        return m
