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

    The top level runs one stage (a one-stage :class:`host.pipeline.PipelineSpec`);
    ``sb_rows`` is the sub-batch.
    """

    name = "device records"

    def __init__(self, config, *, sb_rows: int = 64):
        from hw.top import ports, stage_engine
        from .stage_program import StageLimits
        self.config = config
        stage = stage_engine(config, layouts_only=True)
        self.ports = ports(config, stage)
        self.limits = StageLimits.of(stage)
        self.sb_rows = sb_rows
        self.program = None
        self.keep = None

    def tables(self, stage):
        """The quantized ``stage``'s tables compiled for the device
        (:func:`host.table_compiler.compile_tables`, row-wise fused rows):
        where each lives and its memory image."""
        from .embedding import pack_fused
        from .table_compiler import TableSpec, compile_tables
        return compile_tables([TableSpec(t.name, pack_fused(rw), bits=stage.emb_bits,
                                         format="fused")
                               for t, rw in zip(stage.config.tables, stage.tables)],
                              self.config.embedding)

    def pin_hot_rows(self, model, queries):
        """``model`` with, for its stage, the rows that ``queries`` (a
        profile: calibration queries, say) look up most pinned in the static
        caches: per channel, the most frequent rows of the tables that
        channel holds that fit its ``static_rows``-row, ``static_ways``-way
        cache (:func:`host.cache.select_pinned`). Tables on chip never pass
        the caches and are left out."""
        import dataclasses
        from .cache import select_pinned
        emb = self.config.embedding
        if not emb.static_rows:
            raise ValueError(f"pin_hot_rows: {self.config.name} has no static cache "
                             f"(embedding.static_rows = 0)")
        name = model.spec.stages[0]
        q = model.stages[name]
        cfg = q.config
        counts = {t.name: np.zeros(t.rows, np.int64) for t in cfg.tables}
        for query in queries:
            for t, ids in zip(cfg.user_tables, query.user_ids):
                np.add.at(counts[t.name], np.asarray(ids, np.int64), 1)
            for k, t in enumerate(cfg.item_tables):
                np.add.at(counts[t.name], np.asarray(query.item_ids[:, k], np.int64), 1)
        amap = self.tables(q).address_map
        index = {t.name: i for i, t in enumerate(cfg.tables)}
        table, rows = [], []
        for c in range(emb.channels):
            here = {t.name: counts[t.name] for t in amap.tables
                    if t.kind == "channel" and t.unit == c and t.name in counts}
            if here:
                sel = select_pinned(here, emb.static_rows, tables=amap, ways=emb.static_ways)
                table += [index[amap.tables[t].name] for t in sel.table.tolist()]
                rows += sel.row.tolist()
        return dataclasses.replace(model, pinned={
            **(model.pinned or {}), name: (np.array(table, np.int64), np.array(rows, np.int64))})

    def compile(self, model):
        """``(frames, images)``: the load's ``(opcode, payload)`` frames and the
        channel memory images, for a compiled model of one stage."""
        from .protocol import Opcode
        from .stage_program import compile_stage
        from .table_compiler import bank_writes, descriptor_writes
        spec = model.spec
        if len(spec.stages) != 1:
            raise ValueError(f"the hardware top level runs one stage; {spec.name!r} has "
                             f"{len(spec.stages)}")
        q = model.stages[spec.stages[0]]
        emb = self.config.embedding
        tables = self.tables(q)
        prog = compile_stage(q, self.config, self.limits, sb_rows=self.sb_rows)
        if not 1 <= spec.keep[0] <= self.config.topk.k_max:
            raise ValueError(f"keep {spec.keep[0]}: the top-k filter gives 1 .. "
                             f"{self.config.topk.k_max}")
        t = RecordWriter(self.ports).add("emb_desc", descriptor_writes(tables.address_map,
                                                                         emb))
        if emb.onchip_banks:
            t.add("bank_w", bank_writes(tables))
        w = RecordWriter(self.ports).add("engine", prog.engine_cmds)
        for port, beats in (("fetch_params", prog.fetch_params), ("ldesc", prog.ldesc),
                            ("p0", prog.p0), ("dot_params", prog.dot_params),
                            ("upair_params", prog.upair_params), ("uw", prog.uw),
                            ("sw", prog.sw)):
            w.add(port, beats)
        c = RecordWriter(self.ports).add("conf", [prog.conf])
        frames = [(Opcode.LOAD_TABLES, t.words()), (Opcode.LOAD_WEIGHTS, w.words())]
        pinned = (model.pinned or {}).get(spec.stages[0])
        if pinned is not None:
            frames.append((Opcode.LOAD_CACHE, self._cache(q, tables, *pinned)))
        frames.append((Opcode.CONFIGURE_STAGES, c.words()))
        self.program, self.keep = prog, spec.keep[0]
        return frames, list(tables.channel_images)

    def _cache(self, q, tables, table_idx, rows) -> np.ndarray:
        """The ``LOAD_CACHE`` payload pinning ``rows`` of the stage's tables
        ``table_idx`` in the static caches (checked against the compiled
        tables and each channel's static cache: a row pinned twice, a table
        on chip, a full set are refused here)."""
        from .cache import static_cache_load, static_cache_writes
        emb = self.config.embedding
        if not emb.static_rows:
            raise ValueError(f"pinned rows: {self.config.name} has no static cache "
                             f"(embedding.static_rows = 0)")
        names = [q.config.tables[int(t)].name for t in np.asarray(table_idx).tolist()]
        load = static_cache_load(tables, list(zip(names, np.asarray(rows).tolist())),
                                 emb.static_rows, emb.static_ways)
        return RecordWriter(self.ports).add("cache_w", static_cache_writes(load, emb)).words()

    def query(self, query) -> np.ndarray:
        """A ``SUBMIT_QUERY`` payload (after :meth:`compile`)."""
        if self.program is None:
            raise RuntimeError("no model compiled for the device")
        p = self.program
        cfg = p.model.config
        if query.item_ids.shape[1] != len(cfg.item_tables) or \
                len(query.user_ids) != len(cfg.user_tables):
            raise ValueError(f"{cfg.name} takes {len(cfg.user_tables)} user bags and "
                             f"{len(cfg.item_tables)} item ids per candidate")
        if not 1 <= query.n_candidates <= 1 << self.config.topk.id_bits:
            raise ValueError(f"a query has 1 .. {1 << self.config.topk.id_bits} candidates "
                             f"(topk.id_bits), not {query.n_candidates}")
        # (this order: the stage takes a query's dense features only when the
        # query before is done, but may need the next query's bags before)
        return (RecordWriter(self.ports).add("q", [{"k": self.keep}])
                .add("dense", p.dense_beats(query)).add("ubags", p.ubag_beats(query))
                .add("cand", p.cand_beats(query)).words())
