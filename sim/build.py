"""Simulation builds of recaccel designs: one Verilator build per config.

The Verilog for a design is generated from the config and built with
:func:`sim.runner.build`, whose cache is keyed by the Verilog's contents, so
a config is compiled once per machine and reused by every test and command.
The generated Verilog is itself cached, keyed by the config and the source of
``hw/``, because elaborating a large config takes a while.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from filelock import FileLock

import hw
from hw.config import Config
from hw.verilog import to_verilog

from . import runner

__all__ = ["design_verilog", "build_cluster", "simulation_config"]


def simulation_config(cfg: Config) -> Config:
    """The config as simulated: vendor primitives replaced by their generic
    models (same latency, same results)."""
    return cfg.replace(array={"dsp": "generic"})


def _hw_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(Path(hw.__file__).parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def design_verilog(cfg: Config, make_component, toplevel: str, tag: str) -> Path:
    """Generate (or reuse) the Verilog of ``make_component(cfg)``."""
    key = hashlib.sha256((cfg.to_json() + toplevel + tag + _hw_digest()).encode())
    out = runner.default_build_root() / "verilog" / f"{toplevel}-{key.hexdigest()[:16]}.v"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            text = to_verilog(make_component(cfg), toplevel)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(out)
    return out


def build_cluster(cfg: Config, *, waves: bool = False):
    """The Verilator build of the MLP cluster for ``cfg``: ``(runner, toplevel)``."""
    from hw.mlp_cluster import MLPCluster
    cfg = simulation_config(cfg)
    top = "mlp_cluster"
    src = design_verilog(cfg, lambda c: MLPCluster(c.array), top, "cluster")
    build_dir = runner.default_build_root() / "builds" / f"{top}-{cfg.name}"
    return runner.build([src], top, build_dir, waves=waves), top
