"""cocotb tests of the command processor (:mod:`hw.command`) in Verilator,
driven by the host driver itself (:class:`host.driver.Accelerator`) over the
simulation transport (:mod:`sim.transport`): the same driver code and wire
format as over the golden transport. Behind the processor, a stub block in
the testbench takes the commands for the blocks and answers each (``OK``
with an empty payload; ``NOT_LOADED`` to a query; ``MALFORMED_FRAME`` to a
frame whose length was wrong), with random stalls on every stream.

:func:`build_command` (plain Python) builds the cached Verilator model.
"""

from __future__ import annotations

import random

import cocotb

from host import protocol as P
from host.driver import Accelerator, DeviceError
from host.packing import Packer
from hw.command import answer_layout, command_layout, error_layout, header_layout
from hw.config import Config
from sim import runner
from sim.build import design_verilog
from sim.runner import read_tb_config
from sim.streams import StreamSink, StreamSource, random_pauses, reset, start_clock
from sim.transport import SimTransport

__all__ = ["TOPLEVEL", "build_command"]

TOPLEVEL = "command_processor"


def build_command(*, waves: bool = False):
    """The Verilator build of ``CommandProcessor()``: ``(runner, toplevel)``."""
    from hw.command import CommandProcessor
    cfg = Config.preset("tiny")
    src = design_verilog(cfg, lambda c: CommandProcessor(), TOPLEVEL, "command")
    build_dir = runner.default_build_root() / "builds" / TOPLEVEL
    return runner.build([src], TOPLEVEL, build_dir, waves=waves), TOPLEVEL


async def stub_block(dut, r: random.Random, idle: float):
    cmd = StreamSink(dut, "cmd", dut.clk, reset=dut.rst, backpressure=random_pauses(r, idle))
    ans = StreamSource(dut, "ans", dut.clk, reset=dut.rst, idle=random_pauses(r, idle))
    err = StreamSource(dut, "cerr", dut.clk, reset=dut.rst, idle=random_pauses(r, idle))
    cp, ap, ep = Packer(command_layout()), Packer(answer_layout()), Packer(error_layout())
    while True:
        beat = cp.unpack(await cmd.recv())
        if not beat["last"]:
            continue
        op, tag = int(getattr(beat["opcode"], "value", beat["opcode"])), beat["tag"]
        if beat["bad"]:
            err.send_nowait(ep.pack({"opcode": op, "tag": tag,
                                     "status": int(P.Status.MALFORMED_FRAME)}))
        elif op == int(P.Opcode.SUBMIT_QUERY):
            err.send_nowait(ep.pack({"opcode": op, "tag": tag,
                                     "status": int(P.Status.NOT_LOADED)}))
        else:
            ans.send_nowait(ap.pack({"opcode": op, "tag": tag, "status": 0, "length": 0,
                                     "data": 0, "last": 1, "empty": 1}))


def header(opcode, tag, length, status=0, magic=P.MAGIC) -> bytes:
    word = Packer(header_layout()).pack({"opcode": int(opcode), "status": status, "tag": tag,
                                         "length": length, "magic": magic})
    return word.to_bytes(P.WORD_BYTES, "little")


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def test_driver_over_simulation(dut):
    """PING, a load, a query before anything is loaded, and every kind of
    bad frame, each followed by a PING that must still be answered; the
    answers' cycles are measured."""
    from cocotb.task import bridge
    tb = read_tb_config()
    r = random.Random(tb["seed"])
    start_clock(dut, 10)
    await reset(dut, dut.clk, 3)
    idle = tb["idle"]
    transport = SimTransport(dut, dut.clk, clock_mhz=200.0, reset=dut.rst,
                             idle=random_pauses(random.Random(r.random()), idle),
                             backpressure=random_pauses(random.Random(r.random()), idle))
    cocotb.start_soon(stub_block(dut, random.Random(r.random()), idle))
    bad = [  # (bytes, status, opcode, tag) of the answer
        (header(9, 11, 0), P.Status.UNKNOWN_COMMAND, 0, 11),
        (header(P.Opcode.PING, 12, 0, magic=0x5A), P.Status.MALFORMED_FRAME, 0, 0),
        (header(P.Opcode.PING, 13, 2) + bytes(8), P.Status.MALFORMED_FRAME, 1, 13),
        (header(P.Opcode.LOAD_CACHE, 14, 1) + bytes(16), P.Status.MALFORMED_FRAME, 4, 14),
        (header(P.Opcode.LOAD_CACHE, 15, 0, status=3), P.Status.MALFORMED_FRAME, 4, 15),
        (header(P.Opcode.PING, 16, 1) + bytes(8), P.Status.BAD_PAYLOAD, 1, 16),
    ]

    def host():
        acc = Accelerator(transport, timeout_cycles=50_000)
        out = {"version": acc.ping(), "bad": []}
        start = transport.now()
        acc.command(P.Opcode.LOAD_CACHE, P.encode_cache(0, [1, 2], [3, 4]))
        out["load_cycles"] = transport.now() - start
        try:
            acc.command(P.Opcode.SUBMIT_QUERY, [0, 0, 0, 0])
            out["query"] = "answered"
        except DeviceError as e:
            out["query"] = e.status
        for data, *_ in bad:
            f = acc.send_raw(data)
            out["bad"].append((f.status, int(f.opcode), f.tag, P.error_text(f)))
            out.setdefault("after", []).append(acc.ping())
        return out

    out = await bridge(host)()
    transport.stop()
    assert out["version"] == P.VERSION
    assert out["load_cycles"] > 0
    assert out["query"] == P.Status.NOT_LOADED
    for (_, status, opcode, tag), (got_status, got_op, got_tag, text) in zip(bad, out["bad"]):
        assert (got_status, got_op, got_tag) == (status, opcode, tag), (got_status, got_op,
                                                                          got_tag)
        assert text == status.name.lower().replace("_", " ")
    assert len(out["bad"]) == len(bad) and out["after"] == [P.VERSION] * len(bad)
