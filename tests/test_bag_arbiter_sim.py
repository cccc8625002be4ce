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
from dataclasses import dataclass, field

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
    with pytest.raises(ValueError, match=r"depth: .*at least 3\), not 2"):
        BagArbiter(EMB, DIM, depth=2)


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


@dataclass
class Run:
    order: list         # the client of each bag at o
    got: list           # the features each client got
    most: list          # per client: most credits in use (bags in flight + features waiting)
    done: list          # the processes that finished
    held: dict = field(default_factory=dict)  # held client: (bags granted, r<c>.valid) at release
    r_offers: int = 0   # cycles with r.valid
    stuck: int = 0      # ... with the head feature's client not ready on r<c>


def _run(dut, r, bags, *, idle, stall, delay, cycles, slow=None, hold=(),
         never_blocks=False):
    """Clients send ``bags[c]`` and take their features with ``stall`` (or
    ``slow``, when given), the fetch takes bags with ``stall``; a client in
    ``hold`` takes none of its features until every other client got all of
    its own. With
    ``never_blocks`` (and a fetch answering at least 2 cycles after a bag:
    ``min(delay) >= 2``), ``r`` must be ready whenever it is valid."""
    n = dut.clients
    ins = [getattr(dut, f"i{c}") for c in range(n)]
    outs = [getattr(dut, f"r{c}") for c in range(n)]
    run = Run(order=[], got=[[] for _ in range(n)], most=[0] * n, done=[])
    order, got, done = run.order, run.got, run.done
    pending = []                        # features the fetch owes, in bag order
    total = sum(len(b) for b in bags)
    assert not never_blocks or min(delay) >= 2

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
            if c in hold:
                while not all(f"r{o}" in done for o in range(n) if o not in hold):
                    await ctx.tick()
                for _ in range(20):     # time enough to grant a bag, were there a credit
                    await ctx.tick()
                run.held[c] = (order.count(c), ctx.get(outs[c].valid))
            while len(got[c]) < len(bags[c]):
                got[c].append(_as_feature(await stream_get(
                    ctx, outs[c], rng=r, stall=stall if slow is None else slow)))
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
        # each client's credits in use: its bags' first beats taken at o,
        # minus its features taken at r<c>; and the stream rules at o: a
        # beat offered stays until taken
        mid = False
        waiting = None
        used = [0] * n
        sigs = [dut.o.valid, dut.o.ready, dut.o.payload.lookup.last, dut.o.payload.lookup.id,
                dut.o.payload.as_value(), dut.r.valid, dut.r.ready]
        for c in range(n):
            sigs += [outs[c].valid, outs[c].ready]
        heads = []                      # clients of the features owed on r
        while len(done) < 2 * n + 2:
            _, _, ov, ordy, last, oid, beat, rv, rrdy, *rc = await ctx.tick().sample(*sigs)
            if waiting is not None:
                assert ov and beat == waiting, "a bag's beat changed or left before taken"
            waiting = beat if ov and not ordy else None
            if ov and ordy:
                if not mid:
                    used[oid >> 28] += 1
                    heads.append(oid >> 28)
                mid = not last
            if rv:
                run.r_offers += 1
                h = heads[0]
                run.stuck += not rc[2 * h + 1]
                assert rrdy or not never_blocks, "r blocked"
                if rrdy:
                    heads.pop(0)
            for c in range(n):
                used[c] -= rc[2 * c] and rc[2 * c + 1]
                assert 0 <= used[c] <= dut.depth, f"client {c}: {used[c]} credits in use"
                run.most[c] = max(run.most[c], used[c])
        done.append("monitor")

    sim = Simulator(dut)
    sim.add_clock(PERIOD)
    for p in ([client(c) for c in range(n)] + [receiver(c) for c in range(n)]
              + [fetch, answer, monitor]):
        sim.add_testbench(p)
    run_bounded(sim, PERIOD * cycles)
    return run


def _all_done(n):
    return sorted([f"i{c}" for c in range(n)] + [f"r{c}" for c in range(n)]
                  + ["fetch", "answer", "monitor"])


