"""The accelerator's top level: the command processor and the query path
of one stage engine, as one design.

::

    i (AXI4-Stream) -> CommandProcessor -> RecordRouter -> the blocks' write
                                                           and input streams
    StageEngine -> top-k filter -> ResultWriter -> CommandProcessor -> o
      |  ^   \\-> MLP engine 0 (MLPCluster)
      v  |
    FeatureFetch <-> EmbeddingLookup -> m0, m1, ... (AXI4 read masters)

Every command but ``PING`` is a device-format payload of port records
(:mod:`hw.loader`); :func:`ports` lists the ports, by name, in record port
order. Loading writes the MLP engine (``engine``: its own
commands), the lookup unit's descriptors (``emb_desc``, also read by the
feature fetch), on-chip banks (``bank_w``) and static caches (``cache_w``),
the feature fetch's requantization (``fetch_params``) and the stage
engine's tables and configuration; a query is the stage engine's ``q``,
``dense``, ``ubags`` and ``cand`` beats (in that order), answered by the result writer with
the query's tag (:func:`host.protocol.encode_result`), or an error: a bag
the lookup unit refused is ``BAD_ID``, any other failure ``DEVICE_ERROR``, a
query before a configuration (or after a new load of tables or weights)
``NOT_LOADED``. ``READ_COUNTERS`` is answered with :data:`COUNTERS`.
Table rows in device memory are written by the host directly (as a PCIe
DMA would; a testbench writes the memory model).

Writing the engine, the tables or the configuration while queries run is
undefined; so is a load the stage cannot run (the host checks,
:mod:`host.stage_program`).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .command import CommandProcessor, Opcode, Status, header_layout, word_layout
from .config import Config
from .embedding import (EmbeddingLookup, _units, bank_write_layout, cache_write_layout,
                        desc_write_layout)
from .feature_fetch import FeatureFetch, param_layout as fetch_param_layout
from .loader import RecordRouter
from .mlp_cluster import MLPCluster
from .mlp_isa import command_layout
from .result import ResultWriter
from .stage import StageEngine, StageStatus
from .topk import TopKFilter

__all__ = ["COUNTERS", "stage_engine", "ports", "Accelerator"]

#: The ``READ_COUNTERS`` words, in order (:data:`host.protocol.COUNTERS`).
COUNTERS = ("frames", "queries", "errors", "candidates", "macs", "lookup_bytes",
            "busy_cycles", "cache_hits", "cache_misses")

#: The stage engine's ports fed by records, in port order after the others.
_STAGE_PORTS = ("conf", "ldesc", "p0", "dot_params", "upair_params", "uw", "sw",
                "q", "ubags", "cand", "dense")


def stage_engine(config: Config, *, layouts_only: bool = False) -> StageEngine:
    """The top level's stage engine, on MLP engine 0, sized by ``config.stage``.
    ``layouts_only``: built only for its ports' layouts and sizes (the host's
    device format), never elaborated, so Amaranth's unused-elaboratable
    warning is silenced for it."""
    st = config.stage
    stage = StageEngine(config, engine=0, dim=st.dim, max_users=st.max_users,
                        max_items=st.max_items, max_hidden=st.max_hidden, max_pen=st.max_pen,
                        staging=st.staging)
    if layouts_only:
        stage._MustUse__silence = True       # (amaranth._unused.MustUse)
    return stage


def ports(config: Config, stage: StageEngine | None = None) -> list:
    """``(name, layout)`` of every record port, in port order."""
    stage = stage or stage_engine(config, layouts_only=True)
    emb = config.embedding
    out = [("engine", command_layout(config.array, 0)),
           ("emb_desc", desc_write_layout(emb)),
           ("fetch_params", fetch_param_layout(emb))]
    if emb.onchip_banks:
        out.append(("bank_w", bank_write_layout(emb)))
    if emb.cached:
        out.append(("cache_w", cache_write_layout(emb)))
    out += [(n, getattr(stage, n).signature.members["payload"].shape) for n in _STAGE_PORTS]
    return out


class Accelerator(wiring.Component):
    """See the module documentation.

    Attributes
    ----------
    i, o : the command and answer words (:func:`hw.command.word_layout`)
    m0, m1, ... : the lookup unit's AXI4 read masters
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {config!r}")
        self._cfg = config
        self.stage = stage_engine(config)
        self.emb = EmbeddingLookup(config.embedding)
        self.router = RecordRouter(ports(config, self.stage), counters=len(COUNTERS))
        members = {"i": In(stream.Signature(word_layout())),
                   "o": Out(stream.Signature(word_layout()))}
        for c in range(config.embedding.channels):
            members[f"m{c}"] = Out(getattr(self.emb, f"m{c}").signature)
        super().__init__(members)

    @property
    def config(self):
        return self._cfg

    @property
    def ports(self):
        return self.router.ports

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        emb_cfg = cfg.embedding
        m.submodules.cp = cp = CommandProcessor()
        m.submodules.router = router = self.router
        m.submodules.stage = stage = self.stage
        m.submodules.emb = emb = self.emb
        m.submodules.fetch = fetch = FeatureFetch(emb_cfg, cfg.stage.dim)
        m.submodules.cluster = cluster = MLPCluster(cfg.array)
        m.submodules.topk = topk = TopKFilter(cfg.topk)
        m.submodules.result = result = ResultWriter(cfg.topk)

        wiring.connect(m, wiring.flipped(self.i), cp.i)
        wiring.connect(m, cp.o, wiring.flipped(self.o))
        wiring.connect(m, cp.cmd, router.cmd)
        # queries are taken once a configuration is written, until tables or
        # weights are loaded again
        loaded = Signal()
        cb = cp.cmd.payload
        with m.If(router.conf.valid & router.conf.ready):
            m.d.sync += loaded.eq(1)
        with m.Elif(cp.cmd.valid & cp.cmd.ready & cb.first
                    & ((cb.opcode == Opcode.LOAD_WEIGHTS) | (cb.opcode == Opcode.LOAD_TABLES))):
            m.d.sync += loaded.eq(0)
        m.d.comb += router.loaded.eq(loaded)
        for c in range(emb_cfg.channels):
            wiring.connect(m, getattr(emb, f"m{c}"), wiring.flipped(getattr(self, f"m{c}")))

        # -- the records' ports ------------------------------------------------------
        for name in _STAGE_PORTS:
            wiring.connect(m, getattr(router, name), getattr(stage, name))
        wiring.connect(m, router.fetch_params, fetch.params)
        if emb_cfg.onchip_banks:
            wiring.connect(m, router.bank_w, emb.bank_w)
        if emb_cfg.cached:
            wiring.connect(m, router.cache_w, emb.cache_w)
        # descriptors: to the lookup unit and the feature fetch (both always ready)
        d = router.emb_desc
        m.d.comb += [emb.desc.valid.eq(d.valid), emb.desc.payload.eq(d.payload),
                     fetch.desc.valid.eq(d.valid), fetch.desc.payload.eq(d.payload),
                     d.ready.eq(emb.desc.ready & fetch.desc.ready)]
        # the engine: written by records, else driven by the stage
        ld, sc, ec = router.engine, stage.ecmd, cluster.cmd_0
        with m.If(ld.valid):
            m.d.comb += [ec.valid.eq(1), ec.payload.eq(ld.payload), ld.ready.eq(ec.ready)]
        with m.Else():
            m.d.comb += [ec.valid.eq(sc.valid), ec.payload.eq(sc.payload),
                         sc.ready.eq(ec.ready)]
        wiring.connect(m, cluster.resp_0, stage.eresp)

        # -- the query path ------------------------------------------------------------
        wiring.connect(m, stage.bags, fetch.bags)
        wiring.connect(m, fetch.o, stage.feat)
        for u in range(_units(emb_cfg)):
            wiring.connect(m, getattr(fetch, f"i{u}"), getattr(emb, f"i{u}"))
            wiring.connect(m, getattr(emb, f"o{u}"), getattr(fetch, f"o{u}"))
        wiring.connect(m, stage.topk, topk.i)
        wiring.connect(m, topk.o, result.i)
        # a query's answer: its tag (from its frame) and its status (from the stage)
        qt, st, mt = router.qtag, stage.status, result.meta
        both = qt.valid & st.valid
        m.d.comb += [mt.valid.eq(both), mt.payload.tag.eq(qt.payload),
                     mt.payload.status.eq(Mux(st.payload == StageStatus.OK, Status.OK,
                                              Mux(st.payload == StageStatus.BAD_LOOKUP,
                                                  Status.BAD_ID, Status.DEVICE_ERROR))),
                     qt.ready.eq(both & mt.ready), st.ready.eq(both & mt.ready)]

        # -- counters (READ_COUNTERS; host.protocol.COUNTERS, in that order) ----------
        count = {n: Signal(64, name=f"count_{n}") for n in COUNTERS}
        ow = cp.o.payload
        o_first = Signal(init=1)            # the next answer word is a header
        with m.If(cp.o.valid & cp.o.ready):
            m.d.sync += o_first.eq(ow.last)
        beats = sum(getattr(self, f"m{c}").rvalid & getattr(self, f"m{c}").rready
                    for c in range(emb_cfg.channels)) if emb_cfg.channels else 0
        m.d.sync += [
            count["frames"].eq(count["frames"] + (self.i.valid & self.i.ready
                                                  & self.i.payload.last)),
            count["queries"].eq(count["queries"] + (qt.valid & qt.ready)),
            count["errors"].eq(count["errors"] + (cp.o.valid & cp.o.ready & o_first
                                                  & (header_layout()(ow.data).status != 0))),
            count["candidates"].eq(count["candidates"] + (stage.cand.valid
                                                          & stage.cand.ready)),
            count["lookup_bytes"].eq(count["lookup_bytes"] + beats * emb_cfg.bus_bytes),
            count["busy_cycles"].eq(count["busy_cycles"] + stage.busy),
        ]
        # the embedding caches' counters, summed over the channels (static and
        # dynamic hits; lookups that went to memory); 0 without caches
        if emb_cfg.cached:
            cc = [getattr(emb, f"c{c}") for c in range(emb_cfg.channels)]
            m.d.comb += [count["cache_hits"].eq(sum(c.static_hits + c.dynamic_hits
                                                    for c in cc)),
                         count["cache_misses"].eq(sum(c.misses for c in cc))]
        # (MACs are not counted in the hardware: the host knows them from the
        # model, host.driver.query_cost; the word is 0)
        for k, n in enumerate(COUNTERS):
            m.d.comb += router.counters[k].eq(count[n])

        # -- answers: the router's and the result writer's, a frame at a time ----------
        owner = Signal()            # 1: the result writer's answer frame is under way
        busy = Signal()
        ra, wa = router.ans, result.ans
        pick = Mux(busy, owner, ~ra.valid & wa.valid)
        with m.If(pick):
            m.d.comb += [cp.ans.valid.eq(wa.valid), cp.ans.payload.eq(wa.payload),
                         wa.ready.eq(cp.ans.ready)]
        with m.Else():
            m.d.comb += [cp.ans.valid.eq(ra.valid), cp.ans.payload.eq(ra.payload),
                         ra.ready.eq(cp.ans.ready)]
        with m.If(cp.ans.valid & cp.ans.ready):
            m.d.sync += [busy.eq(~cp.ans.payload.last), owner.eq(pick)]
        re, we = router.err, result.err
        with m.If(re.valid):
            m.d.comb += [cp.cerr.valid.eq(1), cp.cerr.payload.eq(re.payload),
                         re.ready.eq(cp.cerr.ready)]
        with m.Else():
            m.d.comb += [cp.cerr.valid.eq(we.valid), cp.cerr.payload.eq(we.payload),
                         we.ready.eq(cp.cerr.ready)]
        return m
