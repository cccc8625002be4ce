"""The wire format between the host driver and the accelerator: frames of
64-bit words, the commands, their payloads and the device's answers. Pure
Python and NumPy; no simulator or Amaranth import, so that a driver, a
golden device (:mod:`host.driver`) and a testbench can all share it.

Frames
------
A frame is a sequence of 64-bit words, each sent little-endian (byte 0 of a
word is its bits 0-7), so a frame of ``n`` words is ``8 n`` bytes. Frames are
delimited by the transport (AXI4-Stream ``TLAST`` on the device; one
``bytes`` object per frame in software), never by scanning the data. Word 0
is the header::

    bits  0- 7  opcode        (Opcode; the answer repeats the command's)
    bits  8-15  status        (Status; 0 in every command)
    bits 16-31  tag           (chosen by the host, echoed in the answer)
    bits 32-55  length        (payload words that follow the header)
    bits 56-63  magic         (MAGIC = 0xA5)

so a frame is ``1 + length`` words and a payload is at most
``MAX_PAYLOAD_WORDS`` (2**24 - 1) words (128 MiB); larger loads are sent in
chunks (``LOAD_TABLES`` carries a first row). Every command gets exactly one
answer, with the same opcode and tag and a :class:`Status`; the host matches
answers to commands by tag, and answers may leave in another order than the
commands came (a query waits for the array, a ``PING`` does not).

Validation (:func:`decode_frame`) is strict, and each failure is a
:class:`ProtocolError` carrying the status the device answers with:

================================  ====================  ===========================
what is wrong                     status                answer's opcode / tag
================================  ====================  ===========================
fewer than 8 bytes (no header)    ``MALFORMED_FRAME``   0 (``NONE``) / 0
magic is not ``MAGIC``            ``MALFORMED_FRAME``   0 (``NONE``) / 0
bytes not a multiple of 8         ``MALFORMED_FRAME``   the header's
length differs from the words     ``MALFORMED_FRAME``   the header's
a command with status != 0        ``MALFORMED_FRAME``   the header's
opcode not a command              ``UNKNOWN_COMMAND``   0 (``NONE``) / the header's
payload does not parse            ``BAD_PAYLOAD``       the command's
================================  ====================  ===========================

(A header whose magic is wrong cannot be trusted, so its tag is not echoed;
an answer never carries an opcode that is not a command's, so that the
host can always decode it.)
Then the device's own checks: ``BAD_ID`` (a slot, table, row or item id out
of range), ``NOT_LOADED`` (a query or a stage configuration before the
weights and tables it needs), ``BAD_CONFIG`` (stages that cannot run), and
``DEVICE_ERROR`` (a well-formed command the device failed on: a bug,
reported rather than a hang). The payload of every error answer is a text
record (below) saying what was wrong. An error answers one frame only: the
device goes on serving the frames that follow.

Payload records
---------------
Inside payloads, besides plain words:

* u32 arrays: two values per word, the lower-indexed value in bits 0-31, the
  last word zero-padded (ids: every table has at most 2**32 rows);
* f64 values: one IEEE-754 binary64 per word (dense features go as the host
  has them, so the device quantizes them exactly as the golden model does);
* text: a word with the byte count, then UTF-8 bytes, zero-padded to words;
* tensor: a word ``dtype code | ndim << 8``, ``ndim`` words of shape, then
  the elements in C order, little-endian, packed and zero-padded to words
  (:data:`DTYPES`: 1 int8, 2 uint8, 3 int16, 4 uint16, 5 int32, 6 uint32,
  7 int64, 8 uint64, 9 float32, 10 float64).

A reader (:class:`PayloadReader`) refuses a record that runs past the payload
and a payload with words left over (``BAD_PAYLOAD``).

Commands (payloads; answers carry an empty payload unless said)
---------------------------------------------------------------
``PING``: empty. Answer: ``[VERSION]``.

``LOAD_WEIGHTS`` (:func:`encode_weights`): ``[slot, WEIGHTS_FORMAT]``, a text
record of JSON metadata (the stage config as
:meth:`host.models.StageModelConfig.to_dict`, ``emb_bits``, ``frac_bits``,
``max_bag``, the score format, the bottom MLP's input and output scales and
the ReLU flags), a word with the tensor count, then per tensor a text record
(its name) and a tensor record: ``bottom.<l>.{weight,bias,mult,shift}``,
``user.{weight,bias,mult,shift}`` (the first top layer's user rows, when the
stage has them), ``top.<l>.{weight,bias,mult,shift}``, ``emb_mult``,
``emb_shift``, ``pair_mult``, ``pair_shift`` and the float scales
``emb_scale``, ``pair_scale``, ``top_in_scale`` (metadata: no integer the
device computes depends on them). All of
:class:`host.models.QuantizedStageModel` but its tables, which
``LOAD_TABLES`` sends. Loading a slot drops its tables and any stage
configuration that uses it. ``WEIGHTS_FORMAT`` 1 is this golden form; the
hardware command processor will take the compiled MLP program
(:mod:`host.mlp_program`) as another format number, and answers
``BAD_PAYLOAD`` to a format it does not know.

``LOAD_TABLES`` (:func:`encode_table_chunk`): ``[slot, table, first_row,
n_rows]``, then tensors ``codes`` uint8 ``(n_rows, dim)`` (one code per
element, also for 4-bit tables), ``scale_q`` and ``bias_q`` int32
``(n_rows,)`` (the hardware's fixed-point row parameters,
:class:`host.embedding.FixedPointTable`). Rows of a table may come in any
number of chunks; a table is loaded once every row has come.

``LOAD_CACHE`` (:func:`encode_cache`): ``[slot, n]``, u32 table indices
``(n,)``, u32 rows ``(n,)``: the rows to pin in the static cache. The device
checks them (``BAD_ID``) and keeps them; they never change an answer.

``CONFIGURE_STAGES`` (:func:`encode_stages`): ``[n_stages]`` then ``[slot,
keep]`` per stage, in pipeline order (:class:`host.pipeline.PipelineSpec`:
stage ``s`` keeps its best ``keep``; the last ``keep`` is the answer's
length). Every slot needs its weights and all its tables (``NOT_LOADED``).

``SUBMIT_QUERY`` (:func:`encode_query`): ``[n_dense, n_user_bags,
n_candidates, n_item_tables]``, ``n_dense`` f64 dense features, u32 bag
lengths ``(n_user_bags,)``, the u32 ids of all the bags one after the other,
u32 item ids ``(n_candidates, n_item_tables)`` candidate-major. A
candidate's position in this list is its id for the top-k filter (the tie
rule: equal scores, lower position first, :mod:`host.pipeline`). Answer
(:func:`encode_result`): ``[k]`` then per result ``[position, score]``
(score as a two's-complement int64), best first, in
:func:`host.pipeline.run_pipeline`'s order.

``READ_COUNTERS``: empty. Answer (:func:`encode_counters`): one word per name
of :data:`COUNTERS`, in that order.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .embedding import FixedPointTable, RowwiseTable
from .models import QuantizedStageModel, ScoreFormat, StageModelConfig
from .numerics import QuantLayer
from .quantize import QuantizedMLP

__all__ = ["MAGIC", "VERSION", "WORD_BYTES", "MAX_PAYLOAD_WORDS", "MAX_TAG",
           "WEIGHTS_FORMAT", "COUNTERS", "DTYPES", "Opcode", "Status", "ProtocolError",
           "Frame", "encode_header", "decode_header", "encode_frame", "decode_frame",
           "PayloadWriter", "PayloadReader", "error_text",
           "QueryPayload", "encode_query", "decode_query", "encode_result", "decode_result",
           "encode_counters", "decode_counters", "encode_stages", "decode_stages",
           "encode_cache", "decode_cache", "TableChunk", "encode_table_chunk",
           "decode_table_chunk", "StageWeights", "encode_weights", "decode_weights",
           "table_chunks", "build_stage"]

MAGIC = 0xA5
VERSION = 1
WORD_BYTES = 8
MAX_PAYLOAD_WORDS = (1 << 24) - 1
MAX_TAG = (1 << 16) - 1
#: ``LOAD_WEIGHTS`` format 1: the golden model's tensors by name (module docstring).
WEIGHTS_FORMAT = 1
#: ``READ_COUNTERS`` answer, one word each, in this order. ``cache_hits`` and
#: ``cache_misses``: embedding rows found in the static or dynamic caches and
#: rows read from memory instead (0 on a device without caches; the golden
#: device models none). The hardware sums per-channel counts that each wrap
#: at 2**32. ``s<n>_bottom_cycles``, ``_user_cycles``, ``_items_cycles``:
#: cycles stage ``n`` spent waiting for a query's bottom MLP (on its own
#: unit, which runs ahead), its user side (user
#: features, pairs and pass, top layer descriptors) and its candidates (to
#: the hand-over to the next query, and while only a handed-over query's
#: last scores are still coming); ``s<n>_engine_cycles``: cycles its MLP engine was busy (0 for
#: a stage the device does not have; the golden device counts no cycles).
COUNTERS = ("frames", "queries", "errors", "candidates", "macs", "lookup_bytes",
            "busy_cycles", "cache_hits", "cache_misses",
            *(f"s{s}_{n}" for s in (1, 2)
              for n in ("bottom_cycles", "user_cycles", "items_cycles", "engine_cycles")))

_U64 = np.dtype("<u8")
_U32 = np.dtype("<u4")

#: Tensor dtype codes.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("i1"), 2: np.dtype("u1"), 3: np.dtype("<i2"), 4: np.dtype("<u2"),
    5: np.dtype("<i4"), 6: np.dtype("<u4"), 7: np.dtype("<i8"), 8: np.dtype("<u8"),
    9: np.dtype("<f4"), 10: np.dtype("<f8")}
_DTYPE_CODES = {(d.kind, d.itemsize): c for c, d in DTYPES.items()}

_MAX_DIMS = 8
_MAX_COUNT = 1 << 24        # bags, tables, candidates, dense features per query


class Opcode(enum.IntEnum):
    """Commands. ``NONE`` is never a command: it is the opcode of the answer
    to a frame whose header could not be read."""

    NONE = 0
    PING = 1
    LOAD_WEIGHTS = 2
    LOAD_TABLES = 3
    LOAD_CACHE = 4
    CONFIGURE_STAGES = 5
    SUBMIT_QUERY = 6
    READ_COUNTERS = 7


class Status(enum.IntEnum):
    """Answer statuses (module docstring: which check gives which)."""

    OK = 0
    MALFORMED_FRAME = 1
    UNKNOWN_COMMAND = 2
    BAD_PAYLOAD = 3
    BAD_ID = 4
    NOT_LOADED = 5
    BAD_CONFIG = 6
    DEVICE_ERROR = 7


class ProtocolError(ValueError):
    """A frame or payload the protocol refuses; ``status`` is what the device
    answers, ``opcode`` and ``tag`` what the answer carries."""

    def __init__(self, status: Status, message: str, *, opcode: int = 0, tag: int = 0):
        super().__init__(f"{Status(status).name}: {message}")
        self.status = Status(status)
        self.message = message
        self.opcode = int(opcode)
        self.tag = int(tag)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(Status.BAD_PAYLOAD, message)


# -- frames ---------------------------------------------------------------------------

def _as_words(payload) -> np.ndarray:
    if isinstance(payload, np.ndarray):
        if payload.ndim != 1:
            raise ValueError(f"payload: must be 1-D, not shape {payload.shape}")
        if payload.dtype.kind == "u" or (payload.dtype.kind == "i" and
                                         (payload.size == 0 or payload.min() >= 0)):
            return payload.astype(_U64)
        raise ValueError(f"payload: words must be unsigned 64-bit, not {payload.dtype}")
    out = np.empty(len(payload), _U64)
    for i, w in enumerate(payload):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) \
                or not 0 <= int(w) < 1 << 64:
            raise ValueError(f"payload[{i}]: must be an integer in 0..2**64-1, not {w!r}")
        out[i] = int(w)
    return out


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame: ``opcode``, ``tag``, ``status`` and the payload words
    (a read-only uint64 array)."""

    opcode: int
    tag: int
    status: int = Status.OK
    payload: np.ndarray = field(default_factory=lambda: np.zeros(0, _U64))

    def __post_init__(self):
        for name, hi in (("opcode", 255), ("status", 255), ("tag", MAX_TAG)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= hi:
                raise ValueError(f"frame {name}: must be an integer in 0..{hi}, not {v!r}")
        op = Opcode(self.opcode) if self.opcode in Opcode._value2member_map_ else int(self.opcode)
        st = Status(self.status) if self.status in Status._value2member_map_ else int(self.status)
        object.__setattr__(self, "opcode", op)
        object.__setattr__(self, "status", st)
        object.__setattr__(self, "tag", int(self.tag))
        words = _as_words(self.payload)
        if words.size > MAX_PAYLOAD_WORDS:
            raise ValueError(f"frame payload: {words.size} words, more than "
                             f"{MAX_PAYLOAD_WORDS}")
        words.setflags(write=False)
        object.__setattr__(self, "payload", words)

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.opcode == other.opcode and self.tag == other.tag
                and self.status == other.status
                and np.array_equal(self.payload, other.payload))

    __hash__ = None

    def __repr__(self):
        op = self.opcode.name if isinstance(self.opcode, Opcode) else self.opcode
        st = self.status.name if isinstance(self.status, Status) else self.status
        return f"Frame({op}, tag={self.tag}, status={st}, {self.payload.size} words)"


