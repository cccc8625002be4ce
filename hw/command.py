"""The command processor's framing: the host interface of the accelerator,
AXI4-Stream in and out, in the wire format of :mod:`host.protocol` (which is
the reference: frames of 64-bit words, ``TLAST`` ends a frame, a header word
``opcode | status << 8 | tag << 16 | length << 32 | MAGIC << 56``).

:class:`FrameDecoder`
    Checks each frame and hands the commands on, a word a cycle; every frame
    ends in exactly one of: its payload words on ``cmd`` (a header-only
    frame gives one ``empty`` beat), the last beat marked ``bad`` when the
    frame's length was wrong (the handler answers ``MALFORMED_FRAME``); or
    an error event on ``err``, without any beat on ``cmd``:

    ==============================  ===================  =======================
    what is wrong                   status               answer's opcode / tag
    ==============================  ===================  =======================
    magic is not ``MAGIC``          ``MALFORMED_FRAME``  ``NONE`` / 0
    length differs from the words   ``MALFORMED_FRAME``  the header's (*)
    a command with status != 0      ``MALFORMED_FRAME``  the header's (*)
    opcode not a command            ``UNKNOWN_COMMAND``  ``NONE`` / the header's
    ==============================  ===================  =======================

    (*) ``NONE`` when the header's opcode is not a command: an answer never
    carries an opcode that is not a command's. The checks come in this
    order, as in :func:`host.protocol.decode_frame`. A frame with a bad
    magic, or one longer than its header says, is read to its ``TLAST`` and
    dropped; nothing waits for a word that may never come, except the end
    of the frame itself.

:class:`AnswerEncoder`
    Writes answers as frames: the handlers' answers (``ans``: the header
    fields with the first beat, a payload word per beat, or one ``empty``
    beat) and the answers it writes itself (``canned``: opcode, tag and
    status; an error's payload is a text record, the status's name in words,
    from a ROM; ``PING``'s is ``[VERSION]``), never interleaving two frames.

:class:`CommandProcessor`
    Both, answering ``PING`` itself (``[VERSION]``; ``BAD_PAYLOAD`` when it
    comes with a payload, as :class:`host.driver.GoldenDevice`) and every error; the
    other commands go out on ``cmd`` to the blocks, which answer on ``ans``
    (or report a bad frame or payload on ``cerr``).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MAGIC", "VERSION", "Opcode", "Status", "MESSAGES", "word_layout",
           "header_layout", "command_layout", "answer_layout", "error_layout",
           "FrameDecoder", "AnswerEncoder", "CommandProcessor"]

MAGIC = 0xA5
VERSION = 1


class Opcode(enum.Enum, shape=8):
    NONE = 0
    PING = 1
    LOAD_WEIGHTS = 2
    LOAD_TABLES = 3
    LOAD_CACHE = 4
    CONFIGURE_STAGES = 5
    SUBMIT_QUERY = 6
    READ_COUNTERS = 7


class Status(enum.Enum, shape=8):
    OK = 0
    MALFORMED_FRAME = 1
    UNKNOWN_COMMAND = 2
    BAD_PAYLOAD = 3
    BAD_ID = 4
    NOT_LOADED = 5
    BAD_CONFIG = 6
    DEVICE_ERROR = 7


#: The text of each error answer (a text record: byte count, then the bytes).
MESSAGES = {s: s.name.lower().replace("_", " ") for s in Status if s != Status.OK}

_COMMANDS = [op.value for op in Opcode if op != Opcode.NONE]


def word_layout() -> data.StructLayout:
    """A word on the AXI4-Stream: ``TDATA`` and ``TLAST``."""
    return data.StructLayout({"data": 64, "last": 1})


def header_layout() -> data.StructLayout:
    return data.StructLayout({"opcode": 8, "status": 8, "tag": 16, "length": 24, "magic": 8})


def command_layout() -> data.StructLayout:
    """A command beat to a handler: the frame's header fields, and a payload
    word (``empty``: none, a header-only frame); ``last`` ends the frame;
    ``bad`` (on the last beat) says the frame's length was wrong."""
    return data.StructLayout({"opcode": Opcode, "tag": 16, "length": 24, "data": 64,
                              "first": 1, "last": 1, "empty": 1, "bad": 1})


