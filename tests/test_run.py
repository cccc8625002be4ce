"""``recaccel run`` (host.run) on the tiny top level in Verilator: every
answer right in every run, queries in = answers out at an offered load
above saturation, the report's figures consistent, the plots written; and
the fallbacks when the data or the weights cannot be had."""

import json

import pytest

from host import run as R
from host.cli import main
from host.datasets import DatasetUnavailable
from hw.config import Config


def test_cli_run_on_tiny(tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["run", "--preset", "tiny", "--queries", "5", "--candidates", "24",
               "--sb-rows", "8", "--sweep", "0.5", "1.5", "--no-cpu",
               "--json", str(out), "--out", str(tmp_path / "plots")])
    text = capsys.readouterr().out
    assert rc == 0, text
    r = json.loads(out.read_text())
    # saturation, the latency run at 0.5 x saturation, then the sweep
    assert [s["offered_qps"] is None for s in r["load_sweep"]] == [True, False, False, False]
    assert r["answers_wrong"] == 0 and r["answers_checked"] == 4 * 5
    for s in r["load_sweep"]:                  # none lost or duplicated, 1.5x included
        assert s["queries"] == s["answers_ok"] == 5
    sat = r["saturation"]
    assert r["cycles_per_query"] == sat["run_cycles"] / 5
    assert r["load_sweep"][1]["offered_qps"] == pytest.approx(0.5 * sat["throughput_qps"])
    assert r["load_sweep"][3]["offered_qps"] == pytest.approx(1.5 * sat["throughput_qps"])
    assert 0 < r["array_utilization"] < 1 and 0 < r["channel_utilization"] < 1
    assert sat["counters_delta"]["queries"] == 5
    assert sat["counters_delta"]["candidates"] == 5 * 24
    assert r["run"]["p50_us"] <= r["run"]["p99_us"]
    cfg = Config.preset("tiny")
    assert r["modelled_qps"] == pytest.approx(cfg.clock_mhz * 1e6 / r["cycles_per_query"])
    assert r["modelled_clock_source"].startswith("config clock")
    # ml-med does not fit tiny's stage engine: the summary says what ran instead
    assert any("not fit tiny" in n for n in r["notes"])
    assert "not fit tiny" in text and "0 wrong" in text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "build.log", "latency_cdf.png", "simulator.log", "throughput_vs_load.png"]
    assert "run_queries passed" in (tmp_path / "plots" / "simulator.log").read_text()


def test_setup_without_data(monkeypatch):
    """No MovieLens: synthetic queries, and the notes say why."""
    import host.movielens

    def unavailable(download=True):
        raise DatasetUnavailable("no network in this test")
    monkeypatch.setattr(host.movielens, "load_movielens", unavailable)
    s = R.movielens_setup(Config.preset("tiny"), n_queries=3, n_candidates=10, sb_rows=8,
                          progress=lambda _: None)
    assert s.positives is None and s.data.startswith("synthetic")
    assert any("no network in this test" in n for n in s.notes)
    assert len(s.queries) == 3 and all(q.n_candidates == 10 for q in s.queries)


@pytest.mark.parametrize("kw, match", [({"n_candidates": 0}, "candidates"),
                                       ({"n_candidates": 10_000}, "candidates"),
                                       ({"n_queries": 0}, "queries")])
def test_setup_bad_sizes(kw, match):
    with pytest.raises(ValueError, match=match):
        R.movielens_setup(Config.preset("tiny"), **{"n_queries": 2, "n_candidates": 8, **kw})


def test_bad_loads():
    s = R.RunSetup(None, {}, [], None, "", "")
    for kw in ({"load": 0}, {"sweep": [0.5, -1]}, {"rate_qps": 0.0}):
        with pytest.raises(ValueError, match="positive"):
            R.hardware_run(Config.preset("tiny"), s, **kw)


def test_two_stage_run_above_saturation():
    """The two-stage tiny top level: every answer right, and at 1.5x
    saturation none lost or duplicated."""
    from sim.tb_top import two_stage_tiny
    cfg = two_stage_tiny()
    s = R.movielens_setup(cfg, n_queries=6, n_candidates=24, sb_rows=8,
                          progress=lambda _: None)
    assert len(s.model.spec.stages) == 2
    r = R.hardware_run(cfg, s, sweep=[1.5], sb_rows=8, cpu=False, progress=lambda _: None)
    assert r["answers_wrong"] == 0 and r["answers_checked"] == 3 * 6
    for run in r["load_sweep"]:
        assert run["queries"] == run["answers_ok"] == 6
    assert r["saturation"]["counters_delta"]["candidates"] == 6 * 24
    assert r["keep"] == list(s.model.spec.keep) and len(r["keep"]) == 2
