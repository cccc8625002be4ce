"""The host driver: one :class:`Accelerator` API over an abstract
:class:`Transport`, and the golden transport, an in-process device that
answers with the golden multi-stage pipeline.

Layers
------
* :mod:`host.protocol`: the wire format (frames of 64-bit words, commands,
  statuses, payloads). Everything below speaks only frames.
* :class:`Transport`: moves whole frames (``bytes``) to the device and back,
  and owns time. Time is counted in device clock cycles at ``clock_mhz``;
  ``now()`` is the current cycle, ``advance(cycle)`` lets the device run up
  to ``cycle``, ``receive()`` hands over an answer the device has sent by
  now together with the cycle it left the device, and ``wait(deadline)``
  runs until an answer is ready. A simulation transport (Verilator through
  cocotb, AXI4-Stream in and out) and a device transport (DMA queues) are
  further subclasses; the driver does not change (glasgow's applet over an
  abstract pipe, STYLE.md).
* :class:`GoldenTransport`: :class:`GoldenDevice` (decodes frames, keeps the
  loaded stages, answers every frame, errors included) behind a queue whose
  service time is *modelled* (below).
* :class:`Accelerator`: ``load(compiled_model)``, ``submit(query)`` /
  ``poll()``, ``run(queries, rate_qps=...)`` and the :class:`RunReport`.

The compiled model
------------------
:class:`CompiledModel`: the pipeline (:class:`host.pipeline.PipelineSpec`),
its quantized stages (:class:`host.models.QuantizedStageModel`, what the
device runs), optionally the float stages (the quality reference) and rows
to pin in the static caches. :func:`compile_model` builds one from float
weights and calibration queries. :meth:`Accelerator.load` gives each
distinct stage model a slot (0, 1, ... in pipeline order) and sends
``LOAD_WEIGHTS``, ``LOAD_TABLES`` (chunks of ``chunk_rows`` rows),
``LOAD_CACHE`` and ``CONFIGURE_STAGES``, each answered before the next;
any error answer raises :class:`DeviceError`.

Streaming queries
-----------------
:meth:`Accelerator.run` is an open-loop load: query ``i`` arrives at cycle
``t_0 + round(a_i * f)``, with ``a_i`` the arrival times of a Poisson
process of rate ``rate_qps`` (exponential gaps, ``numpy.random.default_rng
(seed)``) in seconds and ``f`` the clock in Hz; all arrive at ``t_0`` when
``rate_qps`` is ``None`` (a batch: the throughput at saturation). The
driver advances the transport to each arrival, sends the query tagged with
a free 16-bit tag, collects whatever answers are ready, and at the end waits
for the rest (``timeout_cycles`` after the last arrival at most, then
:class:`DeviceError`). Answers are matched to queries by tag; the run
asserts that every query got exactly one answer (none lost, none
duplicated, no answer with a tag it did not send). A query's latency is the
cycle its answer left the device minus its arrival cycle (so it includes
any time the host pipe was busy), in cycles and in microseconds at the
transport's clock.

The report (:class:`RunReport`, JSON through :meth:`RunReport.write_json`):
per-query latency in cycles and microseconds, p50 / p95 / p99 and mean
(:func:`percentile`: linear interpolation between order statistics, as
``numpy.percentile``'s default), throughput (answers over the span from the
first arrival to the last answer), the offered rate, errors, the device's
counters, how latency was obtained (``latency_source``), whether the
answers were checked against the golden pipeline on the host
(``answers_checked``, ``answers_wrong``), and quality at ``k = 10``
(:mod:`host.metrics`) against the float model's answers: the recall of the
float pipeline's top 10, NDCG@10 with the float top 10 as the relevant
items, HR@10 of the float model's first item; with held-out positives also
NDCG@10 and HR@10 of the accelerator and of the float model. Plots: a
latency CDF (:mod:`host.plots`).

Modelled time (golden transport)
--------------------------------
The golden device computes answers, not time. Its service time per query
is the **roofline bound** of ARCHITECTURE.md section 7, on the hardware
config (:class:`hw.config.Config`, a preset by name)::

    cycles = max(ceil(MACs / (R * C)), ceil(bytes / (channels * bus_bytes)), 1)

``MACs`` the query's MACs over all stages (user/item split, on the
candidates each stage gets: :func:`host.pipeline.run_pipeline`), ``R * C =
array.dim ** 2``, ``bytes`` the bursts of every lookup (per stage: the user
bags' ids plus one id per item table per candidate entering the stage, each
``row_beats(embedding_dim, emb_bits) * bus_bytes`` bytes, from memory: no
cache hits, no on-chip tables), ``channels * bus_bytes`` the bytes per cycle
of the channels. Queries are served one at a time in arrival order (no
stage overlap between queries), so a query waits while earlier ones are
served. Other commands take no modelled time. This is a bound that the
hardware can only approach: it is labelled ``modelled`` in every report
and is never a measurement.
"""

