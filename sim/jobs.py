"""Run MLP jobs on the simulated cluster from ordinary Python (no cocotb
imports here: the jobs run in a Verilator process through :mod:`sim.tb_jobs`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host.numerics import QuantLayer, save_layers
from hw.config import Config

from . import runner
from .build import build_cluster

__all__ = ["Job", "JobResult", "run_jobs"]


@dataclass
class Job:
    layers: list[QuantLayer]
    x: np.ndarray
    engine: int = 0
    split: int = 1


@dataclass
class JobResult:
    y: np.ndarray
    cycles: list[int]     # one entry per RUN (a batch larger than the buffers takes several)


def run_jobs(cfg: Config, jobs: list[Job], *, idle: float = 0.0,
             backpressure: float = 0.0, seed: int = 1,
             workdir: Path | None = None) -> list[JobResult]:
    """Run ``jobs`` one after the other on the Verilator build of ``cfg``."""
    sim_runner, top = build_cluster(cfg)
    with tempfile.TemporaryDirectory(prefix="recaccel-jobs-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        specs = []
        for i, job in enumerate(jobs):
            mlp, x, out = work / f"mlp{i}.npz", work / f"x{i}.npy", work / f"y{i}.npy"
            save_layers(mlp, job.layers)
            np.save(x, np.asarray(job.x, dtype=np.int8))
            specs.append({"mlp": str(mlp), "x": str(x), "out": str(out),
                          "engine": job.engine, "split": job.split})
        result = work / "result.json"
        env = runner.write_tb_config(work / "tb.json", {
            "config": cfg.to_dict(), "jobs": specs, "result": str(result),
            "idle": idle, "backpressure": backpressure, "seed": seed})
        runner.run(sim_runner, test_module="sim.tb_jobs", toplevel=top,
                   test_filter="test_jobs", extra_env=env,
                   results_xml=work / "results.xml")
        cycles = json.loads(result.read_text())
        return [JobResult(np.load(s["out"]), c["cycles"]) for s, c in zip(specs, cycles)]
