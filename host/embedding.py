"""Row-wise quantized embedding rows: formats and the bit-exact golden model
of the embedding lookup unit (lookup, dequantize, sum-pool). Pure NumPy.

Formats
-------
A table is held here as a :class:`RowwiseTable`: one unsigned code per
element (``bits`` 8 or 4) and a per-row ``scale`` and ``bias``, so that
element ``j`` of row ``r`` stands for ``scale[r] * codes[r, j] + bias[r]``.
It converts to and from these byte layouts (one row after another):

* FBGEMM fused 8-bit (``torch.ops.quantized.embedding_bag_byte_prepack``):
  ``dim`` codes, fp32 scale, fp32 bias; ``dim + 8`` bytes.
* FBGEMM fused 4-bit (``embedding_bag_4bit_prepack``): ``ceil(dim / 2)``
  bytes of codes, element ``2i`` in the low nibble of byte ``i``, then fp16
  scale, fp16 bias.
* FBGEMM TBE inference, "qparams first" (fbgemm_gpu
  ``IntNBitTableBatchedEmbeddingBagsCodegen`` with ``reverse_qparam=False``,
  its default): fp16 scale in bytes 0-1, fp16 bias in bytes 2-3, then the
  codes (int8: ``dim`` bytes; int4: ``dim / 2`` bytes, low nibble first),
  then zero padding to a multiple of ``row_alignment`` bytes (16 on GPU, 1
  on CPU). Source: fbgemm_gpu ``split_table_batched_embeddings_ops_common.py``
  (``DEFAULT_SCALE_BIAS_SIZE_IN_BYTES = 4``: "16-bit scale and bias"),
  ``split_table_batched_embeddings_ops_inference.py``
  (``unpadded_row_size_in_bytes``: INT8 ``dim + 4``, INT4 ``dim // 2 + 4``;
  ``rounded_row_size_in_bytes`` rounds up to ``row_alignment``;
  ``split_embedding_weights_with_scale_bias``: "[0:2] is scale; [2:4] is
  bias; [4:] is real weights"). Note that INT8 rows there carry fp16
  qparams, unlike the fused CPU 8-bit format.
* The hardware row (:class:`hw.config.EmbeddingConfig`): an 8-byte header,
  scale then bias, each int32 little-endian with ``frac_bits`` fractional
  bits (value ``q * 2**-frac_bits``), then the codes packed as in the fused
  formats, then zeros up to ``row_beats * bus_bytes`` bytes.

FBGEMM's quantizers are reproduced byte for byte (``quantize_8bit``,
``quantize_nbit``); ``tests/test_embedding_torch.py`` checks them against
torch.

Golden model
------------
For a row ``r`` with hardware scale ``s_q``, bias ``b_q`` and codes ``c``,
the lookup unit computes, exactly in integers::

    value_q[j]  = c[j] * s_q + b_q                 # 41 bits (value_bits)
    pooled_q[j] = sum of value_q[j] over the bag   # acc_bits, exact

in units of ``2**-frac_bits``. Integer addition is exact, so the order in
which a bag's rows arrive does not matter. A bag answers with a status
(:class:`EmbeddingStatus`) and, unless it is OK, a zero vector:

* ``BAD_BAG``: more than ``max_bag`` ids (checked first: the length is known
  before any id);
* ``BAD_ID``: an id outside ``0 .. rows-1`` (the unit reads nothing for the
  bag);
* ``BAD_TABLE`` (a table index without a descriptor) and ``MEM_ERROR``
  (the memory answered SLVERR/DECERR) arise in the lookup stream and the
  hardware; see :mod:`host.table_compiler`.

An empty bag is OK and pools to zero.

Optional int8 output: ``requantize_pooled`` maps a pooled sum to int8 with a
per-feature ``(mult, shift)``, rounding half up and saturating exactly as
:func:`host.numerics.requantize` does (without its bias and ReLU), but wide
enough for a whole ``acc_bits`` sum.

Error against FBGEMM
--------------------
FBGEMM's float result on the same rows is ``sum_r (s_r * c_rj + b_r)``
computed in fp32. The golden result differs from the exact real value of
that sum only through the rounding of scale and bias to fixed point
(round half even, so each is off by at most ``2**-(frac_bits+1)``)::

    |c * (s_q 2^-f - s) + (b_q 2^-f - b)| <= (c_max + 1) * 2**-(f+1)

per element, ``c_max = 2**bits - 1``, hence for a bag of ``L`` rows at most
``L * 2**bits * 2**-(f+1)``. FBGEMM's own fp32 evaluation rounds at most
twice per row (``acc + bias``, then ``fma(scale, code, .)``), each rounding
of a quantity no larger than ``L * m`` where ``m >= |s| * c_max + |b|``
bounds every row's values; so it is within ``gamma(2L) * L * m`` of the
exact value, ``gamma(k) = k u / (1 - k u)``, ``u = 2**-24``.
:func:`pooled_error_bound` returns the sum of the two terms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from .numerics import check_requant_params, round_shift
from .quantize import quantize_multiplier

__all__ = [
    "EmbeddingStatus", "RowwiseTable", "FixedPointTable",
    "quantize_8bit", "quantize_nbit", "fbgemm_byte_prepack", "fbgemm_4bit_prepack",
    "pack_fused", "unpack_fused", "pack_qparams_first", "unpack_qparams_first",
    "to_fixed_point", "pack_hw_rows", "unpack_hw_rows", "hw_row_stride",
    "bag_status", "pool_rows", "pooled_lookup", "float_pooled_lookup",
    "pooled_to_float", "requantize_pooled", "pooled_output_params",
    "row_magnitude", "pooled_error_bound",
]

#: fp32 unit roundoff, for the error bound of FBGEMM's fp32 pooling.
FP32_UNIT_ROUNDOFF = 2.0 ** -24
#: FBGEMM's epsilon in the 8-bit inverse scale, ``255 / (range + 1e-8)``.
_FBGEMM_EPSILON = np.float32(1e-8)


class EmbeddingStatus(enum.IntEnum):
    """Status of one bag, as the lookup unit answers it."""

    OK = 0
    BAD_ID = 1      #: an id past the end of its table (or negative)
    BAD_TABLE = 2   #: a table index without a valid descriptor
    BAD_BAG = 3     #: more than ``max_bag`` ids in the bag
    MEM_ERROR = 4   #: a read returned SLVERR or DECERR


def _check_bits(bits):
    if bits not in (4, 8):
        raise ValueError(f"bits: must be 8 or 4, not {bits!r}")


def _code_bytes(dim: int, bits: int) -> int:
    return dim if bits == 8 else -(-dim // 2)


@dataclass(frozen=True)
class RowwiseTable:
    """A row-wise quantized table, unpacked.

    Parameters
    ----------
    codes : uint8 array, (rows, dim)
        One unsigned code per element, below ``2**bits``.
    scale, bias : float32 arrays, (rows,)
        Per-row quantization parameters: element = scale * code + bias.
    bits : int
        8 or 4.
    """

    codes: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    bits: int

    def __post_init__(self):
        _check_bits(self.bits)
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or codes.dtype != np.uint8:
            raise ValueError(f"codes: must be a 2-D uint8 array, not {codes.dtype} "
                             f"{codes.shape}")
        if self.bits == 4 and codes.size and codes.max() > 15:
            raise ValueError("codes: a 4-bit table has a code above 15")
        for name in ("scale", "bias"):
            v = np.asarray(getattr(self, name), dtype=np.float32)
            if v.shape != (codes.shape[0],):
                raise ValueError(f"{name}: expected shape ({codes.shape[0]},), found "
                                 f"{v.shape}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "codes", codes)

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @property
    def dim(self) -> int:
        return self.codes.shape[1]

    def dequantize(self) -> np.ndarray:
        """FBGEMM's float rows, ``scale * code + bias`` in fp32."""
        return (self.codes.astype(np.float32) * self.scale[:, None]
                + self.bias[:, None])


