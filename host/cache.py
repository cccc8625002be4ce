"""The embedding caches (RPAccel's dual caches): the model the hardware is
built to match, the static-cache selection, and Belady's bound. Pure NumPy.

Where the caches sit
--------------------
Between a lookup stream of the embedding unit and its memory channel (one
cache instance per stream; :meth:`host.traces.Trace.split_units` gives each
its trace). A lookup is a key ``(table, row)``: ``table`` the table's index
(the descriptor number), ``row`` its id, below ``2**32``. Every lookup goes

1. to the **static cache**: ``static_rows`` rows pinned by the host from a
   profile (:func:`select_pinned`) and loaded before any lookup. A pinned
   key always hits. A static hit stops there: it never reaches the dynamic
   cache, not even its replacement state. The pinned set does not change
   while the cache runs (to change it, load anew: a new
   :class:`CacheModel`). How the hardware finds a pinned row is its own
   business; the model only says that a pinned row hits;
2. else to the **dynamic cache**, ``sets`` x ``ways`` lines, a line being
   one row (the row's whole burst): hit if its set holds the key, else a
   miss;
3. on a miss, to memory.

``static_rows = 0`` removes the static cache, ``ways = 0`` (or ``sets =
0``) the dynamic one.

The dynamic cache
-----------------
* Set index: :func:`set_index`, a few XORs. With ``b = log2(sets)``::

      fold(row)   = row[0:b] ^ row[b:2b] ^ ...   # the b-bit fields of the 32-bit row
      salt(table) = (table * 0x9E3779B1) mod 2**32           # TABLE_SALT
      set         = fold(row) ^ (salt(table) mod sets)

  (the last field is the remaining ``32 mod b`` high bits, zero-extended;
  ``sets = 1`` gives set 0). In hardware: an XOR tree over the
  ``ceil(32 / b)`` fields of the row and a per-table ``b``-bit constant,
  ``(table * 0x9E3779B1) mod sets``, from a small ROM of ``max_tables``
  entries generated from :func:`table_salt` (or a ``b``-bit constant
  multiply of the table index's low bits). Every row bit takes part, so
  ids that differ only in their high bits (a Cartesian table's ``a *
  rows_B + b``) still spread and consecutive ids fill the sets evenly; the
  multiplier is odd, so tables ``0 .. sets-1`` get distinct constants and
  the same hot row (say id 0) of different tables lands in different sets.
* Tag: ``(table, row >> b)`` identifies the line within its set (the low
  ``b`` bits of ``row`` follow from the set index and the rest); the model
  compares whole keys, which is the same.
* Allocation at miss time: the hardware writes the tag when it issues the
  miss and the data arrives later; a later lookup of a pending line hits
  "under the miss" and is merged with the outstanding read. Each stream's
  lookups are processed in order. So hits and misses do not depend on
  timing, and the model is sequential: for each lookup in order, static
  hit? else if the set holds the key (present or pending): dynamic hit and
  replacement update; else miss: the victim way takes the key (an eviction
  is counted when the victim held a line) and the replacement state is
  updated as for a hit on that way.
* Replacement, ``policy``:

  - ``"lru"`` (default): true LRU per set. The set's lines are ordered by
    their last use (a hit or the miss that allocated them); the victim is
    an empty way if any (the lowest-numbered; which one does not change any
    outcome), else the least recently used line.
  - ``"plru"``: tree pseudo-LRU (``ways`` a power of two), ``ways - 1``
    bits per set in heap order: node 1 is the root, node ``n`` has children
    ``2n`` (lower ways) and ``2n + 1``, way ``w`` is leaf ``ways + w``. A
    node's bit is 0 when the victim lies under its lower child, 1 under the
    upper. A use of way ``w`` sets every node on its path to point away
    from ``w``. The victim is the lowest-numbered empty way if any, else
    the leaf reached from the root by following the bits. All bits are 0
    after reset. With two ways it is true LRU.
* Reset: every way empty (and every PLRU bit 0), counters zero.

Counters (per instance, cumulative until :meth:`CacheModel.reset`):
``static_hits``, ``dynamic_hits``, ``misses`` (so ``accesses`` is their
sum) and ``evictions`` (misses that replaced a line). :meth:`CacheModel.run`
also returns each lookup's :class:`Outcome`.

Static selection
----------------
:func:`select_pinned` pins the ``capacity_rows`` most frequent keys of a
profile (a trace, or access counts per table), across tables: count
descending, then table index, then row ascending; never a key with count
0. Its ``hit_rate`` is the share of the profile's lookups the pinned rows
serve. :func:`check_pinned` validates a pinned set before anything is loaded
(more rows than the capacity, an unknown table, a row past its table, a row
pinned twice, a table on chip): :class:`CacheModel` and
:func:`static_cache_load` call it first.

Belady's bound
--------------
:func:`belady_hit_rate`: the offline optimum (MIN) of a fully associative
cache of ``capacity`` rows over a trace, starting empty: on a miss with the
cache full, evict the line whose next use is the farthest (never used again
counts as farthest). By default every miss allocates (the classic demand
MIN, as the hardware does); ``bypass=True`` also lets the missing row not
be cached when its own next use is the farthest, the optimum of any policy.
To compare with the caches, give it ``static_rows + dynamic rows``; note
that the static cache starts full, so on a cold trace it may beat MIN by at
most ``static_rows`` hits.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .traces import ROW_BITS, Trace

__all__ = ["TABLE_SALT", "POLICIES", "table_salt", "set_index", "Outcome", "CacheStats",
           "CacheModel", "StaticSelection", "select_pinned", "check_pinned",
           "compiled_profile", "static_lines", "StaticLoad", "static_cache_load",
           "static_cache_writes", "belady_hits",
           "belady_hit_rate"]

#: The multiplier of :func:`table_salt`: ``2**32`` over the golden ratio, odd.
TABLE_SALT = 0x9E3779B1
POLICIES = ("lru", "plru")
_MASK32 = (1 << ROW_BITS) - 1


def _is_pow2(n) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_int(name, v, lo=0):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, not {v!r}")
    return int(v)


# -- the set index --------------------------------------------------------------

def table_salt(table):
    """``(table * TABLE_SALT) mod 2**32``, for an int or an int array."""
    if isinstance(table, (int, np.integer)):
        return (int(table) * TABLE_SALT) & _MASK32
    t = np.asarray(table, dtype=np.uint64)
    return (t * np.uint64(TABLE_SALT)) & np.uint64(_MASK32)


def set_index(table, row, sets: int):
    """The dynamic cache's set of ``(table, row)``: ``fold(row) ^ (salt(table)
    mod sets)`` (module docstring).

    Parameters
    ----------
    table, row : int or int arrays (broadcast)
        ``row`` below ``2**32``.
    sets : int
        A power of two.
    """
    if not _is_pow2(sets):
        raise ValueError(f"sets: must be a power of two, not {sets!r}")
    b = sets.bit_length() - 1
    if not b:
        return 0 if isinstance(row, (int, np.integer)) and \
            isinstance(table, (int, np.integer)) else \
            np.zeros(np.broadcast(np.asarray(table), np.asarray(row)).shape, np.int64)
    if isinstance(table, (int, np.integer)) and isinstance(row, (int, np.integer)):
        x, h = int(row) & _MASK32, table_salt(table) & (sets - 1)
        for shift in range(0, ROW_BITS, b):
            h ^= (x >> shift) & (sets - 1)
        return h
    m = np.uint64(sets - 1)
    x = np.asarray(row).astype(np.uint64) & np.uint64(_MASK32)
    h = table_salt(table) & m
    for shift in range(0, ROW_BITS, b):
        h = h ^ ((x >> np.uint64(shift)) & m)
    return np.asarray(h).astype(np.int64)


# -- outcomes and counters ------------------------------------------------------

class Outcome(enum.IntEnum):
    """Where a lookup was served."""

    MISS = 0
    STATIC_HIT = 1
    DYNAMIC_HIT = 2


@dataclass(frozen=True, eq=False)
class CacheStats:
    """Counters of a cache instance (or of one run), and, for a run, each
    lookup's :class:`Outcome` (uint8)."""

    static_hits: int = 0
    dynamic_hits: int = 0
    misses: int = 0
    evictions: int = 0
    outcome: np.ndarray | None = None

    @property
    def accesses(self) -> int:
        return self.static_hits + self.dynamic_hits + self.misses

    @property
    def hits(self) -> int:
        return self.static_hits + self.dynamic_hits

    def _share(self, n) -> float:
        return n / self.accesses if self.accesses else 0.0

    @property
    def hit_rate(self) -> float:
        return self._share(self.hits)

    @property
    def static_hit_rate(self) -> float:
        return self._share(self.static_hits)

    @property
    def dynamic_hit_rate(self) -> float:
        """Dynamic hits over all lookups (not over those that reach it)."""
        return self._share(self.dynamic_hits)

    def counters(self) -> dict[str, int]:
        return {"accesses": self.accesses, "static_hits": self.static_hits,
                "dynamic_hits": self.dynamic_hits, "misses": self.misses,
                "evictions": self.evictions}

    def __add__(self, other: "CacheStats") -> "CacheStats":
        """Counters summed (over runs or instances); outcomes dropped."""
        return CacheStats(self.static_hits + other.static_hits,
                          self.dynamic_hits + other.dynamic_hits,
                          self.misses + other.misses, self.evictions + other.evictions)


