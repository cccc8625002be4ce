"""Queries for the stage models: MovieLens-100K (real) and a synthetic
generator with Zipf-distributed ids (scale tests).

MovieLens-100K as queries
-------------------------
The ratings come from :func:`host.datasets.movielens_100k` (read at run time,
never committed; it raises :class:`host.datasets.DatasetUnavailable` saying
why when the data cannot be had). Ids here are the data set's minus one:
users ``0 .. 942``, items ``0 .. 1681``.

Split (:func:`leave_last_out`): leave-last-out by time. Each user's ratings
are ordered by timestamp, ties in the order of the file; the last one is the
user's held-out positive (``test_item``), whatever its rating; all the others
are training data. Every user has at least 20 ratings, so every user has 19
or more training ratings. Training and every feature below see only the
training part.

A query per user (:func:`movielens_queries`):

* dense features (:func:`user_dense`, ``ML_DENSE_FEATURES = 3``):
  ``log1p(n) / log1p(n_max)`` (``n`` the user's training ratings, ``n_max``
  the most any user has), ``(mean rating - 3) / 2``, and the share of
  ratings of 4 or 5;
* user bags: ``user_id`` = ``[user]``; ``user_history`` = the user's last
  ``history`` training items, oldest first (sum-pooled; 32 by default, under
  the lookup unit's default ``max_bag`` of 64);
* candidates: the items the user has not rated in training (so the held-out
  positive is among them), in increasing item id; or, with ``negatives``,
  the positive and that many of those items drawn without replacement
  (fewer if the user has fewer), then sorted by item id (RecPipe's
  MovieLens queries are 1 positive + 999 negatives). Sorting by id keeps the
  top-k tie rule (lower position first) from favouring the positive.
  ``item_ids`` is the candidates' item ids (one item table), and
  ``Query.candidates`` the same ids, which the metrics compare with the
  positive.

Synthetic queries
-----------------
:func:`synthetic_queries` draws, for any stage config (e.g. the RM presets
with Criteo Kaggle's table sizes, PAPERS.md), ids from a finite Zipf law per
table (:func:`host.traces.zipf_trace`: hot rows scattered by a random
permutation), dense features ``log1p(Exponential(mean 10))`` like Criteo's
log-transformed counts, user bags of ``user_bag`` ids and one id per item
table per candidate. PAPERS.md gives no Terabyte table sizes, so there is no
Terabyte preset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .models import ML_DENSE_FEATURES, Query, StageModelConfig
from .traces import zipf_trace

__all__ = ["LeaveLastOut", "leave_last_out", "load_movielens", "user_dense",
           "user_history", "movielens_queries", "synthetic_queries"]


@dataclass(frozen=True, eq=False)
class LeaveLastOut:
    """MovieLens split leave-last-out (module docstring), 0-based ids.

    ``train_*`` are the training ratings sorted by user, then time (then
    file order); user ``u``'s are ``train_offsets[u] .. train_offsets[u+1]-1``.
    ``test_item[u]`` (``test_rating``, ``test_time``) is ``u``'s held-out
    positive.
    """

    n_users: int
    n_items: int
    train_user: np.ndarray
    train_item: np.ndarray
    train_rating: np.ndarray
    train_time: np.ndarray
    train_offsets: np.ndarray
    test_item: np.ndarray
    test_rating: np.ndarray
    test_time: np.ndarray

    def train_items(self, user: int) -> np.ndarray:
        """``user``'s training items, oldest first."""
        return self.train_item[self.train_offsets[user]:self.train_offsets[user + 1]]


def leave_last_out(ratings) -> LeaveLastOut:
    """Split :class:`host.datasets.Ratings` (1-based ids) leave-last-out by time."""
    user = np.asarray(ratings.user, np.int64) - 1
    item = np.asarray(ratings.item, np.int64) - 1
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    order = np.lexsort((np.arange(user.size), ratings.timestamp, user))
    u, i = user[order], item[order]
    r, t = np.asarray(ratings.rating)[order], np.asarray(ratings.timestamp)[order]
    counts = np.bincount(u, minlength=n_users)
    if np.any(counts < 2):
        bad = int(np.argmax(counts < 2))
        raise ValueError(f"user {bad} has {counts[bad]} ratings: leave-last-out needs 2")
    last = np.cumsum(counts) - 1
    keep = np.ones(u.size, bool)
    keep[last] = False
    offsets = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts - 1, out=offsets[1:])
    return LeaveLastOut(n_users, n_items, u[keep], i[keep], r[keep], t[keep], offsets,
                        i[last], r[last], t[last])


