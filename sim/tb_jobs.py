"""cocotb: run MLP jobs through the cluster and record outputs and cycles.

The host side (``recaccel run``, ``recaccel bench array``) writes each job's
quantized MLP (:func:`host.numerics.save_layers`) and int8 inputs (``.npy``)
to files; this test loads them, runs them with the same driver code the host
uses, and writes the outputs (``.npy``) and the cycle count of every RUN to
the result JSON. Checking against the golden model happens on the host side.

Configuration (``RECACCEL_TB_CONFIG``): ``config`` (the Config dict),
``jobs`` (list of ``{"mlp", "x", "out", "engine", "split"}``), ``result``
(path), ``idle`` and ``backpressure`` (probabilities; 0 for benchmarks),
``seed``.
"""

import json
import random

import cocotb
import numpy as np

from host.engine_driver import EngineDriver
from host.mlp_program import EngineTarget, compile_mlp
from host.numerics import load_layers
from hw.config import Config
from sim.runner import read_tb_config
from sim.streams import StreamSink, StreamSource, random_pauses, reset, start_clock
from sim.tb_mlp import StreamPipe


@cocotb.test(timeout_time=3600, timeout_unit="sec")
async def test_jobs(dut):
    tb = read_tb_config()
    cfg = Config.from_dict(tb["config"]).array
    start_clock(dut, 10)
    seed = tb.get("seed", 1)
    pipes = []
    for e in range(cfg.engines):
        idle = random_pauses(random.Random(seed + e), tb["idle"]) if tb["idle"] else None
        bp = (random_pauses(random.Random(seed + 100 + e), tb["backpressure"])
              if tb["backpressure"] else None)
        pipes.append(StreamPipe(
            StreamSource(dut, f"cmd_{e}", dut.clk, reset=dut.rst, idle=idle),
            StreamSink(dut, f"resp_{e}", dut.clk, reset=dut.rst, backpressure=bp)))
    await reset(dut, dut.clk, 3)
    results = []
    split = None
    for job in tb["jobs"]:
        target = EngineTarget(cfg, job["engine"], job["split"])
        if job["split"] != split:
            await EngineDriver(pipes[0], EngineTarget(cfg, 0, job["split"])).set_split(job["split"])
            split = job["split"]
        drv = EngineDriver(pipes[job["engine"]], target)
        program = compile_mlp(load_layers(job["mlp"]), target)
        x = np.load(job["x"])
        await drv.load(program)
        y, cycles = await drv.run(program, x)
        np.save(job["out"], y)
        results.append({"cycles": cycles})
    with open(tb["result"], "w") as f:
        json.dump(results, f)
