"""`recaccel bench e2e` on the tiny top level (Verilator): the report's keys,
every answer checked and right, and the figures consistent with each other
(not their values: speed is measured in benchmarks, never asserted)."""

from benchmarks.e2e import format_hardware_e2e, hardware_e2e, pipeline_for, stage_for
from host.device_format import DeviceFormat
from host.driver import compile_model
from host.movielens import synthetic_queries
from hw.config import Config
from sim.tb_top import two_stage_tiny


def test_stage_for_fits_the_stage_engine():
    for name in ("tiny", "default", "ecp5"):
        cfg = Config.preset(name)
        p = stage_for(cfg)
        assert p.config.embedding_dim == cfg.stage.dim
        assert p.config.n_user_features <= cfg.stage.max_users


def test_hardware_e2e_on_tiny():
    cfg = Config.preset("tiny")
    r = hardware_e2e(cfg, n_queries=3, n_candidates=20, sb_rows=8, cpu=False,
                     progress=lambda s: None)
    for key in ("cycles_per_query", "roofline_cycles_per_query",
                "cycles_per_query_no_pipelining", "answers_checked", "answers_wrong",
                "modelled_qps"):
        assert key in r
    assert r["answers_checked"] == 6 and r["answers_wrong"] == 0
    assert 0 < r["roofline_cycles_per_query"] <= r["cycles_per_query"]
    assert r["modelled_qps"] == cfg.clock_mhz * 1e6 / r["cycles_per_query"]
    # (the run's cycles hold the first answer's latency and two intervals)
    assert 0 < 2 * r["cycles_between_answers"] < 3 * r["cycles_per_query"]
    assert "cycles per query" in format_hardware_e2e(r)
    # one stage: its phases per query, none of them empty
    (p,) = r["phases_per_query"].values()
    assert min(p.values()) > 0 and "stage1, cycles per query" in format_hardware_e2e(r)


def test_pipeline_for_compiles_onto_the_top_level():
    """One stage or two, as the config's top level runs."""
    for cfg in (Config.preset("tiny"), two_stage_tiny(), Config.preset("default"),
                Config.preset("default").replace(stage={"stages": 2})):
        params, spec = pipeline_for(cfg, n_candidates=20)
        assert len(spec.stages) == cfg.stage.stages
        first = params[spec.stages[0]].config
        cal = synthetic_queries(first, 8, 20, user_bag=3, seed=1)
        model = compile_model(params, spec, cal, "int8", score_bits=cfg.topk.score_bits,
                              max_bag=cfg.embedding.max_bag)
        frames, _ = DeviceFormat(cfg).compile(model)
        assert frames


def test_hardware_e2e_two_stages_on_tiny():
    cfg = two_stage_tiny()
    r = hardware_e2e(cfg, n_queries=3, n_candidates=20, sb_rows=8, cpu=False,
                     progress=lambda s: None)
    assert r["keep"] == [8, 8]
    assert r["answers_checked"] == 6 and r["answers_wrong"] == 0
    assert 0 < r["roofline_cycles_per_query"] <= r["cycles_per_query"]
    assert "keep 8 then 8" in format_hardware_e2e(r)
    assert sorted(r["phases_per_query"]) == ["stage1", "stage2"]
    assert all(min(p.values()) > 0 for p in r["phases_per_query"].values())
