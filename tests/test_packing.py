"""The fast packer against Amaranth's own layout constants."""

import random

import pytest

from host.packing import Packer
from hw.config import Config
from hw.mlp_isa import Opcode, Status, command_layout, response_layout


def random_value(rng, packer):
    k = packer.kind
    if k == "int":
        w = packer.width
        return rng.randrange(-(1 << (w - 1)), 1 << (w - 1)) if packer.signed else rng.randrange(1 << w)
    if k == "enum":
        return rng.choice(list(packer.enum))
    if k == "array":
        return [random_value(rng, packer.elem) for _ in range(packer.length)]
    if k == "union":
        name = rng.choice(list(packer.fields))
        return {name: random_value(rng, packer.fields[name][1])}
    return {n: random_value(rng, sub) for n, (_, sub) in packer.fields.items()}


@pytest.mark.parametrize("preset", ["tiny", "default", "ecp5"])
def test_commands_match_amaranth(preset):
    cfg = Config.preset(preset).array
    rng = random.Random(7)
    for engine in range(cfg.engines):
        for layout in (command_layout(cfg, engine), response_layout(cfg, engine)):
            packer = Packer(layout)
            for _ in range(200):
                v = random_value(rng, packer)
                bits = packer.pack(v)
                assert bits == layout.const(v).as_bits()
                back = packer.unpack(bits)
                # Re-packing what was unpacked gives the same bits (unions
                # decode every member; keep the one that was packed).
                if "args" in v:
                    back["args"] = {k: back["args"][k] for k in v["args"]}
                assert packer.pack(back) == bits


def test_out_of_range_is_refused():
    packer = Packer(command_layout(Config.preset("tiny").array, 0))
    with pytest.raises(ValueError):
        packer.pack({"op": Opcode.WRITE_WEIGHTS, "args": {"weights": {"addr": 0, "data": [128, 0, 0, 0]}}})
    with pytest.raises(ValueError):
        packer.pack({"op": Opcode.RUN, "args": {"run": {"rows": -1, "layers": 1}}})
    with pytest.raises(ValueError):
        packer.pack({"op": Opcode.RUN, "args": {"run": {"rows": 1}, "split": {"index": 0}}})
    assert Packer(response_layout(Config.preset("tiny").array, 0)).unpack(0)["status"] is Status.OK