def load_movielens(download: bool = True) -> LeaveLastOut:
    """MovieLens-100K split leave-last-out (raises
    :class:`host.datasets.DatasetUnavailable` when the data cannot be had)."""
    from .datasets import movielens_100k
    return leave_last_out(movielens_100k(download=download))


def user_dense(split: LeaveLastOut) -> np.ndarray:
    """The users' dense features, (n_users, 3) float64 (module docstring)."""
    n = np.diff(split.train_offsets).astype(np.float64)
    s = np.add.reduceat(split.train_rating.astype(np.float64), split.train_offsets[:-1])
    good = np.add.reduceat((split.train_rating >= 4).astype(np.float64),
                           split.train_offsets[:-1])
    out = np.stack([np.log1p(n) / np.log1p(n.max()), (s / n - 3.0) / 2.0, good / n], axis=1)
    assert out.shape[1] == ML_DENSE_FEATURES
    return out


def user_history(split: LeaveLastOut, user: int, length: int) -> np.ndarray:
    """``user``'s last ``length`` training items, oldest first."""
    items = split.train_items(user)
    return items[max(0, items.size - length):]


def movielens_queries(split: LeaveLastOut, users=None, negatives: int | None = None,
                      history: int = 32, seed: int = 0) -> tuple[list[Query], np.ndarray]:
    """One query per user for the ``ml-*`` presets (module docstring).

    Parameters
    ----------
    split : LeaveLastOut
    users : int array, optional
        Which users (all by default), in this order.
    negatives : int, optional
        Sample this many unseen items besides the positive (all unseen items
        by default).
    history : int
        Length of the ``user_history`` bag.
    seed : int
        Seeds the sampling (user ``u`` draws from ``default_rng([seed, u])``).

    Returns
    -------
    queries : list of Query
    positives : int array
        Each query's held-out item id (one of its ``candidates``).
    """
    if history < 0:
        raise ValueError(f"history: must be >= 0, not {history!r}")
    if negatives is not None and negatives < 0:
        raise ValueError(f"negatives: must be >= 0, not {negatives!r}")
    dense = user_dense(split)
    users = np.arange(split.n_users) if users is None else np.asarray(users, np.int64)
    queries = []
    for u in users:
        u = int(u)
        seen = np.zeros(split.n_items, bool)
        seen[split.train_items(u)] = True
        unseen = np.flatnonzero(~seen)
        if negatives is not None:
            pool = unseen[unseen != split.test_item[u]]
            rng = np.random.default_rng([seed, u])
            pick = rng.choice(pool, size=min(negatives, pool.size), replace=False)
            unseen = np.sort(np.append(pick, split.test_item[u]))
        queries.append(Query(dense[u], (np.array([u]), user_history(split, u, history)),
                             unseen[:, None], candidates=unseen))
    return queries, split.test_item[users].copy()


def synthetic_queries(config: StageModelConfig, n_queries: int, n_candidates: int,
                      alpha: float = 1.0, user_bag: int = 1, seed: int = 0) -> list[Query]:
    """Queries with Zipf-distributed ids for ``config`` (module docstring).

    Parameters
    ----------
    config : StageModelConfig
        Its tables' sizes bound the ids (cap them with
        :meth:`StageModelConfig.with_max_rows` for small tests).
    n_queries, n_candidates : int
    alpha : float
        Zipf exponent of every table.
    user_bag : int
        Ids per user bag.
    seed : int
    """
    for name, v in (("n_queries", n_queries), ("n_candidates", n_candidates),
                    ("user_bag", user_bag)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}: must be a non-negative integer, not {v!r}")
    rng = np.random.default_rng(seed)
    dense = np.log1p(rng.exponential(10.0, size=(n_queries, config.dense_features)))
    ut, it = config.user_tables, config.item_tables
    if ut:
        tr = zipf_trace([t.rows for t in ut], n_queries * user_bag, alpha, seed + 1,
                        [t.name for t in ut])
        user = tr.row.reshape(n_queries, user_bag, len(ut))
    tr = zipf_trace([t.rows for t in it], n_queries * n_candidates, alpha, seed + 2,
                    [t.name for t in it])
    item = tr.row.reshape(n_queries, n_candidates, len(it))
    return [Query(dense[q], tuple(user[q, :, k] for k in range(len(ut))) if ut else (),
                  item[q]) for q in range(n_queries)]
