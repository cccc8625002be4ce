"""The quality benchmark's plumbing (benchmarks/quality.py, ``recaccel bench
quality``) on a tiny configuration: random weights, a toy data set, no
training and no torch; the rows' keys, ranges and MACs, the target checks
and the CLI's JSON."""

import json

import numpy as np
import pytest

from benchmarks import quality as Q
from host.datasets import Ratings
from host.models import StageModelConfig, TableSpec, init_params
from host.movielens import leave_last_out
from host.pipeline import pipeline_macs

USERS, ITEMS = 12, 60
NAMES = ("t-small", "t-med", "t-large")
FUNNELS = {"2-stage": (20,), "3-stage": (25, 15)}


def toy_split():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(USERS), 10)
    items = np.concatenate([rng.choice(ITEMS, 10, replace=False) for _ in range(USERS)])
    return leave_last_out(Ratings(users + 1, items + 1, np.full(users.size, 4),
                                  np.arange(users.size)))


def configs():
    tables = (TableSpec("user_id", USERS, "user"), TableSpec("user_history", ITEMS, "user"),
              TableSpec("item_id", ITEMS, "item"))
    return {NAMES[0]: StageModelConfig(NAMES[0], 3, (8, 4), tables, 4, "dot", (8, 1)),
            NAMES[1]: StageModelConfig(NAMES[1], 3, (8, 8), tables, 8, "dot", (16, 1)),
            NAMES[2]: StageModelConfig(NAMES[2], 3, (16, 16), tables, 16, "concat",
                                       (32, 16, 1))}


@pytest.fixture(scope="module")
def rows():
    params = {n: init_params(c, seed=i, table_scale=0.5)
              for i, (n, c) in enumerate(configs().items())}
    return Q.bench_quality(split=toy_split(), params=params, models=NAMES, negatives=39,
                           funnels=FUNNELS, calibration=4)


def test_rows_keys_and_ranges(rows):
    names = ["1-stage large", "2-stage", "3-stage", "1-stage small", "1-stage med"]
    assert [(r["pipeline"], r["precision"]) for r in rows] == \
        [(n, p) for n in names for p in ("float", "int8", "int4")]
    for r in rows:
        assert {"pipeline", "precision", "ndcg10", "hr10", "macs_per_query"} <= set(r)
        assert 0 <= r["ndcg10"] <= r["hr10"] <= 1
        # RecPipe's variant: the same DCG over an ideal of 10 relevant items.
        ideal = sum(1 / np.log2(i + 2) for i in range(10))
        assert r["ndcg10_recpipe"] == pytest.approx(r["ndcg10"] / ideal)
        assert 0 <= r["recall10"] <= 1 and r["queries"] == USERS
    json.dumps(rows)                                     # plain JSON types


def test_macs_and_reference(rows):
    cfgs = configs()
    by = {(r["pipeline"], r["precision"]): r for r in rows}
    for name, stages, keep in (("1-stage large", NAMES[2:], (10,)),
                               ("2-stage", (NAMES[0], NAMES[2]), (20, 10)),
                               ("3-stage", NAMES, (25, 15, 10))):
        spec = Q.PipelineSpec(name, stages, keep)
        r = by[name, "int8"]
        assert r["funnel"] == "->".join(map(str, (40,) + keep))
        assert r["macs_per_query"] == pipeline_macs(spec, cfgs, 40)
    large = by["1-stage large", "float"]
    assert large["recall10"] == 1.0 and large["macs_vs_large"] == 1.0
    assert large["ndcg10_vs_large"] == 0.0
    assert by["2-stage", "float"]["macs_vs_large"] < 1.0
    assert by["3-stage", "float"]["ndcg10_vs_float"] == 0.0


def test_targets_verdicts():
    def row(p, prec, nd, macs, vs_float):
        stages = ["s", "l"] if p.startswith("2") else ["s", "m", "l"] if p.startswith("3") \
            else ["l"]
        return {"pipeline": p, "precision": prec, "ndcg10": nd, "macs_vs_large": macs,
                "stages": stages,
                "ndcg10_vs_float": vs_float, "ndcg10_vs_large": nd / 0.2 - 1,
                "ndcg10_vs_large_se": 0.01}
    rows = [row("1-stage large", "float", 0.2, 1.0, 0.0),
            row("1-stage large", "int8", 0.199, 1.0, -0.005),
            row("2-stage", "float", 0.199, 0.30, 0.0),       # -0.5% at 0.30: met
            row("2-stage", "int8", 0.195, 0.30, -0.02),      # int8 -2%: not met
            row("3-stage", "float", 0.19, 0.25, 0.0)]        # -5%: not met
    t = Q.targets(rows)
    assert not t["int8_within_1pct"]["met"] and not t["int8_within_1pct"]["met_two_sided"]
    assert t["int8_within_1pct"]["relative"] == {"1-stage large": -0.005, "2-stage": -0.02}
    assert t["recpipe"]["met"]
    assert t["recpipe"]["pipelines"]["2-stage"]["met"]
    assert not t["recpipe"]["pipelines"]["3-stage"]["met"]
    rows[2]["macs_vs_large"] = 0.34                          # over a third: not met
    rows[3]["ndcg10_vs_float"] = 0.009
    t = Q.targets(rows)
    assert not t["recpipe"]["met"] and t["int8_within_1pct"]["met"]
    assert t["int8_within_1pct"]["met_two_sided"]
    rows[3]["ndcg10_vs_float"] = 0.02                        # 2% better: kept, not within
    t = Q.targets(rows)
    assert t["int8_within_1pct"]["met"] and not t["int8_within_1pct"]["met_two_sided"]


def test_format_and_cli_json(rows, tmp_path, monkeypatch, capsys):
    text = Q.format_quality(rows)
    assert "1-stage large" in text and "RecPipe effect" in text and "int8 within 1%" in text
    monkeypatch.setattr(Q, "bench_quality", lambda **kw: rows)
    from host.cli import main
    path = tmp_path / "q.json"
    assert main(["bench", "quality", "--json", str(path)]) == 0
    back = json.loads(path.read_text())
    assert back == json.loads(json.dumps(rows))
    assert "RecPipe effect" in capsys.readouterr().out
