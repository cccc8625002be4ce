"""cocotb + Verilator tests of the MLP cluster, bit for bit against the golden
model, for each preset that is cheap enough to simulate in the suite."""

import json

import pytest

from hw.config import Config
from sim import runner
from sim.build import build_cluster

# (preset, random MLPs per engine per split, bound on dims, on layers, on rows)
CASES = {
    "tiny": dict(cases=60, max_dim=20, max_layers=4, max_rows=40),
    "ecp5": dict(cases=12, max_dim=40, max_layers=3, max_rows=80),
}


@pytest.fixture(scope="session", params=list(CASES))
def cluster(request):
    cfg = Config.preset(request.param)
    sim_runner, top = build_cluster(cfg)
    return cfg, sim_runner, top


def run_tb(cluster, tmp_path, test_filter, **overrides):
    cfg, sim_runner, top = cluster
    tb = {"config": cfg.to_dict(), "seed": 1, "idle": 0.3, "backpressure": 0.3,
          "report": str(tmp_path / "report.json"), **CASES[cfg.name], **overrides}
    env = runner.write_tb_config(tmp_path / "tb.json", tb)
    results = runner.run(sim_runner, test_module="sim.tb_mlp", toplevel=top,
                         test_filter=test_filter, extra_env=env,
                         results_xml=tmp_path / "results.xml")
    return results


@pytest.mark.parametrize("seed", [1, 2])
def test_random_mlps(cluster, tmp_path, seed):
    run_tb(cluster, tmp_path, "test_random_mlps_every_split", seed=seed)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layers_checked"] > 0


def test_bad_commands(cluster, tmp_path):
    run_tb(cluster, tmp_path, "test_bad_commands")
