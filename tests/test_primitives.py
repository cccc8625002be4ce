# amaranth: UnusedElaboratable=no
# (the parameter-validation tests construct components that raise in __init__)
import random

import numpy as np

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hw.primitives import PipelinedMultiplier


def _random_signed(rng, width):
    return rng.randrange(-(1 << (width - 1)), 1 << (width - 1))


@pytest.mark.parametrize("a_width,b_width", [(8, 8), (8, 13), (18, 18), (1, 5)])
def test_generic_latency_and_product(a_width, b_width):
    dut = PipelinedMultiplier(a_width=a_width, b_width=b_width, target="generic")
    rng = random.Random(a_width * 100 + b_width)
    extremes = [(-(1 << (a_width - 1)), -(1 << (b_width - 1))),
                ((1 << (a_width - 1)) - 1, -(1 << (b_width - 1)))]
    operands = extremes + [(_random_signed(rng, a_width), _random_signed(rng, b_width))
                           for _ in range(200)]
    latency = PipelinedMultiplier.LATENCY

    async def testbench(ctx):
        seen = []
        for cycle, (a, b) in enumerate(operands + [(0, 0)] * latency):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            await ctx.tick()
            # After tick number cycle+1, p holds the product of the operands
            # applied LATENCY - 1 cycles before this one; never one cycle early.
            seen.append(ctx.get(dut.p))
            if cycle >= latency - 1:
                expected_a, expected_b = operands[cycle - (latency - 1)] \
                    if cycle - (latency - 1) < len(operands) else (0, 0)
                assert seen[-1] == expected_a * expected_b, f"cycle {cycle}"
        # Exactly LATENCY: one cycle earlier would have shown a different value.
        products = [a * b for a, b in operands]
        assert seen[latency - 1:latency - 1 + len(products)] == products
        assert seen[latency - 2:latency - 2 + len(products)] != products

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def test_ecp5_converts_to_mult18x18d():
    dut = PipelinedMultiplier(a_width=8, b_width=8, target="ecp5")
    text = verilog.convert(dut, name="top")
    assert "MULT18X18D" in text
    for param in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK", "REG_OUTPUT_CLK"):
        assert f'.{param}("CLK0")' in text
    assert "A17" in text and "P15" in text


@pytest.mark.parametrize("kwargs,bad", [
    (dict(a_width=0, b_width=8), "0"),
    (dict(a_width=8, b_width="8"), "'8'"),
    (dict(a_width=8, b_width=8, target="xilinx"), "'xilinx'"),
    (dict(a_width=19, b_width=8, target="ecp5"), "19"),
])
def test_rejects_bad_parameters(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        PipelinedMultiplier(**kwargs)


def test_block_ram_latency_and_contents():
    from amaranth.sim import Simulator
    from hw.primitives import BlockRAM
    dut = BlockRAM(width=12, depth=40)
    rng = np.random.default_rng(4)
    model = {}
    reads = []

    async def tb(ctx):
        for cycle in range(300):
            addr = int(rng.integers(0, 40))
            if rng.random() < 0.5:
                value = int(rng.integers(0, 1 << 12))
                ctx.set(dut.w_addr, addr)
                ctx.set(dut.w_data, value)
                ctx.set(dut.w_en, 1)
                model[addr] = value
                ctx.set(dut.r_addr, (addr + 1) % 40)   # never the address being written
            else:
                ctx.set(dut.w_en, 0)
                ctx.set(dut.r_addr, addr)
            reads.append((ctx.get(dut.r_addr), dict(model)))
            if cycle >= BlockRAM.LATENCY:
                a, snapshot = reads[cycle - BlockRAM.LATENCY]
                if a in snapshot:
                    assert ctx.get(dut.r_data) == snapshot[a]
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_block_ram_ecp5_uses_output_registers():
    from hw.primitives import BlockRAM
    text = verilog.convert(BlockRAM(width=40, depth=3000, target="ecp5"), name="ram")
    assert text.count("DP16KD") == 3 * 3          # 3 columns of 18 bits x 3 banks of 1024
    assert '.REGMODE_B("OUTREG")' in text


def test_replica_follows_a_cycle_late():
    from hw.primitives import Replica
    dut = Replica(5)
    values = [random.Random(7).randrange(32) for _ in range(20)]

    async def tb(ctx):
        prev = 0
        for k, v in enumerate(values):
            ctx.set(dut.i, v)
            assert ctx.get(dut.o) == prev, k        # not before the clock edge
            await ctx.tick()
            assert ctx.get(dut.o) == v, k
            prev = v

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_replica_ecp5_keeps_its_flip_flops():
    from hw.primitives import Replica
    text = verilog.convert(Replica(3, target="ecp5"), name="rep")
    # one kept TRELLIS_FF a bit, so that Yosys does not merge copies
    assert text.count("TRELLIS_FF ") == 3
    assert text.count("(* keep") >= 3
    with pytest.raises(ValueError, match="'xilinx'"):
        Replica(3, target="xilinx")
