# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the bag arbiter (hw/bag_arbiter.py): two (or three)
clients send random bags of 1 to 4 beats with random stalls, also in the
middle of a bag; a testbench fetch takes the bags with backpressure and
answers each, after a random delay and in order, with a feature that is a
checksum of the bag. Checked: every bag reaches the fetch whole (never
interleaved) and in its client's order, every client gets exactly its own
features in its own order, no more than ``depth`` bags are in flight, and
bags are granted round-robin. Plus bad parameters and Verilator lint."""

import random
import zlib

import pytest
from amaranth.sim import Simulator

from hw.bag_arbiter import BagArbiter
from hw.config import Config
from hw.embedding import Status
from tests.amaranth_streams import run_bounded, stream_get, stream_put

EMB = Config.preset("tiny").embedding
DIM = 4
PERIOD = 1e-8


def test_rejects_bad_parameters():
    with pytest.raises(TypeError, match="EmbeddingConfig"):
        BagArbiter(Config.preset("tiny"), DIM)
    with pytest.raises(ValueError, match="dim: .* not 17"):
        BagArbiter(EMB, EMB.max_dim + 1)
    with pytest.raises(ValueError, match="clients: .* not 1"):
        BagArbiter(EMB, DIM, clients=1)
    with pytest.raises(ValueError, match="depth: .* not 0"):
        BagArbiter(EMB, DIM, depth=0)


def _bags(r, client, n):
    """``n`` random bags of ``client``: lists of beats; the client is in the
    ids' top bits, so a beat at ``o`` tells whose it is."""
    bags = []
    for _ in range(n):
        length = r.randint(1, 4)
        item, group_last = r.randrange(2), r.randrange(2)
        bags.append([{"lookup": {"table": r.randrange(EMB.max_tables),
                                 "id": client << 28 | r.getrandbits(28),
                                 "last": j == length - 1, "empty": 0},
                      "item": item, "group_last": group_last} for j in range(length)])
    return bags


def _key(beat):
    return tuple(int(v) for v in (beat["lookup"]["table"], beat["lookup"]["id"],
                                  beat["lookup"]["last"], beat["item"], beat["group_last"]))


def _feature(bag):
    """The fetch's answer to a bag: a checksum of it."""
    crc = zlib.crc32(repr([_key(b) for b in bag]).encode())
    vec = [(crc >> 8 * e & 0xff) - 256 * (crc >> 8 * e & 0x80 != 0) for e in range(DIM)]
    status = Status.BAD_ID if crc & 1 else Status.OK
    return {"item": bag[-1]["item"], "last": bag[-1]["group_last"], "status": status,
            "vec": vec}


def _as_beat(b):
    lk = b.lookup
    return {"lookup": {"table": lk.table, "id": lk.id, "last": lk.last, "empty": lk.empty},
            "item": b.item, "group_last": b.group_last}


def _as_feature(f):
    return {"item": f.item, "last": f.last, "status": f.status, "vec": list(f.vec)}


def _run(dut, r, bags, *, idle, stall, delay, cycles):
    """Clients send ``bags[c]``; returns what the fetch saw (per bag: its
    client), the features each client got, the most bags in flight, and the
    processes that finished."""
    n = dut.clients
    ins = [getattr(dut, f"i{c}") for c in range(n)]
    outs = [getattr(dut, f"r{c}") for c in range(n)]
    order = []                          # the client of each bag at o
    pending = []                        # features the fetch owes, in bag order
    got = [[] for _ in range(n)]
    inflight = [0, 0]                   # now, most
    done = []
    total = sum(len(b) for b in bags)

    def client(c):
        async def send(ctx):
            for bag in bags[c]:
                for beat in bag:        # (idle between beats: a stall mid-bag)
                    await stream_put(ctx, ins[c], beat, rng=r, idle=idle)
                # now and then a pause: the other client's bags go alone, and
                # this one's next bag comes while one of theirs waits
                if r.random() < idle:
                    for _ in range(r.randint(1, 8)):
                        await ctx.tick()
            done.append(f"i{c}")
        return send

    def receiver(c):
        async def receive(ctx):
            while len(got[c]) < len(bags[c]):
                got[c].append(_as_feature(await stream_get(ctx, outs[c], rng=r, stall=stall)))
            done.append(f"r{c}")
        return receive

    async def fetch(ctx):
        nxt = [0] * n
        bag = []
        while len(order) < total:
            beat = _as_beat(await stream_get(ctx, dut.o, rng=r, stall=stall))
            bag.append(beat)
            if beat["lookup"]["last"]:
                c = bag[0]["lookup"]["id"] >> 28
                assert c < n and nxt[c] < len(bags[c]), f"a bag no client sent: {bag}"
                assert bag == bags[c][nxt[c]], \
                    f"bag {nxt[c]} of client {c} came as {bag} (interleaved or out of order)"
                nxt[c] += 1
                order.append(c)
                pending.append(_feature(bag))
                bag = []
        done.append("fetch")

    async def answer(ctx):
        sent = 0
        while sent < total:
            if not pending:
                await ctx.tick()
                continue
            for _ in range(r.choice(delay)):
                await ctx.tick()
            await stream_put(ctx, dut.r, pending.pop(0))
            sent += 1
        done.append("answer")

    async def monitor(ctx):
        # bags in flight: a first beat taken at o, minus features taken at r;
        # and the stream rules at o: a beat offered stays until taken
        mid = False
        waiting = None
        while len(done) < 2 * n + 2:
            _, _, ov, ordy, last, beat, rv, rrdy = await ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload.lookup.last, dut.o.payload.as_value(),
                dut.r.valid, dut.r.ready)
            if waiting is not None:
                assert ov and beat == waiting, "a bag's beat changed or left before taken"
            waiting = beat if ov and not ordy else None
            if ov and ordy:
                inflight[0] += not mid
                mid = not last
            inflight[0] -= rv and rrdy
            assert 0 <= inflight[0] <= dut.depth, f"{inflight[0]} bags in flight"
            inflight[1] = max(inflight)
        done.append("monitor")

    sim = Simulator(dut)
    sim.add_clock(PERIOD)
    for p in ([client(c) for c in range(n)] + [receiver(c) for c in range(n)]
              + [fetch, answer, monitor]):
        sim.add_testbench(p)
    run_bounded(sim, PERIOD * cycles)
    return order, got, inflight[1], done