def encode_header(opcode: int, tag: int, status: int, length: int) -> int:
    """The header word (module docstring)."""
    return (int(opcode) | int(status) << 8 | int(tag) << 16 | int(length) << 32
            | MAGIC << 56)


def decode_header(word: int) -> tuple[int, int, int, int, int]:
    """``(opcode, tag, status, length, magic)`` of a header word."""
    word = int(word)
    return (word & 0xFF, (word >> 16) & 0xFFFF, (word >> 8) & 0xFF,
            (word >> 32) & 0xFFFFFF, word >> 56)


def encode_frame(frame: Frame) -> bytes:
    """The frame's bytes: header and payload words, little-endian."""
    head = encode_header(frame.opcode, frame.tag, frame.status, frame.payload.size)
    return np.concatenate([np.array([head], _U64), frame.payload]).astype(_U64).tobytes()


def decode_frame(data, *, response: bool = False) -> Frame:
    """Parse and check one frame (module docstring); a command unless
    ``response``.

    Raises
    ------
    ProtocolError
        With the status the device answers a bad frame with.
    TypeError
        If ``data`` is not bytes-like (a caller's bug, not a wire error).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"frame: must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < WORD_BYTES:
        raise ProtocolError(Status.MALFORMED_FRAME,
                            f"a frame of {len(data)} bytes has no header word")
    opcode, tag, status, length, magic = decode_header(
        int.from_bytes(data[:WORD_BYTES], "little"))
    if magic != MAGIC:
        raise ProtocolError(Status.MALFORMED_FRAME,
                            f"header magic is {magic:#04x}, not {MAGIC:#04x}")
    where = dict(opcode=opcode, tag=tag)
    if len(data) % WORD_BYTES:
        raise ProtocolError(Status.MALFORMED_FRAME,
                            f"a frame of {len(data)} bytes is not whole 64-bit words", **where)
    words = len(data) // WORD_BYTES - 1
    if words != length:
        raise ProtocolError(Status.MALFORMED_FRAME,
                            f"header says {length} payload words, the frame has {words}",
                            **where)
    if response:
        if status not in Status._value2member_map_:
            raise ProtocolError(Status.MALFORMED_FRAME, f"unknown status {status}", **where)
        if opcode not in Opcode._value2member_map_:
            raise ProtocolError(Status.UNKNOWN_COMMAND, f"unknown opcode {opcode}", **where)
    else:
        if status != 0:
            raise ProtocolError(Status.MALFORMED_FRAME,
                                f"a command's status field must be 0, not {status}", **where)
        if opcode == Opcode.NONE or opcode not in Opcode._value2member_map_:
            raise ProtocolError(Status.UNKNOWN_COMMAND, f"opcode {opcode} is not a command",
                                **where)
    payload = np.frombuffer(data, _U64, offset=WORD_BYTES)
    return Frame(opcode, tag, status, payload)


# -- payload records ------------------------------------------------------------------

def _pad_words(raw: bytes) -> np.ndarray:
    raw = raw + bytes(-len(raw) % WORD_BYTES)
    return np.frombuffer(raw, _U64)


class PayloadWriter:
    """Builds a payload from records (module docstring)."""

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def word(self, *values) -> "PayloadWriter":
        self._parts.append(_as_words(list(values)))
        return self

    def u32(self, values) -> "PayloadWriter":
        v = np.asarray(values).reshape(-1)
        if v.size and (v.dtype.kind not in "iu" or v.min() < 0 or int(v.max()) >= 1 << 32):
            raise ValueError("u32 array: values must be integers in 0..2**32-1")
        self._parts.append(_pad_words(v.astype(_U32).tobytes()))
        return self

    def f64(self, values) -> "PayloadWriter":
        self._parts.append(np.asarray(values, "<f8").reshape(-1).view(_U64))
        return self

    def text(self, s: str) -> "PayloadWriter":
        raw = s.encode("utf-8")
        self._parts.append(np.array([len(raw)], _U64))
        self._parts.append(_pad_words(raw))
        return self

    def tensor(self, array) -> "PayloadWriter":
        a = np.asarray(array)
        code = _DTYPE_CODES.get((a.dtype.kind, a.dtype.itemsize))
        if code is None or a.dtype.kind == "b":
            raise ValueError(f"tensor: no wire dtype for {a.dtype}")
        if a.ndim > _MAX_DIMS:
            raise ValueError(f"tensor: at most {_MAX_DIMS} dimensions, not {a.ndim}")
        self._parts.append(np.array([code | a.ndim << 8, *a.shape], _U64))
        self._parts.append(_pad_words(np.ascontiguousarray(a, DTYPES[code]).tobytes()))
        return self

    def words(self) -> np.ndarray:
        return np.concatenate(self._parts).astype(_U64) if self._parts else np.zeros(0, _U64)


class PayloadReader:
    """Reads records off a payload; anything that does not fit raises
    :class:`ProtocolError` (``BAD_PAYLOAD``) naming ``what``."""

    def __init__(self, payload, what: str):
        self._w = np.asarray(payload, _U64)
        self._at = 0
        self.what = what

    @property
    def left(self) -> int:
        return self._w.size - self._at

    def _take(self, n: int, thing: str) -> np.ndarray:
        if n < 0 or n > self.left:
            raise _bad(f"{self.what}: {thing} needs {n} words, {self.left} are left")
        out = self._w[self._at:self._at + n]
        self._at += n
        return out

    def word(self, thing: str = "a word") -> int:
        return int(self._take(1, thing)[0])

    def count(self, thing: str, hi: int = _MAX_COUNT) -> int:
        v = self.word(thing)
        if v > hi:
            raise _bad(f"{self.what}: {thing} = {v}, more than {hi}")
        return v

    def u32(self, n: int, thing: str = "u32 values") -> np.ndarray:
        raw = self._take((n + 1) // 2, thing).tobytes()
        return np.frombuffer(raw, _U32)[:n].astype(np.int64)

    def f64(self, n: int, thing: str = "f64 values") -> np.ndarray:
        return self._take(n, thing).view("<f8").astype(np.float64)

    def text(self, thing: str = "text", max_bytes: int = 1 << 24) -> str:
        n = self.count(f"{thing} length", max_bytes)
        raw = self._take((n + WORD_BYTES - 1) // WORD_BYTES, thing).tobytes()[:n]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad(f"{self.what}: {thing} is not UTF-8 ({e})") from None

    def tensor(self, thing: str = "tensor") -> np.ndarray:
        head = self.word(f"{thing} header")
        code, ndim = head & 0xFF, head >> 8
        if code not in DTYPES:
            raise _bad(f"{self.what}: {thing} has unknown dtype code {code}")
        if ndim > _MAX_DIMS:
            raise _bad(f"{self.what}: {thing} has {ndim} dimensions, more than {_MAX_DIMS}")
        shape = tuple(int(s) for s in self._take(ndim, f"{thing} shape"))
        dt = DTYPES[code]
        nbytes = dt.itemsize
        for s in shape:
            nbytes *= s                 # Python integers: no overflow
        if nbytes > self.left * WORD_BYTES:      # refuse before allocating
            raise _bad(f"{self.what}: {thing} of shape {shape} needs {nbytes} bytes, "
                       f"{self.left * WORD_BYTES} are left")
        raw = self._take((nbytes + WORD_BYTES - 1) // WORD_BYTES, thing).tobytes()[:nbytes]
        return np.frombuffer(raw, dt).reshape(shape).astype(dt.newbyteorder("="))

    def end(self) -> None:
        if self.left:
            raise _bad(f"{self.what}: {self.left} words left over after the last record")


def error_text(frame: Frame) -> str:
    """The message of an error answer ('' if it has none that parses)."""
    try:
        r = PayloadReader(frame.payload, "error")
        return r.text("message")
    except ProtocolError:
        return ""


# -- queries and results --------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QueryPayload:
    """What ``SUBMIT_QUERY`` carries: ``dense`` float64 ``(n_dense,)``,
    ``user_bags`` one int64 id array per user table, ``item_ids`` int64
    ``(n_candidates, n_item_tables)``."""

    dense: np.ndarray
    user_bags: tuple[np.ndarray, ...]
    item_ids: np.ndarray


def encode_query(dense, user_bags: Sequence, item_ids) -> np.ndarray:
    """``SUBMIT_QUERY`` payload (module docstring). ``ValueError`` for what
    the wire cannot carry (non-finite dense values, ids outside 0..2**32-1)."""
    dense = np.asarray(dense, np.float64).reshape(-1)
    if not np.all(np.isfinite(dense)):
        raise ValueError("query dense: values must be finite")
    # An empty bag (say []) comes as float64 from numpy: give it an integer type.
    bags = [np.asarray(b).reshape(-1) if len(b) else np.zeros(0, np.int64)
            for b in user_bags]
    items = np.asarray(item_ids)
    if items.ndim != 2:
        raise ValueError(f"query item_ids: must be (candidates, item tables), not shape "
                         f"{items.shape}")
    w = PayloadWriter().word(dense.size, len(bags), items.shape[0], items.shape[1])
    w.f64(dense).u32([b.size for b in bags])
    w.u32(np.concatenate(bags) if bags else np.zeros(0, np.int64))
    w.u32(items.reshape(-1))
    return w.words()


def decode_query(payload) -> QueryPayload:
    r = PayloadReader(payload, "query")
    n_dense = r.count("n_dense")
    n_bags = r.count("n_user_bags")
    n_cand = r.count("n_candidates")
    n_item = r.count("n_item_tables")
    if n_cand * n_item > _MAX_COUNT * 4:
        raise _bad(f"query: {n_cand} candidates x {n_item} item tables is too many ids")
    dense = r.f64(n_dense, "dense features")
    if not np.all(np.isfinite(dense)):
        raise _bad("query: a dense feature is not finite")
    lengths = r.u32(n_bags, "bag lengths")
    ids = r.u32(int(lengths.sum()), "bag ids")
    items = r.u32(n_cand * n_item, "item ids").reshape(n_cand, n_item)
    r.end()
    bags = tuple(np.split(ids, np.cumsum(lengths)[:-1])) if n_bags else ()
    return QueryPayload(dense, bags, items)


def encode_result(positions, scores) -> np.ndarray:
    """``SUBMIT_QUERY`` answer: ``[k]`` and ``[position, score]`` pairs."""
    p = np.asarray(positions, np.int64).reshape(-1)
    s = np.asarray(scores, np.int64).reshape(-1)
    if p.shape != s.shape or (p.size and p.min() < 0):
        raise ValueError("result: one non-negative position per score")
    pairs = np.stack([p, s], axis=1).reshape(-1).view(_U64)
    return np.concatenate([np.array([p.size], _U64), pairs])


def decode_result(payload) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, scores)``, int64, best first."""
    r = PayloadReader(payload, "result")
    k = r.count("k")
    pairs = r._take(2 * k, "result pairs").view("<i8").reshape(k, 2).astype(np.int64)
    r.end()
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def encode_counters(counters: Mapping[str, int]) -> np.ndarray:
    return PayloadWriter().word(*(int(counters[n]) for n in COUNTERS)).words()


