"""Ranking quality: NDCG@k (standard and RecPipe's variant), HR@k, and the
recall of a reference model's top K. Pure NumPy.

Ranks are 1-based: the first item of a ranked list has rank 1.

* Standard NDCG@k (Jarvelin and Kekalainen 2002, "exponential"-free form,
  as ``sklearn.metrics.ndcg_score``)::

      DCG@k  = sum_{r=1..min(k, n)} rel_r / log2(r + 1)
      IDCG@k = DCG@k of the same relevances sorted in decreasing order,
               over *all* the query's candidates (not just the returned list)
      NDCG@k = DCG@k / IDCG@k          (0 when IDCG@k = 0)

  With a single relevant item (MovieLens' held-out positive) at rank ``r``,
  NDCG@k = ``1 / log2(r + 1)`` if ``r <= k``, else 0.

* RecPipe's NDCG@k (harvard-acc/RecPipe, ``utils.py``: ``ndcg_score`` as
  called from ``post_process_queries`` on the first ``k`` of a query's
  sorted list). PAPERS.md says only that its IDCG is non-standard; the
  artifact's formula is::

      NDCG_recpipe@k = sum_{r=1..m} rel_r / log2(r + 1)  /  sum_{r=1..m} 1 / log2(r + 1)

  with ``m = min(k, n)``: the ideal assumes every one of the ``m`` positions
  is relevant, whatever the number of relevant candidates, so it is a
  position-weighted precision (1 only if all of the top ``m`` are relevant).
  RecPipe reports it on Criteo Kaggle with click labels as ``rel``.

* HR@k: 1 if the held-out positive is among the first ``k``, else 0
  (RecPipe's MovieLens metric).

* Recall of the reference top K: ``|top K of the pipeline & top K of the
  reference| / min(K, len(reference))``, the reference being the single
  large model over all candidates.

Means over queries are plain averages.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dcg", "ndcg_at_k", "ndcg_single", "recpipe_ndcg_at_k", "hit_at_k",
           "rank_of", "recall_at_k", "relevance_of"]


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: must be a positive integer, not {k!r}")


def dcg(gains, k: int | None = None) -> float:
    """``sum_r gains_r / log2(r + 1)`` over the first ``k`` (all by default)."""
    g = np.asarray(gains, dtype=np.float64).reshape(-1)
    if k is not None:
        _check_k(k)
        g = g[:k]
    return float(np.dot(g, _discounts(g.size)))


def ndcg_at_k(ranked_relevance, k: int, all_relevance=None) -> float:
    """Standard NDCG@k.

    Parameters
    ----------
    ranked_relevance : array-like
        Relevance of the returned items, in ranked order.
    k : int
    all_relevance : array-like, optional
        Relevance of every candidate of the query (for the ideal ordering);
        by default ``ranked_relevance``.
    """
    _check_k(k)
    ideal = np.sort(np.asarray(ranked_relevance if all_relevance is None
                               else all_relevance, dtype=np.float64).reshape(-1))[::-1]
    idcg = dcg(ideal, k)
    return dcg(ranked_relevance, k) / idcg if idcg > 0 else 0.0


def ndcg_single(rank: int | None, k: int) -> float:
    """Standard NDCG@k with one relevant item at 1-based ``rank`` (``None``:
    not returned)."""
    _check_k(k)
    return 1.0 / np.log2(rank + 1) if rank is not None and 1 <= rank <= k else 0.0


def recpipe_ndcg_at_k(ranked_relevance, k: int) -> float:
    """RecPipe's NDCG@k (module docstring): the DCG of the first ``m = min(k,
    n)`` items over ``sum_{r<=m} 1 / log2(r + 1)``; 0 for an empty list."""
    _check_k(k)
    g = np.asarray(ranked_relevance, dtype=np.float64).reshape(-1)[:k]
    if g.size == 0:
        return 0.0
    return dcg(g) / float(_discounts(g.size).sum())


def rank_of(ranked_ids, target) -> int | None:
    """1-based rank of ``target`` in ``ranked_ids`` (``None`` if absent)."""
    hit = np.flatnonzero(np.asarray(ranked_ids).reshape(-1) == target)
    return int(hit[0]) + 1 if hit.size else None


def hit_at_k(ranked_ids, positive, k: int) -> float:
    """1.0 if ``positive`` is among the first ``k`` of ``ranked_ids``, else 0.0."""
    _check_k(k)
    r = rank_of(ranked_ids, positive)
    return 1.0 if r is not None and r <= k else 0.0


def relevance_of(ranked_ids, relevant) -> np.ndarray:
    """Binary relevance of each ranked id: 1.0 where it is in ``relevant``."""
    return np.isin(np.asarray(ranked_ids).reshape(-1),
                   np.asarray(relevant).reshape(-1)).astype(np.float64)


def recall_at_k(ranked_ids, reference_ids, k: int) -> float:
    """Share of the reference's top ``k`` that the first ``k`` of
    ``ranked_ids`` contain: ``|A[:k] & B[:k]| / min(k, len(B))`` (1.0 for an
    empty reference)."""
    _check_k(k)
    ref = np.unique(np.asarray(reference_ids).reshape(-1)[:k])
    if ref.size == 0:
        return 1.0
    got = np.unique(np.asarray(ranked_ids).reshape(-1)[:k])
    return float(np.intersect1d(got, ref).size) / ref.size
