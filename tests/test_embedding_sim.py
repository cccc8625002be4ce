"""amaranth.sim tests of the embedding lookup unit on an on-chip bank (the
cocotb suite drives the AXI channels with the memory model)."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import EmbeddingConfig, Config
from hw.embedding import EmbeddingLookup, Status
from tests.amaranth_streams import stream_get, stream_put

CFG = Config.preset("tiny").embedding


def make_rows(rng, rows, dim, bits):
    """Random rows in the hardware format: (scale_q, bias_q, codes)."""
    scale = rng.integers(-(1 << 20), 1 << 20, rows)
    bias = rng.integers(-(1 << 28), 1 << 28, rows)
    codes = rng.integers(0, 1 << bits, (rows, dim))
    return scale, bias, codes


def row_words(cfg, scale, bias, codes, bits):
    dim = codes.shape[0]
    raw = bytearray(int(scale).to_bytes(4, "little", signed=True)
                    + int(bias).to_bytes(4, "little", signed=True))
    if bits == 8:
        raw += bytes(int(c) for c in codes)
    else:
        padded = list(codes) + [0] * (dim % 2)
        raw += bytes(int(padded[2 * i]) | int(padded[2 * i + 1]) << 4
                     for i in range(len(padded) // 2))
    beats = 1 << (cfg.row_beats(dim, bits) - 1).bit_length()     # the stride
    raw += bytes(beats * cfg.bus_bytes - len(raw))
    return [int.from_bytes(raw[b * cfg.bus_bytes:(b + 1) * cfg.bus_bytes], "little")
            for b in range(beats)]


def test_bank_lookups():
    cfg = CFG
    rng = np.random.default_rng(1)
    # table 2 lives on channel 0: a lookup of it on the bank's stream is BAD_TABLE
    tables = [dict(rows=8, dim=16, bits=8), dict(rows=8, dim=5, bits=4)]
    unit = cfg.channels         # bank 0
    words, descs = [], []
    for t in tables:
        t["data"] = make_rows(rng, t["rows"], t["dim"], t["bits"])
        base = len(words)
        for r in range(t["rows"]):
            words += row_words(cfg, t["data"][0][r], t["data"][1][r], t["data"][2][r], t["bits"])
        descs.append({"valid": 1, "onchip": 1, "unit": 0, "base": base, "rows": t["rows"],
                      "dim": t["dim"], "bits4": int(t["bits"] == 4),
                      "row_beats": cfg.row_beats(t["dim"], t["bits"]),
                      "stride_shift": (cfg.row_beats(t["dim"], t["bits"]) - 1).bit_length()})
    descs.append({**descs[0], "onchip": 0})
    # table 3: on the bank but past its end (a bad descriptor): every read
    # answers SLVERR, so its bags are MEM_ERROR, and nothing is read outside
    descs.append({**descs[0], "base": cfg.onchip_words - 2})
    assert len(words) <= cfg.onchip_words
    dut = EmbeddingLookup(cfg)
    prng = random.Random(2)
    bags = []
    for _ in range(40):
        table = prng.randrange(5)
        n = prng.randrange(0, 5)
        ids = [prng.randrange(12) for _ in range(n)]
        bags.append((table, ids))

    def golden(table, ids):
        if table == 3:              # reads past the bank's end
            if any(i >= descs[3]["rows"] for i in ids):
                return Status.BAD_ID, np.zeros(cfg.max_dim, np.int64)
            return (Status.MEM_ERROR if ids else Status.OK), np.zeros(cfg.max_dim, np.int64)
        if table >= len(tables):    # no such table, or not on this unit
            return Status.BAD_TABLE, np.zeros(cfg.max_dim, np.int64)
        t = tables[table]
        if any(i >= t["rows"] for i in ids):
            return Status.BAD_ID, np.zeros(cfg.max_dim, np.int64)
        s, b, c = t["data"]
        out = np.zeros(cfg.max_dim, np.int64)
        for i in ids:
            out[:t["dim"]] += c[i] * s[i] + b[i]
        return Status.OK, out

    async def load_and_send(ctx):
        for a, w in enumerate(words):
            await stream_put(ctx, dut.bank_w, {"bank": 0, "addr": a, "data": w})
        for i, d in enumerate(descs):
            await stream_put(ctx, dut.desc, {"table": i, "desc": d})
        i_port = getattr(dut, f"i{unit}")
        for table, ids in bags:
            if not ids:
                await stream_put(ctx, i_port, {"table": table, "id": 0, "last": 1, "empty": 1},
                                 rng=prng, idle=0.3)
            for n, i in enumerate(ids):
                await stream_put(ctx, i_port, {"table": table, "id": i,
                                              "last": int(n == len(ids) - 1), "empty": 0},
                                 rng=prng, idle=0.3)

    checked = []

    async def check(ctx):
        for n, (table, ids) in enumerate(bags):
            got = await stream_get(ctx, getattr(dut, f"o{unit}"), rng=prng, stall=0.3)
            status, want = golden(table, ids)
            assert got.status == status, (n, table, ids, got.status)
            assert [got.pooled[p] for p in range(cfg.max_dim)] == want.tolist(), (n, table, ids)
            checked.append(n)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(load_and_send)
    sim.add_testbench(check)
    sim.run_until(1e-8 * 20000)
    assert len(checked) == len(bags), f"only {len(checked)} of {len(bags)} bags came out"