def decode_counters(payload) -> dict[str, int]:
    r = PayloadReader(payload, "counters")
    out = {n: r.word(n) for n in COUNTERS}
    r.end()
    return out


# -- configuration and loads ----------------------------------------------------------

def encode_stages(stages: Sequence[tuple[int, int]]) -> np.ndarray:
    """``CONFIGURE_STAGES``: ``(slot, keep)`` per stage, in order."""
    w = PayloadWriter().word(len(stages))
    for slot, keep in stages:
        w.word(slot, keep)
    return w.words()


def decode_stages(payload) -> list[tuple[int, int]]:
    r = PayloadReader(payload, "stages")
    n = r.count("n_stages", 256)
    out = [(r.word("slot"), r.word("keep")) for _ in range(n)]
    r.end()
    return out


def encode_cache(slot: int, tables, rows) -> np.ndarray:
    """``LOAD_CACHE``: pin rows ``(tables[i], rows[i])`` of a slot's tables."""
    t = np.asarray(tables).reshape(-1)
    r = np.asarray(rows).reshape(-1)
    if t.shape != r.shape:
        raise ValueError("cache: one table index per row")
    return PayloadWriter().word(slot, t.size).u32(t).u32(r).words()


def decode_cache(payload) -> tuple[int, np.ndarray, np.ndarray]:
    r = PayloadReader(payload, "cache")
    slot = r.word("slot")
    n = r.count("n_rows")
    tables, rows = r.u32(n, "tables"), r.u32(n, "rows")
    r.end()
    return slot, tables, rows