# -- FBGEMM's quantizers -------------------------------------------------------

def _float_rows(weights) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights: must be 2-D (rows, dim), not {w.shape}")
    if w.shape[1] == 0:
        raise ValueError("weights: rows must have at least one element")
    w = w.astype(np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights: every element must be finite")
    return w


def quantize_8bit(weights) -> RowwiseTable:
    """Quantize float rows as FBGEMM's ``FloatToFused8BitRowwiseQuantizedSBFloat``.

    Per row, in fp32 (FBGEMM ``src/QuantUtils.cc`` and its AVX2 twin, which
    do the same operations): ``min``, ``max``, ``range = max - min``,
    ``scale = range / 255``, ``bias = min``, ``inv = 255 / (range + 1e-8)``
    and ``code = lrintf((x - min) * inv)`` (round half even, no clamp: the
    product never exceeds 255). A constant row gets scale 0 and codes 0.

    Parameters
    ----------
    weights : array-like, (rows, dim)
        Converted to float32 first, as torch requires.
    """
    w = _float_rows(weights)
    lo = w.min(axis=1)
    hi = w.max(axis=1)
    rng = hi - lo
    scale = rng / np.float32(255.0)
    inv = np.float32(255.0) / (rng + _FBGEMM_EPSILON)
    q = np.rint((w - lo[:, None]) * inv[:, None])
    # lrintf's int stored into a uint8: modulo 256 (in range in practice).
    codes = (q.astype(np.int64) & 0xFF).astype(np.uint8)
    return RowwiseTable(codes, scale, lo, 8)


def quantize_nbit(weights, bits: int) -> RowwiseTable:
    """Quantize float rows as FBGEMM's ``FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf``
    (fp16 scale and bias; torch's ``embedding_bag_4bit_prepack`` for 4 bits).

    Per row, in fp32: ``bias = fp16(min)`` and the minimum is replaced by
    that fp16 value; ``range = max - min``; ``scale = range / (2**bits - 1)``
    (1.0 when ``range == 0``), rounded to fp16; a scale of 0 or one whose
    reciprocal overflows becomes 1.0; ``code = clamp(lrintf((x - min) *
    (1 / scale)), 0, 2**bits - 1)``. fp16 rounding is to nearest even.

    Parameters
    ----------
    weights : array-like, (rows, dim)
    bits : int
        4 or 8.
    """
    _check_bits(bits)
    w = _float_rows(weights)
    qmax = (1 << bits) - 1
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        lo = w.min(axis=1)
        hi = w.max(axis=1)
        bias16 = lo.astype(np.float16)
        lo = bias16.astype(np.float32)
        rng = hi - lo
        scale = np.where(rng == 0, np.float32(1.0), rng / np.float32(qmax)).astype(np.float32)
        scale = scale.astype(np.float16).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        inv = np.float32(1.0) / scale
        bad = np.isinf(inv)
        scale = np.where(bad, np.float32(1.0), scale).astype(np.float32)
        inv = np.where(bad, np.float32(1.0), inv).astype(np.float32)
        q = np.rint((w - lo[:, None]) * inv[:, None])
    codes = np.clip(q, 0, qmax).astype(np.uint8)
    return RowwiseTable(codes, scale.astype(np.float16).astype(np.float32),
                        bias16.astype(np.float32), bits)


def fbgemm_byte_prepack(weights) -> np.ndarray:
    """The bytes of ``torch.ops.quantized.embedding_bag_byte_prepack(weights)``."""
    return pack_fused(quantize_8bit(weights))


def fbgemm_4bit_prepack(weights) -> np.ndarray:
    """The bytes of ``torch.ops.quantized.embedding_bag_4bit_prepack(weights)``
    (torch requires an even ``dim``; odd ones are packed here all the same,
    the last high nibble zero)."""
    return pack_fused(quantize_nbit(weights, 4))


# -- byte layouts -------------------------------------------------------------

def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], 1), np.uint8)], axis=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def _unpack_codes(data: np.ndarray, dim: int, bits: int) -> np.ndarray:
    if bits == 8:
        return np.ascontiguousarray(data[:, :dim])
    out = np.empty((data.shape[0], 2 * data.shape[1]), np.uint8)
    out[:, 0::2] = data & 0x0F
    out[:, 1::2] = data >> 4
    return np.ascontiguousarray(out[:, :dim])


