"""cocotb + Verilator tests of the AXI4 read memory model (sim/axi_mem.py) on a
two-channel wire-through design (sim/axi_loop.py)."""

import pytest

from sim import runner
from sim.axi_loop import build_axi_loop

CHANNELS = 2
PASSING = {
    "test_random_bursts", "test_in_order_when_not_reordering", "test_latency_bounds",
    "test_bandwidth_limit/rate=0.4", "test_bandwidth_limit/rate=0.25", "test_error_ranges",
    "test_lenient_violations", "test_reset_flushes",
}


@pytest.fixture(scope="session")
def axi_loop():
    return build_axi_loop(channels=CHANNELS, addr_width=20, data_width=256, id_width=4)


def run_tb(axi_loop, tmp_path, test_filter, **overrides):
    sim_runner, top = axi_loop
    tb = {"channels": CHANNELS, "seed": 1, "bursts": 200, **overrides}
    env = runner.write_tb_config(tmp_path / "tb.json", tb)
    return runner.run(sim_runner, test_module="sim.tb_axi_mem", toplevel=top,
                      test_filter=test_filter, extra_env=env,
                      results_xml=tmp_path / "results.xml")


def test_memory_model(axi_loop, tmp_path):
    results = run_tb(axi_loop, tmp_path, r"\.test_")
    assert {r.name for r in results} == PASSING


def test_random_bursts_other_seed(axi_loop, tmp_path):
    results = run_tb(axi_loop, tmp_path, r"\.test_random_bursts$", seed=2)
    assert [r.name for r in results] == ["test_random_bursts"]


def test_strict_violations_fail_the_test(axi_loop, tmp_path):
    """A strict model fails the running cocotb test, with a message that says what
    the design did wrong."""
    with pytest.raises(runner.SimulationFailed) as info:
        run_tb(axi_loop, tmp_path, r"\.strict_violation")
    results = {r.name: r for r in info.value.results}
    assert set(results) == {f"strict_violation/kind={kind}" for kind in ("oob", "hold", "arsize")}
    assert all(r.status == "failed" for r in results.values()), results
    expected = {
        "oob": "burst id=5 araddr=0xffe0 arlen=1: reads past the end of memory "
                         "(bytes 0xffe0..0x1001f, memory size 0x10000)",
        "hold": "AR payload changed while arvalid waited for arready",
        "arsize": "burst id=6 araddr=0x200 arlen=0: arsize=3, the data width needs 5",
    }
    for kind, text in expected.items():
        result = results[f"strict_violation/kind={kind}"]
        assert "AXI read channel 'm0'" in result.message, result.message
        assert text in result.message, result.message
