"""The one configuration of a recaccel accelerator.

A :class:`Config` is frozen and validated when it is built: an impossible
combination raises :class:`ValueError` naming the field and the value. The
hardware (``hw/``) elaborates from it, the host (``host/``) lays data out from
it, and the generator writes it beside the Verilog as JSON and as a C header.

Configs are loaded from and saved to TOML, and the named presets below cover
the usual cases::

    cfg = Config.preset("tiny")
    cfg = Config.from_toml(path)
    cfg = cfg.replace(array={"dim": 8})
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomli_w

__all__ = ["ArrayConfig", "TopKConfig", "EmbeddingConfig", "StageConfig", "Config", "PRESETS",
           "ceil_div", "clog2"]


def clog2(n: int) -> int:
    """Bits needed to count ``0 .. n-1`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_int(where: str, value, lo: int, hi: int | None = None):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{where}: must be {bound}, not {value!r}")


@dataclass(frozen=True)
class ArrayConfig:
    """The reconfigurable systolic array and the MLP engines that drive it.

    The array is ``dim`` x ``dim`` weight-stationary int8 processing elements,
    built of ``block`` x ``block`` blocks. At run time it acts as ``f * f``
    independent sub-arrays of ``dim/f`` x ``dim/f`` for each ``f`` in
    ``splits`` (RPAccel's 1 x 128^2 / 4 x 64^2 / ... modes), and as ``f``
    sub-arrays of ``dim/f`` rows x ``dim`` columns, one above the other, for
    each ``f`` in ``row_splits`` (so that engines side by side each get every
    column: a layer's output tiles stay ``dim`` wide). These are the *modes*
    (:attr:`modes`), squares first. ``engines`` MLP engines drive sub-arrays
    0 .. engines-1; engine ``e`` is usable in the modes with more than ``e``
    sub-arrays.

    Each engine holds, on chip: a weight memory of ``weight_words`` rows of
    ``dim`` int8 weights, a requantization-parameter memory of
    ``param_words`` entries (one output-channel chunk each), two activation
    buffers (ping-pong between layers) of ``max_rows * ceil(max_dim / lanes)``
    words, an accumulator of ``acc_rows`` x lanes int32 (the row block), and
    a table of ``max_layers`` layer descriptors.
    """

    dim: int = 16
    block: int = 4
    splits: tuple[int, ...] = (1, 2)
    row_splits: tuple[int, ...] = ()
    engines: int = 2
    acc_rows: int = 64
    max_rows: int = 512
    max_dim: int = 512
    weight_words: int = 8192
    param_words: int = 256
    max_layers: int = 8
    #: "generic" (plain Amaranth multiply, any tool) or "ecp5" (MULT18X18D).
    dsp: str = "generic"

    def __post_init__(self):
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "row_splits", tuple(self.row_splits))
        _check_int("array.dim", self.dim, 2, 256)
        _check_int("array.block", self.block, 1, self.dim)
        if self.dim % self.block:
            raise ValueError(f"array.block: {self.block} does not divide "
                             f"array.dim {self.dim}")
        if not self.splits:
            raise ValueError("array.splits: needs at least one split factor, "
                             "not ()")
        if self.splits[0] != 1:
            raise ValueError(f"array.splits: must start with 1 (the whole "
                             f"array), not {self.splits!r}")
        self._check_factors("array.splits", self.splits, 1, "wide sub-arrays")
        self._check_factors("array.row_splits", self.row_splits, 2, "rows in a sub-array")
        _check_int("array.engines", self.engines, 1, self.sub_arrays)
        _check_int("array.acc_rows", self.acc_rows, 1, 65536)
        _check_int("array.max_rows", self.max_rows, 1, 65536)
        _check_int("array.max_dim", self.max_dim, 1, 65536)
        _check_int("array.weight_words", self.weight_words, self.dim, 1 << 24)
        _check_int("array.param_words", self.param_words, 1, 1 << 20)
        _check_int("array.max_layers", self.max_layers, 1, 256)
        if self.dsp not in ("generic", "ecp5"):
            raise ValueError(f"array.dsp: must be 'generic' or 'ecp5', "
                             f"not {self.dsp!r}")

    def _check_factors(self, name, factors, least, what):
        """Split factors: powers of two from ``least``, strictly increasing,
        each leaving a multiple of the block (``what``: of what)."""
        for f in factors:
            _check_int(name, f, least)
            if not _is_pow2(f):
                raise ValueError(f"{name}: {f} is not a power of two")
            if self.dim % (f * self.block):
                raise ValueError(f"{name}: split {f} gives {self.dim}/{f} {what}, not a "
                                 f"multiple of array.block {self.block}")
        if list(factors) != sorted(set(factors)):
            raise ValueError(f"{name}: must be strictly increasing, not {factors!r}")

    # -- derived values ---------------------------------------------------

    @property
    def max_split(self) -> int:
        return self.splits[-1]

    @property
    def modes(self) -> tuple[tuple[int, int], ...]:
        """``(row factor, column factor)`` of every mode, in ``SET_SPLIT``'s
        index order: ``(f, f)`` for each of ``splits``, then ``(f, 1)`` for
        each of ``row_splits``. Sub-array ``p`` of mode ``(r, c)`` has
        ``dim/r`` rows and ``dim/c`` columns, at block row ``p // c`` and
        block column ``p % c``."""
        return tuple((f, f) for f in self.splits) + tuple((f, 1) for f in self.row_splits)

    def mode(self, split) -> tuple[int, int]:
        """The mode ``split`` names: a square split factor ``f`` is ``(f, f)``;
        a ``(rows, columns)`` pair is itself. A ValueError if there is none."""
        mode = (split, split) if isinstance(split, int) else tuple(split)
        if mode not in self.modes:
            raise ValueError(f"split: {split!r} is not one of the array's modes "
                             f"(splits {list(self.splits)}, row splits "
                             f"{list(self.row_splits)})")
        return mode

    def mode_index(self, split) -> int:
        return self.modes.index(self.mode(split))

    @property
    def stages_mode(self) -> tuple[int, int]:
        """The mode two stages run side by side in (engines 0 and 1): the row
        split in two if there is one (each stage gets every column), else
        the coarsest square split."""
        return (2, 1) if 2 in self.row_splits else self.modes[1]

    def mode_sides(self, split) -> tuple[int, int]:
        """``(rows, columns)`` of a sub-array in mode ``split``: an input tile
        and an output tile (an activation word holds ``columns``)."""
        r, c = self.mode(split)
        return self.dim // r, self.dim // c

    @property
    def sub_arrays(self) -> int:
        """Stream ports on the array: one per sub-array of the mode with the most."""
        return max(r * c for r, c in self.modes)

    def engine_lanes(self, engine: int) -> int:
        """Width of sub-array port ``engine``: the most columns of that
        sub-array in any mode in which it exists."""
        widths = [self.dim // c for r, c in self.modes if engine < r * c]
        if not widths:
            raise ValueError(f"engine {engine} does not exist with modes {self.modes}")
        return max(widths)

    def act_words(self, engine: int) -> int:
        """Depth of one activation buffer of ``engine``."""
        return self.max_rows * ceil_div(self.max_dim, self.engine_lanes(engine))

    @property
    def psum_bits(self) -> int:
        """Width of the partial sums flowing down a column: an exact sum of
        ``dim`` int8 x int8 products."""
        return 16 + clog2(self.dim) + 1


@dataclass(frozen=True)
class TopKConfig:
    """The streaming top-k filter between stages.

    ``lanes`` (score, id) pairs enter per cycle; at the end of each list the
    best ``k`` (set per list, 1 .. ``k_max``) leave, best first. Scores are
    ``score_bits`` wide, signed or not; ids ``id_bits`` wide.
    """

    k_max: int = 64
    lanes: int = 1
    score_bits: int = 16
    signed: bool = True
    id_bits: int = 16

    def __post_init__(self):
        _check_int("topk.k_max", self.k_max, 1, 4096)
        _check_int("topk.lanes", self.lanes, 1, 64)
        if not _is_pow2(self.lanes):
            raise ValueError(f"topk.lanes: must be a power of two, not {self.lanes!r}")
        _check_int("topk.score_bits", self.score_bits, 2, 64)
        _check_int("topk.id_bits", self.id_bits, 1, 32)
        if not isinstance(self.signed, bool):
            raise ValueError(f"topk.signed: must be true or false, not {self.signed!r}")


@dataclass(frozen=True)
class StageConfig:
    """The top level's stage engine (:class:`hw.stage.StageEngine`): the
    largest "dot" stage it runs. ``dim`` is the embedding dimension (every
    interaction feature's length), ``max_users`` the user features (bottom
    output included), ``max_items`` the item tables, ``max_hidden`` the
    widest first top layer, ``max_pen`` the widest penultimate one;
    ``max_bottom`` the widest bottom MLP layer (its input included) and
    ``bottom_layers`` the most bottom layers (the bottom MLP unit beside the
    engine, :class:`hw.wide.RowMLP`: ``bottom_layers`` matrix-vector units
    of ``max_bottom`` squared weights); ``staging`` the engine commands
    staged while the engine runs the sub-batch before.

    ``stages`` is 1 or 2: with 2, a second stage engine of the same sizes
    re-ranks stage 1's survivors on MLP engine 1, both on the array's first
    split (RPAccel's stage overlap), and a query has at most
    ``max_candidates`` candidates (the survivors' buffer,
    :class:`hw.survivors.Survivors`; at most ``2 ** topk.id_bits``).

    ``fetch_depth`` is the bags a stage may have in flight in the feature
    fetch (:class:`hw.feature_fetch.FeatureFetch` and, with two stages,
    each stage's credits in :class:`hw.bag_arbiter.BagArbiter`, whose
    return FIFOs hold as many features): a bag a cycle needs as many as the
    cycles from a bag to its feature, the memory's latency and about 20
    more; more lets the next query's lookups go on while a stage still runs
    a query's candidates (``default``: 512, a query's candidates)."""

    dim: int = 16
    max_users: int = 3
    max_items: int = 1
    max_hidden: int = 64
    max_pen: int = 64
    max_bottom: int = 64
    bottom_layers: int = 2
    staging: int = 512
    stages: int = 1
    max_candidates: int = 1024
    fetch_depth: int = 64

    def __post_init__(self):
        _check_int("stage.dim", self.dim, 1, 4096)
        _check_int("stage.max_users", self.max_users, 1, 16)
        _check_int("stage.max_items", self.max_items, 1, 16)
        _check_int("stage.max_hidden", self.max_hidden, 1, 65536)
        _check_int("stage.max_pen", self.max_pen, 1, 65536)
        _check_int("stage.max_bottom", self.max_bottom, 1, 4096)
        _check_int("stage.bottom_layers", self.bottom_layers, 1, 16)
        _check_int("stage.staging", self.staging, 2, 65536)
        _check_int("stage.stages", self.stages, 1, 2)
        _check_int("stage.max_candidates", self.max_candidates, 1, 65536)
        _check_int("stage.fetch_depth", self.fetch_depth, 3, 4096)


@dataclass(frozen=True)
class EmbeddingConfig:
    """The embedding lookup unit (MicroRec): ``channels`` AXI4 read masters
    in front of HBM or DDR, ``onchip_banks`` on-chip banks for small tables,
    row-wise int8/int4 rows dequantized and sum-pooled.

    A row in memory (see :mod:`host.embedding`) is an 8-byte header (scale
    and bias, int32 little-endian, ``frac_bits`` fractional bits) followed by
    the codes (one byte per element for int8; two elements per byte, low
    nibble first, for int4), padded to whole ``data_bits`` beats; one AXI
    burst reads one row. Up to ``outstanding`` bursts are in flight per
    channel, each with its own AXI ID (so ``outstanding <= 2**id_bits``).
    """

    channels: int = 4           #: AXI4 read masters, 1 .. 32
    data_bits: int = 256        #: AXI data width: 64 .. 1024, a power of two
    addr_bits: int = 32         #: AXI address width
    id_bits: int = 8            #: AXI ID width
    #: Bursts in flight per channel, a power of two: at least the memory
    #: latency times the row rate (Little's law), e.g. 256 for 200 cycles at
    #: a one-beat row a cycle.
    outstanding: int = 256
    onchip_banks: int = 2       #: on-chip banks for small tables (0: none)
    onchip_words: int = 512     #: ``data_bits`` words per on-chip bank
    max_tables: int = 32        #: table descriptors
    max_dim: int = 64           #: elements per row (and per pooled vector)
    max_bag: int = 64           #: rows per bag
    frac_bits: int = 24         #: fractional bits of the row scale and bias
    #: Static cache rows per channel (0: none): rows the host pins, held on
    #: chip, ``static_ways``-way set-associative (so ``static_rows /
    #: static_ways`` sets, a power of two; the host places each pinned row).
    static_rows: int = 0
    static_ways: int = 4
    #: Dynamic cache per channel (``cache_sets`` or ``cache_ways`` 0: none):
    #: sets (a power of two) of ``cache_ways`` lines of one row each,
    #: replacement ``cache_policy``, "lru" or "plru" (tree pseudo-LRU).
    cache_sets: int = 0
    cache_ways: int = 4
    cache_policy: str = "lru"

    def __post_init__(self):
        _check_int("embedding.channels", self.channels, 1, 32)
        _check_int("embedding.data_bits", self.data_bits, 64, 1024)
        if not _is_pow2(self.data_bits):
            raise ValueError(f"embedding.data_bits: must be a power of two, not "
                             f"{self.data_bits!r}")
        _check_int("embedding.addr_bits", self.addr_bits, 12, 64)
        _check_int("embedding.id_bits", self.id_bits, 1, 16)
        _check_int("embedding.outstanding", self.outstanding, 1, 1024)
        if not _is_pow2(self.outstanding):
            raise ValueError(f"embedding.outstanding: must be a power of two, not "
                             f"{self.outstanding!r}")
        if self.outstanding > 1 << self.id_bits:
            raise ValueError(f"embedding.outstanding: {self.outstanding} bursts in "
                             f"flight need distinct AXI IDs, more than id_bits = "
                             f"{self.id_bits} gives")
        _check_int("embedding.onchip_banks", self.onchip_banks, 0, 64)
        _check_int("embedding.onchip_words", self.onchip_words, 16, 1 << 20)
        _check_int("embedding.max_tables", self.max_tables, 1, 4096)
        _check_int("embedding.max_dim", self.max_dim, 1, 4096)
        _check_int("embedding.max_bag", self.max_bag, 1, 1 << 16)
        _check_int("embedding.frac_bits", self.frac_bits, 0, 31)
        _check_int("embedding.static_rows", self.static_rows, 0, 1 << 20)
        _check_int("embedding.static_ways", self.static_ways, 1, 64)
        if self.static_rows and (self.static_rows % self.static_ways
                                 or not _is_pow2(self.static_rows // self.static_ways)):
            raise ValueError(f"embedding.static_rows: {self.static_rows} rows in "
                             f"{self.static_ways} ways must make a power-of-two number of "
                             f"sets")
        _check_int("embedding.cache_sets", self.cache_sets, 0, 1 << 20)
        _check_int("embedding.cache_ways", self.cache_ways, 0, 64)
        if self.cache_sets and not _is_pow2(self.cache_sets):
            raise ValueError(f"embedding.cache_sets: must be 0 or a power of two, not "
                             f"{self.cache_sets!r}")
        if self.cache_policy not in ("lru", "plru"):
            raise ValueError(f"embedding.cache_policy: must be 'lru' or 'plru', not "
                             f"{self.cache_policy!r}")
        if self.cache_policy == "plru" and self.cache_ways and not _is_pow2(self.cache_ways):
            raise ValueError(f"embedding.cache_ways: tree PLRU needs a power of two, not "
                             f"{self.cache_ways!r}")
        if self.max_row_beats > 256:
            raise ValueError(f"embedding.max_dim: a row of {self.max_dim} int8 elements "
                             f"takes {self.max_row_beats} beats, more than an AXI4 burst "
                             f"(256); lower max_dim or raise data_bits")
        stride = 1 << (self.max_row_beats - 1).bit_length()
        if stride * self.bus_bytes > 4096:
            raise ValueError(f"embedding.max_dim: a row of {self.max_dim} int8 elements "
                             f"spans {stride} beats of {self.bus_bytes} bytes apart, more "
                             f"than an AXI burst may (4 KiB); lower max_dim or data_bits")

    @property
    def bus_bytes(self) -> int:
        return self.data_bits // 8

    @property
    def static_sets(self) -> int:
        return self.static_rows // self.static_ways if self.static_rows else 0

    @property
    def dynamic_rows(self) -> int:
        """Lines of the dynamic cache (0: none)."""
        return self.cache_sets * self.cache_ways

    @property
    def cached(self) -> bool:
        """Whether the channels have a cache in front of them."""
        return bool(self.static_rows or self.dynamic_rows)

    def row_bytes(self, dim: int, bits: int) -> int:
        """Header and codes of one row of ``dim`` elements, ``bits`` 8 or 4."""
        if bits not in (4, 8):
            raise ValueError(f"bits: must be 8 or 4, not {bits!r}")
        return 8 + (dim if bits == 8 else ceil_div(dim, 2))

    def row_beats(self, dim: int, bits: int) -> int:
        """Bus beats (the AXI burst length) of one row."""
        return ceil_div(self.row_bytes(dim, bits), self.bus_bytes)

    @property
    def max_row_beats(self) -> int:
        return self.row_beats(self.max_dim, 8)

    #: Width of one dequantized element, code * scale + bias: an unsigned
    #: 8-bit code times an int32 scale plus an int32 bias fits 41 bits.
    value_bits = 41

    @property
    def acc_bits(self) -> int:
        """Width of a pooled element: an exact sum of ``max_bag`` values."""
        return self.value_bits + clog2(self.max_bag + 1)


@dataclass(frozen=True)
class Config:
    """A whole accelerator. See :class:`ArrayConfig` for the array fields."""

    name: str = "custom"
    #: Clock the design is built for, MHz: latency in microseconds is quoted
    #: at this clock and the constraint files are written for it.
    clock_mhz: float = 200.0
    array: ArrayConfig = field(default_factory=ArrayConfig)
    topk: TopKConfig = field(default_factory=TopKConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    stage: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self):
        for name, cls in (("array", ArrayConfig), ("topk", TopKConfig),
                          ("embedding", EmbeddingConfig), ("stage", StageConfig)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, _build(cls, getattr(self, name), name))
        st = self.stage
        if st.dim > self.embedding.max_dim:
            raise ValueError(f"stage.dim: {st.dim} is more than embedding.max_dim "
                             f"{self.embedding.max_dim}")
        if st.max_bottom < st.dim:
            raise ValueError(f"stage.max_bottom: {st.max_bottom} is less than stage.dim "
                             f"{st.dim} (the bottom MLP's output)")
        for f in ("max_hidden", "max_pen"):
            if getattr(st, f) > self.array.max_dim:
                raise ValueError(f"stage.{f}: {getattr(st, f)} is more than array.max_dim "
                                 f"{self.array.max_dim}")
        if st.stages == 2:
            if self.array.engines < 2 or len(self.array.modes) < 2:
                raise ValueError(f"stage.stages: 2 stages need array.engines >= 2 and a "
                                 f"split (array.splits {list(self.array.splits)!r}, "
                                 f"row_splits {list(self.array.row_splits)!r}, "
                                 f"engines {self.array.engines})")
            if st.max_candidates > 1 << self.topk.id_bits:
                raise ValueError(f"stage.max_candidates: {st.max_candidates} is more than "
                                 f"2 ** topk.id_bits = {1 << self.topk.id_bits}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty string, not "
                             f"{self.name!r}")
        if (not isinstance(self.clock_mhz, (int, float))
                or isinstance(self.clock_mhz, bool)
                or not 1 <= self.clock_mhz <= 2000):
            raise ValueError(f"clock_mhz: must be between 1 and 2000, not "
                             f"{self.clock_mhz!r}")

    # -- construction -----------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> "Config":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"preset: unknown preset {name!r}; known: "
                             f"{', '.join(PRESETS)}") from None

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return _build(cls, d, "")

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        with open(path, "rb") as f:
            d = tomllib.load(f)
        base = d.pop("preset", None)
        if base is not None:
            return cls.preset(base).replace(**d)
        return cls.from_dict(d)

    def replace(self, **changes) -> "Config":
        """A copy with fields changed; sections take a dict of their fields."""
        d = self.to_dict()
        for k, v in changes.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                d[k] = {**d[k], **v}
            else:
                d[k] = v
        return Config.from_dict(d)

    # -- serialization ----------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["array"]["splits"] = list(self.array.splits)
        d["array"]["row_splits"] = list(self.array.row_splits)
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        """The config with its derived values, as written beside the Verilog."""
        d = self.to_dict()
        a = self.array
        d["derived"] = {
            "sub_arrays": a.sub_arrays,
            "engine_lanes": [a.engine_lanes(e) for e in range(a.engines)],
            "act_words": [a.act_words(e) for e in range(a.engines)],
            "psum_bits": a.psum_bits,
            "embedding_bus_bytes": self.embedding.bus_bytes,
            "embedding_max_row_beats": self.embedding.max_row_beats,
            "embedding_acc_bits": self.embedding.acc_bits,
        }
        return json.dumps(d, indent=2) + "\n"

    def to_c_header(self) -> str:
        """``#define``s for a firmware or driver written in C."""
        a = self.array
        guard = "RECACCEL_CONFIG_H"
        lines = [f"/* Generated by recaccel from config {self.name!r}. */",
                 f"#ifndef {guard}", f"#define {guard}", "",
                 f"#define RECACCEL_CLOCK_MHZ {self.clock_mhz}"]
        for f in fields(ArrayConfig):
            v = getattr(a, f.name)
            if isinstance(v, int):
                lines.append(f"#define RECACCEL_ARRAY_{f.name.upper()} {v}")
        lines.append(f"#define RECACCEL_ARRAY_SPLITS {{{', '.join(map(str, a.splits))}}}")
        if a.row_splits:
            lines.append(f"#define RECACCEL_ARRAY_ROW_SPLITS "
                         f"{{{', '.join(map(str, a.row_splits))}}}")
        for f in fields(TopKConfig):
            v = getattr(self.topk, f.name)
            lines.append(f"#define RECACCEL_TOPK_{f.name.upper()} {int(v)}")
        for f in fields(EmbeddingConfig):
            v = getattr(self.embedding, f.name)
            if isinstance(v, str):          # cache_policy: one define per choice
                lines.append(f"#define RECACCEL_EMBEDDING_{f.name.upper()}_{v.upper()} 1")
            else:
                lines.append(f"#define RECACCEL_EMBEDDING_{f.name.upper()} {int(v)}")
        for f in fields(StageConfig):
            lines.append(f"#define RECACCEL_STAGE_{f.name.upper()} {getattr(self.stage, f.name)}")
        lines.append(f"#define RECACCEL_ARRAY_SUB_ARRAYS {a.sub_arrays}")
        lines += ["", f"#endif /* {guard} */", ""]
        return "\n".join(lines)


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where or 'config'}: must be a table, not {d!r}")
    known = {f.name for f in fields(cls)}
    for k in d:
        if k not in known:
            name = f"{where}.{k}" if where else k
            raise ValueError(f"{name}: unknown field (known: "
                             f"{', '.join(sorted(known))})")
    return cls(**d)


PRESETS: dict[str, Config] = {
    # Small enough that every cocotb build and test is quick.
    "tiny": Config(name="tiny", clock_mhz=100.0, array=ArrayConfig(
        dim=4, block=2, splits=(1, 2), row_splits=(2,), engines=4, acc_rows=16, max_rows=64,
        max_dim=64, weight_words=1024, param_words=64, max_layers=4),
        topk=TopKConfig(k_max=8, lanes=2, score_bits=8, id_bits=8),
        embedding=EmbeddingConfig(channels=2, data_bits=64, addr_bits=20, id_bits=3,
                                  outstanding=8, onchip_banks=1, onchip_words=64,
                                  max_tables=8, max_dim=16, max_bag=8),
        stage=StageConfig(dim=4, max_users=3, max_items=1, max_hidden=16, max_pen=16,
                          staging=64, fetch_depth=8)),
    # The demo: a 16x16 array that splits into 4 x 8x8 or into two halves of
    # 8 rows x 16 columns, the two stages side by side on the halves; per
    # channel a static cache of 384 rows (3 ways) and a dynamic one of 16
    # sets x 8 ways.
    "default": Config(name="default", clock_mhz=200.0, array=ArrayConfig(
        dim=16, block=4, splits=(1, 2), row_splits=(2,), engines=2, acc_rows=128,
        max_rows=512, max_dim=512, weight_words=16384, param_words=256,
        max_layers=8),
        embedding=EmbeddingConfig(static_rows=384, static_ways=3, cache_sets=16,
                                  cache_ways=8),
        stage=StageConfig(stages=2, max_candidates=512, fetch_depth=512)),
    # RPAccel's grid: 128x128 of 4x4 blocks, 1/4/16/64 sub-arrays.
    "rpaccel": Config(name="rpaccel", clock_mhz=1000.0, array=ArrayConfig(
        dim=128, block=4, splits=(1, 2, 4, 8), engines=4, acc_rows=512,
        max_rows=4096, max_dim=512, weight_words=65536, param_words=64,
        max_layers=8),
        topk=TopKConfig(k_max=512, lanes=4, score_bits=32, id_bits=16)),
    # Fits an ECP5-85F (156 MULT18X18D, 208 DP16KD) with the DSP primitive.
    "ecp5": Config(name="ecp5", clock_mhz=150.0, array=ArrayConfig(
        dim=8, block=4, splits=(1, 2), engines=2, acc_rows=64, max_rows=128,
        max_dim=256, weight_words=2048, param_words=64, max_layers=8,
        dsp="ecp5"),
        topk=TopKConfig(k_max=64, lanes=1, score_bits=16, id_bits=16),
        embedding=EmbeddingConfig(channels=1, data_bits=64, addr_bits=24, id_bits=4,
                                  outstanding=16, onchip_banks=1, onchip_words=512,
                                  max_tables=16, max_dim=32, max_bag=32)),
    # MicroRec on an Alveo U280: 32 HBM pseudo-channels of 256 bits, enough
    # bursts in flight per channel to cover ~300 cycles of latency at one
    # row per cycle or two, and on-chip banks for the small tables.
    "microrec-u280": Config(name="microrec-u280", clock_mhz=200.0, array=ArrayConfig(
        dim=16, block=4, splits=(1, 2), engines=2, acc_rows=128,
        max_rows=512, max_dim=512, weight_words=16384, param_words=256,
        max_layers=8),
        embedding=EmbeddingConfig(channels=32, data_bits=256, addr_bits=28, id_bits=8,
                                  outstanding=256, onchip_banks=8, onchip_words=4096,
                                  max_tables=64, max_dim=64, max_bag=64)),
}