@pytest.mark.parametrize("clients, depth, seed", [(2, 32, 0), (2, 3, 1), (3, 3, 2), (3, 4, 3)])
def test_each_client_gets_its_own_features(clients, depth, seed):
    r = random.Random(seed)
    dut = BagArbiter(EMB, DIM, clients=clients, depth=depth)
    bags = [_bags(r, c, r.randint(30, 50)) for c in range(clients)]
    # a slow fetch: the credits run out
    run = _run(dut, r, bags, idle=0.3, stall=0.3, delay=[0, 0, 1, 6], cycles=8_000)
    assert sorted(run.done) == _all_done(clients), f"hung: only {run.done}"
    for c in range(clients):
        assert run.got[c] == [_feature(b) for b in bags[c]]
    assert sorted(run.order) == sorted(c for c in range(clients) for _ in bags[c])
    if depth <= 4:
        assert max(run.most) == depth, "no client ever ran out of credits"
    # both clients were busy at once, or arbitration was never tested
    switches = sum(a != b for a, b in zip(run.order, run.order[1:]))
    assert switches > len(run.order) // 4


@pytest.mark.parametrize("clients, depth, seed", [(2, 4, 11), (3, 3, 12), (2, 32, 13)])
def test_held_client_stalls_only_itself(clients, depth, seed):
    """Client 0 takes none of its features (r0.ready low) and has more than
    ``depth`` bags: it is granted exactly ``depth`` bags, its features wait
    in its FIFO, and the other clients' bags and features (taken with random
    stalls) all go through meanwhile. Then client 0 takes its features and
    sends the rest of its bags."""
    r = random.Random(seed)
    dut = BagArbiter(EMB, DIM, clients=clients, depth=depth)
    bags = [_bags(r, 0, depth + 10)] + [_bags(r, c, 60) for c in range(1, clients)]
    run = _run(dut, r, bags, idle=0.2, stall=0.4, delay=[2, 2, 3, 7], cycles=20_000,
               hold={0}, never_blocks=True)
    assert sorted(run.done) == _all_done(clients), f"hung: only {run.done}"
    for c in range(clients):
        assert run.got[c] == [_feature(b) for b in bags[c]], f"client {c}"
    # on release: client 0 had been granted depth bags, no more, and their
    # features were waiting for it
    assert run.held == {0: (depth, 1)}
    # client 0's bag after those came only after all the others' bags
    after = [i for i, c in enumerate(run.order) if c == 0][depth]
    assert all(c == 0 for c in run.order[after:])
    assert run.most[0] == depth


def test_return_never_blocks():
    """Clients slow to take their features (random stalls), a fetch
    answering at random after at least 2 cycles: ``r`` is ready whenever
    valid, also while the head feature's client is not ready (where an
    in-order return would have waited)."""
    r = random.Random(21)
    dut = BagArbiter(EMB, DIM, clients=3, depth=4)
    bags = [_bags(r, c, 50) for c in range(3)]
    run = _run(dut, r, bags, idle=0.1, stall=0.1, slow=0.8, delay=[2, 2, 2, 3], cycles=20_000,
               never_blocks=True)
    assert sorted(run.done) == _all_done(3), f"hung: only {run.done}"
    for c in range(3):
        assert run.got[c] == [_feature(b) for b in bags[c]]
    assert run.r_offers == 150
    assert run.stuck > 30, "the clients' stalls never met a feature on r"
    assert max(run.most) == 4


def test_round_robin():
    """Clients with bags always waiting take turns, bag by bag, whatever the
    bags' lengths."""
    r = random.Random(5)
    dut = BagArbiter(EMB, DIM, clients=2, depth=8)
    bags = [_bags(r, c, 20) for c in range(2)]
    run = _run(dut, r, bags, idle=0, stall=0, delay=[0], cycles=1_000)
    assert sorted(run.done) == _all_done(2), f"hung: only {run.done}"
    assert run.order == [0, 1] * 20
    assert run.got == [[_feature(b) for b in bags[c]] for c in range(2)]


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


@pytest.mark.parametrize("clients, depth", [(2, 32), (3, 3)])
def test_lints_clean(tmp_path, clients, depth):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "bag_arbiter.v"
    path.write_text(to_verilog(BagArbiter(EMB, DIM, clients=clients, depth=depth),
                               "bag_arbiter"))
    lint(path, "bag_arbiter")
