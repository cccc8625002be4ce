"""The accelerator's top level in Verilator, loaded and queried by the host
driver over the simulation transport (sim/tb_top.py)."""

import pytest

from sim import runner
from sim.tb_top import build_top, cached_tiny, two_stage_tiny


@pytest.fixture(scope="session")
def top_build():
    return build_top()


@pytest.mark.parametrize("seed, idle, latency, sb_rows, keep, candidates", [
    (1, 0.0, (5, 20), 4, 3, 10),        # sub-batches of 4: the last one short
    (2, 0.4, (20, 120), 8, 8, 45),      # more candidates than the fetch buffers; keep = k_max
])
def test_queries_through_the_top_level(top_build, tmp_path, seed, idle, latency, sb_rows,
                                       keep, candidates):
    sim_runner, top = top_build
    env = runner.write_tb_config(tmp_path / "tb.json", {
        "seed": seed, "idle": idle, "latency": list(latency), "sb_rows": sb_rows,
        "keep": keep, "queries": 6, "candidates": candidates})
    results = runner.run(sim_runner, test_module="sim.tb_top", toplevel=top,
                         test_filter="test_queries_through_the_top_level$", extra_env=env,
                         results_xml=tmp_path / "results.xml")
    assert len(results) == 1


def test_static_cache_through_the_top_level(tmp_path):
    """The tiny top level with static and dynamic caches, pinned rows loaded."""
    sim_runner, top = build_top(cached_tiny())
    env = runner.write_tb_config(tmp_path / "tb.json", {
        "seed": 3, "idle": 0.3, "latency": [10, 60], "sb_rows": 8, "rows": 24,
        "queries": 5, "candidates": 20})
    results = runner.run(sim_runner, test_module="sim.tb_top", toplevel=top,
                         test_filter="test_static_cache_through_the_top_level$", extra_env=env,
                         results_xml=tmp_path / "results.xml")
    assert len(results) == 1


@pytest.mark.parametrize("seed, idle, latency, sb_rows, keep, candidates", [
    (4, 0.3, (5, 60), 4, (6, 3), 20),       # keep1 > sb_rows: stage 2 in sub-batches too
    (5, 0.0, (20, 40), 16, (8, 8), 40),     # keep = k_max at both stages
    (6, 0.7, (60, 200), 2, (8, 2), 64),     # slow memory, heavy stalls, tiny sub-batches
])
def test_two_stages_through_the_top_level(tmp_path, seed, idle, latency, sb_rows, keep,
                                          candidates):
    """Two stages on the split array: stage 2 re-ranks stage 1's survivors."""
    sim_runner, top = build_top(two_stage_tiny())
    env = runner.write_tb_config(tmp_path / "tb.json", {
        "seed": seed, "idle": idle, "latency": list(latency), "sb_rows": sb_rows,
        "keep": list(keep), "queries": 6, "candidates": candidates})
    results = runner.run(sim_runner, test_module="sim.tb_top", toplevel=top,
                         test_filter="test_two_stages_through_the_top_level$", extra_env=env,
                         results_xml=tmp_path / "results.xml")
    assert len(results) == 1