# -- tables and pinned sets -----------------------------------------------------

class _Tables:
    """Names and sizes of the tables a pinned set or a profile refers to:
    from a ``{name: rows}`` mapping (index = position), a sequence of rows,
    a :class:`~host.traces.Trace`, or an :class:`~host.table_compiler.AddressMap`
    (index = descriptor number; tables on chip are marked)."""

    def __init__(self, tables):
        self.onchip: list[bool]
        if isinstance(tables, Trace):
            names, rows = list(tables.names), list(tables.rows)
            onchip = [False] * len(rows)
        elif hasattr(tables, "tables") and hasattr(tables, "stream_unit"):
            names = [t.name for t in tables.tables]
            rows = [t.rows for t in tables.tables]
            onchip = [t.kind != "channel" for t in tables.tables]
        elif isinstance(tables, Mapping):
            names = [str(n) for n in tables]
            rows = list(tables.values())
            onchip = [False] * len(rows)
        else:
            rows = list(tables)
            names = [f"table {t}" for t in range(len(rows))]
            onchip = [False] * len(rows)
        for n, r in zip(names, rows):
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
                raise ValueError(f"tables: table {n!r} must have a positive number of "
                                 f"rows, not {r!r}")
        self.names, self.rows, self.onchip = names, [int(r) for r in rows], onchip
        self._index = {n: t for t, n in enumerate(names)}

    def index(self, key, what: str) -> int:
        if isinstance(key, str):
            if key in self._index:
                return self._index[key]
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) \
                and 0 <= key < len(self.names):
            return int(key)
        raise ValueError(f"{what}: table {key!r} does not exist (tables: "
                         f"{', '.join(repr(n) for n in self.names) or 'none'})")


