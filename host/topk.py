"""Golden model of the top-k filter (:mod:`hw.topk`): pure NumPy.

Order: score descending, and of equal scores the lower id first, so the
result of a list is unique whatever order its pairs arrive in (duplicate
pairs are interchangeable). A list asks for ``k`` pairs; ``1 <= k <= k_max``
is good and gives the best ``min(k, len(list))`` pairs; any other ``k``
gives no pairs and the status :attr:`TopKStatus.BAD_K`.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

__all__ = ["TopKStatus", "TopKResult", "topk", "topk_list", "score_range"]


class TopKStatus(enum.IntEnum):
    """Status of one list; the values are those of ``hw.topk.Status``."""

    OK = 0
    BAD_K = 1


class TopKResult(NamedTuple):
    scores: np.ndarray
    ids: np.ndarray
    status: TopKStatus


def _as_arrays(scores, ids):
    scores = np.asarray(scores, dtype=np.int64).reshape(-1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if scores.shape != ids.shape:
        raise ValueError(f"scores and ids differ in length: {scores.size} and {ids.size}")
    return scores, ids


def topk(scores, ids, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``min(k, n)`` pairs of a list, best first.

    Parameters
    ----------
    scores, ids : array-like of int
        The list's pairs (scores of up to 32 bits, signed or not; ids
        unsigned).
    k : int
        At least 0.

    Returns
    -------
    (scores, ids) : tuple of int64 arrays
    """
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, not {k!r}")
    scores, ids = _as_arrays(scores, ids)
    # lexsort sorts by its last key first: score descending, then id ascending.
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


def topk_list(scores, ids, k: int, k_max: int) -> TopKResult:
    """What the filter answers for one list: the pairs and the status."""
    if 1 <= k <= k_max:
        s, i = topk(scores, ids, k)
        return TopKResult(s, i, TopKStatus.OK)
    empty = np.zeros(0, dtype=np.int64)
    return TopKResult(empty, empty.copy(), TopKStatus.BAD_K)


def score_range(score_bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest score of the given width."""
    if signed:
        return -(1 << (score_bits - 1)), (1 << (score_bits - 1)) - 1
    return 0, (1 << score_bits) - 1