@dataclass(frozen=True, eq=False)
class TableChunk:
    """``LOAD_TABLES``: rows ``first_row ..`` of table ``table`` of ``slot``."""

    slot: int
    table: int
    first_row: int
    codes: np.ndarray
    scale_q: np.ndarray
    bias_q: np.ndarray


def encode_table_chunk(chunk: TableChunk) -> np.ndarray:
    codes = np.asarray(chunk.codes, np.uint8)
    return (PayloadWriter().word(chunk.slot, chunk.table, chunk.first_row, codes.shape[0])
            .tensor(codes).tensor(np.asarray(chunk.scale_q, np.int32))
            .tensor(np.asarray(chunk.bias_q, np.int32)).words())


def decode_table_chunk(payload) -> TableChunk:
    r = PayloadReader(payload, "table chunk")
    slot, table, first = r.word("slot"), r.word("table"), r.word("first_row")
    n = r.word("n_rows")
    codes, scale_q, bias_q = r.tensor("codes"), r.tensor("scale_q"), r.tensor("bias_q")
    r.end()
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[0] != n:
        raise _bad(f"table chunk: codes must be uint8 ({n}, dim), not {codes.dtype} "
                   f"{codes.shape}")
    for name, v in (("scale_q", scale_q), ("bias_q", bias_q)):
        if v.dtype != np.int32 or v.shape != (n,):
            raise _bad(f"table chunk: {name} must be int32 ({n},), not {v.dtype} {v.shape}")
    return TableChunk(slot, table, first, codes, scale_q.astype(np.int64),
                      bias_q.astype(np.int64))