def answer_layout() -> data.StructLayout:
    """An answer beat from a handler: the header fields (read on the first
    beat of the answer), a payload word unless ``empty``; ``last`` ends it."""
    return data.StructLayout({"opcode": Opcode, "tag": 16, "status": Status, "length": 24,
                              "data": 64, "last": 1, "empty": 1})


def error_layout() -> data.StructLayout:
    return data.StructLayout({"opcode": Opcode, "tag": 16, "status": Status})


def _is_command(opcode):
    return Cat(*[opcode == c for c in _COMMANDS]).any()


class FrameDecoder(wiring.Component):
    """See the module documentation."""

    i: In(stream.Signature(word_layout()))
    cmd: Out(stream.Signature(command_layout()))
    err: Out(stream.Signature(error_layout()))

    def elaborate(self, platform):
        m = Module()
        w = self.i.payload
        hdr = Signal(header_layout())
        count = Signal(25)                  # payload words seen
        known = Signal()                    # the header's opcode is a command
        good = Signal()                     # magic, status and opcode are right
        m.d.comb += self.cmd.payload.opcode.eq(Mux(known, hdr.opcode, Opcode.NONE))
        m.d.comb += [self.cmd.payload.tag.eq(hdr.tag), self.cmd.payload.length.eq(hdr.length)]

        with m.FSM():
            with m.State("HEAD"):
                h = header_layout()(w.data)
                is_cmd = _is_command(h.opcode)
                ok = (h.magic == MAGIC) & (h.status == 0) & is_cmd
                # a good header-only frame goes to its handler at once
                empty_beat = ok & w.last
                with m.If(h.magic != MAGIC):
                    m.d.comb += [self.err.valid.eq(self.i.valid),
                                 self.err.payload.opcode.eq(Opcode.NONE),
                                 self.err.payload.tag.eq(0),
                                 self.err.payload.status.eq(Status.MALFORMED_FRAME),
                                 self.i.ready.eq(self.err.ready)]
                    with m.If(self.i.valid & self.err.ready & ~w.last):
                        m.next = "DRAIN"
                with m.Elif(empty_beat):
                    m.d.comb += [self.cmd.valid.eq(self.i.valid),
                                 self.cmd.payload.opcode.eq(h.opcode),
                                 self.cmd.payload.tag.eq(h.tag),
                                 self.cmd.payload.length.eq(h.length),
                                 self.cmd.payload.first.eq(1), self.cmd.payload.last.eq(1),
                                 self.cmd.payload.empty.eq(1),
                                 self.cmd.payload.bad.eq(h.length != 0),
                                 self.i.ready.eq(self.cmd.ready)]
                with m.Elif(w.last):
                    # a bad header-only frame: the error at once
                    m.d.comb += [self.err.valid.eq(self.i.valid),
                                 self.err.payload.opcode.eq(Mux(is_cmd, h.opcode, Opcode.NONE)),
                                 self.err.payload.tag.eq(h.tag),
                                 self.err.payload.status.eq(Mux(
                                     (h.length != 0) | (h.status != 0),
                                     Status.MALFORMED_FRAME, Status.UNKNOWN_COMMAND)),
                                 self.i.ready.eq(self.err.ready)]
                with m.Else():
                    m.d.comb += self.i.ready.eq(1)
                    with m.If(self.i.valid):
                        m.d.sync += [hdr.eq(h), count.eq(0), known.eq(is_cmd), good.eq(ok)]
                        with m.If(ok & (h.length == 0)):
                            # a good header-only frame that goes on: bad, and dropped
                            m.next = "EMPTY_BAD"
                        with m.Elif(ok):
                            m.next = "BODY"
                        with m.Else():
                            m.next = "COUNT"

            with m.State("BODY"):
                # forward the payload; the beat that ends it (TLAST or the
                # header's length) is the last, and bad if they disagree
                n = count + 1
                end_len = n == hdr.length
                last = w.last | end_len
                m.d.comb += [self.cmd.valid.eq(self.i.valid), self.cmd.payload.data.eq(w.data),
                             self.cmd.payload.first.eq(count == 0),
                             self.cmd.payload.last.eq(last),
                             self.cmd.payload.bad.eq(w.last != end_len),
                             self.i.ready.eq(self.cmd.ready)]
                with m.If(self.i.valid & self.cmd.ready):
                    m.d.sync += count.eq(n)
                    with m.If(last):
                        with m.If(~w.last):
                            m.next = "DRAIN"
                        with m.Else():
                            m.next = "HEAD"

            with m.State("EMPTY_BAD"):
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.first.eq(1),
                             self.cmd.payload.last.eq(1), self.cmd.payload.empty.eq(1),
                             self.cmd.payload.bad.eq(1)]
                with m.If(self.cmd.ready):
                    m.next = "DRAIN"

            with m.State("COUNT"):
                # a bad header: count the payload to tell a wrong length
                # from the header's own fault, then answer
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += count.eq(count + 1)
                    with m.If(w.last):
                        m.next = "COUNT_ERR"

            with m.State("COUNT_ERR"):
                m.d.comb += [self.err.valid.eq(1),
                             self.err.payload.opcode.eq(Mux(known, hdr.opcode, Opcode.NONE)),
                             self.err.payload.tag.eq(hdr.tag),
                             self.err.payload.status.eq(Mux(
                                 (count != hdr.length) | (hdr.status != 0),
                                 Status.MALFORMED_FRAME, Status.UNKNOWN_COMMAND))]
                with m.If(self.err.ready):
                    m.next = "HEAD"

            with m.State("DRAIN"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid & w.last):
                    m.next = "HEAD"
        return m


