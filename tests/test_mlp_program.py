"""The host compiler refuses what cannot run, before a command is sent, and
lays memories out as hw/mlp_isa.py documents."""

import numpy as np
import pytest

from host.mlp_program import EngineError, EngineTarget, compile_mlp
from host.numerics import QuantLayer
from hw.config import Config
from hw.mlp_isa import Opcode, Status


def layer(i, o, seed=0):
    rng = np.random.default_rng(seed)
    return QuantLayer(rng.integers(-128, 128, (i, o)).astype(np.int8), np.zeros(o),
                      np.ones(o), np.zeros(o), False)


CFG = Config.preset("tiny").array


@pytest.mark.parametrize("layers, message", [
    ([], "at least one layer"),
    ([layer(3, 4), layer(5, 2)], "layer 1: takes 5 inputs but layer 0 gives 4"),
    ([layer(CFG.max_dim + 1, 2)], "layer 0: in_dim 65 exceeds array.max_dim 64"),
    ([layer(64, 64), layer(64, 64), layer(64, 64)], "beyond array.weight_words"),
    ([layer(2, 2)] * (CFG.max_layers + 1), "array.max_layers"),
])
def test_what_does_not_fit_is_refused(layers, message):
    with pytest.raises(ValueError, match=message):
        compile_mlp(layers, EngineTarget(CFG, 0, 1))


def test_targets_are_checked():
    with pytest.raises(ValueError, match="split: 3 is not one of"):
        EngineTarget(CFG, 0, 3)
    with pytest.raises(ValueError, match="engine: 1 has no sub-array in mode 1"):
        EngineTarget(CFG, 1, 1)
    with pytest.raises(ValueError, match=r"engine: 2 has no sub-array in mode \(2, 1\)"):
        EngineTarget(CFG, 2, (2, 1))
    with pytest.raises(ValueError, match=r"split: \(1, 2\) is not one of"):
        EngineTarget(CFG, 0, (1, 2))


def test_batches_are_checked():
    prog = compile_mlp([layer(6, 3)], EngineTarget(CFG, 0, 1))
    with pytest.raises(ValueError, match="int8"):
        prog.input_commands(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="the MLP takes 6"):
        prog.input_commands(np.zeros((2, 5), np.int8))
    with pytest.raises(ValueError, match="a run from word 0 takes 1 to 64 rows"):
        prog.input_commands(np.zeros((65, 6), np.int8))
    words = CFG.act_words(0)
    with pytest.raises(ValueError, match=f"base: must be in 0 .. {words - 1}"):
        prog.input_commands(np.zeros((1, 6), np.int8), base=words)
    with pytest.raises(ValueError, match=f"a run from word {words - 3} takes 1 to 1 rows"):
        prog.input_commands(np.zeros((2, 6), np.int8), base=words - 3)
    assert len(prog.input_commands(np.zeros((1, 6), np.int8), base=words - 2)) == 2


@pytest.mark.parametrize("engine, split, sides, seed", [
    (0, 2, (2, 2), 3),          # side 2 on a 4-lane engine
    (1, (2, 1), (2, 4), 4),     # a row split: 2 x 4 sub-arrays on a 4-lane engine
])
def test_weight_layout(engine, split, sides, seed):
    """Tile (k, n) is K words at w_base + (n*KT + k)*K, KT = ceil(in/K), word i
    row i of the tile in lanes 0 .. S-1 (K = S but in a row split)."""
    t = EngineTarget(CFG, engine, split)
    K, S = sides
    assert (t.k_side, t.side, t.lanes) == (K, S, 4)
    l = layer(3, 5, seed=seed)
    prog = compile_mlp([l], t, w_base=10)
    words = {}
    for c in prog.load_commands:
        d = t._cmd_packer.unpack(c)
        if d["op"] == Opcode.WRITE_WEIGHTS:
            words[d["args"]["weights"]["addr"]] = d["args"]["weights"]["data"]
    kt, nt = -(-3 // K), -(-5 // S)
    assert sorted(words) == list(range(10, 10 + kt * nt * K))
    for n in range(nt):
        for k in range(kt):
            for i in range(K):
                row = words[10 + (n * kt + k) * K + i]
                for j in range(S):
                    r, c = k * K + i, n * S + j
                    assert row[j] == (l.weight[r, c] if r < 3 and c < 5 else 0)
                assert row[S:] == [0] * (4 - S)      # lanes past the side


def test_error_trailer_raises():
    t = EngineTarget(CFG, 0, 1)
    prog = compile_mlp([layer(2, 2)], t)
    beat = t._resp_packer.pack({"data": [0] * 4, "status": Status.BAD_LAYER, "last": 1,
                                "info": 0})
    with pytest.raises(EngineError, match="BAD_LAYER"):
        prog.decode_run([beat], 1)


def test_a_parameter_write_moves():
    """``moved_param``: the same parameter word, ``offset`` entries on (what
    the stage compiler writes into a layer's second parameter region); any
    other command is refused."""
    target = EngineTarget(Config.preset("tiny").array)
    beat = target.pack(Opcode.WRITE_PARAM, param={"addr": 2, "lane": 1, "bias": -7,
                                                  "mult": 300, "shift": 9})
    moved = target.cmd_layout.from_bits(target.moved_param(beat, 5))
    assert moved.op == Opcode.WRITE_PARAM
    p = moved.args.param
    assert (p.addr, p.lane, p.bias, p.mult, p.shift) == (7, 1, -7, 300, 9)
    with pytest.raises(ValueError, match="not a WRITE_PARAM"):
        target.moved_param(target.pack(Opcode.RUN, run={"layers": 1, "rows": 1, "base": 0}), 1)