def _pairs(pinned, tables: _Tables | None) -> tuple[np.ndarray, np.ndarray]:
    """``(table indices, rows)`` of a pinned set in any accepted form."""
    if isinstance(pinned, StaticSelection):
        keys, rows = list(pinned.table.tolist()), pinned.row
    elif isinstance(pinned, Mapping):
        keys, rows = [], []
        for k, r in pinned.items():
            r = np.asarray(r).reshape(-1)
            keys += [k] * r.size
            rows.append(r)
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    else:
        pairs = pinned.tolist() if isinstance(pinned, np.ndarray) else list(pinned)
        for p in pairs:
            if not (isinstance(p, (tuple, list)) and len(p) == 2):
                raise ValueError(f"pinned: expected (table, row) pairs, found {p!r}")
        keys = [p[0] for p in pairs]
        rows = np.array([p[1] for p in pairs], dtype=object)
    rows = np.asarray(rows)
    if rows.size and not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool)
                             for r in rows.tolist()):
        bad = next(r for r in rows.tolist()
                   if not isinstance(r, (int, np.integer)) or isinstance(r, bool))
        raise ValueError(f"pinned: rows must be integers, not {bad!r}")
    rows = rows.astype(np.int64) if rows.size else np.zeros(0, np.int64)
    if tables is not None:
        idx = {}
        table = np.array([idx[k] if k in idx else idx.setdefault(k, tables.index(k, "pinned"))
                          for k in keys], dtype=np.int64)
    else:
        for k in keys:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
                raise ValueError(f"pinned: table {k!r} is not a table index (give "
                                 f"tables= to pin by name)")
        table = np.array(keys, dtype=np.int64)
    return table, rows


