"""The multi-stage golden pipeline: the top-k tie rule between stages, stage
composition, MACs, precisions side by side; the MovieLens queries (skipped,
saying why, when the data set cannot be had) and the synthetic generator."""

import numpy as np
import pytest

from host.datasets import DatasetUnavailable
from host.models import PRESETS, Query, StageModel, init_params, stage_preset
from host.movielens import (leave_last_out, load_movielens, movielens_queries,
                            synthetic_queries, user_dense)
from host.pipeline import (PipelineSpec, build_scorers, pipeline_macs, quality_table,
                           run_pipeline, select_top)
from host.topk import topk
from host.traces import zipf_top_share


class FixedScorer:
    """Scores looked up by candidate (a stand-in stage with known scores)."""

    def __init__(self, config, table):
        self.config = config
        self.table = np.asarray(table)

    def scores(self, query):
        return self.table[query.candidates]


def toy_query(n):
    return Query(np.zeros(3), ([0], [1]), np.arange(n)[:, None] % 50,
                 candidates=np.arange(n))


# -- selection and the tie rule -------------------------------------------------------

def test_ties_go_to_the_lower_position():
    scores = np.array([5, 7, 7, 1, 7, 5])
    pos = np.arange(6)
    assert select_top(scores, pos, 4).tolist() == [1, 2, 4, 0]
    assert select_top(scores.astype(float), pos, 4).tolist() == [1, 2, 4, 0]
    # Any arrival order gives the same positions (the hardware's property).
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = rng.permutation(6)
        for s in (scores, scores.astype(float)):
            got = pos[perm][select_top(s[perm], pos[perm], 4)]
            assert got.tolist() == [1, 2, 4, 0]


def test_integer_selection_is_host_topk():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(1, 300))
        s = rng.integers(-4, 4, n) * 1000        # many ties
        pos = rng.permutation(10 * n)[:n]
        k = int(rng.integers(1, n + 5))
        want_s, want_p = topk(s, pos, k)
        idx = select_top(s, pos, k)
        assert np.array_equal(pos[idx], want_p) and np.array_equal(s[idx], want_s)


def test_stages_compose():
    """Stage 1 keeps its best 4 (ties to the lower position), stage 2 orders
    only those by its own scores, the final list is its best 3."""
    cfg = PRESETS["ml-small"]
    s1 = FixedScorer(cfg, [3, 9, 9, 0, 5, 9, 1, 9])    # keeps 1, 2, 5, 7
    s2 = FixedScorer(cfg, [90, 1, 2, 95, 0, 3, 0, 2])  # among them: 5 (3), 2 (2), 7 (2), 1
    spec = PipelineSpec("2", ("a", "b"), (4, 3))
    res = run_pipeline(spec, {"a": s1, "b": s2}, toy_query(8))
    assert res.survivors[0].tolist() == [1, 2, 5, 7]
    assert res.positions.tolist() == [5, 2, 7]
    assert res.scores.tolist() == [3, 2, 2]
    assert res.macs == cfg.macs().total(8) + cfg.macs().total(4)
    # Shuffled candidates, positions kept: the same answer.
    q = toy_query(8).subset(np.array([6, 0, 3, 7, 1, 5, 2, 4]))
    assert run_pipeline(spec, {"a": s1, "b": s2}, q).positions.tolist() == [5, 2, 7]
    with pytest.raises(ValueError, match="no model 'c'"):
        run_pipeline(PipelineSpec("x", ("c",), (1,)), {"a": s1}, toy_query(8))


def test_pipeline_macs():
    cfgs = {n: PRESETS[n] for n in ("ml-small", "ml-med", "ml-large")}
    spec = PipelineSpec("3", ("ml-small", "ml-med", "ml-large"), (400, 256, 10))
    want = (cfgs["ml-small"].macs().total(1000) + cfgs["ml-med"].macs().total(400)
            + cfgs["ml-large"].macs().total(256))
    assert pipeline_macs(spec, cfgs, 1000) == want
    # RecPipe's Kaggle pipeline 4096 -> 512 (small -> large).
    rm = {n: PRESETS[n] for n in ("rm-small", "rm-large")}
    spec = PipelineSpec("rm", ("rm-small", "rm-large"), (512, 64))
    assert pipeline_macs(spec, rm, 4096) == (4672 + 4096 * 3392
                                             + rm["rm-large"].macs().total(512))


def test_precisions_side_by_side():
    """Float, int8 and int4 on the same weights: a first stage that keeps
    everything leaves the second stage's ranking; the integer paths select
    with host.topk on their integer scores; the single large model is its
    own reference (recall 1)."""
    names = ("ml-small", "ml-large")
    params = {n: init_params(stage_preset(n, max_rows=120), seed=i, table_scale=0.5)
              for i, n in enumerate(names)}
    cfg = params["ml-small"].config
    queries = synthetic_queries(cfg, 3, 100, user_bag=4, seed=3)
    scorers = build_scorers(params, queries)
    large = PipelineSpec("large", ("ml-large",), (20,))
    keep_all = PipelineSpec("2-stage, keep all", ("ml-small", "ml-large"), (100, 20))
    two = PipelineSpec("2-stage", ("ml-small", "ml-large"), (30, 20))
    for prec, sc in scorers.items():
        for q in queries:
            a = run_pipeline(large, sc, q)
            assert np.array_equal(run_pipeline(keep_all, sc, q).positions, a.positions)
            s = sc["ml-large"].scores(q)
            if prec == "float":
                assert isinstance(sc["ml-large"], StageModel)
            else:
                assert np.issubdtype(s.dtype, np.integer)
                assert np.array_equal(a.positions, topk(s, q.positions, 20)[1])
    positives = np.array([q.candidates[7] for q in queries])
    rows = quality_table([large, two], scorers, queries, positives, k=10, reference=large)
    assert [(r.pipeline, r.precision) for r in rows] == [
        (s.name, p) for s in (large, two) for p in ("float", "int8", "int4")]
    for r in rows:
        assert 0 <= r.ndcg <= r.hr <= 1 and 0 <= r.ndcg_recpipe <= 1
        if r.pipeline == "large":
            assert r.recall == 1.0
        cf = {n: params[n].config for n in names}
        spec = large if r.pipeline == "large" else two
        assert r.macs_per_query == pipeline_macs(spec, cf, 100)
        d = r.as_dict()
        assert {"pipeline", "precision", "ndcg10", "hr10", "macs_per_query"} <= set(d)