class AnswerEncoder(wiring.Component):
    """See the module documentation. ``canned`` takes the answers the
    encoder writes from its ROM: an error (the payload is the status's text
    record) or, with status ``OK``, ``PING``'s (``[VERSION]``)."""

    ans: In(stream.Signature(answer_layout()))
    canned: In(stream.Signature(error_layout()))
    o: Out(stream.Signature(word_layout()))

    def elaborate(self, platform):
        m = Module()
        # The canned payloads, per status: OK -> [VERSION]; an error -> its text.
        rom = {Status.OK.value: [VERSION]}
        for st, text in MESSAGES.items():
            raw = text.encode()
            rom[st.value] = [len(raw)] + [int.from_bytes(raw[i:i + 8].ljust(8, b"\0"), "little")
                                          for i in range(0, len(raw), 8)]
        n_words = max(len(v) for v in rom.values())
        c = Signal(error_layout())
        c_at = Signal(range(n_words))

        def canned(status, at):
            """(words, the word at ``at``) of a status's canned payload."""
            length, word = Signal(range(n_words + 1)), Signal(64)
            with m.Switch(status.as_value()):
                for code, words in rom.items():
                    with m.Case(code):
                        m.d.comb += length.eq(len(words))
                        for k, w in enumerate(words):
                            with m.If(at == k):
                                m.d.comb += word.eq(w)
            return length, word
        c_len, c_word = canned(c.status, c_at)
        in_len, _ = canned(self.canned.payload.status, Const(0, 1))

        def header(opcode, status, tag, length):
            h = Signal(header_layout())
            m.d.comb += [h.opcode.eq(opcode.as_value()), h.status.eq(status.as_value()),
                         h.tag.eq(tag), h.length.eq(length), h.magic.eq(MAGIC)]
            return h.as_value()

        a = self.ans.payload
        cp = self.canned.payload
        with m.FSM():
            with m.State("IDLE"):
                # the canned first; an answer's header from its first beat
                with m.If(self.canned.valid):
                    m.d.comb += [self.o.valid.eq(1),
                                 self.o.payload.data.eq(header(cp.opcode, cp.status, cp.tag,
                                                               in_len))]
                    with m.If(self.o.ready):
                        m.d.comb += self.canned.ready.eq(1)
                        m.d.sync += c.eq(cp)
                        m.next = "CANNED"
                with m.Elif(self.ans.valid):
                    m.d.comb += [self.o.valid.eq(1),
                                 self.o.payload.data.eq(header(a.opcode, a.status, a.tag,
                                                               Mux(a.empty, 0, a.length))),
                                 self.o.payload.last.eq(a.empty)]
                    with m.If(self.o.ready):
                        with m.If(a.empty):
                            m.d.comb += self.ans.ready.eq(1)
                        with m.Else():
                            m.next = "ANSWER"
            with m.State("ANSWER"):
                m.d.comb += [self.o.valid.eq(self.ans.valid), self.o.payload.data.eq(a.data),
                             self.o.payload.last.eq(a.last), self.ans.ready.eq(self.o.ready)]
                with m.If(self.ans.valid & self.o.ready & a.last):
                    m.next = "IDLE"
            with m.State("CANNED"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.data.eq(c_word),
                             self.o.payload.last.eq(c_at == c_len - 1)]
                with m.If(self.o.ready):
                    m.d.sync += c_at.eq(c_at + 1)
                    with m.If(c_at == c_len - 1):
                        m.d.sync += c_at.eq(0)
                        m.next = "IDLE"
        return m


