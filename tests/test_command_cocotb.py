"""The command processor in Verilator, driven by the host driver over the
simulation transport (sim/tb_command.py)."""

import pytest

from sim import runner
from sim.tb_command import build_command


@pytest.fixture(scope="session")
def command_build():
    return build_command()


@pytest.mark.parametrize("seed, idle", [(1, 0.0), (2, 0.4)])
def test_driver_over_simulation(command_build, tmp_path, seed, idle):
    sim_runner, top = command_build
    env = runner.write_tb_config(tmp_path / "tb.json", {"seed": seed, "idle": idle})
    results = runner.run(sim_runner, test_module="sim.tb_command", toplevel=top,
                         test_filter="test_driver_over_simulation$", extra_env=env,
                         results_xml=tmp_path / "results.xml")
    assert len(results) == 1
