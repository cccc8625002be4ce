"""Embedding access traces: the input of the cache model (:mod:`host.cache`).

A :class:`Trace` is a sequence of lookups ``(table, row)`` in the order one
cache instance sees them, with the names and sizes of the tables it may
touch (and, optionally, the lookup stream each access came from). Sources:

* :func:`zipf_trace`: per table, rows drawn i.i.d. from a finite Zipf law,
  ``P(rank k) = k**-alpha / H(N, alpha)`` for ``k = 1 .. N`` with
  ``H(N, alpha) = sum_k k**-alpha`` (so ``alpha = 1`` is fine, unlike
  ``numpy.random.zipf``), the ranks mapped to row ids through a random
  permutation so that the hot rows are scattered over the table rather than
  being rows ``0 .. k``; :func:`zipf_top_share` is the share of the ``m``
  hottest rows, ``H(m, alpha) / H(N, alpha)``.
* :func:`uniform_trace`: rows uniform over each table.
* :func:`movielens_trace`: the real id streams of MovieLens-100K
  (:mod:`host.datasets`, loaded at run time, never committed): table 0 is
  ``"item"`` (1682 movies), table 1 ``"user"`` (943 users); each rating, in
  rating-timestamp order (ties in the order of the file), looks up its item
  then its user; ids are the dataset's minus one.
* :func:`trace_from_lookup_stream`: the rows a compiled model's lookup
  stream (:mod:`host.table_compiler`) reads, with the stream of each access.

Synthetic traces with several tables interleave them item by item, as the
lookup stream does: access ``i`` is a lookup of table ``i % T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Trace", "ROW_BITS", "zipf_probabilities", "zipf_top_share", "zipf_trace",
           "uniform_trace", "movielens_trace", "trace_from_lookup_stream"]

#: Row ids are ``ID_BITS`` (32) wide, as the lookup unit's (hw.embedding).
ROW_BITS = 32


def _int_array(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{what}: must be one-dimensional, not shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: must hold integers, not {a.dtype}")
    return a.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Trace:
    """A sequence of embedding lookups, in order.

    Parameters
    ----------
    table, row : int arrays, (n,)
        Access ``i`` reads row ``row[i]`` of table ``table[i]`` (an index
        into ``names``).
    names : tuple of str
        The tables' names; table ``t`` is ``names[t]``.
    rows : tuple of int
        The tables' sizes; every ``row`` of table ``t`` is below ``rows[t]``
        (and below ``2**ROW_BITS``).
    unit : int array (n,), optional
        The lookup stream of each access (a cache instance per stream:
        :meth:`split_units`).
    """

    table: np.ndarray
    row: np.ndarray
    names: tuple[str, ...]
    rows: tuple[int, ...]
    unit: np.ndarray | None = None

    def __post_init__(self):
        table = _int_array(self.table, "trace table")
        row = _int_array(self.row, "trace row")
        if table.shape != row.shape:
            raise ValueError(f"trace: {table.size} tables for {row.size} rows")
        names, rows = tuple(self.names), tuple(int(r) for r in self.rows)
        if len(names) != len(rows):
            raise ValueError(f"trace: {len(names)} table names for {len(rows)} sizes")
        if len(set(names)) != len(names):
            raise ValueError(f"trace: table names repeat: {names}")
        for n, r in zip(names, rows):
            if not 0 < r <= 1 << ROW_BITS:
                raise ValueError(f"trace: table {n!r} has {r} rows; 1 .. 2**{ROW_BITS} "
                                 f"allowed")
        if table.size:
            bad = (table < 0) | (table >= len(names))
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"trace: access {i} names table {int(table[i])}; there "
                                 f"are {len(names)} tables")
            limit = np.asarray(rows, np.int64)[table]
            bad = (row < 0) | (row >= limit)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"trace: access {i} reads row {int(row[i])} of table "
                                 f"{names[table[i]]!r}, which has {rows[table[i]]} rows")
        unit = None if self.unit is None else _int_array(self.unit, "trace unit")
        if unit is not None and unit.shape != row.shape:
            raise ValueError(f"trace: {unit.size} units for {row.size} accesses")
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "row", row)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "unit", unit)

    def __len__(self) -> int:
        return self.row.size

    def __getitem__(self, index: slice) -> "Trace":
        """A slice of the accesses (the same tables)."""
        if not isinstance(index, slice):
            raise TypeError("a trace is sliced, not indexed: trace[a:b]")
        return Trace(self.table[index], self.row[index], self.names, self.rows,
                     None if self.unit is None else self.unit[index])

    @property
    def tables(self) -> dict[str, int]:
        """Table name to rows, in table order."""
        return dict(zip(self.names, self.rows))

    def keys(self) -> np.ndarray:
        """One int64 per access, ``table * 2**32 + row``: equal iff the
        accesses read the same row."""
        return (self.table << ROW_BITS) | self.row

    def counts(self) -> dict[str, np.ndarray]:
        """Accesses per row of each table (the profile
        :func:`host.cache.select_pinned` takes)."""
        return {n: np.bincount(self.row[self.table == t], minlength=r)
                for t, (n, r) in enumerate(zip(self.names, self.rows))}

    def split_units(self) -> dict[int, "Trace"]:
        """One trace per lookup stream, each in the order of the whole."""
        if self.unit is None:
            raise ValueError("trace: no units recorded")
        out = {}
        for u in np.unique(self.unit):
            m = self.unit == u
            out[int(u)] = Trace(self.table[m], self.row[m], self.names, self.rows,
                                self.unit[m])
        return out


def _tables(rows, names) -> tuple[tuple[str, ...], tuple[int, ...]]:
    sizes = (rows,) if isinstance(rows, (int, np.integer)) else tuple(rows)
    if not sizes:
        raise ValueError("rows: at least one table")
    for r in sizes:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise ValueError(f"rows: table sizes must be positive integers, not {r!r}")
    if names is None:
        names = tuple(f"t{t}" for t in range(len(sizes)))
    names = tuple(names)
    if len(names) != len(sizes):
        raise ValueError(f"names: {len(names)} names for {len(sizes)} tables")
    return names, tuple(int(r) for r in sizes)


def _check_count(n, what="n"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{what}: must be a non-negative integer, not {n!r}")


def _interleave(per_table: list[np.ndarray], names, rows) -> Trace:
    n, T = per_table[0].size, len(per_table)
    return Trace(np.tile(np.arange(T, dtype=np.int64), n),
                 np.stack(per_table, axis=1).reshape(-1), names, rows)


def zipf_probabilities(rows: int, alpha: float) -> np.ndarray:
    """``P(rank k)`` for ``k = 1 .. rows``: ``k**-alpha / H(rows, alpha)``."""
    _check_count(rows, "rows")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha: must be a finite number >= 0, not {alpha!r}")
    w = np.arange(1, rows + 1, dtype=np.float64) ** -float(alpha)
    return w / w.sum()


def zipf_top_share(rows: int, alpha: float, hottest: int) -> float:
    """Share of the accesses that go to the ``hottest`` most probable rows,
    ``H(hottest, alpha) / H(rows, alpha)``."""
    p = zipf_probabilities(rows, alpha)
    return float(p[:max(0, min(hottest, rows))].sum())


def zipf_trace(rows, n: int, alpha: float = 1.0, seed: int = 0,
               names: Sequence[str] | None = None) -> Trace:
    """Zipf-distributed lookups (see the module docstring).

    Parameters
    ----------
    rows : int or sequence of int
        Rows of each table.
    n : int
        Lookups per table; the trace has ``n * len(rows)`` accesses.
    alpha : float
        The Zipf exponent (0 is uniform).
    seed : int
        Seeds ``numpy.random.default_rng``: per table, first the permutation
        of ranks to rows, then the ``n`` draws.
    names : sequence of str, optional
        Table names; ``t0``, ``t1``, ... by default.
    """
    names, sizes = _tables(rows, names)
    _check_count(n)
    rng = np.random.default_rng(seed)
    per_table = []
    for r in sizes:
        perm = rng.permutation(r)
        cdf = np.cumsum(zipf_probabilities(r, alpha))
        ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        per_table.append(perm[np.minimum(ranks, r - 1)])
    return _interleave(per_table, names, sizes)


def uniform_trace(rows, n: int, seed: int = 0,
                  names: Sequence[str] | None = None) -> Trace:
    """Lookups uniform over each table (``n`` per table, interleaved)."""
    names, sizes = _tables(rows, names)
    _check_count(n)
    rng = np.random.default_rng(seed)
    return _interleave([rng.integers(0, r, n) for r in sizes], names, sizes)


def movielens_trace(ratings=None) -> Trace:
    """MovieLens-100K's id streams: per rating in timestamp order, its item
    (table ``"item"``) then its user (table ``"user"``).

    Parameters
    ----------
    ratings : host.datasets.Ratings, optional
        By default :func:`host.datasets.movielens_100k` (which raises
        :class:`host.datasets.DatasetUnavailable` when it cannot be had).
    """
    if ratings is None:
        from .datasets import movielens_100k
        ratings = movielens_100k()
    order = np.argsort(ratings.timestamp, kind="stable")
    item = ratings.item[order] - 1
    user = ratings.user[order] - 1
    return _interleave([item, user], ("item", "user"), (ratings.n_items, ratings.n_users))


def trace_from_lookup_stream(stream, address_map, max_bag: int,
                             channels_only: bool = True) -> Trace:
    """The rows a lookup stream reads, with the stream (unit) of each.

    Bags are taken in stream order and their ids in bag order; a bag that
    reads nothing (``BAD_BAG``, ``BAD_ID``, or a table on another unit: see
    :func:`host.table_compiler.golden_stream`) contributes nothing. Tables
    are the address map's (physical) tables, named as there.

    Parameters
    ----------
    stream : host.table_compiler.LookupStream
    address_map : host.table_compiler.AddressMap
    max_bag : int
        The unit's ``max_bag`` (a merged table's bag is one row).
    channels_only : bool
        Keep only lookups of tables in memory channels, the ones that pass
        the caches (on-chip tables do not).
    """
    from .embedding import EmbeddingStatus, bag_status

    entries = address_map.tables
    lengths = np.diff(stream.offsets)
    ok = np.zeros(stream.bags, bool)
    for t in entries:
        sel = np.flatnonzero((stream.table == t.index) &
                             (stream.unit == address_map.stream_unit(t.index)))
        if not sel.size or (channels_only and t.kind != "channel"):
            continue
        off = np.zeros(sel.size + 1, np.int64)
        np.cumsum(lengths[sel], out=off[1:])
        ids = stream.ids[np.repeat(stream.offsets[sel] - off[:-1], lengths[sel])
                         + np.arange(off[-1])]
        st = bag_status(off, ids, t.rows, 1 if t.merged else max_bag)
        ok[sel] = st == EmbeddingStatus.OK
    keep = np.repeat(ok, lengths)
    bag = np.repeat(np.arange(stream.bags), lengths)[keep]
    return Trace(stream.table[bag], stream.ids[keep], tuple(t.name for t in entries),
                 tuple(t.rows for t in entries), stream.unit[bag])