def table_chunks(slot: int, model: QuantizedStageModel, max_rows: int = 4096):
    """The ``LOAD_TABLES`` chunks of every table of ``model`` (at most
    ``max_rows`` rows each)."""
    for t, fx in enumerate(model.fixed):
        for first in range(0, fx.rows, max_rows):
            sl = slice(first, first + max_rows)
            yield TableChunk(slot, t, first, fx.codes[sl], fx.scale_q[sl], fx.bias_q[sl])


@dataclass(frozen=True, eq=False)
class StageWeights:
    """``LOAD_WEIGHTS`` decoded: the slot, the metadata and the tensors by name."""

    slot: int
    meta: dict
    tensors: dict[str, np.ndarray]

    @property
    def config(self) -> StageModelConfig:
        return StageModelConfig.from_dict(self.meta["config"])


def _layer_tensors(prefix: str, layer: QuantLayer) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": layer.weight, f"{prefix}.bias": layer.bias,
            f"{prefix}.mult": layer.mult, f"{prefix}.shift": layer.shift}


def encode_weights(slot: int, model: QuantizedStageModel) -> np.ndarray:
    """``LOAD_WEIGHTS`` payload of a quantized stage (module docstring)."""
    bottom = None
    tensors: dict[str, np.ndarray] = {}
    if model.bottom is not None:
        bottom = {"input_scale": float(model.bottom.input_scale),
                  "output_scale": float(model.bottom.output_scale),
                  "relu": [bool(l.relu) for l in model.bottom.layers]}
        for l, layer in enumerate(model.bottom.layers):
            tensors.update(_layer_tensors(f"bottom.{l}", layer))
    if model.user_layer is not None:
        tensors.update(_layer_tensors("user", model.user_layer))
    for l, layer in enumerate(model.layers):
        tensors.update(_layer_tensors(f"top.{l}", layer))
    for name in ("emb_mult", "emb_shift", "pair_mult", "pair_shift", "emb_scale",
                 "pair_scale", "top_in_scale"):
        tensors[name] = np.asarray(getattr(model, name))
    meta = {"config": model.config.to_dict(), "emb_bits": model.emb_bits,
            "frac_bits": model.frac_bits, "max_bag": model.max_bag,
            "score": {"bits": model.score.bits, "shift": model.score.shift,
                      "scale": float(model.score.scale)},
            "bottom": bottom,
            "user_relu": None if model.user_layer is None else bool(model.user_layer.relu),
            "top_relu": [bool(l.relu) for l in model.layers]}
    w = PayloadWriter().word(slot, WEIGHTS_FORMAT).text(json.dumps(meta)).word(len(tensors))
    for name, a in tensors.items():
        w.text(name).tensor(a)
    return w.words()


