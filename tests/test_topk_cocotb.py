"""cocotb + Verilator tests of the top-k filter, bit for bit against the
golden model, at 1, 2 and 4 lanes, signed and unsigned scores."""

import json

import pytest

from hw.config import TopKConfig
from sim import runner
from sim.tb_topk import build_topk

VARIANTS = {
    "k16-p1-s16": TopKConfig(k_max=16, lanes=1, score_bits=16, signed=True, id_bits=12),
    "k8-p2-u8": TopKConfig(k_max=8, lanes=2, score_bits=8, signed=False, id_bits=8),
    "k16-p4-s10": TopKConfig(k_max=16, lanes=4, score_bits=10, signed=True, id_bits=10),
}


@pytest.fixture(scope="session", params=list(VARIANTS))
def topk_build(request):
    cfg = VARIANTS[request.param]
    sim_runner, top = build_topk(cfg)
    return cfg, sim_runner, top


def run_tb(topk_build, tmp_path, test_filter, **overrides):
    cfg, sim_runner, top = topk_build
    tb = {"topk": {"k_max": cfg.k_max, "lanes": cfg.lanes, "score_bits": cfg.score_bits,
                   "signed": cfg.signed, "id_bits": cfg.id_bits},
          "seed": 1, "idle": 0.3, "backpressure": 0.3, "lists": 60,
          "report": str(tmp_path / "report.json"), **overrides}
    env = runner.write_tb_config(tmp_path / "tb.json", tb)
    return runner.run(sim_runner, test_module="sim.tb_topk", toplevel=top,
                      test_filter=test_filter, extra_env=env,
                      results_xml=tmp_path / "results.xml")


@pytest.mark.parametrize("seed", [1, 2])
def test_random_lists(topk_build, tmp_path, seed):
    results = run_tb(topk_build, tmp_path, "test_random_lists$", seed=seed)
    assert [r.name for r in results] == ["test_random_lists"]


def test_special_and_bad_lists(topk_build, tmp_path):
    results = run_tb(topk_build, tmp_path,
                     "test_special_lists$|test_bad_k$|test_short_lists_back_to_back$")
    assert len(results) == 3


def test_back_to_back_full_rate(topk_build, tmp_path):
    cfg = topk_build[0]
    run_tb(topk_build, tmp_path, "test_back_to_back_full_rate$")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stall_cycles"] == 0
    assert report["pairs_per_cycle"] >= 0.99 * cfg.lanes
