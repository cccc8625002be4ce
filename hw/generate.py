"""The generator's output: Verilog, file list, config and constraints.

``recaccel generate --preset P -o DIR`` writes::

    DIR/recaccel_top.v          the top level (today: the MLP cluster; the
                                whole accelerator is blocks/accelerator.v)
    DIR/blocks/*.v              each block on its own (array, engines, top-k
                                filter, embedding lookup unit, command
                                processor framing, the one-stage accelerator
                                of hw/top.py)
    DIR/files.f                 the file list, top level first
    DIR/config.json             the config with its derived values
    DIR/recaccel_config.h       the same as C #defines
    DIR/constraints/*.lpf|xdc   clock constraints at the config's clock
"""

from __future__ import annotations

import re
from pathlib import Path

from .command import CommandProcessor
from .config import Config
from .embedding import EmbeddingLookup
from .mlp_cluster import MLPCluster
from .mlp_engine import MLPEngine
from .top import Accelerator
from .systolic import SystolicArray
from .topk import TopKFilter
from .verilog import to_verilog

__all__ = ["TOP_NAME", "top_component", "generate", "constraint_texts"]

TOP_NAME = "recaccel_top"
CONSTRAINTS_DIR = Path(__file__).resolve().parent.parent / "constraints"


def top_component(cfg: Config):
    return MLPCluster(cfg.array)


def constraint_texts(cfg: Config) -> dict[str, str]:
    """The files of ``constraints/``, with the clock set to ``cfg.clock_mhz``."""
    if not CONSTRAINTS_DIR.is_dir():
        raise FileNotFoundError(f"constraint templates not found at {CONSTRAINTS_DIR}")
    out = {}
    for path in sorted(CONSTRAINTS_DIR.glob("*")):
        text = path.read_text()
        if path.suffix == ".lpf":
            text = re.sub(r'(FREQUENCY PORT "clk" )[0-9.]+( MHZ;)',
                          rf"\g<1>{cfg.clock_mhz:.6f}\g<2>", text)
        elif path.suffix == ".xdc":
            text = re.sub(r"(create_clock -period )[0-9.]+",
                          rf"\g<1>{1000.0 / cfg.clock_mhz:.3f}", text)
        else:
            continue
        out[path.name] = text
    return out


def generate(cfg: Config, outdir: str | Path, *, blocks: bool = True) -> list[Path]:
    """Write everything for ``cfg`` into ``outdir``; returns the Verilog files."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = [outdir / f"{TOP_NAME}.v"]
    files[0].write_text(to_verilog(top_component(cfg), TOP_NAME))
    if blocks:
        (outdir / "blocks").mkdir(exist_ok=True)
        parts = {"systolic_array": SystolicArray(cfg.array)}
        for lanes in sorted({cfg.array.engine_lanes(e) for e in range(cfg.array.engines)},
                            reverse=True):
            e = next(e for e in range(cfg.array.engines) if cfg.array.engine_lanes(e) == lanes)
            parts[f"mlp_engine_{lanes}"] = MLPEngine(cfg.array, engine=e)
        parts["topk_filter"] = TopKFilter(cfg.topk)
        parts["embedding_lookup"] = EmbeddingLookup(cfg.embedding)
        parts["command_processor"] = CommandProcessor()
        parts["accelerator"] = Accelerator(cfg)
        for name, comp in parts.items():
            path = outdir / "blocks" / f"{name}.v"
            path.write_text(to_verilog(comp, name))
            files.append(path)
    (outdir / "files.f").write_text("".join(f"{p.relative_to(outdir)}\n" for p in files[:1]))
    (outdir / "config.json").write_text(cfg.to_json())
    (outdir / "recaccel_config.h").write_text(cfg.to_c_header())
    (outdir / "constraints").mkdir(exist_ok=True)
    for name, text in constraint_texts(cfg).items():
        (outdir / "constraints" / name).write_text(text)
    return files