def decode_weights(payload) -> StageWeights:
    """``LOAD_WEIGHTS`` payload to :class:`StageWeights`; the metadata's
    config is checked, the tensors only parsed (:func:`build_stage` checks
    them against it)."""
    r = PayloadReader(payload, "weights")
    slot, fmt = r.word("slot"), r.word("format")
    if fmt != WEIGHTS_FORMAT:
        raise _bad(f"weights: format {fmt} is not known (this device takes "
                   f"{WEIGHTS_FORMAT})")
    try:
        meta = json.loads(r.text("metadata"))
    except json.JSONDecodeError as e:
        raise _bad(f"weights: metadata is not JSON ({e})") from None
    need = {"config", "emb_bits", "frac_bits", "max_bag", "score", "bottom", "user_relu",
            "top_relu"}
    if not isinstance(meta, dict) or set(meta) != need:
        raise _bad(f"weights: metadata must have exactly the fields {sorted(need)}")
    n = r.count("tensor count", 4096)
    tensors = {}
    for _ in range(n):
        name = r.text("tensor name", 256)
        if name in tensors:
            raise _bad(f"weights: tensor {name!r} comes twice")
        tensors[name] = r.tensor(f"tensor {name!r}")
    r.end()
    out = StageWeights(slot, meta, tensors)
    try:
        out.config
    except (ValueError, TypeError, KeyError) as e:
        raise _bad(f"weights: bad stage config ({e})") from None
    return out


