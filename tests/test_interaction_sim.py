# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the dot interaction (hw/interaction.py) against the
golden stage model: a quantized DLRM "dot" stage (host/models.py), its int8
features fed in, its top input's item part (QuantizedStageModel.top_inputs)
out, bit for bit, with random idle cycles and backpressure."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from host.models import (QuantizedStageModel, StageModelConfig, TableSpec, init_params,
                         quantize_stage_model)
from host.movielens import synthetic_queries
from hw.interaction import DotInteraction, item_pairs
from tests.amaranth_streams import stream_get, stream_put


def stage(dense: int, users: int, items: int, dim: int, seed: int) -> QuantizedStageModel:
    tables = tuple([TableSpec(f"u{t}", 50, "user") for t in range(users)]
                   + [TableSpec(f"i{t}", 40, "item") for t in range(items)])
    cfg = StageModelConfig("t", dense, (16, dim) if dense else (), tables, dim, "dot", (8, 1))
    params = init_params(cfg, seed=seed)
    calib = synthetic_queries(cfg, 8, 16, user_bag=3, seed=seed + 100)
    return quantize_stage_model(params, calib, emb_bits=8)


@pytest.mark.parametrize("dense, users, items, dim", [(3, 2, 2, 8), (0, 1, 3, 4),
                                                     (2, 0, 3, 8), (0, 2, 1, 16)])
def test_item_pairs_are_the_golden_models(dense, users, items, dim):
    q = stage(dense, users, items, dim, seed=users * 10 + items)
    cfg = q.config
    queries = synthetic_queries(cfg, 3, 6, user_bag=3, seed=7)
    U = cfg.n_user_features
    nu = cfg.n_user_pairs
    dut = DotInteraction(dim, max_users=U + 1, max_items=items + 1)
    P = item_pairs(U, items)
    want, feats = [], []
    for query in queries:
        u, i = q.int8_features(query)
        _, zi = q.top_inputs(query)
        feats.append((u, i))
        want += [row.tolist() for row in zi]
    assert len(want[0]) == P
    r = random.Random(dense + users + items + dim)
    got = []

    async def source(ctx):
        for k in range(P):
            await stream_put(ctx, dut.params, {"pair": k, "mult": int(q.pair_mult[nu + k]),
                                               "shift": int(q.pair_shift[nu + k])})
        for u, i in feats:
            for j, vec in enumerate(u):
                await stream_put(ctx, dut.i, {"item": 0, "last": int(j == len(u) - 1),
                                              "vec": vec.tolist()}, rng=r, idle=0.3)
            for cand in i:
                for a, vec in enumerate(cand):
                    await stream_put(ctx, dut.i, {"item": 1, "last": int(a == len(cand) - 1),
                                                  "vec": vec.tolist()}, rng=r, idle=0.3)

    async def sink(ctx):
        while len(got) < len(want):
            beat = await stream_get(ctx, dut.o, rng=r, stall=0.3)
            assert beat.n == P
            got.append([int(x) for x in beat.pairs][:P])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-3)
    assert len(got) == len(want), "not every candidate came out"
    assert got == want
    assert len({v for row in want for v in row}) > 3, "degenerate test data"


def test_bad_sizes():
    with pytest.raises(ValueError, match="dim: must be an integer >= 1"):
        DotInteraction(0, 2, 2)
    with pytest.raises(ValueError, match="max_items"):
        DotInteraction(8, 2, 0)


def test_lints_clean(tmp_path):
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "dot_interaction.v"
    path.write_text(to_verilog(DotInteraction(8, 3, 2), "dot_interaction"))
    lint(path, "dot_interaction")


def test_no_user_features():
    """Items only (a stage without dense or user features): item pairs alone."""
    from amaranth.back import rtlil
    rtlil.convert(DotInteraction(8, 0, 3))
    with pytest.raises(ValueError, match="make no pair"):
        DotInteraction(8, 0, 1)