from __future__ import annotations

import abc
import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hw.config import Config, ceil_div

from . import protocol as P
from .embedding import FixedPointTable
from .metrics import hit_at_k, ndcg_at_k, ndcg_single, rank_of, recall_at_k, relevance_of
from .models import QuantizedStageModel, Query, StageModel, StageModelParams
from .pipeline import PipelineResult, PipelineSpec, build_scorers, run_pipeline
from .protocol import Opcode, Status

__all__ = ["Transport", "GoldenDevice", "GoldenTransport", "CompiledModel", "compile_model",
           "Accelerator", "Answer", "RunReport", "DeviceError", "percentile",
           "roofline_cycles", "query_cost", "poisson_arrivals", "answer_right"]


class DeviceError(RuntimeError):
    """The device answered a command with an error, or an answer is missing."""

    def __init__(self, message: str, status: Status | None = None):
        super().__init__(message)
        self.status = status


# -- time and percentiles ------------------------------------------------------------

def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between the
    sorted values (``numpy.percentile``'s default, Hyndman and Fan's type 7):
    with ``h = (n - 1) q / 100``, ``x[floor h] + (h - floor h) (x[floor h + 1]
    - x[floor h])``."""
    x = np.sort(np.asarray(values, np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("percentile: no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: q must be in 0..100, not {q!r}")
    h = (x.size - 1) * q / 100.0
    lo = int(math.floor(h))
    hi = min(lo + 1, x.size - 1)
    return float(x[lo] + (h - lo) * (x[hi] - x[lo]))


def poisson_arrivals(n: int, rate_qps: float | None, clock_mhz: float, seed: int = 0) -> np.ndarray:
    """Arrival cycles (from 0) of ``n`` queries of a Poisson process of
    ``rate_qps`` queries per second; all 0 when ``rate_qps`` is ``None``."""
    if rate_qps is None:
        return np.zeros(n, np.int64)
    if not rate_qps > 0:
        raise ValueError(f"rate_qps: must be positive, not {rate_qps!r}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_qps, size=n)
    return np.rint(np.cumsum(gaps) * clock_mhz * 1e6).astype(np.int64)


def roofline_cycles(macs: int, lookup_bytes: int, config: Config) -> int:
    """``max(ceil(MACs / dim**2), ceil(bytes / (channels * bus_bytes)), 1)``."""
    emb = config.embedding
    return max(ceil_div(int(macs), config.array.dim ** 2),
               ceil_div(int(lookup_bytes), emb.channels * emb.bus_bytes), 1)


def query_cost(stages: Sequence[QuantizedStageModel], result: PipelineResult, query: Query,
               config: Config) -> tuple[int, int]:
    """``(MACs, lookup bytes)`` of one answered query (module docstring)."""
    emb = config.embedding
    user_ids = sum(b.size for b in query.user_ids)
    n, nbytes = query.n_candidates, 0
    for s, model in enumerate(stages):
        burst = emb.row_beats(model.config.embedding_dim, model.emb_bits) * emb.bus_bytes
        nbytes += (user_ids + n * len(model.config.item_tables)) * burst
        n = result.survivors[s].size
    return result.macs, nbytes


# -- transports -----------------------------------------------------------------------

class Transport(abc.ABC):
    """Moves frames between the driver and a device, and owns time (module
    docstring). ``clock_mhz`` is the clock cycles are counted at;
    ``latency_source`` says how they are obtained ("modelled: ..." or
    "measured: ...")."""

    name: str = "transport"
    clock_mhz: float
    latency_source: str

    @abc.abstractmethod
    def now(self) -> int:
        """The current cycle."""

    @abc.abstractmethod
    def advance(self, cycle: int) -> None:
        """Let the device run up to ``cycle`` (nothing if that is past)."""

    @abc.abstractmethod
    def send(self, frame: bytes) -> None:
        """Give the device one frame, at the current cycle."""

    @abc.abstractmethod
    def receive(self) -> tuple[bytes, int] | None:
        """An answer the device has sent by now and the cycle it left, or ``None``."""

    @abc.abstractmethod
    def wait(self, deadline: int) -> bool:
        """Run until an answer can be received (``True``) or ``deadline`` has
        passed (``False``)."""

    #: How loads and queries are written: ``None`` for the protocol's own
    #: payloads (:mod:`host.protocol`), or a device format
    #: (:class:`host.device_format.DeviceFormat`) with :meth:`write_memory`.
    payload_format = None

    def write_memory(self, channel: int, image) -> None:
        """Write ``image`` (bytes) at address 0 of a memory channel of the
        device (as a DMA would); only transports with a device format can."""
        raise NotImplementedError(f"{self.name}: no device memory to write")


@dataclass
class _Slot:
    weights: P.StageWeights
    codes: list = field(default_factory=list)
    scale_q: list = field(default_factory=list)
    bias_q: list = field(default_factory=list)
    loaded: list = field(default_factory=list)        # bool arrays, rows seen
    pinned: tuple = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    model: QuantizedStageModel | None = None

    @property
    def complete(self) -> bool:
        return all(l is not None and bool(l.all()) for l in self.loaded)


class GoldenDevice:
    """The accelerator as the golden model: answers frames (module
    docstring of :mod:`host.protocol`). :meth:`handle` never raises: any
    failure is an error answer. It returns the answer and, for an answered
    query, its modelled service cycles (0 otherwise)."""

    def __init__(self, config: Config, slots: int = 8):
        self.config = config
        self.n_slots = slots
        self.slots: dict[int, _Slot] = {}
        self.stages: list[tuple[int, int]] = []
        self.counters = {n: 0 for n in P.COUNTERS}

    def handle(self, data: bytes) -> tuple[P.Frame, int]:
        self.counters["frames"] += 1
        opcode = tag = 0
        try:
            frame = P.decode_frame(data)
            opcode, tag = frame.opcode, frame.tag
            payload, cycles = self._dispatch(frame)
            return P.Frame(opcode, tag, Status.OK, payload), cycles
        except P.ProtocolError as e:
            status, message = e.status, e.message
            if e.opcode or e.tag:
                opcode, tag = e.opcode, e.tag
        except Exception as e:              # a bug: say so, and keep serving
            status, message = Status.DEVICE_ERROR, f"{type(e).__name__}: {e}"
        self.counters["errors"] += 1
        opcode = opcode if opcode in Opcode._value2member_map_ else Opcode.NONE
        return P.Frame(opcode, tag, status, P.PayloadWriter().text(message).words()), 0

    # -- commands ----------------------------------------------------------------------
    def _dispatch(self, frame: P.Frame):
        op = frame.opcode
        if op == Opcode.PING:
            P.PayloadReader(frame.payload, "ping").end()
            return [P.VERSION], 0
        if op == Opcode.READ_COUNTERS:
            P.PayloadReader(frame.payload, "read counters").end()
            return P.encode_counters(self.counters), 0
        if op == Opcode.LOAD_WEIGHTS:
            return self._load_weights(P.decode_weights(frame.payload)), 0
        if op == Opcode.LOAD_TABLES:
            return self._load_tables(P.decode_table_chunk(frame.payload)), 0
        if op == Opcode.LOAD_CACHE:
            return self._load_cache(*P.decode_cache(frame.payload)), 0
        if op == Opcode.CONFIGURE_STAGES:
            return self._configure(P.decode_stages(frame.payload)), 0
        if op == Opcode.SUBMIT_QUERY:
            return self._query(P.decode_query(frame.payload))
        raise P.ProtocolError(Status.UNKNOWN_COMMAND, f"opcode {op} is not served")

    def _slot(self, slot: int) -> _Slot:
        if slot >= self.n_slots:
            raise P.ProtocolError(Status.BAD_ID, f"slot {slot} is past the last "
                                  f"({self.n_slots - 1})")
        if slot not in self.slots:
            raise P.ProtocolError(Status.NOT_LOADED, f"slot {slot} has no weights")
        return self.slots[slot]

    def _load_weights(self, w: P.StageWeights):
        if w.slot >= self.n_slots:
            raise P.ProtocolError(Status.BAD_ID, f"slot {w.slot} is past the last "
                                  f"({self.n_slots - 1})")
        # Check the tensors now, against empty tables, so a bad load is refused here.
        cfg = w.config
        empty = [FixedPointTable(np.zeros((0, cfg.embedding_dim), np.uint8),
                                 np.zeros(0, np.int64), np.zeros(0, np.int64),
                                 int(w.meta["emb_bits"]), int(w.meta["frac_bits"]))
                 for _ in cfg.tables]
        P.build_stage(w, empty)
        self.slots[w.slot] = _Slot(w, [None] * len(cfg.tables), [None] * len(cfg.tables),
                                   [None] * len(cfg.tables), [None] * len(cfg.tables))
        if any(s == w.slot for s, _ in self.stages):
            self.stages = []
        return []

    def _load_tables(self, c: P.TableChunk):
        s = self._slot(c.slot)
        cfg = s.weights.config
        if c.table >= len(cfg.tables):
            raise P.ProtocolError(Status.BAD_ID, f"slot {c.slot} has {len(cfg.tables)} "
                                  f"tables, not table {c.table}")
        rows = cfg.tables[c.table].rows
        n = c.codes.shape[0]
        if c.first_row + n > rows:
            raise P.ProtocolError(Status.BAD_ID, f"rows {c.first_row}..{c.first_row + n - 1} "
                                  f"of table {c.table} are past its {rows} rows")
        if c.codes.shape[1] != cfg.embedding_dim:
            raise P.ProtocolError(Status.BAD_PAYLOAD, f"rows of {c.codes.shape[1]} codes, "
                                  f"the table has {cfg.embedding_dim}")
        bits = int(s.weights.meta["emb_bits"])
        if n and int(c.codes.max()) >= 1 << bits:
            raise P.ProtocolError(Status.BAD_PAYLOAD, f"a code above {(1 << bits) - 1} "
                                  f"in a {bits}-bit table")
        t = c.table
        if s.codes[t] is None:
            s.codes[t] = np.zeros((rows, cfg.embedding_dim), np.uint8)
            s.scale_q[t] = np.zeros(rows, np.int64)
            s.bias_q[t] = np.zeros(rows, np.int64)
            s.loaded[t] = np.zeros(rows, bool)
        sl = slice(c.first_row, c.first_row + n)
        s.codes[t][sl], s.scale_q[t][sl], s.bias_q[t][sl] = c.codes, c.scale_q, c.bias_q
        s.loaded[t][sl] = True
        s.model = None
        return []

    def _load_cache(self, slot: int, tables: np.ndarray, rows: np.ndarray):
        s = self._slot(slot)
        cfg = s.weights.config
        for t, r in zip(tables, rows):
            if t >= len(cfg.tables) or r >= cfg.tables[t].rows:
                raise P.ProtocolError(Status.BAD_ID, f"cache row ({int(t)}, {int(r)}) is "
                                      f"not a row of slot {slot}")
        if np.unique(np.stack([tables, rows]), axis=1).shape[1] != tables.size:
            raise P.ProtocolError(Status.BAD_PAYLOAD, "a cache row is pinned twice")
        s.pinned = (tables, rows)
        return []

    def _configure(self, stages: list[tuple[int, int]]):
        if not stages:
            raise P.ProtocolError(Status.BAD_CONFIG, "at least one stage is needed")
        for slot, keep in stages:
            s = self._slot(slot)
            if not s.complete:
                raise P.ProtocolError(Status.NOT_LOADED, f"slot {slot}: not every table "
                                      f"row is loaded")
            if keep < 1:
                raise P.ProtocolError(Status.BAD_CONFIG, f"slot {slot}: keep must be at "
                                      f"least 1, not {keep}")
            if s.model is None:
                cfg = s.weights.config
                bits, frac = int(s.weights.meta["emb_bits"]), int(s.weights.meta["frac_bits"])
                s.model = P.build_stage(s.weights, [
                    FixedPointTable(s.codes[t], s.scale_q[t], s.bias_q[t], bits, frac)
                    for t in range(len(cfg.tables))])
        self.stages = list(stages)
        return []

    def _query(self, q: P.QueryPayload):
        if not self.stages:
            raise P.ProtocolError(Status.NOT_LOADED, "no stages are configured")
        models = [self.slots[slot].model for slot, _ in self.stages]
        for m in models:
            cfg = m.config
            ut, it = cfg.user_tables, cfg.item_tables
            if q.dense.size != cfg.dense_features or len(q.user_bags) != len(ut) \
                    or q.item_ids.shape[1] != len(it):
                raise P.ProtocolError(
                    Status.BAD_PAYLOAD, f"{cfg.name} takes {cfg.dense_features} dense "
                    f"features, {len(ut)} user bags and {len(it)} item ids per candidate, "
                    f"not {q.dense.size}, {len(q.user_bags)} and {q.item_ids.shape[1]}")
            for t, ids in zip(ut + it, list(q.user_bags) + list(q.item_ids.T)):
                if ids.size and ids.max() >= t.rows:
                    raise P.ProtocolError(Status.BAD_ID, f"id {int(ids.max())} of table "
                                          f"{t.name!r} is past its {t.rows} rows")
            for t, ids in zip(ut, q.user_bags):
                if ids.size > m.max_bag:
                    raise P.ProtocolError(Status.BAD_PAYLOAD, f"a bag of {ids.size} ids in "
                                          f"table {t.name!r}, longer than {m.max_bag}")
        if q.item_ids.shape[0] == 0:
            raise P.ProtocolError(Status.BAD_PAYLOAD, "a query needs a candidate")
        query = Query(q.dense, q.user_bags, q.item_ids)
        spec = PipelineSpec("device", tuple(f"slot{s}" for s, _ in self.stages),
                            tuple(k for _, k in self.stages))
        res = run_pipeline(spec, {f"slot{s}": self.slots[s].model for s, _ in self.stages},
                           query)
        macs, nbytes = query_cost(models, res, query, self.config)
        cycles = roofline_cycles(macs, nbytes, self.config)
        for name, v in (("queries", 1), ("candidates", query.n_candidates), ("macs", macs),
                        ("lookup_bytes", nbytes), ("busy_cycles", cycles)):
            self.counters[name] += v
        return P.encode_result(res.positions, res.scores), cycles


class GoldenTransport(Transport):
    """A :class:`GoldenDevice` behind a single-server FIFO queue in modelled
    time: a query that arrives at cycle ``a`` starts at ``max(a, end of the
    previous query)`` and its answer leaves ``roofline_cycles`` later; any
    other answer leaves at once (module docstring)."""

    name = "golden"

    def __init__(self, config: Config | str = "default", *, slots: int = 8):
        self.config = Config.preset(config) if isinstance(config, str) else config
        self.clock_mhz = float(self.config.clock_mhz)
        self.latency_source = ("modelled: roofline max(MACs/(R*C), bytes/(channels*bus "
                               f"bytes)) on the {self.config.name!r} config, one query at "
                               "a time (not a measurement)")
        self.device = GoldenDevice(self.config, slots)
        self._now = 0
        self._free_at = 0
        self._out: list[tuple[int, int, bytes]] = []    # (cycle, order, frame) heap
        self._order = 0

    def now(self) -> int:
        return self._now

    def advance(self, cycle: int) -> None:
        self._now = max(self._now, int(cycle))

    def send(self, frame: bytes) -> None:
        answer, cycles = self.device.handle(frame)
        done = self._now
        if cycles:
            done = max(self._now, self._free_at) + cycles
            self._free_at = done
        heapq.heappush(self._out, (done, self._order, P.encode_frame(answer)))
        self._order += 1

    def receive(self) -> tuple[bytes, int] | None:
        if self._out and self._out[0][0] <= self._now:
            cycle, _, data = heapq.heappop(self._out)
            return data, cycle
        return None

    def wait(self, deadline: int) -> bool:
        if self._out and self._out[0][0] <= max(self._now, deadline):
            self.advance(self._out[0][0])
            return True
        self.advance(deadline)
        return False


# -- the compiled model ---------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CompiledModel:
    """What :meth:`Accelerator.load` sends (module docstring). ``stages``
    and ``float_stages`` map each stage name of ``spec`` to its model;
    ``pinned`` maps a stage name to ``(table indices, rows)`` to pin."""

    spec: PipelineSpec
    stages: Mapping[str, QuantizedStageModel]
    float_stages: Mapping[str, StageModel] | None = None
    precision: str = "int8"
    pinned: Mapping[str, tuple] | None = None

    def __post_init__(self):
        for name in self.spec.stages:
            if name not in self.stages:
                raise ValueError(f"compiled model: no quantized stage {name!r}")
            if self.float_stages is not None and name not in self.float_stages:
                raise ValueError(f"compiled model: no float stage {name!r}")


def compile_model(params: Mapping[str, StageModelParams], spec: PipelineSpec,
                  calibration: Sequence[Query], precision: str = "int8",
                  **quant_args) -> CompiledModel:
    """Quantize the stages of ``spec`` (:func:`host.pipeline.build_scorers`)
    and keep their float models as the quality reference."""
    if precision not in ("int8", "int4"):
        raise ValueError(f"precision: must be 'int8' or 'int4', not {precision!r}")
    used = {n: params[n] for n in dict.fromkeys(spec.stages)}
    sc = build_scorers(used, calibration, ("float", precision), **quant_args)
    return CompiledModel(spec, sc[precision], sc["float"], precision)


# -- the driver -----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Answer:
    """One query's answer: ``positions`` and ``scores`` best first (empty on
    error), ``candidates`` what the positions are (from the query), the
    arrival and answer cycles."""

    index: int
    tag: int
    status: Status
    message: str
    positions: np.ndarray
    scores: np.ndarray
    candidates: np.ndarray
    arrival: int
    done: int

    @property
    def latency(self) -> int:
        return self.done - self.arrival

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


@dataclass
class RunReport:
    """What :meth:`Accelerator.run` measured (module docstring); :meth:`to_dict`
    is the JSON."""

    transport: str
    latency_source: str
    clock_mhz: float
    offered_qps: float | None
    answers: list[Answer]
    counters: dict
    quality: dict
    answers_checked: int
    answers_wrong: int
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def latency_cycles(self) -> np.ndarray:
        return np.array([a.latency for a in self.answers if a.ok], np.int64)

    @property
    def errors(self) -> int:
        return sum(not a.ok for a in self.answers)

    def summary(self) -> dict:
        lat = self.latency_cycles
        us = 1.0 / self.clock_mhz
        out = {"queries": len(self.answers), "answers_ok": int(lat.size),
               "errors": self.errors}
        if lat.size:
            for q in (50, 95, 99):
                c = percentile(lat, q)
                out[f"p{q}_cycles"], out[f"p{q}_us"] = c, c * us
            out["mean_cycles"] = float(lat.mean())
            out["mean_us"] = out["mean_cycles"] * us
            span = (max(a.done for a in self.answers if a.ok)
                    - min(a.arrival for a in self.answers))
            out["span_cycles"] = int(span)
            out["throughput_qps"] = (lat.size / (span * us * 1e-6)) if span > 0 else None
        return out

    def to_dict(self) -> dict:
        us = 1.0 / self.clock_mhz
        return {"transport": self.transport, "latency_source": self.latency_source,
                "clock_mhz": self.clock_mhz, "offered_qps": self.offered_qps,
                **self.summary(),
                "answers_checked": self.answers_checked,
                "answers_wrong": self.answers_wrong,
                "quality": self.quality, "counters": self.counters,
                "latency_cycles": [int(a.latency) for a in self.answers],
                "done_cycles": [int(a.done) for a in self.answers],
                "latency_us": [a.latency * us for a in self.answers],
                "status": [a.status.name for a in self.answers],
                "plots": self.plots, "notes": self.notes}

    def write_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def write_plots(self, directory) -> list[str]:
        """A latency CDF as PNG in ``directory``."""
        from .plots import latency_cdf
        path = latency_cdf(self.latency_cycles / self.clock_mhz,
                           Path(directory) / "latency_cdf.png",
                           xlabel=f"latency, us at {self.clock_mhz:g} MHz "
                                  f"({self.latency_source.split(':')[0]})")
        self.plots.append(path)
        return [path]


def _quality(answers: Sequence[Answer], reference: Sequence[PipelineResult] | None,
             positives, k: int = 10) -> dict:
    if reference is None and positives is None:
        return {}
    out: dict = {"k": k}
    ok = [a for a in answers if a.ok]
    if reference is not None:
        rec, nd, hr = [], [], []
        for a in ok:
            ref = reference[a.index].positions
            rec.append(recall_at_k(a.positions, ref, k))
            nd.append(ndcg_at_k(relevance_of(a.positions[:k], ref[:k]), k,
                                np.ones(min(k, ref.size))))
            hr.append(hit_at_k(a.positions, ref[0], k) if ref.size else 0.0)
        out.update({f"recall{k}_vs_float": float(np.mean(rec)) if rec else None,
                    f"ndcg{k}_vs_float": float(np.mean(nd)) if nd else None,
                    f"hr{k}_vs_float": float(np.mean(hr)) if hr else None})
    if positives is not None:
        nd = [ndcg_single(rank_of(a.candidates, positives[a.index]), k) for a in ok]
        hr = [hit_at_k(a.candidates, positives[a.index], k) for a in ok]
        out.update({f"ndcg{k}": float(np.mean(nd)) if nd else None,
                    f"hr{k}": float(np.mean(hr)) if hr else None})
        if reference is not None:
            out[f"ndcg{k}_float"] = float(np.mean([
                ndcg_single(rank_of(reference[a.index].candidates, positives[a.index]), k)
                for a in ok])) if ok else None
            out[f"hr{k}_float"] = float(np.mean([
                hit_at_k(reference[a.index].candidates, positives[a.index], k)
                for a in ok])) if ok else None
    return out


def answer_right(model: CompiledModel, query: Query, answer: Answer) -> bool:
    """``answer`` is OK and its positions and scores are, bit for bit, those
    of the golden pipeline (:func:`host.pipeline.run_pipeline`) on ``query``."""
    want = run_pipeline(model.spec, model.stages, query)
    return (answer.ok and np.array_equal(answer.positions, want.positions)
            and np.array_equal(answer.scores, want.scores))


class Accelerator:
    """The driver (module docstring).

    Parameters
    ----------
    transport : Transport
    timeout_cycles : int
        How long to wait for an answer before :class:`DeviceError`.
    """

    def __init__(self, transport: Transport, *, timeout_cycles: int = 1 << 40):
        self.transport = transport
        self.timeout_cycles = int(timeout_cycles)
        self.model: CompiledModel | None = None
        self._next_tag = 0
        self._pending: dict[int, tuple[int, int, np.ndarray]] = {}   # tag -> (index, arrival, cand)
        self._replies: dict[int, tuple[bytes, int]] = {}              # answers to commands
        self._answers: list[Answer] = []
        self.unexpected: list[P.Frame] = []       # answers nobody asked for

    # -- tags and answers ---------------------------------------------------------------
    def _tag(self) -> int:
        while len(self._pending) + len(self._replies) > P.MAX_TAG:
            self._wait_one()
        while self._next_tag in self._pending or self._next_tag in self._replies:
            self._next_tag = (self._next_tag + 1) & P.MAX_TAG
        tag = self._next_tag
        self._next_tag = (tag + 1) & P.MAX_TAG
        return tag

    def _wait_one(self) -> None:
        if not self.transport.wait(self.transport.now() + self.timeout_cycles):
            raise DeviceError(f"no answer within {self.timeout_cycles} cycles "
                              f"({len(self._pending)} queries outstanding)")
        self._drain()

    def _drain(self) -> None:
        while (got := self.transport.receive()) is not None:
            data, cycle = got
            frame = P.decode_frame(data, response=True)
            if frame.tag in self._pending and frame.opcode == Opcode.SUBMIT_QUERY:
                index, arrival, cand = self._pending.pop(frame.tag)
                if frame.status == Status.OK:
                    pos, scores = P.decode_result(frame.payload)
                    msg = ""
                else:
                    pos = scores = np.zeros(0, np.int64)
                    msg = P.error_text(frame)
                self._answers.append(Answer(index, frame.tag, Status(frame.status), msg, pos,
                                            scores, cand[pos], arrival, cycle))
            elif frame.tag in self._replies and self._replies[frame.tag] is None:
                self._replies[frame.tag] = (frame, cycle)
            else:
                self.unexpected.append(frame)

    def command(self, opcode: Opcode, payload=(), *, check: bool = True) -> P.Frame:
        """Send one command and wait for its answer; with ``check`` an error
        answer raises :class:`DeviceError`."""
        tag = self._tag()
        self._replies[tag] = None
        self.transport.send(P.encode_frame(P.Frame(opcode, tag, Status.OK, payload)))
        try:
            while self._replies[tag] is None:
                self._drain()
                if self._replies[tag] is None:
                    self._wait_one()
            frame, _ = self._replies[tag]
        finally:
            self._replies.pop(tag, None)
        if check and frame.status != Status.OK:
            raise DeviceError(f"{Opcode(opcode).name}: {Status(frame.status).name}: "
                              f"{P.error_text(frame)}", Status(frame.status))
        return frame

    def send_raw(self, data: bytes) -> P.Frame:
        """Send raw bytes as one frame and return the next answer that is not
        a query's (for tests of bad frames; no query may be outstanding)."""
        if self._pending:
            raise RuntimeError("send_raw: queries are outstanding")
        n = len(self.unexpected)
        self.transport.send(bytes(data))
        while len(self.unexpected) == n:
            self._drain()
            if len(self.unexpected) == n:
                self._wait_one()
        return self.unexpected.pop(n)

    # -- commands -----------------------------------------------------------------------
    def ping(self) -> int:
        """The device's protocol version."""
        return int(self.command(Opcode.PING).payload[0])

    def counters(self) -> dict[str, int]:
        return P.decode_counters(self.command(Opcode.READ_COUNTERS).payload)

    def load(self, model: CompiledModel, *, chunk_rows: int = 4096) -> None:
        """Send the model (module docstring) and configure its stages. Over a
        transport with a ``payload_format`` (the hardware's device records,
        :class:`host.device_format.DeviceFormat`), the model goes in that
        format and its tables straight into device memory."""
        fmt = getattr(self.transport, "payload_format", None)
        if fmt is not None:
            frames, images = fmt.compile(model)
            for channel, image in enumerate(images):
                self.transport.write_memory(channel, image)
            for opcode, payload in frames:
                self.command(opcode, payload)
            self.model = model
            return
        slots = {name: i for i, name in enumerate(dict.fromkeys(model.spec.stages))}
        for name, slot in slots.items():
            q = model.stages[name]
            self.command(Opcode.LOAD_WEIGHTS, P.encode_weights(slot, q))
            for chunk in P.table_chunks(slot, q, chunk_rows):
                self.command(Opcode.LOAD_TABLES, P.encode_table_chunk(chunk))
            if model.pinned and name in model.pinned:
                self.command(Opcode.LOAD_CACHE, P.encode_cache(slot, *model.pinned[name]))
        self.command(Opcode.CONFIGURE_STAGES, P.encode_stages(
            [(slots[n], k) for n, k in zip(model.spec.stages, model.spec.keep)]))
        self.model = model

    def submit(self, query: Query, index: int | None = None, arrival: int | None = None) -> int:
        """Send a query now (non-blocking); its tag. ``index`` labels its
        :class:`Answer` (default: the number of queries submitted before);
        ``arrival`` the cycle its latency counts from (default: now)."""
        if not np.array_equal(query.positions, np.arange(query.n_candidates)):
            raise ValueError("submit: a query's positions must be 0..N-1 (the wire order "
                             "is the tie order); submit the query before any subset")
        tag = self._tag()
        if index is None:
            index = len(self._answers) + len(self._pending)
        now = self.transport.now()
        self._pending[tag] = (index, now if arrival is None else int(arrival),
                              np.asarray(query.candidates))
        fmt = getattr(self.transport, "payload_format", None)
        payload = fmt.query(query) if fmt is not None else \
            P.encode_query(query.dense, query.user_ids, query.item_ids)
        self.transport.send(P.encode_frame(P.Frame(Opcode.SUBMIT_QUERY, tag, Status.OK,
                                                   payload)))
        return tag

    def poll(self) -> list[Answer]:
        """The answers received since the last call (non-blocking)."""
        self._drain()
        out, self._answers = self._answers, []
        return out

    def wait_all(self) -> list[Answer]:
        """Wait for every outstanding query; the answers since the last poll."""
        while self._pending:
            self._drain()
            if self._pending:
                self._wait_one()
        return self.poll()

    def run(self, queries: Sequence[Query], *, rate_qps: float | None = None, seed: int = 0,
            progress: bool = True, positives=None, check: bool = True,
            quality: bool = True) -> RunReport:
        """Stream ``queries`` under open-loop Poisson arrivals (module
        docstring) and report. ``check`` compares each answer with the
        golden pipeline run on the host (needs the loaded model);
        ``quality`` computes the float model's answers as the reference
        (when the model has float stages); ``positives`` are the held-out
        items of each query, if any."""
        from tqdm import tqdm

        if self.model is None:
            raise RuntimeError("run: load a model first")
        if self._pending:
            raise RuntimeError("run: queries are outstanding")
        self.poll()
        t0 = self.transport.now()
        arrivals = t0 + poisson_arrivals(len(queries), rate_qps, self.transport.clock_mhz, seed)
        answers: list[Answer] = []
        with tqdm(total=len(queries), disable=not progress, unit="q",
                  desc=f"queries ({self.transport.name})") as bar:
            for i, q in enumerate(queries):
                self.transport.advance(int(arrivals[i]))
                self.submit(q, index=i, arrival=int(arrivals[i]))
                got = self.poll()
                answers += got
                bar.update(len(got))
            while self._pending:
                self._wait_one()
                got = self.poll()
                answers += got
                bar.update(len(got))
        indices = sorted(a.index for a in answers)
        assert indices == list(range(len(queries))), \
            f"queries in ({len(queries)}) != answers out ({len(indices)}, lost or duplicated)"
        answers.sort(key=lambda a: a.index)

        checked = wrong = 0
        if check:
            for a in answers:
                checked += 1
                wrong += not answer_right(self.model, queries[a.index], a)
        reference = None
        if quality and self.model.float_stages is not None:
            reference = [run_pipeline(self.model.spec, self.model.float_stages, q)
                         for q in queries]
        report = RunReport(self.transport.name, self.transport.latency_source,
                           self.transport.clock_mhz, rate_qps, answers, self.counters(),
                           _quality(answers, reference, positives), checked, wrong)
        if self.unexpected:
            report.notes.append(f"{len(self.unexpected)} answers nobody asked for")
        return report
