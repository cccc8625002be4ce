"""amaranth.sim tests of the command processor's framing (hw/command.py)
against the wire format's reference, host/protocol.py: random frames, good
and malformed in every way the protocol names, with random idle cycles on
the input, random stalls in the block that handles the commands and random
backpressure on the output; every answer decoded by the host's decoder and
compared with what the host's checks say the device must answer."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from host import protocol as P
from host.packing import Packer
from hw.command import (MAGIC, MESSAGES, VERSION, CommandProcessor, Opcode, Status,
                        header_layout)
from tests.amaranth_streams import stream_get, stream_put

COMMANDS = [op for op in P.Opcode if op != P.Opcode.NONE]
_HEADER = Packer(header_layout())


def header(opcode, tag, length=0, status=0, magic=MAGIC) -> int:
    """A header word, from the hardware's layout (checked against the host's
    decoder by every test here)."""
    return _HEADER.pack({"opcode": opcode, "status": status, "tag": tag, "length": length,
                         "magic": magic})


def test_enums_are_the_protocols():
    assert {o.name: o.value for o in Opcode} == {o.name: o.value for o in P.Opcode}
    assert {s.name: s.value for s in Status} == {s.name: s.value for s in P.Status}
    assert (MAGIC, VERSION) == (P.MAGIC, P.VERSION)


def random_frame(r: random.Random, tag: int) -> list[int]:
    """The words of one frame, good or broken in one or two ways."""
    kind = r.choice(["good", "good", "good", "ping", "magic", "short", "long",
                     "status", "opcode", "opcode+long"])
    op = int(r.choice(COMMANDS)) if kind != "ping" else int(P.Opcode.PING)
    n = r.choice([0, 0, 1, 2, 3, r.randrange(0, 9)])
    payload = [r.getrandbits(64) for _ in range(n)]
    length, status, magic = n, 0, MAGIC
    if kind == "magic":
        magic = r.choice([0, 0xA4, 0xFF])
        length = r.randrange(0, 5)
    elif kind == "short":
        length = n + r.randrange(1, 3)          # TLAST before the length
    elif kind in ("long", "opcode+long"):
        if n == 0:
            payload = [r.getrandbits(64)]
            n = 1
        length = r.randrange(0, n)              # more words than the length
    elif kind == "status":
        status = r.randrange(1, 256)
    if kind.startswith("opcode"):
        op = r.choice([0, 8, 9, 200, 255])
    return [header(op, tag, length, status, magic)] + payload


def text(message: str) -> tuple:
    """An error answer's payload: a text record."""
    w = P.PayloadWriter().text(message).words()
    return tuple(int(x) for x in w)


def golden_status(words: list[int]) -> int:
    """The golden device's status for the frame (host/driver.py)."""
    from host.driver import GoldenDevice
    from hw.config import Config
    data = b"".join(w.to_bytes(8, "little") for w in words)
    frame, _ = GoldenDevice(Config.preset("tiny")).handle(data)
    return int(frame.status)


def expected(words: list[int]):
    """What the device answers: (opcode, tag, status, payload) from the
    host's decoder, with the testbench block's answer to good commands."""
    data = b"".join(w.to_bytes(8, "little") for w in words)
    try:
        f = P.decode_frame(data)
    except P.ProtocolError as e:
        op = e.opcode if e.opcode in [int(c) for c in COMMANDS] else 0
        return (op, e.tag, int(e.status), text(MESSAGES[Status(int(e.status))]))
    if f.opcode == P.Opcode.PING:
        if f.payload.size:              # PING's payload is empty (the golden device agrees)
            return (int(f.opcode), f.tag, int(P.Status.BAD_PAYLOAD),
                    text(MESSAGES[Status.BAD_PAYLOAD]))
        return (int(f.opcode), f.tag, 0, (VERSION,))
    return (int(f.opcode), f.tag, 0, block_answer([int(w) for w in f.payload]))


