# amaranth: UnusedElaboratable=no
"""The generator's outputs and the command line's errors."""

import json
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from host.cli import main
from hw.config import Config
from hw.generate import constraint_texts
from hw.narrow_io import NarrowIO


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["generate", "--preset", "tiny", "-o", str(out), "--lint"]) == 0
    return out


def test_generate_tiny_lints_clean(tiny_out):
    tmp_path = tiny_out
    top = (tmp_path / "recaccel_top.v").read_text()
    assert "module recaccel_top" in top and "cmd_3__payload" in top
    assert (tmp_path / "files.f").read_text() == "recaccel_top.v\n"
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "tiny"
    assert "RECACCEL_ARRAY_DIM 4" in (tmp_path / "recaccel_config.h").read_text()
    for block in ("systolic_array", "mlp_engine_4", "mlp_engine_2", "topk_filter",
                  "embedding_lookup", "command_processor"):
        assert f"module {block}" in (tmp_path / "blocks" / f"{block}.v").read_text()
    assert 'FREQUENCY PORT "clk" 100.000000 MHZ;' in (tmp_path / "constraints" / "ecp5.lpf").read_text()
    assert "create_clock -period 10.000" in (tmp_path / "constraints" / "u280.xdc").read_text()


@pytest.mark.parametrize("block", ["topk_filter", "embedding_lookup", "command_processor"])
def test_blocks_lint_clean(tiny_out, block):
    from sim.runner import lint
    lint(tiny_out / "blocks" / f"{block}.v", block)


@pytest.mark.parametrize("policy, caches", [
    ("lru", dict(static_rows=8, static_ways=2, cache_sets=4, cache_ways=4)),
    ("plru", dict(static_rows=8, static_ways=2, cache_sets=4, cache_ways=4)),
    # one set, one way, one row: no zero-width addresses
    ("lru", dict(static_rows=1, static_ways=1, cache_sets=1, cache_ways=1)),
    ("plru", dict(static_rows=2, static_ways=2, cache_sets=1, cache_ways=2)),
])
def test_cached_embedding_lints_clean(tmp_path, policy, caches):
    import dataclasses
    from hw.embedding import EmbeddingLookup
    from hw.verilog import to_verilog
    from sim.runner import lint
    cfg = dataclasses.replace(Config.preset("tiny").embedding, cache_policy=policy, **caches)
    path = tmp_path / "embedding_lookup.v"
    path.write_text(to_verilog(EmbeddingLookup(cfg), "embedding_lookup"))
    lint(path, "embedding_lookup")


def test_constraints_follow_the_clock():
    texts = constraint_texts(Config.preset("ecp5"))
    assert 'FREQUENCY PORT "clk" 150.000000 MHZ;' in texts["ecp5.lpf"]
    assert "create_clock -period 6.667" in texts["u280.xdc"]


def test_cli_reports_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "tiny"\n[array]\nblock = 3\n')
    assert main(["generate", "--config", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "array.block: 3 does not divide array.dim 4" in capsys.readouterr().err


def test_narrow_io_counts_port_bits():
    class Thing(wiring.Component):
        a: In(7)
        b: In(3)
        y: Out(5)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.y.eq(self.a + self.b)
            return m

    w = NarrowIO(Thing())
    assert (w.in_bits, w.out_bits) == (10, 5)


@pytest.mark.parametrize("kw, field", [({"placer": "annealing"}, "placer"),
                                       ({"router": "router3"}, "router"),
                                       ({"seed": 1.5}, "seed"),
                                       ({"seed": []}, "seed"),
                                       ({"seed": [1, 2, 1]}, "seed"),
                                       ({"seed": [1, True]}, "seed"),
                                       ({"jobs": 0}, "jobs"),
                                       ({"freq_mhz": 0}, "freq_mhz")])
def test_synth_refuses_bad_options(tmp_path, kw, field):
    # checked before any tool runs: nothing is written
    from hw.synth import synth_ecp5
    args = {"workdir": tmp_path / "w", "freq_mhz": 150.0, **kw}
    with pytest.raises(ValueError, match=f"^{field} must be"):
        synth_ecp5("module top(); endmodule\n", "top", **args)
    assert not (tmp_path / "w").exists()


def test_synth_seed_sweep(tmp_path):
    # one synthesis, a place and route per seed, the best run returned and
    # every run listed with its own log and report
    from hw.synth import synth_ecp5
    # (a multiply-accumulate loop whose three seeds reach different Fmax,
    # the best not the first)
    design = ("module top(input clk, input [15:0] a, output [15:0] q);\n"
              "reg [15:0] c = 0; reg [15:0] d = 0;\n"
              "always @(posedge clk) begin c <= c * a + d; d <= c ^ a; end\n"
              "assign q = d; endmodule\n")
    res = synth_ecp5(design, "top", workdir=tmp_path, freq_mhz=100.0, seed=[3, 1, 2],
                     jobs=2, progress=lambda s: None)
    assert [r["seed"] for r in res["runs"]] == [3, 1, 2]
    assert len({r["fmax_mhz"] for r in res["runs"]}) > 1
    best = max(res["runs"], key=lambda r: r["fmax_mhz"])
    assert (res["seed"], res["fmax_mhz"]) == (best["seed"], best["fmax_mhz"])
    for r in res["runs"]:
        assert r["log"].endswith(f"nextpnr_seed{r['seed']}.log")
        report = json.loads(Path(r["report"]).read_text())
        assert r["fmax_mhz"] == pytest.approx(max(e["achieved"] for e in report["fmax"].values()))
    assert res["ff"] == 32 and res["dsp"] == 1


def test_synth_cli_seed_sweep(tmp_path, capsys, monkeypatch):
    # `recaccel synth --seeds` hands the seeds and jobs to the flow and
    # reports every seed (the flow itself: the test above)
    import hw.synth
    calls = []

    def fake(verilog, top, *, seed, jobs, **kw):
        calls.append((list(seed), jobs))
        runs = [{"seed": s, "fmax_mhz": 100.0 + s % 3, "pnr_s": 5.0} for s in seed]
        return {"fmax_mhz": 102.0, "seed": 2, "lut": 10, "ff": 20, "dsp": 1, "bram": 2,
                "synth_s": 1.0, "pnr_s": 5.0, "runs": runs}

    monkeypatch.setattr(hw.synth, "synth_ecp5", fake)
    out = tmp_path / "s.json"
    assert main(["synth", "--preset", "tiny", "--seeds", "1-2,4", "--jobs", "3",
                 "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    assert calls == [([1, 2, 4], 3)]
    text = capsys.readouterr().out
    assert "seed 1 101.0 MHz, seed 2 102.0 MHz, seed 4 101.0 MHz" in text
    assert "seed 2, the best of 3" in text
    report = json.loads(out.read_text())
    assert report["seed"] == 2 and [r["seed"] for r in report["seeds"]] == [1, 2, 4]


@pytest.mark.parametrize("preset", ["default", "tiny"])
def test_array_lints_clean(tmp_path, preset):
    # every mode of the preset's array: blocks that are never at the top of
    # a sub-array, or never on a port's row, leave no constant processes
    from hw.systolic import SystolicArray
    from hw.verilog import to_verilog
    from sim.runner import lint
    path = tmp_path / "systolic_array.v"
    path.write_text(to_verilog(SystolicArray(Config.preset(preset).array), "systolic_array"))
    lint(path, "systolic_array")