@pytest.mark.parametrize("clients, depth, seed", [(2, 32, 0), (2, 3, 1), (2, 1, 2), (3, 4, 3)])
def test_each_client_gets_its_own_features(clients, depth, seed):
    r = random.Random(seed)
    dut = BagArbiter(EMB, DIM, clients=clients, depth=depth)
    bags = [_bags(r, c, r.randint(30, 50)) for c in range(clients)]
    # a slow fetch: the order FIFO fills
    order, got, most, done = _run(dut, r, bags, idle=0.3, stall=0.3, delay=[0, 0, 1, 6],
                                  cycles=8_000)
    assert sorted(done) == sorted([f"i{c}" for c in range(clients)]
                                  + [f"r{c}" for c in range(clients)]
                                  + ["fetch", "answer", "monitor"]), f"hung: only {done}"
    for c in range(clients):
        assert got[c] == [_feature(b) for b in bags[c]]
    assert sorted(order) == sorted(c for c in range(clients) for _ in bags[c])
    if depth <= 4:
        assert most == depth, "the order FIFO never filled"
    # both clients were busy at once, or arbitration was never tested
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches > len(order) // 4


def test_round_robin():
    """Clients with bags always waiting take turns, bag by bag, whatever the
    bags' lengths."""
    r = random.Random(5)
    dut = BagArbiter(EMB, DIM, clients=2, depth=8)
    bags = [_bags(r, c, 20) for c in range(2)]
    order, got, _, done = _run(dut, r, bags, idle=0, stall=0, delay=[0], cycles=1_000)
    assert len(done) == 7, f"hung: only {done}"
    assert order == [0, 1] * 20
    assert got == [[_feature(b) for b in bags[c]] for c in range(2)]


def test_offered_bag_keeps_o():
    """A bag offered on o and not yet taken keeps o, even when a client the
    round robin would prefer comes meanwhile."""
    r = random.Random(9)
    dut = BagArbiter(EMB, DIM, clients=2, depth=4)
    (x, y), (z,) = _bags(r, 0, 2), _bags(r, 1, 1)
    seen, done = [], []

    async def bench(ctx):
        def beat():
            return _as_beat(ctx.get(dut.o.payload))
        # bag x of client 0 goes: client 1 is next in the round robin
        ctx.set(dut.o.ready, 1)
        for b in x:
            ctx.set(dut.i0.payload, b)
            ctx.set(dut.i0.valid, 1)
            await ctx.tick()
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i0.payload, y[0])           # y waits on o ...
        await ctx.tick()
        assert ctx.get(dut.o.valid) and beat() == y[0]
        ctx.set(dut.i1.payload, z[0])           # ... and keeps it when z comes
        ctx.set(dut.i1.valid, 1)
        for _ in range(5):
            assert ctx.get(dut.o.valid) and beat() == y[0]
            assert not ctx.get(dut.i1.ready)
            await ctx.tick()
        ctx.set(dut.o.ready, 1)
        for b in y:
            ctx.set(dut.i0.payload, b)
            assert beat() == b and ctx.get(dut.i0.ready)
            await ctx.tick()
        ctx.set(dut.i0.valid, 0)
        for b in z:
            ctx.set(dut.i1.payload, b)
            assert beat() == b and ctx.get(dut.i1.ready)
            await ctx.tick()
        ctx.set(dut.i1.valid, 0)
        done.append("bench")

    async def fetch_answers(ctx):
        for bag in (x, y, z):
            await stream_put(ctx, dut.r, _feature(bag))
        done.append("answer")

    async def clients(ctx):
        for c in (0, 0, 1):
            seen.append((c, _as_feature(await stream_get(ctx, getattr(dut, f"r{c}")))))
        done.append("clients")

    sim = Simulator(dut)
    sim.add_clock(PERIOD)
    for p in (bench, fetch_answers, clients):
        sim.add_testbench(p)
    run_bounded(sim, PERIOD * 200)
    assert sorted(done) == ["answer", "bench", "clients"], f"hung: only {done}"
    assert seen == [(0, _feature(x)), (0, _feature(y)), (1, _feature(z))]


@pytest.mark.parametrize("clients, depth", [(2, 32), (3, 1)])
def test_lints_clean(tmp_path, clients, depth):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "bag_arbiter.v"
    path.write_text(to_verilog(BagArbiter(EMB, DIM, clients=clients, depth=depth),
                               "bag_arbiter"))
    lint(path, "bag_arbiter")
