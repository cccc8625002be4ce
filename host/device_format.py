"""The device format of payloads: port records (:mod:`hw.loader`), packed
from the blocks' own data layouts (:class:`host.packing.Packer`)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from amaranth.hdl import Shape

from hw.loader import record_header

from .packing import Packer

__all__ = ["RecordWriter"]


class RecordWriter:
    """Builds a payload of records for a router whose ports are ``ports``
    (``(name, layout)`` pairs, as :class:`hw.loader.RecordRouter` takes)."""

    def __init__(self, ports: Sequence):
        self._index = {name: i for i, (name, _) in enumerate(ports)}
        self._packers = {name: Packer(layout) for name, layout in ports}
        self._words = {name: -(-Shape.cast(layout).width // 64) for name, layout in ports}
        self._out: list[int] = []

    def add(self, port: str, beats: Iterable) -> "RecordWriter":
        """A record of ``beats`` (dicts in the port's layout, or packed ints)."""
        if port not in self._index:
            raise ValueError(f"no port {port!r}; the ports are {sorted(self._index)}")
        packer, n = self._packers[port], self._words[port]
        body = []
        for b in beats:
            bits = b if isinstance(b, int) else packer.pack(b)
            body += [(bits >> (64 * w)) & ((1 << 64) - 1) for w in range(n)]
        count = len(body) // n
        if count:
            self._out += [record_header(self._index[port], count)] + body
        return self

    def words(self) -> np.ndarray:
        return np.array(self._out, dtype=np.uint64)


class DeviceFormat:
    """How the driver speaks to the hardware top level (:class:`hw.top.Accelerator`):
    its loads and queries as port records, and its tables as memory images
    the transport writes into device memory (:meth:`Transport.write_memory`).

    A pipeline (:class:`host.pipeline.PipelineSpec`) of one stage, or of
    two on a top level built with two (``config.stage.stages``). Stage 1
    runs on MLP engine 0; with two stages, stage 2 on engine 1 and both in
    the array's :attr:`~hw.config.ArrayConfig.stages_mode` (the row split in
    two, when the array has it); one stage on a two-stage top level runs on the
    whole array, with stage 2 bypassed (the ``stages`` record). On a
    two-stage top level ``SET_SPLIT`` is the first of engine 0's commands.
    The stages' tables are compiled together, stage 1's first; stage 2's
    are named ``s2:<table>``. ``sb_rows`` is the sub-batch; stage 2's is
    ``s2_sb_rows``, by default half of stage 1's keep (at most ``sb_rows``),
    so that the rows of its first half come back while its second half runs.
    """

    name = "device records"

    def __init__(self, config, *, sb_rows: int = 64, s2_sb_rows: int | None = None):
        from hw.top import ports, stage_engines
        from .stage_program import StageLimits
        self.config = config
        stages = stage_engines(config, layouts_only=True)
        self.ports = ports(config, stages)
        self.limits = [StageLimits.of(s) for s in stages]
        self.sb_rows = sb_rows
        self.s2_sb_rows = s2_sb_rows
        self.programs = None
        self.keep = None

    @staticmethod
    def _prefix(s: int) -> str:
        return "" if s == 0 else f"s{s + 1}:"

    def tables(self, *stages):
        """The quantized ``stages``' tables (in pipeline order) compiled for
        the device (:func:`host.table_compiler.compile_tables`, row-wise
        fused rows): where each lives and its memory image."""
        from .embedding import pack_fused
        from .table_compiler import TableSpec, compile_tables
        return compile_tables([TableSpec(self._prefix(s) + t.name, pack_fused(rw),
                                         bits=q.emb_bits, format="fused")
                               for s, q in enumerate(stages)
                               for t, rw in zip(q.config.tables, q.tables)],
                              self.config.embedding)

    def _stages(self, model) -> list:
        """``model``'s quantized stages, checked against the top level's."""
        spec = model.spec
        n = len(self.limits)
        if not 1 <= len(spec.stages) <= n:
            runs = "1 or 2 stages" if n == 2 else "1 stage"
            raise ValueError(f"the hardware top level runs {runs} (stage.stages); "
                             f"{spec.name!r} has {len(spec.stages)}")
        return [model.stages[name] for name in spec.stages]

    def pin_hot_rows(self, model, queries):
        """``model`` with the rows that ``queries`` (a profile: calibration
        queries, say) look up most pinned in the static caches: per channel,
        the most frequent rows of the tables (every stage's) that channel
        holds that fit its ``static_rows``-row, ``static_ways``-way cache
        (:func:`host.cache.select_pinned`). Every stage is counted as if it
        saw every candidate. Tables on chip never pass the caches and are
        left out."""
        import dataclasses
        from .cache import select_pinned
        emb = self.config.embedding
        if not emb.static_rows:
            raise ValueError(f"pin_hot_rows: {self.config.name} has no static cache "
                             f"(embedding.static_rows = 0)")
        qs = self._stages(model)
        counts, where = {}, {}
        for s, q in enumerate(qs):
            cfg = q.config
            for k, t in enumerate(cfg.tables):
                counts[self._prefix(s) + t.name] = np.zeros(t.rows, np.int64)
                where[self._prefix(s) + t.name] = (s, k)
            for query in queries:
                for t, ids in zip(cfg.user_tables, query.user_ids):
                    np.add.at(counts[self._prefix(s) + t.name], np.asarray(ids, np.int64), 1)
                for k, t in enumerate(cfg.item_tables):
                    np.add.at(counts[self._prefix(s) + t.name],
                              np.asarray(query.item_ids[:, k], np.int64), 1)
        amap = self.tables(*qs).address_map
        pins = [([], []) for _ in qs]
        for c in range(emb.channels):
            here = {t.name: counts[t.name] for t in amap.tables
                    if t.kind == "channel" and t.unit == c and t.name in counts}
            if here:
                sel = select_pinned(here, emb.static_rows, tables=amap, ways=emb.static_ways)
                for t, r in zip(sel.table.tolist(), sel.row.tolist()):
                    s, k = where[amap.tables[t].name]
                    pins[s][0].append(k)
                    pins[s][1].append(r)
        return dataclasses.replace(model, pinned={
            **(model.pinned or {}),
            **{name: (np.array(tk, np.int64), np.array(rows, np.int64))
               for name, (tk, rows) in zip(model.spec.stages, pins)}})

    def compile(self, model):
        """``(frames, images)``: the load's ``(opcode, payload)`` frames and the
        channel memory images, for a compiled model of as many stages as the
        top level runs."""
        from .protocol import Opcode
        from .stage_program import compile_stage
        from .table_compiler import bank_writes, descriptor_writes
        from hw.mlp_isa import Opcode as EOp
        spec = model.spec
        qs = self._stages(model)
        emb = self.config.embedding
        tables = self.tables(*qs)
        split = 1 if len(qs) == 1 else self.config.array.stages_mode
        progs, base = [], 0
        for s, (q, limits) in enumerate(zip(qs, self.limits)):
            sb = self.sb_rows
            if s == 1:
                sb = (self.s2_sb_rows if self.s2_sb_rows is not None
                      else min(sb, max(1, -(-spec.keep[0] // 2))))
            progs.append(compile_stage(q, self.config, limits, engine=s, split=split,
                                       sb_rows=sb, table_base=base))
            base += len(q.config.tables)
        for k in spec.keep:
            if not 1 <= k <= self.config.topk.k_max:
                raise ValueError(f"keep {k}: the top-k filter gives 1 .. "
                                 f"{self.config.topk.k_max}")
        if len(qs) == 2:
            a, b = (q.config for q in qs)
            shape = lambda c: (c.dense_features, len(c.user_tables), len(c.item_tables))  # noqa: E731
            if shape(a) != shape(b):
                raise ValueError(f"stage 2 ({b.name}) re-ranks stage 1's ({a.name}) "
                                 f"candidates of the same queries: both need the same dense "
                                 f"features, user bags and item ids per candidate, not "
                                 f"{shape(a)} and {shape(b)}")
        t = RecordWriter(self.ports).add("emb_desc", descriptor_writes(tables.address_map,
                                                                         emb))
        if emb.onchip_banks:
            t.add("bank_w", bank_writes(tables))
        w = RecordWriter(self.ports)
        c = RecordWriter(self.ports)
        for s, prog in enumerate(progs):
            pre = "s2_" if s else ""
            cmds = list(prog.engine_cmds)
            if s == 0 and len(self.limits) == 2:
                # (also back to the whole array after a two-stage load)
                cmds.insert(0, prog.target.pack(EOp.SET_SPLIT,
                                                split={"index": prog.target.split_index}))
            w.add(pre + "engine", cmds)
            if s == 0:
                w.add("fetch_params", [p for q in progs for p in q.fetch_params])
            for port in ("ldesc", "p0", "dot_params", "upair_params", "uw", "sw", "bw"):
                w.add(pre + port, getattr(prog, port))
            c.add(pre + "conf", [prog.conf])
        if len(self.limits) == 2:
            c.add("stages", [{"one": int(len(progs) == 1)}])
        frames = [(Opcode.LOAD_TABLES, t.words()), (Opcode.LOAD_WEIGHTS, w.words())]
        pins = [(self._prefix(s) + q.config.tables[int(k)].name, int(r))
                for s, (name, q) in enumerate(zip(spec.stages, qs))
                for k, r in zip(*(np.asarray(a).tolist()
                                  for a in (model.pinned or {}).get(name, ((), ()))))]
        if pins:
            frames.append((Opcode.LOAD_CACHE, self._cache(tables, pins)))
        frames.append((Opcode.CONFIGURE_STAGES, c.words()))
        self.programs, self.keep = progs, spec.keep
        return frames, list(tables.channel_images)

    def _cache(self, tables, pins) -> np.ndarray:
        """The ``LOAD_CACHE`` payload pinning ``pins`` (``(table, row)``, the
        compiled tables' names) in the static caches (checked against the
        compiled tables and each channel's static cache: a row pinned twice,
        a table on chip, a full set are refused here)."""
        from .cache import static_cache_load, static_cache_writes
        emb = self.config.embedding
        if not emb.static_rows:
            raise ValueError(f"pinned rows: {self.config.name} has no static cache "
                             f"(embedding.static_rows = 0)")
        load = static_cache_load(tables, pins, emb.static_rows, emb.static_ways)
        return RecordWriter(self.ports).add("cache_w", static_cache_writes(load, emb)).words()

    def query(self, query) -> np.ndarray:
        """A ``SUBMIT_QUERY`` payload (after :meth:`compile`)."""
        if self.programs is None:
            raise RuntimeError("no model compiled for the device")
        p = self.programs[0]
        for prog in self.programs:
            cfg = prog.model.config
            if query.item_ids.shape[1] != len(cfg.item_tables) or \
                    len(query.user_ids) != len(cfg.user_tables):
                raise ValueError(f"{cfg.name} takes {len(cfg.user_tables)} user bags and "
                                 f"{len(cfg.item_tables)} item ids per candidate")
        n = 1 << self.config.topk.id_bits
        if len(self.programs) == 2:
            n = min(n, self.config.stage.max_candidates)
        if not 1 <= query.n_candidates <= n:
            why = "stage.max_candidates" if len(self.programs) == 2 else "topk.id_bits"
            raise ValueError(f"a query has 1 .. {n} candidates ({why}), not "
                             f"{query.n_candidates}")
        # (this order: the stage takes a query's dense features only when the
        # query before is done, but may need the next query's bags before;
        # stage 2's after stage 1's candidates, which it re-ranks)
        w = (RecordWriter(self.ports).add("q", [{"k": self.keep[0]}])
             .add("dense", p.dense_beats(query)).add("ubags", p.ubag_beats(query))
             .add("cand", p.cand_beats(query)))
        if len(self.programs) == 2:
            p2 = self.programs[1]
            w.add("s2_q", [{"k": self.keep[1]}]).add("s2_dense", p2.dense_beats(query)) \
             .add("s2_ubags", p2.ubag_beats(query))
        return w.words()