class CommandProcessor(wiring.Component):
    """:class:`FrameDecoder` and :class:`AnswerEncoder`, answering ``PING``
    and every error; the other commands go to the blocks.

    Attributes
    ----------
    i, o : the AXI4-Stream words in and out (:func:`word_layout`)
    cmd : Out(stream.Signature(command_layout()))
        The commands for the blocks (not ``PING``), bad frames included:
        a block answers a beat with ``bad`` by a ``MALFORMED_FRAME`` event
        on ``cerr``.
    ans : In(stream.Signature(answer_layout()))
        The blocks' answers.
    cerr : In(stream.Signature(error_layout()))
        The blocks' error answers (the encoder writes the text).
    """

    i: In(stream.Signature(word_layout()))
    o: Out(stream.Signature(word_layout()))
    cmd: Out(stream.Signature(command_layout()))
    ans: In(stream.Signature(answer_layout()))
    cerr: In(stream.Signature(error_layout()))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = FrameDecoder()
        m.submodules.enc = enc = AnswerEncoder()
        wiring.connect(m, wiring.flipped(self.i), dec.i)
        wiring.connect(m, enc.o, wiring.flipped(self.o))
        wiring.connect(m, wiring.flipped(self.ans), enc.ans)
        c = dec.cmd.payload
        ping = c.opcode == Opcode.PING
        m.d.comb += [self.cmd.payload.eq(c), self.cmd.valid.eq(dec.cmd.valid & ~ping)]
        # the canned answers, in turn: the decoder's errors, the blocks',
        # then PING's ([VERSION]; MALFORMED_FRAME if its frame was bad,
        # BAD_PAYLOAD if it had a payload: PING's is empty)
        with m.If(dec.err.valid):
            m.d.comb += [enc.canned.valid.eq(1), enc.canned.payload.eq(dec.err.payload),
                         dec.err.ready.eq(enc.canned.ready)]
        with m.Elif(self.cerr.valid):
            m.d.comb += [enc.canned.valid.eq(1), enc.canned.payload.eq(self.cerr.payload),
                         self.cerr.ready.eq(enc.canned.ready)]
        with m.Elif(dec.cmd.valid & ping & c.last):
            m.d.comb += [enc.canned.valid.eq(1), enc.canned.payload.opcode.eq(Opcode.PING),
                         enc.canned.payload.tag.eq(c.tag),
                         enc.canned.payload.status.eq(
                             Mux(c.bad, Status.MALFORMED_FRAME,
                                 Mux(c.empty, Status.OK, Status.BAD_PAYLOAD)))]
        # (PING's payload, if any, is read and dropped)
        m.d.comb += dec.cmd.ready.eq(Mux(ping, ~c.last | (enc.canned.ready & ~dec.err.valid
                                                         & ~self.cerr.valid),
                                         self.cmd.ready))
        return m
