"""Ranking metrics against brute force, known answers, RecPipe's own formula
and (when installed) scikit-learn."""

import itertools
import math

import numpy as np
import pytest

from host.metrics import (dcg, hit_at_k, ndcg_at_k, ndcg_single, rank_of, recall_at_k,
                          recpipe_ndcg_at_k, relevance_of)


def brute_ndcg(ranked_rel, k, all_rel):
    """DCG with explicit logs; the ideal as the best DCG over every ordering."""
    def dcg_k(rels):
        return sum(r / math.log2(i + 2) for i, r in enumerate(rels[:k]))
    best = max(dcg_k(list(p)) for p in itertools.permutations(all_rel))
    return dcg_k(list(ranked_rel)) / best if best > 0 else 0.0


def recpipe_reference(y):
    """harvard-acc/RecPipe utils.py ndcg_score, transcribed (it is called on
    the first k labels of a sorted list)."""
    dcg_, idcg = 0.0, 0.0
    for i, v in enumerate(y):
        dcg_ += v / math.log(2 + i, 2)
        idcg += 1.0 / math.log(2 + i, 2)
    return float(dcg_) / idcg


def test_ndcg_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 7))
        all_rel = rng.integers(0, 4, n).astype(float)
        shown = rng.permutation(n)[:int(rng.integers(1, n + 1))]
        ranked = all_rel[shown]
        for k in (1, 2, 3, 5, 10):
            assert ndcg_at_k(ranked, k, all_rel) == pytest.approx(
                brute_ndcg(ranked, k, all_rel), abs=1e-12)


def test_ndcg_known_answers():
    assert dcg([3, 2, 3, 0, 1, 2]) == pytest.approx(
        3 + 2 / math.log2(3) + 3 / 2 + 0 + 1 / math.log2(6) + 2 / math.log2(7))
    assert ndcg_at_k([0, 0, 1], 3) == pytest.approx(0.5)
    assert ndcg_at_k([0, 0, 0], 3) == 0.0
    # The ideal counts the relevant candidate that was not returned.
    assert ndcg_at_k([1, 0], 2, [1, 0, 1]) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_single_positive():
    for n in (1, 5, 30):
        for pos in range(n):
            rel = np.zeros(n)
            rel[pos] = 1
            for k in (1, 3, 10, 50):
                assert ndcg_single(pos + 1, k) == pytest.approx(ndcg_at_k(rel, k))
    assert ndcg_single(None, 10) == 0.0
    assert ndcg_single(11, 10) == 0.0
    assert ndcg_single(1, 10) == 1.0


def test_recpipe_variant():
    rng = np.random.default_rng(1)
    for _ in range(50):
        y = rng.integers(0, 2, int(rng.integers(1, 70))).astype(float)
        for k in (4, 8, 16, 32, 64):
            assert recpipe_ndcg_at_k(y, k) == pytest.approx(recpipe_reference(y[:k]))
    # It differs from the standard one: one positive at rank 1 of 4 is 1.0 there.
    assert ndcg_at_k([1, 0, 0, 0], 4) == 1.0
    assert recpipe_ndcg_at_k([1, 0, 0, 0], 4) == pytest.approx(
        1 / (1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)))
    assert recpipe_ndcg_at_k([], 4) == 0.0


def test_hit_rank_recall():
    ids = np.array([7, 3, 9, 1])
    assert rank_of(ids, 9) == 3 and rank_of(ids, 4) is None
    assert hit_at_k(ids, 9, 3) == 1.0 and hit_at_k(ids, 9, 2) == 0.0
    assert recall_at_k(ids, [3, 7, 5, 6], 2) == 1.0
    assert recall_at_k(ids, [5, 3, 9, 1], 2) == 0.5
    assert recall_at_k(ids, [9, 1], 4) == 1.0
    assert relevance_of(ids, [1, 9]).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="k: must be a positive integer"):
        hit_at_k(ids, 9, 0)


def test_ndcg_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics",
                              reason="scikit-learn is not installed (not a dependency); "
                                     "the brute-force test covers NDCG")
    rng = np.random.default_rng(2)
    for _ in range(30):
        n = int(rng.integers(2, 40))
        rel = rng.integers(0, 4, n).astype(float)
        score = rng.permutation(n).astype(float)          # no ties
        ranked = rel[np.argsort(-score)]
        for k in (1, 5, 10):
            want = skm.ndcg_score(rel[None, :], score[None, :], k=k)
            assert ndcg_at_k(ranked, k, rel) == pytest.approx(want, abs=1e-12)
