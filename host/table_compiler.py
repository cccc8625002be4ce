"""The table compiler: embedding tables onto the lookup unit's memories.

Input: one :class:`TableSpec` per sparse feature (float rows, or FBGEMM
bytes in a named format, quantized to int8 or int4; the expected lookups
per query; optional per-row access frequencies) and an
:class:`hw.config.EmbeddingConfig`. Output, a :class:`CompiledTables`:

* one memory image per AXI channel (uint8, from address 0 up to the last
  byte used) and one image per on-chip bank (``onchip_words`` x
  ``bus_bytes``), holding hardware rows (:mod:`host.embedding`);
* an :class:`AddressMap` (JSON through ``to_dict`` / ``from_dict``);
* the table descriptors the unit loads, packed in
  :func:`hw.embedding.descriptor_layout` (:func:`pack_descriptor`,
  :func:`descriptor_writes`), and the bank writes (:func:`bank_writes`).

Layout
------
A table lives whole on one unit: a channel or an on-chip bank. Row ``id``
starts ``id * stride`` beats after the table's base, ``stride`` being the
row's beats rounded up to a power of two and the base a multiple of it, so
that no burst crosses a 4 KiB boundary (:mod:`hw.embedding`). A burst reads
``row_beats`` beats: the padding between rows is never read.

Placement
---------
On chip first: tables in increasing size, each into the bank with the least
expected traffic among those with room (ties: the emptier bank, then the
lower index), while any bank has room. The rest go to the channels in
decreasing expected traffic (lookups per query x row beats: beats read per
query), each to the channel with the least traffic so far among those with
room (ties: fewer bytes, lower index): a greedy longest-processing-time
balance, within 4/3 of the best split. A channel holds ``2**addr_bits``
bytes.

Merging (MicroRec's Cartesian products)
---------------------------------------
Two features ``A`` and ``B`` whose tables are both small and which both take
exactly one id per item can share one table ``C`` with
``C[a * rows_B + b] = A[a] ++ B[b]``: one burst then serves both features.
The merged row is two segments, each a whole hardware row with its own
header and starting on a beat boundary: ``row_beats_A`` beats of ``A``,
then ``row_beats_B`` beats of ``B``; the unit would read the one burst and
produce two pooled vectors. The heuristic (PAPERS.md, MicroRec), on when a
:class:`MergePolicy` is given:

1. candidates are the features with ``pooling_factor == 1`` (this declares
   exactly one id per item: the lookup stream refuses anything else), at
   most ``small_rows`` rows, and rows shorter than ``max_row_beats`` (so
   that a partner can share the burst);
2. pairs only: sort the candidates by rows; pair the smallest with the
   largest remaining; a pair is taken if its merged row fits one burst
   (``row_beats_A + row_beats_B <= max_row_beats``) and the storage it adds
   (in strides: ``rows_A rows_B stride_AB - rows_A stride_A - rows_B
   stride_B`` beats) stays within what is left of the growth budget
   (``max_growth`` times the unmerged total; MicroRec reports +1.9% and
   +3.2%); if not, the largest is dropped and the next largest tried with
   the same smallest;
3. the smallest tables (merged or not) then go on chip, as above.

Steps 1 and 2 need only the tables' sizes: :func:`plan_merges` runs them on
:class:`TableShape` s (rows, dim, bits, pooling factor), and
:func:`compile_tables` calls it with the shapes of the quantized tables.
Storage is counted in the units of a :class:`RowLayout`: by default the
compiler's own (an :class:`~hw.config.EmbeddingConfig`: beats, rows a
power-of-two stride apart, at most ``max_row_beats`` per burst); another
layout (say MicroRec's dense 32-bit rows) plans the same way in its units.

Merging is off by default (pass a :class:`MergePolicy`). The unit
(hw/embedding.py) reads a merged row in one burst and answers its bag with
two vectors, one per segment; the descriptor's ``merged``, ``seg_beats``
(beats of the first segment), ``dim_b`` and ``bits4_b`` describe it. A
merged table's bag is one row: longer bags are ``BAD_BAG``.

Lookup stream
-------------
:func:`build_lookup_stream` turns per-feature bags into the unit's input:
item by item, one bag per table in table order; a bag is (unit, table,
ids), ``unit`` being the lookup stream of the table's unit (channel ``c``:
``c``; bank ``b``: ``channels + b``). A merged table's bag is the one id
``a * rows_B + b``; an id past either feature's table becomes ``rows_A *
rows_B`` so that the answer is ``BAD_ID`` for both features.
:func:`golden_stream` and :func:`golden_pooled` compute what the unit
answers, reading the compiled images byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np

from hw.config import EmbeddingConfig
from hw.embedding import (ID_BITS, bank_write_layout, desc_write_layout,
                          descriptor_layout)

from .embedding import (EmbeddingStatus, RowwiseTable, bag_status, pack_hw_rows,
                        pool_rows, quantize_8bit, quantize_nbit, to_fixed_point,
                        unpack_fused, unpack_hw_rows, unpack_qparams_first)
from .packing import Packer

__all__ = [
    "TableSpec", "MergePolicy", "TableShape", "RowLayout", "BurstLayout", "plan_merges",
    "Segment", "TableEntry", "AddressMap", "CompiledTables",
    "LookupStream", "compile_tables", "stride_beats", "descriptor_values",
    "pack_descriptor", "unpack_descriptor", "descriptor_words", "descriptor_writes",
    "bank_writes", "bags_from_lists", "build_lookup_stream", "golden_stream",
    "golden_pooled", "MAX_AXI_BURST",
]

#: AXI4 INCR bursts carry at most 256 beats.
MAX_AXI_BURST = 256

ROW_FORMATS = ("float", "fused", "qparams_first")
KINDS = ("channel", "onchip")


def stride_beats(row_beats: int) -> int:
    """Beats from one row to the next: ``row_beats`` up to a power of two."""
    return 1 << (row_beats - 1).bit_length()


@dataclass(frozen=True, eq=False)
class TableSpec:
    """One sparse feature and its table.

    Parameters
    ----------
    name : str
        Unique among the tables.
    data : array
        ``format == "float"``: float rows (rows, dim), quantized here as
        FBGEMM does (:func:`host.embedding.quantize_8bit` for 8 bits,
        :func:`host.embedding.quantize_nbit` for 4). ``"fused"``: FBGEMM
        fused bytes, qparams last (torch's ``embedding_bag_byte_prepack`` /
        ``embedding_bag_4bit_prepack``). ``"qparams_first"``: FBGEMM TBE
        inference bytes (``dim`` required).
    bits : int
        8 or 4.
    format : str
        One of ``"float"``, ``"fused"``, ``"qparams_first"``.
    dim : int, optional
        Elements per row, when the bytes do not say it.
    pooling_factor : float
        Expected ids per item (per query, for user features). Exactly 1
        declares a one-hot feature (one id per item), which may be merged.
    frequencies : array (rows,), optional
        Access counts per row, kept for the static-cache selection; not used
        by placement (a whole table's traffic is ``pooling_factor``).
    """

    name: str
    data: np.ndarray
    bits: int = 8
    format: str = "float"
    dim: int | None = None
    pooling_factor: float = 1.0
    frequencies: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"table name: must be a non-empty string, not {self.name!r}")
        if self.bits not in (4, 8):
            raise ValueError(f"table {self.name!r}: bits must be 8 or 4, not {self.bits!r}")
        if self.format not in ROW_FORMATS:
            raise ValueError(f"table {self.name!r}: format must be one of "
                             f"{', '.join(ROW_FORMATS)}, not {self.format!r}")
        pf = self.pooling_factor
        if isinstance(pf, bool) or not isinstance(pf, (int, float)) or \
                not math.isfinite(pf) or pf < 0:
            raise ValueError(f"table {self.name!r}: pooling_factor must be a finite "
                             f"number >= 0, not {pf!r}")

    def rowwise(self) -> RowwiseTable:
        """The table, quantized (``"float"``) or read (FBGEMM bytes)."""
        try:
            if self.format == "float":
                t = quantize_8bit(self.data) if self.bits == 8 else quantize_nbit(self.data, 4)
            elif self.format == "fused":
                t = unpack_fused(self.data, self.bits, self.dim)
            else:
                if self.dim is None:
                    raise ValueError("qparams-first rows need dim (their padding hides it)")
                t = unpack_qparams_first(self.data, self.dim, self.bits)
        except ValueError as e:
            raise ValueError(f"table {self.name!r}: {e}") from None
        if self.dim is not None and t.dim != self.dim:
            raise ValueError(f"table {self.name!r}: dim {self.dim} given, the data has "
                             f"{t.dim}")
        if self.frequencies is not None:
            f = np.asarray(self.frequencies)
            if f.shape != (t.rows,) or (f.size and f.min() < 0):
                raise ValueError(f"table {self.name!r}: frequencies must be {t.rows} "
                                 f"non-negative counts, not shape {f.shape}")
        return t


@dataclass(frozen=True)
class MergePolicy:
    """MicroRec's Cartesian-product merging (see the module docstring).

    Parameters
    ----------
    small_rows : int
        Only tables of at most this many rows take part.
    max_growth : float
        Storage the merges may add, as a fraction of the unmerged total.
    """

    small_rows: int = 4096
    max_growth: float = 0.05


@dataclass(frozen=True)
class TableShape:
    """A table by its sizes alone: what :func:`plan_merges` needs.

    Parameters
    ----------
    rows, dim : int
        Rows and elements per row, at least 1.
    bits : int
        Bits per element (8 or 4 for the compiler's layout; another
        :class:`RowLayout` may take others, e.g. 32).
    pooling_factor : float
        Expected ids per item; exactly 1 is a one-hot feature, which may be
        merged (as :class:`TableSpec`).
    """

    rows: int
    dim: int
    bits: int = 8
    pooling_factor: float = 1.0

    def __post_init__(self):
        for name in ("rows", "dim", "bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"table shape: {name} must be an integer >= 1, not {v!r}")
        pf = self.pooling_factor
        if isinstance(pf, bool) or not isinstance(pf, (int, float)) or \
                not math.isfinite(pf) or pf < 0:
            raise ValueError(f"table shape: pooling_factor must be a finite number >= 0, "
                             f"not {pf!r}")


class RowLayout(Protocol):
    """How rows take memory, for merge planning.

    A row of ``dim`` ``bits``-bit elements takes ``row_units(dim, bits)``
    units of ``unit_bytes`` bytes; rows of ``u`` units lie
    ``stride_units(u)`` units apart; one lookup reads at most
    ``max_row_units`` units. A merged row is its two rows one after the
    other (``u_a + u_b`` units).
    """

    @property
    def unit_bytes(self) -> int: ...

    @property
    def max_row_units(self) -> int: ...

    def row_units(self, dim: int, bits: int) -> int: ...

    def stride_units(self, row_units: int) -> int: ...


@dataclass(frozen=True)
class BurstLayout:
    """The compiler's layout (the Layout section above): units are bus beats, rows
    of :mod:`host.embedding` hardware rows a power-of-two number of beats
    apart, one burst of at most ``max_row_beats`` per lookup."""

    cfg: EmbeddingConfig

    @property
    def unit_bytes(self) -> int:
        return self.cfg.bus_bytes

    @property
    def max_row_units(self) -> int:
        return self.cfg.max_row_beats

    def row_units(self, dim: int, bits: int) -> int:
        return self.cfg.row_beats(dim, bits)

    def stride_units(self, row_units: int) -> int:
        return stride_beats(row_units)


def plan_merges(shapes: Sequence[TableShape], layout: EmbeddingConfig | RowLayout,
                policy: MergePolicy | None) -> list[tuple[int, int]]:
    """MicroRec's merge heuristic on sizes alone (steps 1 and 2 of Merging).

    Parameters
    ----------
    shapes : sequence of TableShape
        One per feature.
    layout : EmbeddingConfig or RowLayout
        Where storage and burst lengths are counted; a config means the
        compiler's layout, :class:`BurstLayout` of it.
    policy : MergePolicy or None
        None plans no merges.

    Returns
    -------
    list of (int, int)
        Pairs ``(small, large)`` of indices into ``shapes``, in the order
        taken; each index in at most one pair. :func:`compile_tables` merges
        exactly these.
    """
    if policy is None:
        return []
    if isinstance(layout, EmbeddingConfig):
        layout = BurstLayout(layout)
    shapes = list(shapes)
    rows = [s.rows for s in shapes]
    units = [layout.row_units(s.dim, s.bits) for s in shapes]
    stride = layout.stride_units
    budget = policy.max_growth * sum(r * stride(u) for r, u in zip(rows, units))
    # A candidate's row must leave room in the burst for a partner.
    cand = sorted((f for f, s in enumerate(shapes)
                   if s.pooling_factor == 1 and rows[f] <= policy.small_rows
                   and units[f] < layout.max_row_units),
                  key=lambda f: (rows[f], f))
    pairs = []
    i, j = 0, len(cand) - 1
    while i < j:
        a, b = cand[i], cand[j]
        merged = units[a] + units[b]
        growth = (rows[a] * rows[b] * stride(merged)
                  - rows[a] * stride(units[a]) - rows[b] * stride(units[b]))
        if merged <= layout.max_row_units and growth <= budget:
            pairs.append((a, b))
            budget -= growth
            i += 1
        j -= 1
    return pairs


@dataclass(frozen=True)
class Segment:
    """One feature's part of a table's row.

    ``beats`` beats from beat ``beat_offset`` of the row hold a whole
    hardware row of the feature (header and codes). The table's id is the
    sum over segments of ``feature id * id_stride``.
    """

    feature: str
    rows: int
    dim: int
    bits: int
    beats: int
    beat_offset: int
    id_stride: int


@dataclass(frozen=True)
class TableEntry:
    """One table in the address map.

    ``base`` is a byte address when ``kind`` is ``"channel"`` and a word
    (beat) address when it is ``"onchip"``, a multiple of ``stride_beats``
    beats either way; ``unit`` is the channel or bank number. Row ``r``
    starts ``r * stride_beats`` beats after ``base``; a burst reads its
    ``row_beats`` beats.
    """

    index: int
    name: str
    kind: str
    unit: int
    base: int
    rows: int
    row_beats: int
    stride_beats: int
    lookups_per_query: float
    segments: tuple[Segment, ...]

    @property
    def dim(self) -> int:
        return self.segments[0].dim

    @property
    def bits(self) -> int:
        return self.segments[0].bits

    @property
    def merged(self) -> bool:
        return len(self.segments) > 1

    @property
    def traffic(self) -> float:
        """Expected beats read per query."""
        return self.lookups_per_query * self.row_beats

    def base_beat(self, bus_bytes: int) -> int:
        """The base in beats (the descriptor's ``base``)."""
        return self.base // bus_bytes if self.kind == "channel" else self.base

    def size_bytes(self, bus_bytes: int) -> int:
        return self.rows * self.stride_beats * bus_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = [asdict(s) for s in self.segments]
        d["dim"], d["bits"], d["merged"] = self.dim, self.bits, self.merged
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TableEntry":
        d = dict(d)
        for derived in ("dim", "bits", "merged"):
            d.pop(derived, None)
        d["segments"] = tuple(Segment(**s) for s in d["segments"])
        return cls(**d)


@dataclass(frozen=True)
class AddressMap:
    """Where every table and feature lives; JSON-serializable.

    ``channel_bytes`` and ``bank_words`` are the space used per channel and
    per bank.
    """

    bus_bytes: int
    frac_bits: int
    channels: int
    onchip_banks: int
    onchip_words: int
    channel_bytes: tuple[int, ...]
    bank_words: tuple[int, ...]
    tables: tuple[TableEntry, ...]

    def feature(self, name: str) -> tuple[int, int]:
        """``(table index, segment index)`` of a feature."""
        for t in self.tables:
            for k, s in enumerate(t.segments):
                if s.feature == name:
                    return t.index, k
        raise KeyError(f"no feature {name!r} in the address map")

    @property
    def features(self) -> list[str]:
        """Feature names, in table and segment order."""
        return [s.feature for t in self.tables for s in t.segments]

    def stream_unit(self, table: int) -> int:
        """The lookup stream (``i<u>``) serving a table: a channel's number,
        or ``channels`` + a bank's."""
        t = self.tables[table]
        return t.unit if t.kind == "channel" else self.channels + t.unit

    def channel_traffic(self) -> list[float]:
        """Expected beats per query read from each channel."""
        out = [0.0] * self.channels
        for t in self.tables:
            if t.kind == "channel":
                out[t.unit] += t.traffic
        return out

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("bus_bytes", "frac_bits", "channels",
                                           "onchip_banks", "onchip_words")}
        d["channel_bytes"] = list(self.channel_bytes)
        d["bank_words"] = list(self.bank_words)
        d["tables"] = [t.to_dict() for t in self.tables]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AddressMap":
        d = dict(d)
        d["channel_bytes"] = tuple(d["channel_bytes"])
        d["bank_words"] = tuple(d["bank_words"])
        d["tables"] = tuple(TableEntry.from_dict(t) for t in d["tables"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "AddressMap":
        return cls.from_dict(json.loads(text))


# -- descriptors and load commands --------------------------------------------

def descriptor_values(entry: TableEntry, bus_bytes: int) -> dict:
    """A table's descriptor fields by name: those of
    :func:`hw.embedding.descriptor_layout` (``valid``, ``onchip``, ``unit``,
    ``base`` in beats, ``rows``, ``dim``, ``bits4``, ``row_beats``,
    ``stride_shift``) and the second-segment fields a merged table needs
    (``merged``, ``seg_beats``: beats of the first segment, ``dim_b``,
    ``bits4_b``; for one segment: 0, ``row_beats``, 0, 0)."""
    a = entry.segments[0]
    b = entry.segments[1] if entry.merged else None
    return {"valid": 1, "onchip": int(entry.kind == "onchip"), "unit": entry.unit,
            "base": entry.base_beat(bus_bytes), "rows": entry.rows, "dim": a.dim,
            "bits4": int(a.bits == 4), "row_beats": entry.row_beats,
            "stride_shift": entry.stride_beats.bit_length() - 1,
            "merged": int(b is not None), "seg_beats": a.beats,
            "dim_b": b.dim if b else 0, "bits4_b": int(b.bits == 4) if b else 0}


def _hw_descriptor(entry: TableEntry, cfg: EmbeddingConfig) -> dict:
    names = {name for name, _ in descriptor_layout(cfg)}
    return {k: v for k, v in descriptor_values(entry, cfg.bus_bytes).items() if k in names}


def pack_descriptor(entry: TableEntry, cfg: EmbeddingConfig) -> int:
    """A table's descriptor, packed in :func:`hw.embedding.descriptor_layout`.

    Raises
    ------
    ValueError
        For a value that does not fit its field.
    """
    try:
        return Packer(descriptor_layout(cfg)).pack(_hw_descriptor(entry, cfg))
    except ValueError as e:
        raise ValueError(f"table {entry.name!r}: descriptor: {e}") from None


def unpack_descriptor(word: int, cfg: EmbeddingConfig) -> dict:
    """Fields of a packed descriptor, by name."""
    return Packer(descriptor_layout(cfg)).unpack(word)


def descriptor_words(address_map: AddressMap, cfg: EmbeddingConfig) -> list[int]:
    """All ``max_tables`` descriptors, packed; unused entries are 0 (not valid)."""
    words = [0] * cfg.max_tables
    for t in address_map.tables:
        words[t.index] = pack_descriptor(t, cfg)
    return words


def descriptor_writes(address_map: AddressMap, cfg: EmbeddingConfig) -> list[int]:
    """Payloads for the unit's ``desc`` stream
    (:func:`hw.embedding.desc_write_layout`), one per table."""
    p = Packer(desc_write_layout(cfg))
    out = []
    for t in address_map.tables:
        pack_descriptor(t, cfg)                      # the checks, with the table's name
        out.append(p.pack({"table": t.index, "desc": _hw_descriptor(t, cfg)}))
    return out


def bank_writes(compiled: "CompiledTables") -> list[int]:
    """Payloads for the unit's ``bank_w`` stream
    (:func:`hw.embedding.bank_write_layout`): every used word of every bank."""
    cfg = compiled.config
    p = Packer(bank_write_layout(cfg))
    out = []
    for b, image in enumerate(compiled.bank_images):
        for a in range(compiled.address_map.bank_words[b]):
            out.append(p.pack({"bank": b, "addr": a,
                               "data": int.from_bytes(image[a].tobytes(), "little")}))
    return out


# -- compilation --------------------------------------------------------------

@dataclass
class CompiledTables:
    """Memory images and address map of a set of tables.

    ``channel_images[c]`` is channel ``c``'s bytes from address 0;
    ``bank_images[k]`` is bank ``k`` as (``onchip_words``, ``bus_bytes``)
    uint8. ``frequencies`` holds the access counts given per feature.
    """

    config: EmbeddingConfig
    address_map: AddressMap
    channel_images: list[np.ndarray]
    bank_images: list[np.ndarray]
    frequencies: dict[str, np.ndarray] = field(default_factory=dict)

    def descriptors(self) -> list[int]:
        return descriptor_words(self.address_map, self.config)

    def row_addresses(self, table: int, ids) -> np.ndarray:
        """Byte address (channel) or word address (bank) of each row."""
        t = self.address_map.tables[table]
        ids = np.asarray(ids, dtype=np.int64)
        step = t.stride_beats * (self.config.bus_bytes if t.kind == "channel" else 1)
        return t.base + ids * step

    def read_rows(self, table: int, ids) -> np.ndarray:
        """The bytes a burst for each id reads: (n, row_beats * bus_bytes)."""
        t = self.address_map.tables[table]
        addr = self.row_addresses(table, ids)
        bus = self.config.bus_bytes
        if t.kind == "channel":
            return self.channel_images[t.unit][addr[:, None] + np.arange(t.row_beats * bus)]
        bank = self.bank_images[t.unit]
        return bank[addr[:, None] + np.arange(t.row_beats)].reshape(addr.size, -1)


@dataclass
class _Physical:
    """A table being placed: its features and its hardware rows."""

    features: list[int]
    rows: int
    row_beats: int
    data: np.ndarray = field(repr=False)      # (rows, row_beats * bus_bytes) uint8
    lookups_per_query: float = 0.0
    kind: str = ""
    unit: int = 0
    base: int = 0

    @property
    def stride(self) -> int:
        return stride_beats(self.row_beats)


def _align(x: int, a: int) -> int:
    return -(-x // a) * a


def _place(phys: list[_Physical], names: list[str], cfg: EmbeddingConfig):
    bus = cfg.bus_bytes
    bank_used = [0] * cfg.onchip_banks
    bank_traffic = [0.0] * cfg.onchip_banks
    offchip = []
    for k in sorted(range(len(phys)), key=lambda k: (phys[k].rows * phys[k].stride, k)):
        p = phys[k]
        words = p.rows * p.stride
        fits = [b for b in range(cfg.onchip_banks)
                if _align(bank_used[b], p.stride) + words <= cfg.onchip_words]
        if not fits:
            offchip.append(k)
            continue
        b = min(fits, key=lambda b: (bank_traffic[b], bank_used[b], b))
        p.kind, p.unit, p.base = "onchip", b, _align(bank_used[b], p.stride)
        bank_used[b] = p.base + words
        bank_traffic[b] += p.lookups_per_query * p.row_beats

    capacity = 1 << cfg.addr_bits
    used = [0] * cfg.channels
    traffic = [0.0] * cfg.channels
    order = sorted(offchip, key=lambda k: (-phys[k].lookups_per_query * phys[k].row_beats,
                                           -phys[k].rows * phys[k].stride, k))
    for k in order:
        p = phys[k]
        step = p.stride * bus
        size = p.rows * step
        if size > capacity:
            raise ValueError(f"table {names[k]!r}: {size} bytes do not fit a channel of "
                             f"{capacity} bytes (embedding.addr_bits = {cfg.addr_bits})")
        fits = [c for c in range(cfg.channels) if _align(used[c], step) + size <= capacity]
        if not fits:
            free = [capacity - u for u in used]
            raise ValueError(f"table {names[k]!r}: {size} bytes do not fit in any "
                             f"channel (free bytes per channel: {free}; on chip: "
                             f"{cfg.onchip_banks} banks of {cfg.onchip_words} words)")
        c = min(fits, key=lambda c: (traffic[c], used[c], c))
        p.kind, p.unit, p.base = "channel", c, _align(used[c], step)
        used[c] = p.base + size
        traffic[c] += p.lookups_per_query * p.row_beats
    return used, bank_used


def compile_tables(specs: Sequence[TableSpec], cfg: EmbeddingConfig,
                   merge: MergePolicy | None = None) -> CompiledTables:
    """Quantize, merge and place tables; build the images and the address map.

    Parameters
    ----------
    specs : sequence of TableSpec
        One per feature; table order follows this order (a merged table takes
        the place of its first feature).
    cfg : hw.config.EmbeddingConfig
    merge : MergePolicy, optional
        MicroRec merging with this policy; none by default.

    Raises
    ------
    ValueError
        A row wider than ``max_dim`` or longer than one burst, a scale or
        bias that does not fit int32, more than ``max_tables`` tables, a
        table that fits no channel, a repeated name.
    """
    if not isinstance(cfg, EmbeddingConfig):
        raise ValueError(f"cfg: must be an EmbeddingConfig, not {type(cfg).__name__}")
    specs = list(specs)
    if not specs:
        raise ValueError("specs: no tables to compile")
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"table names must be unique; repeated: {sorted(dup)}")

    bus = cfg.bus_bytes
    hw_rows, shapes, freqs = [], [], {}
    for s in specs:
        t = s.rowwise()
        if t.dim > cfg.max_dim:
            raise ValueError(f"table {s.name!r}: dim {t.dim} is wider than "
                             f"embedding.max_dim = {cfg.max_dim}")
        if t.rows == 0:
            raise ValueError(f"table {s.name!r}: has no rows")
        if t.rows >= 1 << ID_BITS:
            raise ValueError(f"table {s.name!r}: {t.rows} rows need ids wider than "
                             f"{ID_BITS} bits")
        beats = cfg.row_beats(t.dim, t.bits)
        if beats > MAX_AXI_BURST:
            raise ValueError(f"table {s.name!r}: a row of {beats} beats is longer "
                             f"than an AXI burst ({MAX_AXI_BURST})")
        if stride_beats(beats) * bus > 4096:
            raise ValueError(f"table {s.name!r}: rows {stride_beats(beats) * bus} bytes "
                             f"apart cannot keep every burst inside a 4 KiB page")
        hw_rows.append(pack_hw_rows(to_fixed_point(t, cfg.frac_bits, s.name), cfg))
        shapes.append((t.rows, t.dim, t.bits, beats))
        if s.frequencies is not None:
            freqs[s.name] = np.asarray(s.frequencies)

    pairs = plan_merges([TableShape(rows, dim, bits, s.pooling_factor)
                         for (rows, dim, bits, _), s in zip(shapes, specs)], cfg, merge)
    partner = dict(pairs)
    absorbed = {b for _, b in pairs}
    phys, phys_names = [], []
    for f, s in enumerate(specs):
        if f in absorbed:
            continue
        if f in partner:
            g = partner[f]
            ra, rb = hw_rows[f], hw_rows[g]
            data = np.concatenate([np.repeat(ra, rb.shape[0], axis=0),
                                   np.tile(rb, (ra.shape[0], 1))], axis=1)
            if data.shape[0] >= 1 << ID_BITS:
                raise ValueError(f"merging {s.name!r} and {specs[g].name!r} makes ids "
                                 f"wider than {ID_BITS} bits")
            phys.append(_Physical([f, g], data.shape[0], data.shape[1] // bus, data, 1.0))
            phys_names.append(f"{s.name}*{specs[g].name}")
        else:
            r = hw_rows[f]
            phys.append(_Physical([f], r.shape[0], r.shape[1] // bus, r,
                                  float(s.pooling_factor)))
            phys_names.append(s.name)
    if len(phys) > cfg.max_tables:
        raise ValueError(f"{len(phys)} tables (from {len(specs)} features) are more than "
                         f"embedding.max_tables = {cfg.max_tables}")

    used, bank_used = _place(phys, phys_names, cfg)

    channel_images = [np.zeros(u, np.uint8) for u in used]
    bank_images = [np.zeros((cfg.onchip_words, bus), np.uint8)
                   for _ in range(cfg.onchip_banks)]
    tables = []
    for k, p in enumerate(phys):
        if p.kind == "channel":
            view = channel_images[p.unit][p.base:p.base + p.rows * p.stride * bus]
        else:
            view = bank_images[p.unit][p.base:p.base + p.rows * p.stride]
        view.reshape(p.rows, p.stride * bus)[:, :p.data.shape[1]] = p.data
        segments, offset = [], 0
        for n, f in enumerate(p.features):
            rows, dim, bits, beats = shapes[f]
            # id = a * rows_b + b: the first segment's id strides over the second's rows.
            stride = shapes[p.features[1]][0] if n == 0 and len(p.features) > 1 else 1
            segments.append(Segment(specs[f].name, rows, dim, bits, beats, offset, stride))
            offset += beats
        tables.append(TableEntry(k, phys_names[k], p.kind, p.unit, p.base, p.rows,
                                 p.row_beats, p.stride, p.lookups_per_query,
                                 tuple(segments)))
    amap = AddressMap(bus, cfg.frac_bits, cfg.channels, cfg.onchip_banks, cfg.onchip_words,
                      tuple(used), tuple(bank_used), tuple(tables))
    for t in tables:
        if not t.merged:
            pack_descriptor(t, cfg)      # every field fits its width
    return CompiledTables(cfg, amap, channel_images, bank_images, freqs)


# -- the lookup stream and the golden model -----------------------------------

@dataclass(frozen=True)
class LookupStream:
    """The lookup unit's input: bags, each ``(unit, item, table, ids)``.

    Bag ``k`` goes to lookup stream ``unit[k]`` and asks table ``table[k]``
    for ids ``ids[offsets[k]:offsets[k+1]]`` on behalf of item ``item[k]``.
    :func:`build_lookup_stream` emits items in order and, per item, one bag
    per table in table order; each unit answers its own bags in order.
    """

    unit: np.ndarray
    item: np.ndarray
    table: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray

    @property
    def bags(self) -> int:
        return self.table.size

    def unit_bags(self, unit: int) -> np.ndarray:
        """Indices of the bags on one lookup stream, in order."""
        return np.flatnonzero(self.unit == unit)

    def bag_ids(self, k: int) -> np.ndarray:
        return self.ids[self.offsets[k]:self.offsets[k + 1]]


def bags_from_lists(bags: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, ids)`` CSR arrays from one list of ids per item."""
    lengths = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
    offsets = np.zeros(len(bags) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((i for b in bags for i in b), dtype=np.int64, count=int(offsets[-1]))
    return offsets, ids


def _csr(name, bags):
    if isinstance(bags, tuple) and len(bags) == 2 and isinstance(bags[0], np.ndarray):
        offsets, ids = (np.asarray(a, dtype=np.int64).reshape(-1) for a in bags)
    else:
        offsets, ids = bags_from_lists(bags)
    if offsets.size < 1 or offsets[0] != 0 or offsets[-1] != ids.size or \
            np.any(np.diff(offsets) < 0):
        raise ValueError(f"feature {name!r}: offsets must rise from 0 to len(ids)")
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << ID_BITS):
        raise ValueError(f"feature {name!r}: ids must be in 0 .. 2**{ID_BITS}-1")
    return offsets, ids


def build_lookup_stream(address_map: AddressMap,
                        bags: Mapping[str, object]) -> LookupStream:
    """Per-feature bags to the lookup unit's stream.

    Parameters
    ----------
    address_map : AddressMap
    bags : mapping of feature name to bags
        Every feature of the map, each either ``(offsets, ids)`` NumPy CSR
        arrays or a list of id lists, with the same number of items.
        An id past its table is passed on (the unit answers ``BAD_ID``).

    Raises
    ------
    ValueError
        A missing or unknown feature, differing item counts, a negative id
        or one of more than ``ID_BITS`` bits, or a merged feature whose item
        does not have exactly one id.
    """
    unknown = set(bags) - set(address_map.features)
    if unknown:
        raise ValueError(f"bags for unknown features: {sorted(unknown)}")
    csr = {}
    for name in address_map.features:
        if name not in bags:
            raise ValueError(f"no bags for feature {name!r}")
        csr[name] = _csr(name, bags[name])
    counts = {n: o.size - 1 for n, (o, _) in csr.items()}
    n_items = next(iter(counts.values()))
    if any(c != n_items for c in counts.values()):
        raise ValueError(f"features have different numbers of items: {counts}")

    T = len(address_map.tables)
    lengths = np.zeros((n_items, T), np.int64)
    per_table = []
    for t in address_map.tables:
        if t.merged:
            combined = np.zeros(n_items, np.int64)
            valid = np.ones(n_items, bool)
            for s in t.segments:
                off, ids = csr[s.feature]
                n_ids = np.diff(off)
                if np.any(n_ids != 1):
                    item = int(np.argmax(n_ids != 1))
                    raise ValueError(
                        f"feature {s.feature!r} is merged into table {t.name!r} and needs "
                        f"exactly one id per item; item {item} has {int(n_ids[item])}")
                valid &= ids < s.rows
                combined += np.minimum(ids, s.rows) * s.id_stride
            # An id past either part would alias another row: make it one past the end.
            combined = np.where(valid, combined, t.rows)
            per_table.append((np.arange(n_items + 1, dtype=np.int64), combined))
        else:
            per_table.append(csr[t.segments[0].feature])
        lengths[:, t.index] = np.diff(per_table[-1][0])

    flat_len = lengths.reshape(-1)
    offsets = np.zeros(flat_len.size + 1, np.int64)
    np.cumsum(flat_len, out=offsets[1:])
    ids = np.zeros(int(offsets[-1]), np.int64)
    for t, (off, tids) in enumerate(per_table):
        starts = offsets[np.arange(n_items) * T + t]        # where each bag goes
        dest = np.repeat(starts - off[:-1], np.diff(off)) + np.arange(tids.size)
        ids[dest] = tids
    units = np.array([address_map.stream_unit(t) for t in range(T)], np.int64)
    return LookupStream(np.tile(units, n_items),
                        np.repeat(np.arange(n_items, dtype=np.int64), T),
                        np.tile(np.arange(T, dtype=np.int64), n_items), offsets, ids)


def _gather(stream_offsets, sel):
    """CSR offsets and id positions of the bags ``sel`` of a stream."""
    l = np.diff(stream_offsets)[sel]
    off = np.zeros(sel.size + 1, np.int64)
    np.cumsum(l, out=off[1:])
    take = np.repeat(stream_offsets[sel] - off[:-1], l) + np.arange(off[-1])
    return off, take


def _run_table(compiled: CompiledTables, t: int, offsets, ids, error_ranges=None):
    """One table's bags: statuses and one pooled array per segment."""
    entry = compiled.address_map.tables[t]
    cfg = compiled.config
    # A merged table's bag is one row (the unit answers BAD_BAG past it).
    status = bag_status(offsets, ids, entry.rows, 1 if entry.merged else cfg.max_bag)
    lengths = np.diff(offsets)
    read = np.repeat(status == EmbeddingStatus.OK, lengths)    # bad bags read nothing
    if error_ranges and entry.kind == "channel" and entry.unit in error_ranges:
        start = compiled.row_addresses(t, ids)
        end = start + entry.row_beats * cfg.bus_bytes
        hit = np.zeros(ids.size, bool)
        for lo, hi in error_ranges[entry.unit]:
            hit |= (start < hi) & (end > lo)
        bag = np.repeat(np.arange(lengths.size), lengths)
        bad_bag = np.zeros(lengths.size, bool)
        bad_bag[bag[hit & read]] = True
        status[bad_bag] = EmbeddingStatus.MEM_ERROR
        read = np.repeat(status == EmbeddingStatus.OK, lengths)
    ok_len = np.where(status == EmbeddingStatus.OK, lengths, 0)
    ok_off = np.zeros(ok_len.size + 1, np.int64)
    np.cumsum(ok_len, out=ok_off[1:])
    raw = compiled.read_rows(t, ids[read])
    bus = cfg.bus_bytes
    pooled = []
    for s in entry.segments:
        part = raw[:, s.beat_offset * bus:(s.beat_offset + s.beats) * bus]
        rows = unpack_hw_rows(part, s.dim, s.bits, cfg.frac_bits)
        pooled.append(pool_rows(rows.codes, rows.scale_q, rows.bias_q, ok_off, status))
    return status, pooled


def golden_stream(compiled: CompiledTables, stream: LookupStream, error_ranges=None):
    """What the lookup unit answers to each bag of a stream.

    Parameters
    ----------
    compiled : CompiledTables
    stream : LookupStream
    error_ranges : mapping of channel to ``[(start, end), ...]``, optional
        Byte ranges whose reads the memory answers with SLVERR/DECERR: a bag
        otherwise OK that reads a row overlapping one is ``MEM_ERROR``.

    Returns
    -------
    status : uint8 (bags,)
        :class:`host.embedding.EmbeddingStatus`, the worst problem of the
        bag: ``BAD_TABLE`` (no such table, or a table on another unit than
        the bag's stream), then ``BAD_BAG``, ``BAD_ID``, ``MEM_ERROR``.
    vectors : list of tuples of int64 arrays
        Per bag, one pooled vector per segment of its table (``dim``
        elements, units of ``2**-frac_bits``; zero unless OK); none for
        ``BAD_TABLE``.
    """
    amap = compiled.address_map
    n = stream.bags
    status = np.full(n, EmbeddingStatus.BAD_TABLE, np.uint8)
    vectors: list[tuple] = [()] * n
    for t in range(len(amap.tables)):
        sel = np.flatnonzero((stream.table == t) & (stream.unit == amap.stream_unit(t)))
        if not sel.size:
            continue
        off, take = _gather(stream.offsets, sel)
        st, pooled = _run_table(compiled, t, off, stream.ids[take], error_ranges)
        status[sel] = st
        for k, bag in enumerate(sel):
            vectors[bag] = tuple(p[k] for p in pooled)
    return status, vectors


def golden_pooled(compiled: CompiledTables, bags: Mapping[str, object], error_ranges=None):
    """Pooled vector and status per (item, feature), from the compiled images.

    Builds the lookup stream (:func:`build_lookup_stream`) and runs it
    through the golden lookup unit, which reads the same bytes the hardware
    will (``error_ranges`` as in :func:`golden_stream`).

    Returns
    -------
    dict of feature name to ``(pooled, status)``
        ``pooled``: int64 (items, dim), units of ``2**-frac_bits``;
        ``status``: uint8 (items,).
    """
    stream = build_lookup_stream(compiled.address_map, bags)
    T = len(compiled.address_map.tables)
    out = {}
    for t in compiled.address_map.tables:
        sel = np.arange(t.index, stream.bags, T)       # this table's bag of each item
        off, take = _gather(stream.offsets, sel)
        status, pooled = _run_table(compiled, t.index, off, stream.ids[take], error_ranges)
        for s, p in zip(t.segments, pooled):
            out[s.feature] = (p, status)
    return out