def build_stage(weights: StageWeights, tables: Sequence[FixedPointTable]) -> QuantizedStageModel:
    """The :class:`host.models.QuantizedStageModel` a device holds after
    ``LOAD_WEIGHTS`` and ``LOAD_TABLES``. The tables' float row-wise view is
    derived from the fixed-point rows (``scale_q * 2**-frac_bits``); no
    score depends on it. ``ProtocolError`` (``BAD_PAYLOAD``) for anything
    inconsistent."""
    try:
        return _build_stage(weights, tables)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise _bad(f"weights: {type(e).__name__}: {e}") from None


def _build_stage(weights: StageWeights, tables: Sequence[FixedPointTable]) -> QuantizedStageModel:
    m, t = weights.meta, weights.tensors
    cfg = weights.config
    used = set()

    def get(name, dtype):
        if name not in t:
            raise _bad(f"weights: tensor {name!r} is missing")
        a = t[name]
        if a.dtype != np.dtype(dtype):
            raise _bad(f"weights: tensor {name!r} must be {np.dtype(dtype)}, not {a.dtype}")
        used.add(name)
        return a

    def layer(prefix, relu):
        return QuantLayer(get(f"{prefix}.weight", np.int8), get(f"{prefix}.bias", np.int32),
                          get(f"{prefix}.mult", np.uint16), get(f"{prefix}.shift", np.uint8),
                          bool(relu))

    bottom = None
    if m["bottom"] is not None:
        b = m["bottom"]
        bottom = QuantizedMLP([layer(f"bottom.{l}", r) for l, r in enumerate(b["relu"])],
                              float(b["input_scale"]), float(b["output_scale"]))
        if len(bottom.layers) != len(cfg.bottom_mlp):
            raise _bad("weights: bottom layers do not match the config")
    elif cfg.has_bottom:
        raise _bad("weights: the config has a bottom MLP, the metadata none")
    user = None if m["user_relu"] is None else layer("user", m["user_relu"])
    layers = tuple(layer(f"top.{l}", r) for l, r in enumerate(m["top_relu"]))
    if len(layers) != len(cfg.top_mlp):
        raise _bad("weights: top layers do not match the config")
    vec = {n: get(n, d) for n, d in (("emb_mult", np.uint16), ("emb_shift", np.uint8),
                                     ("pair_mult", np.uint16), ("pair_shift", np.uint8),
                                     ("emb_scale", np.float64), ("pair_scale", np.float64),
                                     ("top_in_scale", np.float64))}
    extra = sorted(set(t) - used)
    if extra:
        raise _bad(f"weights: unexpected tensors {extra}")
    # Shapes that the layer classes do not check themselves.
    if vec["emb_mult"].shape != (len(cfg.tables),) or vec["emb_shift"].shape != (len(cfg.tables),):
        raise _bad(f"weights: emb_mult and emb_shift need {len(cfg.tables)} entries")
    if vec["pair_mult"].shape != (cfg.n_pairs,) or vec["pair_shift"].shape != (cfg.n_pairs,):
        raise _bad(f"weights: pair_mult and pair_shift need {cfg.n_pairs} entries")
    dims = cfg.bottom_dims
    for l, lay in enumerate(bottom.layers if bottom else []):
        if lay.weight.shape != (dims[l], dims[l + 1]):
            raise _bad(f"weights: bottom.{l}.weight must be {(dims[l], dims[l + 1])}")
    r = cfg.user_top_rows
    top = cfg.top_dims
    want0 = (top[0] - r, top[1]) if user is not None else (top[0], top[1])
    if layers[0].weight.shape != want0 or (user is not None and
                                           user.weight.shape != (r, top[1])):
        raise _bad("weights: the first top layer does not match the config")
    for l in range(1, len(layers)):
        if layers[l].weight.shape != (top[l], top[l + 1]):
            raise _bad(f"weights: top.{l}.weight must be {(top[l], top[l + 1])}")
    frac = int(m["frac_bits"])
    rowwise = tuple(RowwiseTable(fx.codes, (fx.scale_q * 2.0 ** -frac).astype(np.float32),
                                 (fx.bias_q * 2.0 ** -frac).astype(np.float32), fx.bits)
                    for fx in tables)
    s = m["score"]
    return QuantizedStageModel(cfg, int(m["emb_bits"]), frac, int(m["max_bag"]), bottom,
                               rowwise, tuple(tables), vec["emb_scale"], vec["emb_mult"],
                               vec["emb_shift"], vec["pair_scale"], vec["pair_mult"],
                               vec["pair_shift"], vec["top_in_scale"], user, layers,
                               ScoreFormat(int(s["bits"]), int(s["shift"]), float(s["scale"])))
