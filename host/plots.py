"""The run report's plots, as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["latency_cdf", "throughput_vs_load"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return str(path)


def latency_cdf(latency_us: Sequence[float], path, *, xlabel: str, title: str = "") -> str:
    """The share of queries answered within each latency (a step plot)."""
    lat = np.sort(np.asarray(latency_us, float))
    fig, ax = _pyplot().subplots(figsize=(5, 3.5))
    ax.step(lat, np.arange(1, lat.size + 1) / max(lat.size, 1), where="post")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of queries")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def throughput_vs_load(offered_qps: Sequence[float], throughput_qps: Sequence[float],
                       p99_us: Sequence[float], saturation_qps: float, path) -> str:
    """Throughput and p99 latency against the offered load (Poisson), with
    the saturation throughput (all queries at once) as a line."""
    fig, ax = _pyplot().subplots(figsize=(5, 3.5))
    x = np.asarray(offered_qps, float) / 1e3
    ax.plot(x, np.asarray(throughput_qps, float) / 1e3, "o-", label="throughput")
    ax.axhline(saturation_qps / 1e3, ls="--", c="gray", label="saturation (all at once)")
    ax.plot(x, x, ":", c="k", lw=0.8, label="throughput = offered load")
    ax.set_xlabel("offered load, thousand queries/s (Poisson)")
    ax.set_ylabel("thousand queries/s")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, p99_us, "s:", c="C3", label="p99 latency")
    ax2.set_ylabel("p99 latency, us")
    fig.legend(loc="lower right", fontsize=7, bbox_to_anchor=(0.88, 0.2))
    return _save(fig, path)