# -- data ----------------------------------------------------------------------------------

def test_synthetic_queries():
    cfg = stage_preset("rm-small", max_rows=5000)
    qs = synthetic_queries(cfg, 2, 4096, alpha=1.0, user_bag=2, seed=0)
    assert len(qs) == 2 and qs[0].item_ids.shape == (4096, 13)
    assert all(b.size == 2 for b in qs[0].user_ids)
    for q in qs:
        q.check(cfg)
    # The hottest row of the largest item table takes its Zipf share.
    big = int(np.argmax([t.rows for t in cfg.item_tables]))
    col = np.concatenate([q.item_ids[:, big] for q in qs])
    share = np.bincount(col).max() / col.size
    want = zipf_top_share(cfg.item_tables[big].rows, 1.0, 1)
    assert abs(share - want) < 0.02


def test_synthetic_queries_at_kaggle_scale():
    cfg = PRESETS["rm-small"]           # Criteo Kaggle's table sizes, up to 10.1M rows
    q = synthetic_queries(cfg, 1, 64, seed=1)[0]
    q.check(cfg)
    assert q.item_ids.max() >= 1 << 16   # ids of the large tables are wide


def test_leave_last_out_on_a_toy():
    class R:   # user item rating timestamp, 1-based ids; user 1 has a time tie
        user = np.array([1, 1, 1, 2, 2, 1])
        item = np.array([1, 2, 3, 1, 4, 4])
        rating = np.array([5, 4, 3, 2, 1, 5])
        timestamp = np.array([10, 30, 20, 5, 6, 30])
    s = leave_last_out(R)
    assert s.test_item.tolist() == [3, 3]          # user 1: file order breaks the tie
    assert s.train_items(0).tolist() == [0, 2, 1]  # oldest first
    assert s.train_items(1).tolist() == [0]
    qs, pos = movielens_queries(s, history=2)
    assert qs[0].candidates.tolist() == [3] and pos.tolist() == [3, 3]
    assert qs[1].candidates.tolist() == [1, 2, 3]
    assert qs[0].user_ids[1].tolist() == [2, 1]
    np.testing.assert_allclose(user_dense(s)[1], [np.log1p(1) / np.log1p(3), -0.5, 0.0])


@pytest.fixture(scope="module")
def movielens():
    try:
        return load_movielens()
    except DatasetUnavailable as e:
        pytest.skip(f"MovieLens-100K unavailable: {e}")


def test_movielens_queries(movielens):
    s = movielens
    assert (s.n_users, s.n_items) == (943, 1682)
    assert s.train_item.size == 100_000 - 943
    users = np.array([0, 1, 404, 942])
    qs, pos = movielens_queries(s, users=users)
    for u, q, p in zip(users, qs, pos):
        q.check(PRESETS["ml-small"])
        train = s.train_items(u)
        assert p in q.candidates and not np.isin(train, q.candidates).any()
        assert q.n_candidates == s.n_items - train.size
        assert np.all(np.diff(q.candidates) > 0)
        lo, hi = s.train_offsets[u], s.train_offsets[u + 1]
        assert s.test_time[u] >= s.train_time[lo:hi].max()
        assert q.user_ids[0].tolist() == [u] and q.user_ids[1].size == min(32, train.size)
    qs, pos = movielens_queries(s, users=users, negatives=999, seed=4)
    for u, q, p in zip(users, qs, pos):
        assert p in q.candidates
        assert q.n_candidates == min(1000, s.n_items - s.train_items(u).size)
    again, _ = movielens_queries(s, users=users, negatives=999, seed=4)
    assert all(np.array_equal(a.candidates, b.candidates) for a, b in zip(qs, again))


def test_movielens_pipeline_runs(movielens):
    """The RecPipe MovieLens shape (1000 -> 400 -> 256) on a few users with
    random weights: it runs at every precision; the metrics are in range."""
    names = ("ml-small", "ml-med", "ml-large")
    params = {n: init_params(PRESETS[n], seed=i, table_scale=0.5)
              for i, n in enumerate(names)}
    qs, pos = movielens_queries(movielens, users=np.arange(0, 943, 190), negatives=999)
    scorers = build_scorers(params, qs)
    specs = [PipelineSpec("3-stage", names, (400, 256, 10)),
             PipelineSpec("large", ("ml-large",), (10,))]
    rows = quality_table(specs, scorers, qs, pos, k=10, reference=specs[1])
    assert len(rows) == 6
    for r in rows:
        assert 0 <= r.ndcg <= 1 and 0 <= r.hr <= 1 and 0 <= r.recall <= 1
