# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the query answer (hw/result.py): lists through the
top-k filter, the result writer and the command processor's answer
encoder, every frame decoded by the host's decoder (host/protocol.py) and
compared with the golden top-k (host/topk.py), with random idle cycles,
random gaps between lists and random backpressure."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from host import protocol as P
from host.topk import topk
from hw.command import AnswerEncoder
from hw.config import TopKConfig
from hw.result import ResultWriter
from hw.topk import TopKFilter
from tests.amaranth_streams import stream_get, stream_put


class _Answer(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        self.filter = TopKFilter(cfg)
        self.writer = ResultWriter(cfg)
        self.enc = AnswerEncoder()
        super().__init__({"i": wiring.In(self.filter.i.signature.flip()),
                          "meta": wiring.In(self.writer.meta.signature.flip()),
                          "o": wiring.Out(self.enc.o.signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.filter, m.submodules.writer = self.filter, self.writer
        m.submodules.enc = self.enc
        wiring.connect(m, wiring.flipped(self.i), self.filter.i)
        wiring.connect(m, wiring.flipped(self.meta), self.writer.meta)
        wiring.connect(m, self.filter.o, self.writer.i)
        wiring.connect(m, self.writer.ans, self.enc.ans)
        wiring.connect(m, self.writer.err, self.enc.canned)
        wiring.connect(m, self.enc.o, wiring.flipped(self.o))
        return m


def test_rejects_bad_config():
    with pytest.raises(TypeError, match="TopKConfig"):
        ResultWriter({"k_max": 4})


@pytest.mark.parametrize("signed, seed", [(True, 0), (False, 1), (True, 2)])
def test_answers_are_the_golden_top_k(signed, seed):
    cfg = TopKConfig(k_max=6, lanes=1, score_bits=7, signed=signed, id_bits=6)
    dut = _Answer(cfg)
    r = random.Random(seed)
    lo, hi = (-64, 63) if signed else (0, 127)
    lists = []
    for n in range(24):
        length = r.choice([0, 1, 3, 6, 7, 12, r.randrange(0, 40)])
        # few distinct scores: ties, which the tie rule settles
        scores = [r.choice([lo, hi, r.randrange(lo, hi + 1), 5]) for _ in range(length)]
        ids = [r.randrange(64) for _ in range(length)]
        k = r.choice([1, 2, 6, r.randrange(1, 7), 0, 7])      # 0 and 7: BAD_K
        # a query that failed upstream (a bad id): its list is dropped
        failed = r.random() < 0.15
        lists.append((scores, ids, k, 1000 + n, failed))
    got = []
    done = []

    async def source(ctx):
        for scores, ids, k, *_ in lists:
            for j, (s, i) in enumerate(zip(scores, ids)):
                await stream_put(ctx, dut.i, {"pairs": [{"score": s, "id": i}], "valid": 1,
                                              "last": j == len(scores) - 1, "k": k},
                                 rng=r, idle=0.3)
            if not scores:
                await stream_put(ctx, dut.i, {"valid": 0, "last": 1, "k": k})
            for _ in range(r.choice([0, 0, 5])):
                await ctx.tick()
        done.append("source")

    async def metas(ctx):
        for *_, tag, failed in lists:
            await stream_put(ctx, dut.meta, {"tag": tag, "status": P.Status.BAD_ID if failed
                                             else P.Status.OK}, rng=r, idle=0.5)
        done.append("meta")

    async def sink(ctx):
        words = []
        while len(got) < len(lists):
            w = await stream_get(ctx, dut.o, rng=r, stall=0.3)
            words.append(w.data)
            if w.last:
                got.append(np.array(words, dtype=np.uint64).tobytes())
                words = []
        done.append("sink")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (source, metas, sink):
        sim.add_testbench(tb)
    sim.run_until(1e-8 * 40_000)
    assert sorted(done) == ["meta", "sink", "source"], "the answers did not all come"

    for (scores, ids, k, tag, failed), raw in zip(lists, got):
        frame = P.decode_frame(raw, response=True)
        assert (frame.opcode, frame.tag) == (P.Opcode.SUBMIT_QUERY, tag)
        if failed:
            assert frame.status == P.Status.BAD_ID
        elif 1 <= k <= cfg.k_max:
            assert frame.status == P.Status.OK
            positions, got_scores = P.decode_result(frame.payload)
            want_s, want_i = topk(scores, ids, k)
            assert positions.tolist() == want_i.tolist()
            assert got_scores.tolist() == want_s.tolist()
        else:
            assert frame.status == P.Status.BAD_CONFIG
            assert "bad config" in P.error_text(frame)