def _as_fp16(v: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
    same = (h.astype(np.float32) == v) | (np.isnan(v) & np.isnan(h))
    if not np.all(same):
        r = int(np.argmin(same))
        raise ValueError(f"{what} of row {r} ({float(v[r])!r}) is not an fp16 value: "
                         f"this format stores fp16 scale and bias")
    return h


def _byte_rows(data, what: str) -> np.ndarray:
    d = np.asarray(data)
    if d.dtype != np.uint8 or d.ndim != 2:
        raise ValueError(f"{what}: must be a 2-D uint8 array (rows, row bytes), not "
                         f"{d.dtype} {d.shape}")
    return d


def pack_fused(table: RowwiseTable) -> np.ndarray:
    """FBGEMM's fused row-wise bytes, qparams last: 8-bit with fp32 scale and
    bias, 4-bit with fp16 scale and bias (``ValueError`` if they are not
    fp16 values)."""
    codes = _pack_codes(table.codes, table.bits)
    if table.bits == 8:
        qp = np.stack([table.scale, table.bias], axis=1).astype("<f4")
    else:
        qp = np.stack([_as_fp16(table.scale, "scale"), _as_fp16(table.bias, "bias")],
                      axis=1).astype("<f2")
    qp = qp.view(np.uint8).reshape(table.rows, -1)
    return np.ascontiguousarray(np.concatenate([codes, qp], axis=1))


def unpack_fused(data, bits: int, dim: int | None = None) -> RowwiseTable:
    """Read FBGEMM fused row-wise bytes (qparams last).

    Parameters
    ----------
    data : uint8 array, (rows, row bytes)
    bits : int
        8 (fp32 qparams, ``dim + 8`` bytes) or 4 (fp16 qparams,
        ``ceil(dim / 2) + 4`` bytes).
    dim : int, optional
        Elements per row; by default all the code bytes hold (``2 *
        (row bytes - 4)`` for 4 bits). Needed for an odd 4-bit ``dim``.
    """
    _check_bits(bits)
    d = _byte_rows(data, "fused rows")
    qbytes = 8 if bits == 8 else 4
    ncode = d.shape[1] - qbytes
    if dim is None:
        dim = ncode if bits == 8 else 2 * ncode
    if ncode < 1 or _code_bytes(dim, bits) != ncode:
        raise ValueError(f"fused {bits}-bit rows of {d.shape[1]} bytes do not hold "
                         f"{dim} elements")
    qp = np.ascontiguousarray(d[:, ncode:]).view("<f4" if bits == 8 else "<f2")
    return RowwiseTable(_unpack_codes(d[:, :ncode], dim, bits),
                        qp[:, 0].astype(np.float32), qp[:, 1].astype(np.float32), bits)


def pack_qparams_first(table: RowwiseTable, row_alignment: int = 16) -> np.ndarray:
    """FBGEMM TBE inference rows: fp16 scale, fp16 bias, codes, zero padding to
    a multiple of ``row_alignment`` bytes (see the module docstring)."""
    if not isinstance(row_alignment, int) or row_alignment < 1:
        raise ValueError(f"row_alignment: must be a positive integer, not {row_alignment!r}")
    qp = np.stack([_as_fp16(table.scale, "scale"), _as_fp16(table.bias, "bias")],
                  axis=1).astype("<f2").view(np.uint8).reshape(table.rows, 4)
    body = np.concatenate([qp, _pack_codes(table.codes, table.bits)], axis=1)
    pad = -body.shape[1] % row_alignment
    return np.ascontiguousarray(np.pad(body, ((0, 0), (0, pad))))


def unpack_qparams_first(data, dim: int, bits: int) -> RowwiseTable:
    """Read FBGEMM TBE inference rows (qparams first); any padding after the
    codes is ignored.

    Parameters
    ----------
    data : uint8 array, (rows, padded row bytes)
    dim : int
        Elements per row (the padding hides it).
    bits : int
        8 or 4.
    """
    _check_bits(bits)
    d = _byte_rows(data, "qparams-first rows")
    ncode = _code_bytes(dim, bits)
    if dim < 1 or d.shape[1] < 4 + ncode:
        raise ValueError(f"qparams-first rows of {d.shape[1]} bytes do not hold "
                         f"{dim} {bits}-bit elements")
    qp = np.ascontiguousarray(d[:, :4]).view("<f2")
    return RowwiseTable(_unpack_codes(d[:, 4:4 + ncode], dim, bits),
                        qp[:, 0].astype(np.float32), qp[:, 1].astype(np.float32), bits)


# -- the hardware row ---------------------------------------------------------

@dataclass(frozen=True)
class FixedPointTable:
    """A table as the hardware holds it: codes and int32 fixed-point qparams.

    ``scale_q`` and ``bias_q`` are int64 arrays of int32 values in units of
    ``2**-frac_bits``.
    """

    codes: np.ndarray
    scale_q: np.ndarray
    bias_q: np.ndarray
    bits: int
    frac_bits: int

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @property
    def dim(self) -> int:
        return self.codes.shape[1]


def _to_fixed(v: np.ndarray, frac_bits: int, what: str, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint(np.asarray(v, dtype=np.float64) * 2.0 ** frac_bits)
    ok = np.isfinite(q) & (q >= -(1 << 31)) & (q <= (1 << 31) - 1)
    if not np.all(ok):
        r = int(np.argmin(ok))
        raise ValueError(
            f"table {name!r}, row {r}: {what} {float(v[r])!r} does not fit an int32 "
            f"with frac_bits = {frac_bits} (|{what}| must stay below "
            f"{2.0 ** (31 - frac_bits):g}); lower embedding.frac_bits")
    return q.astype(np.int64)


def to_fixed_point(table: RowwiseTable, frac_bits: int, name: str = "") -> FixedPointTable:
    """Scale and bias to int32 with ``frac_bits`` fractional bits.

    ``q = rint(v * 2**frac_bits)`` in float64, which is exact for fp32 and
    fp16 inputs up to the final rounding (half to even).

    Raises
    ------
    ValueError
        Naming the table and row whose scale or bias does not fit int32.
    """
    if not isinstance(frac_bits, int) or not 0 <= frac_bits <= 31:
        raise ValueError(f"frac_bits: must be an integer in 0..31, not {frac_bits!r}")
    return FixedPointTable(table.codes, _to_fixed(table.scale, frac_bits, "scale", name),
                           _to_fixed(table.bias, frac_bits, "bias", name),
                           table.bits, frac_bits)


def hw_row_stride(cfg, dim: int, bits: int) -> int:
    """Bytes from one hardware row to the next: ``row_beats * bus_bytes``."""
    return cfg.row_beats(dim, bits) * cfg.bus_bytes


def pack_hw_rows(table: FixedPointTable, cfg) -> np.ndarray:
    """Hardware rows: (rows, ``row_beats * bus_bytes``) uint8.

    Parameters
    ----------
    table : FixedPointTable
        Its ``frac_bits`` must be ``cfg.frac_bits``.
    cfg : hw.config.EmbeddingConfig
    """
    if table.frac_bits != cfg.frac_bits:
        raise ValueError(f"table has frac_bits {table.frac_bits}, the config "
                         f"{cfg.frac_bits}")
    head = np.stack([table.scale_q, table.bias_q], axis=1).astype("<i4")
    head = head.view(np.uint8).reshape(table.rows, 8)
    body = np.concatenate([head, _pack_codes(table.codes, table.bits)], axis=1)
    stride = hw_row_stride(cfg, table.dim, table.bits)
    return np.ascontiguousarray(np.pad(body, ((0, 0), (0, stride - body.shape[1]))))


def unpack_hw_rows(data, dim: int, bits: int, frac_bits: int) -> FixedPointTable:
    """Read hardware rows (the padding after the codes is ignored)."""
    _check_bits(bits)
    d = _byte_rows(data, "hardware rows")
    ncode = _code_bytes(dim, bits)
    if d.shape[1] < 8 + ncode:
        raise ValueError(f"hardware rows of {d.shape[1]} bytes do not hold {dim} "
                         f"{bits}-bit elements")
    head = np.ascontiguousarray(d[:, :8]).view("<i4").astype(np.int64)
    return FixedPointTable(_unpack_codes(d[:, 8:8 + ncode], dim, bits),
                           head[:, 0], head[:, 1], bits, frac_bits)


# -- golden pooling -----------------------------------------------------------

def _check_csr(offsets, ids):
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if offsets.size < 1 or offsets[0] != 0 or offsets[-1] != ids.size \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets: must rise from 0 to len(ids) = {ids.size}, with "
                         f"one more entry than there are bags")
    return offsets, ids


def bag_status(offsets, ids, rows: int, max_bag: int) -> np.ndarray:
    """Status of each bag: BAD_BAG if longer than ``max_bag``, else BAD_ID if
    an id is outside ``0 .. rows-1``, else OK. uint8, one per bag."""
    offsets, ids = _check_csr(offsets, ids)
    n = offsets.size - 1
    lengths = np.diff(offsets)
    bad = ((ids < 0) | (ids >= rows)).astype(np.int64)
    bad_in_bag = np.add.reduceat(np.append(bad, 0), offsets[:-1])[:n] if n else bad[:0]
    bad_in_bag = np.where(lengths > 0, bad_in_bag, 0)
    status = np.full(n, EmbeddingStatus.OK, np.uint8)
    status[bad_in_bag > 0] = EmbeddingStatus.BAD_ID
    status[lengths > max_bag] = EmbeddingStatus.BAD_BAG
    return status


def pool_rows(codes, scale_q, bias_q, offsets, status=None) -> np.ndarray:
    """Sum-pool already gathered rows, exactly.

    Parameters
    ----------
    codes : uint8 (n, dim); scale_q, bias_q : int (n,)
        One entry per lookup, in bag order.
    offsets : int (bags + 1,)
        Bag ``k`` is lookups ``offsets[k] .. offsets[k+1]-1``.
    status : uint8 (bags,), optional
        Bags not OK pool to zero.

    Returns
    -------
    int64 (bags, dim), units of ``2**-frac_bits``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n_bags = offsets.size - 1
    codes = np.asarray(codes)
    values = (codes.astype(np.int64) * np.asarray(scale_q, np.int64)[:, None]
              + np.asarray(bias_q, np.int64)[:, None])
    out = np.zeros((n_bags, codes.shape[1]), np.int64)
    lengths = np.diff(offsets)
    full = np.flatnonzero(lengths > 0)
    if full.size:
        # reduceat over non-empty bags only: each sums up to the next start.
        out[full] = np.add.reduceat(values, offsets[full], axis=0)
    if status is not None:
        out[np.asarray(status) != EmbeddingStatus.OK] = 0
    return out


def pooled_lookup(table: FixedPointTable, offsets, ids, max_bag: int):
    """The lookup unit on one table: pooled vectors and statuses of bags.

    Parameters
    ----------
    table : FixedPointTable
    offsets : int array (bags + 1,)
        CSR offsets into ``ids``.
    ids : int array
        Row ids.
    max_bag : int
        Longest bag the unit accepts.

    Returns
    -------
    pooled : int64 (bags, dim)
        Exact sums in units of ``2**-frac_bits``; zero for bags not OK.
    status : uint8 (bags,)
        :class:`EmbeddingStatus` values.
    """
    offsets, ids = _check_csr(offsets, ids)
    status = bag_status(offsets, ids, table.rows, max_bag)
    safe = np.where((ids >= 0) & (ids < table.rows), ids, 0)
    if table.rows == 0:
        return np.zeros((offsets.size - 1, table.dim), np.int64), status
    pooled = pool_rows(table.codes[safe], table.scale_q[safe], table.bias_q[safe],
                       offsets, status)
    return pooled, status


def float_pooled_lookup(table: RowwiseTable, offsets, ids) -> np.ndarray:
    """The exact real-number pooled sums of FBGEMM's rows (float64, whose
    rounding is negligible here): the reference for the error bound. Ids must
    be valid."""
    offsets, ids = _check_csr(offsets, ids)
    vals = (table.codes[ids].astype(np.float64) * table.scale[ids, None].astype(np.float64)
            + table.bias[ids, None].astype(np.float64))
    out = np.zeros((offsets.size - 1, table.dim))
    full = np.flatnonzero(np.diff(offsets) > 0)
    if full.size:
        out[full] = np.add.reduceat(vals, offsets[full], axis=0)
    return out


def pooled_to_float(pooled, frac_bits: int) -> np.ndarray:
    """Pooled fixed-point sums as float64 (``pooled * 2**-frac_bits``)."""
    return np.asarray(pooled, dtype=np.float64) * 2.0 ** -frac_bits


def requantize_pooled(pooled, mult, shift) -> np.ndarray:
    """Pooled sums to int8: ``clamp((p * mult + 2**(shift-1)) >> shift, -128, 127)``.

    The rounding (half up, towards +inf; none when ``shift == 0``) and
    saturation are :func:`host.numerics.requantize`'s, with no bias or ReLU;
    the product is exact for any ``acc_bits`` sum (Python integers take over
    where int64 could overflow).

    Parameters
    ----------
    pooled : int (..., dim)
    mult : int, scalar or (dim,)
        1 .. 65535.
    shift : int, scalar or (dim,)
        0 .. 63.
    """
    p = np.asarray(pooled, dtype=np.int64)
    mult, shift = np.broadcast_arrays(*check_requant_params(mult, shift))
    peak = int(np.abs(p).max(initial=0)) * int(mult.max(initial=1))
    # Python integers where the product could overflow int64.
    prod = p * mult if peak < 1 << 62 else p.astype(object) * mult.astype(object)
    r = round_shift(prod, shift)
    return np.clip(r, -128, 127).astype(np.int8)


def pooled_output_params(output_scale, frac_bits: int):
    """``(mult, shift)`` so that ``requantize_pooled`` gives ``round(x /
    output_scale)`` for a pooled float value ``x``: the real multiplier is
    ``2**-frac_bits / output_scale`` (:func:`host.quantize.quantize_multiplier`).

    Parameters
    ----------
    output_scale : float or (dim,) floats
        The int8 output's step; e.g. ``max|pooled| / 127``.
    frac_bits : int
    """
    real = 2.0 ** -frac_bits / np.asarray(output_scale, dtype=np.float64)
    return quantize_multiplier(real)


def row_magnitude(table: RowwiseTable) -> np.ndarray:
    """Per row, ``|scale| * (2**bits - 1) + |bias|``: bounds every value the
    row can hold (the ``magnitude`` of :func:`pooled_error_bound`)."""
    return (np.abs(table.scale.astype(np.float64)) * ((1 << table.bits) - 1)
            + np.abs(table.bias.astype(np.float64)))


def pooled_error_bound(bits: int, frac_bits: int, bag_len, magnitude) -> np.ndarray:
    """Largest difference between the golden pooled value (as a real number)
    and FBGEMM's fp32 pooled result on the same rows.

    ``bag_len * 2**bits * 2**-(frac_bits+1)`` (fixed-point scale and bias)
    plus ``gamma(2 bag_len) * bag_len * magnitude`` (FBGEMM's fp32
    arithmetic, ``gamma(k) = k u / (1 - k u)``, ``u = 2**-24``); see the
    module docstring for the derivation.

    Parameters
    ----------
    bits : int
        8 or 4.
    frac_bits : int
    bag_len : int or int array
        Rows in the bag.
    magnitude : float or float array
        A bound on ``|scale| * (2**bits - 1) + |bias|`` over the bag's rows
        (:func:`row_magnitude`).
    """
    _check_bits(bits)
    L = np.asarray(bag_len, dtype=np.float64)
    m = np.asarray(magnitude, dtype=np.float64)
    fixed = L * 2.0 ** bits * 2.0 ** -(frac_bits + 1)
    ku = 2.0 * L * FP32_UNIT_ROUNDOFF
    return fixed + ku / (1.0 - ku) * L * m
