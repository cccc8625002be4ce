# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the port-record router (hw/loader.py): random
frames of records for ports of several widths (host/device_format.py packs
them), with random stalls on every port, checked beat for beat; and every
broken frame answered with its error, the router going on with the next."""

import random

import pytest
from amaranth.hdl import Shape, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from host.device_format import RecordWriter
from hw.command import Opcode, Status
from hw.loader import RecordRouter, record_header
from tests.amaranth_streams import stream_get, stream_put

PORTS = [("a", unsigned(10)),
         ("b", data.StructLayout({"x": 64, "y": 6})),
         ("c", data.ArrayLayout(unsigned(40), 3))]
WIDTHS = {p: Shape.cast(layout).width for p, layout in PORTS}


def bits(beat) -> int:
    """A port's beat as an integer."""
    return beat.as_value().value if hasattr(beat, "as_value") else int(beat)


def test_counters_are_the_protocols():
    from host.protocol import COUNTERS
    from hw.top import COUNTERS as HW
    assert HW == COUNTERS


def test_rejects_bad_ports():
    with pytest.raises(ValueError, match="names"):
        RecordRouter([("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match="taken"):
        RecordRouter([("cmd", 1)])
    with pytest.raises(ValueError, match="port"):
        record_header(256, 1)


def frame_beats(opcode, tag, words, bad=False):
    if not words:
        return [{"opcode": opcode, "tag": tag, "first": 1, "last": 1, "empty": 1, "bad": bad}]
    return [{"opcode": opcode, "tag": tag, "data": int(w), "first": i == 0,
             "last": i == len(words) - 1, "empty": 0, "bad": bad and i == len(words) - 1}
            for i, w in enumerate(words)]


@pytest.mark.parametrize("seed,query_ports", [(0, ()), (1, ()), (2, ("c",)), (3, ("c",))])
def test_records_reach_their_ports(seed, query_ports):
    """Random frames of records, good and broken; with ``query_ports``, a
    query's frame may write only those and the other frames only the others.
    Every beat before a frame breaks still arrives, before the frame's
    answer; a query's frame always ends on ``qtag``, with its status."""
    r = random.Random(seed)
    dut = RecordRouter(PORTS, query_ports=query_ports)
    names = [p for p, _ in PORTS]
    frames, want = [], {p: [] for p in names}
    answers = []
    sent = []           # per frame: the beats each port has had by its end
    for n in range(24):
        kind = r.choice(["good", "good", "good", "query", "query", "short", "port", "bad",
                         "empty", "mixed"])
        query = kind == "query" or (kind != "good" and r.random() < 0.5)
        op = Opcode.SUBMIT_QUERY if query or kind == "empty" else r.choice(
            [Opcode.LOAD_WEIGHTS, Opcode.LOAD_TABLES, Opcode.CONFIGURE_STAGES])
        allowed = [p for p in names if not query_ports or (p in query_ports) == query]
        others = [p for p in names if p not in allowed]
        w = RecordWriter(PORTS)
        for k in range(r.randrange(1, 4)):
            # a mixed frame: a record of a port its kind may not write, last
            p = r.choice(others) if kind == "mixed" and k > 0 and others else r.choice(allowed)
            w.add(p, [r.getrandbits(WIDTHS[p]) for _ in range(r.randrange(1, 4))])
        words = [int(x) for x in w.words()]
        tag = 100 + n
        if kind == "short":         # the frame ends inside its last record
            words = words[:-1]
        elif kind == "port":        # a record for a port that does not exist
            words = words + [record_header(len(PORTS), 1), 5]
        elif kind == "empty":
            words = []
        frames.append(frame_beats(op, tag, words, bad=kind == "bad"))
        # what arrives: every beat up to the first bad record header or the
        # frame's end inside a beat
        status, i = Status.OK, 0
        if not words:
            status = Status.BAD_PAYLOAD if op == Opcode.SUBMIT_QUERY else Status.OK
        while i < len(words):
            port, count = words[i] & 0xFF, words[i] >> 8
            if port >= len(names) or (query_ports and (names[port] in query_ports) != query):
                status = Status.BAD_PAYLOAD
                break
            nw = -(-WIDTHS[names[port]] // 64)
            i += 1
            for _ in range(count):
                if i + nw <= len(words):
                    want[names[port]].append(sum(words[i + k] << (64 * k) for k in range(nw)))
                else:
                    status = Status.BAD_PAYLOAD
                i += nw
        if kind == "bad":           # the decoder says the frame's length was wrong
            status = Status.MALFORMED_FRAME
        answers.append((op, tag, status))
        sent.append({p: len(want[p]) for p in names})

    got = {p: [] for p, _ in PORTS}
    got_answers = []
    early = []          # answers that came before some of their frame's beats
    done = []

    async def source(ctx):
        for f in frames:
            for b in f:
                await stream_put(ctx, dut.cmd, b, rng=r, idle=0.2)
        done.append("source")

    def sink(p):
        async def process(ctx):
            while len(got[p]) < len(want[p]):
                beat = await stream_get(ctx, getattr(dut, p), rng=r, stall=0.4)
                got[p].append(bits(beat))
            done.append(p)
        return process

    async def answer(ctx):
        while len(got_answers) < len(answers):
            for _ in range(r.randrange(0, 3)):
                await ctx.tick()
            if ctx.get(dut.ans.valid):
                a = ctx.get(dut.ans.payload)
                ctx.set(dut.ans.ready, 1)
                await ctx.tick()
                ctx.set(dut.ans.ready, 0)
                got_answers.append((a.opcode, a.tag, Status.OK))
            elif ctx.get(dut.err.valid):
                e = ctx.get(dut.err.payload)
                ctx.set(dut.err.ready, 1)
                await ctx.tick()
                ctx.set(dut.err.ready, 0)
                got_answers.append((e.opcode, e.tag, e.status))
            elif ctx.get(dut.qtag.valid):
                t = ctx.get(dut.qtag.payload)
                ctx.set(dut.qtag.ready, 1)
                await ctx.tick()
                ctx.set(dut.qtag.ready, 0)
                got_answers.append((Opcode.SUBMIT_QUERY, t.tag, t.status))
            else:
                await ctx.tick()
                continue
            # a frame is answered once its beats have gone
            early.extend((got_answers[-1], p, len(got[p]), n)
                         for p, n in sent[len(got_answers) - 1].items() if len(got[p]) < n)
        done.append("answers")

    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def loaded(ctx):
        ctx.set(dut.loaded, 1)
    sim.add_testbench(loaded)
    for tb in [source, answer] + [sink(p) for p, _ in PORTS]:
        sim.add_testbench(tb)
    sim.run_until(1e-8 * 40_000)
    assert sorted(done) == sorted(["source", "answers"] + [p for p, _ in PORTS]), done
    assert got == want
    assert got_answers == answers
    assert not early, early


def test_queries_wait_for_a_configuration():
    """Before ``loaded``, a query's frame is dropped whole and answered
    ``NOT_LOADED`` (or ``MALFORMED_FRAME``) on ``err``; loads still go
    through; after it, queries do."""
    dut = RecordRouter(PORTS)
    q = RecordWriter(PORTS).add("a", [5, 6]).words()
    frames = [(Opcode.SUBMIT_QUERY, 1, 0, False), (Opcode.LOAD_WEIGHTS, 2, 0, False),
              (Opcode.SUBMIT_QUERY, 3, 1, False), (Opcode.SUBMIT_QUERY, 4, 0, True)]
    got, answers = [], []

    async def source(ctx):
        for op, tag, loaded, bad in frames:
            ctx.set(dut.loaded, loaded)
            words = [int(w) for w in q][:1 if bad else None]
            for b in frame_beats(op, tag, words, bad=bad):
                await stream_put(ctx, dut.cmd, b)
            while len(answers) < tag:
                await ctx.tick()

    async def sink(ctx):
        for s in (dut.a, dut.ans, dut.err, dut.qtag):
            ctx.set(s.ready, 1)
        for _ in range(1000):
            *_, a, av, ev, es, ok = await ctx.tick().sample(
                dut.a.payload, dut.a.valid, dut.err.valid, dut.err.payload,
                dut.ans.valid | dut.qtag.valid)
            if av:
                got.append(a)
            if ev:
                answers.append((len(answers) + 1, es.status))
            if ok:
                answers.append((len(answers) + 1, Status.OK))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 2000)
    # (a query's frame of a bad length before ``loaded``: MALFORMED_FRAME on
    # ``err``, not a query)
    assert answers == [(1, Status.NOT_LOADED), (2, Status.OK), (3, Status.OK),
                       (4, Status.MALFORMED_FRAME)]
    assert got == [5, 6, 5, 6]


def test_a_query_taken_is_answered_on_qtag():
    """``loaded`` going low in the middle of a query's frame (a load's engine
    error showing late) does not cut the query: its beats all go out and it
    ends on ``qtag``, so that each query the stages saw has its tag."""
    dut = RecordRouter(PORTS)
    words = [int(w) for w in RecordWriter(PORTS).add("a", [5]).add("b", [7]).words()]
    got, tags = [], []

    async def source(ctx):
        ctx.set(dut.loaded, 1)
        for i, b in enumerate(frame_beats(Opcode.SUBMIT_QUERY, 9, words)):
            if i == 2:                      # after the first record
                ctx.set(dut.loaded, 0)
            await stream_put(ctx, dut.cmd, b)

    async def sink(ctx):
        for s in (dut.a, dut.b, dut.ans, dut.err, dut.qtag):
            ctx.set(s.ready, 1)
        for _ in range(200):
            *_, av, a, bv, b, qv, q, ev = await ctx.tick().sample(
                dut.a.valid, dut.a.payload, dut.b.valid, dut.b.payload,
                dut.qtag.valid, dut.qtag.payload, dut.err.valid)
            assert not ev
            if av:
                got.append(int(a))
            if bv:
                got.append(int(b.x))
            if qv:
                tags.append((q.tag, Status(q.status)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 400)
    assert got == [5, 7] and tags == [(9, Status.OK)]


def test_a_load_waits_while_hold():
    """A load waits at its first word while ``hold``; a query's frame does not."""
    dut = RecordRouter(PORTS)
    words = [int(w) for w in RecordWriter(PORTS).add("a", [5]).words()]
    log = []

    async def source(ctx):
        ctx.set(dut.loaded, 1)
        ctx.set(dut.hold, 1)
        for op, tag in ((Opcode.SUBMIT_QUERY, 1), (Opcode.CONFIGURE_STAGES, 2)):
            for b in frame_beats(op, tag, words):
                await stream_put(ctx, dut.cmd, b)
            log.append(("sent", tag))

    async def sink(ctx):
        for st in (dut.a, dut.ans, dut.err, dut.qtag):
            ctx.set(st.ready, 1)
        for cycle in range(300):
            if cycle == 150:
                ctx.set(dut.hold, 0)
                log.append(("released", None))
            *_, av, qv, ansv = await ctx.tick().sample(dut.a.valid, dut.qtag.valid,
                                                       dut.ans.valid)
            if av:
                log.append(("a", None))
            if qv:
                log.append(("qtag", None))
            if ansv:
                log.append(("answer", None))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 400)
    events = [e for e, _ in log if e != "sent"]
    assert events == ["a", "qtag", "released", "a", "answer"], log
    assert log.index(("sent", 1)) < log.index(("released", None)) < log.index(("sent", 2))


@pytest.mark.parametrize("port", ["a", "c"])
def test_one_word_a_cycle(port):
    """With every port ready, the router takes a word in every cycle (a
    beat of ``n`` words every ``n`` cycles: one word for ``a``, two for
    ``c``), and each beat leaves the cycle after its last word."""
    dut = RecordRouter(PORTS)
    n = -(-WIDTHS[port] // 64)
    beats = [random.Random(n).getrandbits(WIDTHS[port]) for _ in range(20)]
    words = [int(w) for w in RecordWriter(PORTS).add(port, beats).words()]
    took, out = [], []

    async def source(ctx):
        ctx.set(dut.loaded, 1)
        for b in frame_beats(Opcode.LOAD_WEIGHTS, 1, words):
            await stream_put(ctx, dut.cmd, b)

    async def sink(ctx):
        for st in (dut.a, dut.b, dut.c, dut.ans, dut.err, dut.qtag):
            ctx.set(st.ready, 1)
        for cycle in range(200):
            *_, cv, cr, ov, o = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.ready, getattr(dut, port).valid,
                getattr(dut, port).payload)
            if cv and cr:
                took.append(cycle)
            if ov:
                out.append((cycle, bits(o)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 300)
    assert [v for _, v in out] == beats
    assert took == list(range(took[0], took[0] + len(words)))
    # beat j's last word is word 1 + n * (j + 1) - 1 of the frame (after the header)
    assert [c for c, _ in out] == [took[n * (j + 1)] + 1 for j in range(len(beats))]