def check_pinned(pinned, capacity_rows: int, tables=None,
                 ways: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pinned set before anything is loaded.

    Parameters
    ----------
    pinned : StaticSelection, mapping of table to rows, or (table, row) pairs
        Tables by index, or by name when ``tables`` names them.
    capacity_rows : int
        The static cache's rows.
    tables : mapping of name to rows, sequence of rows, Trace or AddressMap, optional
        The tables that exist. Without it only ``0 <= row < 2**32`` is
        checked.
    ways : int, optional
        The hardware's static cache is ``ways``-way set-associative
        (:func:`static_lines`): no set may hold more than ``ways`` pinned
        rows. Without it the cache is taken as fully associative.

    Returns
    -------
    (table, row) : int64 arrays, in the order given

    Raises
    ------
    ValueError
        More pinned rows than ``capacity_rows``; a table that does not
        exist; a row outside its table; a row pinned twice; a table that
        lives on chip (its lookups never pass the caches); more rows in
        one set than ``ways``.
    """
    capacity_rows = _check_int("static_rows", capacity_rows)
    known = None if tables is None else _Tables(tables)
    table, row = _pairs(pinned, known)
    if table.size > capacity_rows:
        raise ValueError(f"{table.size} pinned rows do not fit the static cache of "
                         f"{capacity_rows} rows")

    def name(t):
        return repr(known.names[t]) if known else str(int(t))

    limit = (np.asarray(known.rows, np.int64)[table] if known
             else np.full(table.size, 1 << ROW_BITS, np.int64))
    bad = (row < 0) | (row >= limit)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"pinned row {int(row[i])} of table {name(table[i])} does not "
                         f"exist: the table has {int(limit[i])} rows")
    if known:
        for t in np.unique(table):
            if known.onchip[t]:
                raise ValueError(f"pinned rows of table {name(t)}, which is on chip: its "
                                 f"lookups never pass the caches")
    keys = (table << ROW_BITS) | row
    uniq, first, cnt = np.unique(keys, return_index=True, return_counts=True)
    if np.any(cnt > 1):
        i = int(first[np.argmax(cnt > 1)])
        raise ValueError(f"row {int(row[i])} of table {name(table[i])} is pinned twice")
    if ways is not None and capacity_rows:
        sets = _static_sets(capacity_rows, ways)
        per_set = np.bincount(set_index(table, row, sets), minlength=sets)
        if per_set.max() > ways:
            s = int(np.argmax(per_set))
            raise ValueError(f"{int(per_set[s])} pinned rows fall in set {s} of the static "
                             f"cache, which has {ways} ways: pin fewer rows, or choose them "
                             f"with select_pinned(..., ways={ways}), or raise "
                             f"embedding.static_ways")
    return table, row


def _static_sets(capacity_rows: int, ways: int) -> int:
    ways = _check_int("static_ways", ways, 1)
    if capacity_rows % ways or not _is_pow2(capacity_rows // ways):
        raise ValueError(f"static cache: {capacity_rows} rows in {ways} ways must make a "
                         f"power-of-two number of sets")
    return capacity_rows // ways


def static_lines(table, row, capacity_rows: int, ways: int) -> np.ndarray:
    """Where the hardware's static cache holds each pinned row: line ``way *
    sets + set``, ``set`` = :func:`set_index` with ``sets = capacity_rows /
    ways`` and the ways of a set given in pinned order. The rows must fit
    (:func:`check_pinned` with ``ways``)."""
    table = np.asarray(table, np.int64).reshape(-1)
    row = np.asarray(row, np.int64).reshape(-1)
    sets = _static_sets(capacity_rows, ways)
    s = np.asarray(set_index(table, row, sets), np.int64).reshape(-1)
    used = np.zeros(sets, np.int64)
    line = np.zeros(s.size, np.int64)
    for i, k in enumerate(s.tolist()):
        if used[k] >= ways:
            raise ValueError(f"set {k} of the static cache is full ({ways} ways)")
        line[i] = used[k] * sets + k
        used[k] += 1
    return line


@dataclass(frozen=True, eq=False)
class StaticSelection:
    """The rows :func:`select_pinned` pins, hottest first.

    ``table`` (indices), ``row`` and ``count`` (profile accesses) per pinned
    row; ``names`` maps the indices that appear to names; ``total`` is the
    profile's lookups (those that pass the caches).
    """

    table: np.ndarray
    row: np.ndarray
    count: np.ndarray
    names: dict[int, str]
    capacity_rows: int
    total: float

    def __len__(self) -> int:
        return self.row.size

    @property
    def hit_rate(self) -> float:
        """The static hit rate on the profile."""
        return float(self.count.sum()) / self.total if self.total else 0.0

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.table.tolist(), self.row.tolist()))

    def by_table(self) -> dict[str, np.ndarray]:
        """Pinned rows (ascending) per table name."""
        return {self.names[t]: np.sort(self.row[self.table == t])
                for t in np.unique(self.table).tolist()}


def _counts(name, c, rows=None) -> np.ndarray:
    c = np.asarray(c)
    if c.ndim != 1 or (c.size and not (np.issubdtype(c.dtype, np.integer) or
                                       np.issubdtype(c.dtype, np.floating))):
        raise ValueError(f"profile of table {name!r}: must be a 1-D array of counts, not "
                         f"{c.dtype} {c.shape}")
    c = c.astype(np.float64) if np.issubdtype(c.dtype, np.floating) else c.astype(np.int64)
    if c.size and (not np.all(np.isfinite(c)) or c.min() < 0):
        raise ValueError(f"profile of table {name!r}: counts must be finite and >= 0")
    if rows is not None and c.size != rows:
        raise ValueError(f"profile of table {name!r}: {c.size} counts for a table of "
                         f"{rows} rows")
    return c


def select_pinned(profile, capacity_rows: int, tables=None,
                  ways: int | None = None) -> StaticSelection:
    """The static cache's rows: the ``capacity_rows`` most frequent keys
    (with ``ways``, those that fit a set-associative cache).

    Parameters
    ----------
    profile : Trace or mapping of table to counts
        A trace (its tables, unless ``tables`` is given), or access counts
        per row for each table, keyed by name or index (e.g.
        :func:`compiled_profile`).
    capacity_rows : int
        Rows of the static cache.
    tables : mapping of name to rows, sequence of rows, Trace or AddressMap, optional
        The tables: they fix the indices (a name's position; an address
        map's descriptor numbers) and each profile's length must be its
        table's rows. Tables on chip are left out (they never pass the
        caches). Without it, a profile keyed by name takes its indices from
        its own order, one keyed by index keeps them.
    ways : int, optional
        The static cache is ``ways``-way set-associative, as the hardware's
        (:func:`static_lines`): in frequency order, a key whose set is
        already full is passed over for the next one. Without it the cache
        is fully associative.

    Returns
    -------
    StaticSelection
        Order: count descending, then table index, then row; keys with
        count 0 are never pinned.
    """
    capacity_rows = _check_int("capacity_rows", capacity_rows)
    if isinstance(profile, Trace):
        if tables is None:
            tables = profile
        profile = profile.counts()
    if not isinstance(profile, Mapping):
        raise ValueError(f"profile: must be a Trace or a mapping of table to counts, not "
                         f"{type(profile).__name__}")
    known = None if tables is None else _Tables(tables)
    entries = []                                     # (index, name, counts)
    for pos, (key, c) in enumerate(profile.items()):
        if known is not None:
            t = known.index(key, "profile")
            if known.onchip[t]:
                continue
            entries.append((t, known.names[t], _counts(known.names[t], c, known.rows[t])))
        else:
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                t, name = int(key), f"table {int(key)}"
            elif isinstance(key, str):
                t, name = pos, key
            else:
                raise ValueError(f"profile: table {key!r} is neither a name nor an index")
            entries.append((t, name, _counts(name, c)))
    if len({t for t, _, _ in entries}) != len(entries):
        raise ValueError("profile: a table appears twice")
    names = {t: n for t, n, _ in entries}
    total = sum(float(c.sum()) for _, _, c in entries)
    tab, row, cnt = [], [], []
    for t, _, c in entries:
        nz = np.flatnonzero(c)
        tab.append(np.full(nz.size, t, np.int64))
        row.append(nz.astype(np.int64))
        cnt.append(c[nz])
    if entries:
        tab, row = np.concatenate(tab), np.concatenate(row)
        cnt = np.concatenate([c.astype(np.float64) for c in cnt]) \
            if any(c.dtype.kind == "f" for c in cnt) else np.concatenate(cnt)
    else:
        tab = row = cnt = np.zeros(0, np.int64)
    order = np.lexsort((row, tab, -cnt))
    if ways is None:
        order = order[:capacity_rows]
    elif capacity_rows:
        sets = _static_sets(capacity_rows, ways)
        s = np.asarray(set_index(tab[order], row[order], sets), np.int64).reshape(-1)
        # in frequency order, a key goes in while its set has a free way
        seen = np.zeros(sets, np.int64)
        keep = []
        for i, k in enumerate(s.tolist()):
            if seen[k] < ways:
                seen[k] += 1
                keep.append(i)
                if len(keep) == capacity_rows:
                    break
        order = order[np.asarray(keep, np.int64)]
    else:
        order = order[:0]
    return StaticSelection(tab[order], row[order], cnt[order],
                           {t: names[t] for t in np.unique(tab[order]).tolist()},
                           capacity_rows, total)


def compiled_profile(compiled) -> dict[str, np.ndarray]:
    """The access counts of a :class:`~host.table_compiler.CompiledTables`
    usable by :func:`select_pinned` (with ``tables=compiled.address_map``):
    those of tables in channels holding one feature. A merged table's rows
    are pairs of ids, which per-feature counts do not describe: profile it
    with a trace (:func:`host.traces.trace_from_lookup_stream`)."""
    out = {}
    for t in compiled.address_map.tables:
        f = t.segments[0].feature
        if t.kind == "channel" and not t.merged and f in compiled.frequencies:
            out[t.name] = compiled.frequencies[f]
    return out


@dataclass(frozen=True, eq=False)
class StaticLoad:
    """What loading the static cache copies: per pinned row (in pinned order)
    its table index, row, channel, byte address, the bytes of its burst
    (``row_beats * bus_bytes``, as the dynamic cache would fetch them) and,
    when the cache's ways were given, its line (:func:`static_lines`, among
    the rows of its channel)."""

    table: np.ndarray
    row: np.ndarray
    channel: np.ndarray
    address: np.ndarray
    data: list[np.ndarray]
    line: np.ndarray | None = None


def static_cache_load(compiled, pinned, capacity_rows: int,
                      ways: int | None = None) -> StaticLoad:
    """Check a pinned set against compiled tables (:func:`check_pinned`,
    before anything is read) and gather the rows to load.

    ``capacity_rows`` (and ``ways``) are one channel's static cache: each
    channel has its own, so the check is per channel."""
    amap = compiled.address_map
    table, row = _pairs(pinned, _Tables(amap))
    channel = np.array([amap.tables[t].unit for t in table.tolist()], np.int64)
    line = np.zeros(table.size, np.int64) if ways is not None else None
    for c in np.unique(channel).tolist():
        sel = np.flatnonzero(channel == c)
        check_pinned(list(zip(table[sel].tolist(), row[sel].tolist())), capacity_rows,
                     amap, ways)
        if ways is not None:
            line[sel] = static_lines(table[sel], row[sel], capacity_rows, ways)
    if not table.size:
        check_pinned((), capacity_rows, amap, ways)
    address = np.zeros(table.size, np.int64)
    data: list[np.ndarray] = [np.zeros(0, np.uint8)] * table.size
    for t in np.unique(table).tolist():
        sel = np.flatnonzero(table == t)
        address[sel] = compiled.row_addresses(t, row[sel])
        raw = compiled.read_rows(t, row[sel])
        for k, i in enumerate(sel.tolist()):
            data[i] = raw[k]
    return StaticLoad(table, row, channel, address, data, line)


def static_cache_writes(load: StaticLoad, cfg) -> list[int]:
    """Payloads for the embedding unit's ``cache_w`` stream
    (:func:`hw.embedding.cache_write_layout`) that load ``load`` (made with
    the config's ``static_ways``): every line's data words, then its tag.
    Lines not written stay invalid."""
    from hw.embedding import cache_tag_layout, cache_write_layout
    from .packing import Packer
    if load.line is None:
        raise ValueError("static_cache_writes: the load has no lines: make it with "
                         "static_cache_load(..., ways=cfg.static_ways)")
    if not cfg.static_rows and load.table.size:
        raise ValueError("static_cache_writes: the config has no static cache "
                         "(embedding.static_rows = 0)")
    if load.line.size and (load.line.min() < 0 or load.line.max() >= cfg.static_rows):
        raise ValueError(f"static_cache_writes: lines up to {int(load.line.max())} for a "
                         f"static cache of {cfg.static_rows} rows: make the load with this "
                         f"config's static_rows and static_ways")
    slot = 1 << (cfg.max_row_beats - 1).bit_length()
    wp, tp = Packer(cache_write_layout(cfg)), Packer(cache_tag_layout(cfg))
    out = []
    for i in range(load.table.size):
        c, line, raw = int(load.channel[i]), int(load.line[i]), load.data[i]
        words = np.asarray(raw, np.uint8).reshape(-1, cfg.bus_bytes)
        for b, w in enumerate(words):
            out.append(wp.pack({"channel": c, "tag": 0, "addr": line * slot + b,
                                "data": int.from_bytes(w.tobytes(), "little")}))
        out.append(wp.pack({"channel": c, "tag": 1, "addr": line,
                            "data": tp.pack({"valid": 1, "table": int(load.table[i]),
                                             "id": int(load.row[i])})}))
    return out


# -- the model ------------------------------------------------------------------

def _as_accesses(trace) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(trace, Trace):
        return trace.table, trace.row
    if isinstance(trace, tuple) and len(trace) == 2:
        table = np.asarray(trace[0], dtype=np.int64).reshape(-1)
        row = np.asarray(trace[1], dtype=np.int64).reshape(-1)
        if table.shape != row.shape:
            raise ValueError(f"trace: {table.size} tables for {row.size} rows")
        if table.size and (table.min() < 0 or table.max() >= 1 << 31 or row.min() < 0
                           or row.max() > _MASK32):
            raise ValueError("trace: tables must be in 0 .. 2**31-1 and rows in "
                             "0 .. 2**32-1")
        return table, row
    raise ValueError("trace: a Trace or a (table, row) pair of arrays")


class CacheModel:
    """One cache instance: static cache, then dynamic cache (module
    docstring). Stateful: :meth:`run` continues from where the last run
    left off, as the hardware does between queries.

    Parameters
    ----------
    static_rows : int
        Rows of the static cache (0: none).
    sets : int
        Sets of the dynamic cache, a power of two (0 with ``ways``: none).
    ways : int
        Ways per set (0: no dynamic cache). A power of two for ``"plru"``.
    policy : str
        ``"lru"`` (true LRU) or ``"plru"`` (tree pseudo-LRU).
    pinned : StaticSelection, mapping or (table, row) pairs
        The static cache's rows, checked by :func:`check_pinned`.
    tables : optional
        The tables, for that check (see :func:`check_pinned`).
    static_ways : int, optional
        The static cache's ways, for that check (the hardware's cache is
        set-associative; without it, any ``static_rows`` rows fit).
    """

    @classmethod
    def for_config(cls, cfg, pinned=(), tables=None) -> "CacheModel":
        """The model of one channel's caches of an
        :class:`~hw.config.EmbeddingConfig`."""
        return cls(static_rows=cfg.static_rows, sets=cfg.cache_sets, ways=cfg.cache_ways,
                   policy=cfg.cache_policy, pinned=pinned, tables=tables,
                   static_ways=cfg.static_ways)

    def __init__(self, *, static_rows: int = 0, sets: int = 1, ways: int = 0,
                 policy: str = "lru", pinned=(), tables=None,
                 static_ways: int | None = None):
        self._static_rows = _check_int("static_rows", static_rows)
        sets, ways = _check_int("sets", sets), _check_int("ways", ways)
        if sets and not _is_pow2(sets):
            raise ValueError(f"sets: must be a power of two, not {sets!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy: must be one of {', '.join(POLICIES)}, not {policy!r}")
        if not sets or not ways:
            sets, ways = 1, 0
        if policy == "plru" and ways and not _is_pow2(ways):
            raise ValueError(f"ways: tree PLRU needs a power of two, not {ways!r}")
        self._sets, self._ways, self._policy = sets, ways, policy
        table, row = check_pinned(pinned, self._static_rows, tables,
                                  static_ways if self._static_rows else None)
        self._pinned = (table, row)
        self._static_keys = np.sort((table << ROW_BITS) | row)
        if policy == "plru":
            self._plru_masks()
        self.reset()

    # parameters
    @property
    def static_rows(self) -> int:
        return self._static_rows

    @property
    def sets(self) -> int:
        return self._sets if self._ways else 0

    @property
    def ways(self) -> int:
        return self._ways

    @property
    def policy(self) -> str:
        return self._policy

    @property
    def dynamic_rows(self) -> int:
        return self._sets * self._ways

    @property
    def capacity_rows(self) -> int:
        """Static and dynamic rows together (Belady's capacity)."""
        return self._static_rows + self.dynamic_rows

    @property
    def pinned(self) -> tuple[np.ndarray, np.ndarray]:
        """``(table, row)`` of the pinned rows, as given."""
        return self._pinned

    @property
    def counters(self) -> CacheStats:
        """Counters since construction or the last :meth:`reset`."""
        return CacheStats(*self._counts)

    def reset(self):
        """Every dynamic way empty, PLRU bits 0, counters 0 (the pinned rows
        stay: the hardware's reset also empties the static cache, which the
        host then loads again)."""
        self._counts = [0, 0, 0, 0]
        n = self._sets if self._ways else 0
        if self._policy == "lru":
            self._lru = [OrderedDict() for _ in range(n)]
        else:
            self._way_of: dict[int, int] = {}          # key -> way (the key fixes the set)
            self._lines = [[None] * self._ways for _ in range(n)]
            self._bits = [0] * n
            self._fill = [0] * n

    def _plru_masks(self):
        W = self._ways
        self._touch = []                 # per way: (bits to clear, bits to set)
        for w in range(W):
            clear = setb = 0
            n = W + w
            while n > 1:
                parent = n >> 1
                clear |= 1 << parent
                if n == 2 * parent:      # w under the lower child: point upward
                    setb |= 1 << parent
                n = parent
            self._touch.append((~clear, setb))

    def static_hits_of(self, table, row) -> np.ndarray:
        """Which lookups the static cache serves (bool)."""
        keys = (np.asarray(table, np.int64) << ROW_BITS) | np.asarray(row, np.int64)
        if not self._static_keys.size:
            return np.zeros(keys.shape, bool)
        pos = np.searchsorted(self._static_keys, keys)
        return self._static_keys[np.minimum(pos, self._static_keys.size - 1)] == keys

    def run(self, trace) -> CacheStats:
        """Serve lookups in order.

        Parameters
        ----------
        trace : Trace or (table, row) pair of int arrays

        Returns
        -------
        CacheStats
            This run's counters and each lookup's :class:`Outcome`; the
            instance's :attr:`counters` add them up.
        """
        table, row = _as_accesses(trace)
        outcome = np.full(row.size, Outcome.MISS, np.uint8)
        static = self.static_hits_of(table, row)
        outcome[static] = Outcome.STATIC_HIT
        rest = np.flatnonzero(~static)
        dyn_hits, evictions = 0, 0
        if self._ways and rest.size:
            t, r = table[rest], row[rest]
            sets = set_index(t, r, self._sets).tolist()
            keys = ((t << ROW_BITS) | r).tolist()
            run = self._run_lru if self._policy == "lru" else self._run_plru
            hit_pos, evictions = run(sets, keys)
            hit_pos = np.asarray(hit_pos, np.int64)
            outcome[rest[hit_pos]] = Outcome.DYNAMIC_HIT
            dyn_hits = hit_pos.size
        stats = CacheStats(int(static.sum()), dyn_hits,
                           int(rest.size) - dyn_hits, evictions, outcome)
        c = self._counts
        c[0] += stats.static_hits
        c[1] += stats.dynamic_hits
        c[2] += stats.misses
        c[3] += stats.evictions
        return stats

    def _run_lru(self, sets: list[int], keys: list[int]):
        lru, ways = self._lru, self._ways
        hits: list[int] = []
        hit = hits.append
        evictions = 0
        i = 0
        for s, k in zip(sets, keys):
            d = lru[s]                       # least recently used first
            if k in d:
                d.move_to_end(k)
                hit(i)
            else:
                if len(d) == ways:
                    d.popitem(last=False)
                    evictions += 1
                d[k] = None
            i += 1
        return hits, evictions

    def _run_plru(self, sets: list[int], keys: list[int]):
        W, touch = self._ways, self._touch
        way_of, lines, bits, fill = self._way_of, self._lines, self._bits, self._fill
        hits: list[int] = []
        evictions = 0
        for i, (s, k) in enumerate(zip(sets, keys)):
            w = way_of.get(k)
            if w is not None:
                hits.append(i)
            else:
                if fill[s] < W:
                    w = fill[s]
                    fill[s] += 1
                else:
                    b, n = bits[s], 1
                    while n < W:
                        n = 2 * n + ((b >> n) & 1)
                    w = n - W
                    del way_of[lines[s][w]]
                    evictions += 1
                lines[s][w] = k
                way_of[k] = w
            clear, setb = touch[w]
            bits[s] = (bits[s] & clear) | setb
        return hits, evictions


# -- Belady ---------------------------------------------------------------------

def _keys(trace) -> np.ndarray:
    if isinstance(trace, Trace):
        return trace.keys()
    if isinstance(trace, tuple) and len(trace) == 2:
        table, row = _as_accesses(trace)
        return (table << ROW_BITS) | row
    return np.asarray(trace, dtype=np.int64).reshape(-1)


def _next_use(keys: np.ndarray) -> np.ndarray:
    """Per access, the index of the next access to the same key (``n`` if
    none)."""
    n = keys.size
    order = np.argsort(keys, kind="stable")
    nxt = np.full(n, n, np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def belady_hits(trace, capacity: int, bypass: bool = False) -> int:
    """Hits of Belady's MIN (module docstring) on a trace.

    Parameters
    ----------
    trace : Trace, (table, row) pair of arrays, or an array of keys
    capacity : int
        Rows of the fully associative cache (0: no hits).
    bypass : bool
        Let a missing row stay uncached when its next use is the farthest.
    """
    capacity = _check_int("capacity", capacity)
    keys = _keys(trace)
    n = keys.size
    if not capacity or not n:
        return 0
    nxt = _next_use(keys).tolist()
    cached: dict[int, int] = {}          # key -> its next use
    heap: list[tuple[int, int]] = []     # (-next use, key), stale entries skipped
    hits = 0
    push, pop = heapq.heappush, heapq.heappop
    for k, nu in zip(keys.tolist(), nxt):
        if k in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:                  # drop stale tops: a key's live entry is its own
                far, victim = heap[0]
                if cached.get(victim) == -far:
                    break
                pop(heap)
            if bypass and nu >= -far:
                continue
            pop(heap)
            del cached[victim]
        cached[k] = nu
        push(heap, (-nu, k))
    return hits


def belady_hit_rate(trace, capacity: int, bypass: bool = False) -> float:
    """:func:`belady_hits` over the number of lookups."""
    n = _keys(trace).size
    return belady_hits(trace, capacity, bypass) / n if n else 0.0
