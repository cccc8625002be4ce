"""cocotb + Verilator tests of the embedding lookup unit, bit for bit against
the golden model, with the AXI4 memory model on every channel."""

import dataclasses

import pytest

from hw.config import Config
from sim import runner
from sim.tb_embedding import build_embedding

TINY = Config.preset("tiny").embedding


@pytest.fixture(scope="session")
def emb_build():
    sim_runner, top = build_embedding(TINY)
    return TINY, sim_runner, top


#: A wider bus, so that two small rows fit one burst and tables get merged.
WIDE = dataclasses.replace(TINY, data_bits=128)


@pytest.fixture(scope="session")
def wide_build():
    sim_runner, top = build_embedding(WIDE)
    return WIDE, sim_runner, top


def run_tb(emb_build, tmp_path, test="test_random_bags", **overrides):
    cfg, sim_runner, top = emb_build
    tb = {"embedding": dataclasses.asdict(cfg), "seed": 1, "idle": 0.3,
          "backpressure": 0.3, "latency": [5, 40], "r_gaps": 0.2,
          "ar_backpressure": 0.2, "bags": 150, "errors": False, **overrides}
    env = runner.write_tb_config(tmp_path / "tb.json", tb)
    return runner.run(sim_runner, test_module="sim.tb_embedding", toplevel=top,
                      test_filter=f"{test}$", extra_env=env,
                      results_xml=tmp_path / "results.xml")


@pytest.mark.parametrize("seed", [1, 2])
def test_random_bags(emb_build, tmp_path, seed):
    assert len(run_tb(emb_build, tmp_path, seed=seed)) == 1


def test_hbm_latency_and_error_responses(emb_build, tmp_path):
    assert len(run_tb(emb_build, tmp_path, seed=3, latency=[100, 300], bags=60,
                      errors=True)) == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_tables(wide_build, tmp_path, seed):
    """The table compiler's images, descriptors and streams, merged tables
    included, against its golden model."""
    assert len(run_tb(wide_build, tmp_path, test="test_compiled_tables", seed=seed,
                      bags=80)) == 1


#: The caches: static 4 sets x 2 ways, dynamic 4 sets x 2 ways, true LRU.
CACHED = dataclasses.replace(TINY, static_rows=8, static_ways=2, cache_sets=4, cache_ways=2)
#: Tree PLRU over 4 ways, no static cache.
PLRU = dataclasses.replace(TINY, cache_sets=2, cache_ways=4, cache_policy="plru")


@pytest.fixture(scope="session")
def cached_build():
    sim_runner, top = build_embedding(CACHED)
    return CACHED, sim_runner, top


@pytest.fixture(scope="session")
def plru_build():
    sim_runner, top = build_embedding(PLRU)
    return PLRU, sim_runner, top


@pytest.mark.parametrize("seed", [1, 2])
def test_caches(cached_build, tmp_path, seed):
    """Static and dynamic caches: every answer and, at the end, every counter
    against the cache model, with heavy-tailed ids (many hits, hits under
    misses, evictions), random stalls and memory latency."""
    assert len(run_tb(cached_build, tmp_path, seed=seed, skew=0.6, bags=200)) == 1


def test_caches_with_error_responses(cached_build, tmp_path):
    """A line filled by a failed read answers MEM_ERROR on every hit."""
    assert len(run_tb(cached_build, tmp_path, seed=4, skew=0.0, latency=[50, 200],
                      bags=100, errors=True)) == 1


def test_plru_cache(plru_build, tmp_path):
    assert len(run_tb(plru_build, tmp_path, seed=5, skew=0.5, bags=200)) == 1


def test_reset_empties_the_caches(cached_build, tmp_path):
    """A reset between rounds clears every line (and the counters): each
    round's counters equal a fresh model's."""
    assert len(run_tb(cached_build, tmp_path, seed=6, skew=0.6, bags=80, rounds=3)) == 1