def block_answer(payload: list[int]) -> tuple:
    """The testbench block's answer to a good command: the count and the sum
    of its payload words (so every word must have come through)."""
    return (len(payload), sum(payload) % (1 << 64))


async def read_answer(ctx, dut, **stalls) -> tuple:
    """One answer frame off ``o``, decoded by the host: (opcode, tag,
    status, payload)."""
    words = []
    while True:
        w = await stream_get(ctx, dut.o, **stalls)
        words.append(w.data)
        if w.last:
            break
    f = P.decode_frame(b"".join(int(x).to_bytes(8, "little") for x in words), response=True)
    return (int(f.opcode), f.tag, int(f.status), tuple(int(x) for x in f.payload))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_frames(seed):
    r = random.Random(seed)
    tags = r.sample(range(1, 1 << 16), 100)
    frames = [random_frame(r, t) for t in tags]
    want = sorted(expected(f) for f in frames)
    # the golden device answers PING and every bad frame with the same status
    for f in frames:
        e = expected(f)
        if e[0] in (0, int(P.Opcode.PING)) or e[2] != 0:
            assert golden_status(f) == e[2], f"frame {[hex(w) for w in f]}"
    dut = CommandProcessor()
    got = []
    done = {}

    async def source(ctx):
        for words in frames:
            for k, w in enumerate(words):
                await stream_put(ctx, dut.i, {"data": w, "last": int(k == len(words) - 1)},
                                 rng=r, idle=0.3)

    # the frames whose header is good reach the block (PING's excepted)
    def reaches_block(words):
        h = words[0]
        op, status, magic = h & 0xFF, (h >> 8) & 0xFF, h >> 56
        return (magic == MAGIC and status == 0 and op in [int(c) for c in COMMANDS]
                and op != P.Opcode.PING)
    n_block = sum(map(reaches_block, frames))

    async def block(ctx):
        # takes commands (stalling at random) and answers each once its
        # frame has ended: a bad frame on cerr, a good one on ans
        for _ in range(n_block):
            words = []
            while True:
                beat = await stream_get(ctx, dut.cmd, rng=r, stall=0.3)
                if not beat.empty:
                    words.append(beat.data)
                if beat.last:
                    break
            opcode, tag = beat.opcode, beat.tag
            if beat.bad:
                await stream_put(ctx, dut.cerr, {"opcode": opcode, "tag": tag,
                                                 "status": Status.MALFORMED_FRAME},
                                 rng=r, idle=0.3)
                continue
            answer = block_answer(words)
            for k, w in enumerate(answer):
                await stream_put(ctx, dut.ans, {"opcode": opcode, "tag": tag,
                                                "status": Status.OK, "length": len(answer),
                                                "data": w, "last": int(k == len(answer) - 1),
                                                "empty": 0}, rng=r, idle=0.3)

    async def sink(ctx):
        while len(got) < len(frames):
            got.append(await read_answer(ctx, dut, rng=r, stall=0.3))
        done["sink"] = True

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(block)
    sim.add_testbench(sink)
    sim.run_until(2e-3)
    assert done.get("sink"), f"{len(got)} of {len(frames)} answers came"
    assert sorted(got) == want
    statuses = {s for _, _, s, _ in want}
    assert {0, 1, 2} <= statuses            # good, malformed and unknown frames all ran


def test_ping_and_back_to_back_errors():
    """A burst of bad frames, each one word, at a word a cycle with the
    output always ready: an answer for each, in order, none lost."""
    frames = [[0x1234], [header(1, 7, 3)], [header(1, 8)], [header(99, 9)],
              [header(1, 10, status=1)]]
    want = [expected(f) for f in frames]
    dut = CommandProcessor()
    got = []

    async def source(ctx):
        for words in frames:
            await stream_put(ctx, dut.i, {"data": words[0], "last": 1})

    async def sink(ctx):
        while len(got) < len(frames):
            got.append(await read_answer(ctx, dut))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-5)
    assert got == want
    assert [s for _, _, s, _ in got] == [1, 1, 0, 2, 1]
    assert np.array_equal(got[2][3], (VERSION,))
