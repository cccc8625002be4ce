"""The accelerator's top level: the command processor and the query path
of one or two stage engines, as one design.

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
``NOT_LOADED``. A query's frame goes through :class:`hw.query_guard.QueryGuard`,
so that each is one whole query, however broken: a broken one (parts
missing, out of order or repeated, wrong delimiters, cut short, a record
for another port) is answered ``BAD_PAYLOAD`` (a bad length
``MALFORMED_FRAME``), and the queries after it are not touched. Only a
query's frame writes a query's ports (:func:`query_ports`).
An MLP engine's answers go to its stage only when they answer the
stage's RUNs; a load's (``SET_SPLIT``, or an error: a bad engine command
in a load) are dropped. After a load's engine error every query is
answered ``NOT_LOADED`` until the next ``LOAD_WEIGHTS``: those that come
later are refused, and those taken before the error showed (the engine
answers a bad write after the RUN it follows, when the load's frame may
be answered already) ran on what the load left.
A configuration a stage cannot run (:attr:`hw.stage.StageEngine.conf_bad`:
counts out of range) is refused: its frame is answered ``BAD_CONFIG``, and
queries ``NOT_LOADED`` until a ``CONFIGURE_STAGES`` without one.
``READ_COUNTERS`` is answered with :data:`COUNTERS`.
Table rows in device memory are written by the host directly (as a PCIe
DMA would; a testbench writes the memory model). The router takes the next
query's records as soon as a query's are in: its tag waits in a FIFO of
:data:`QUERIES` for its answer.

Two stages (``config.stage.stages == 2``: RPAccel's multi-stage pipeline)
    Stage 2 is a second stage engine on MLP engine 1; the load splits the
    array (``SET_SPLIT``, the first of engine 0's commands; its trailer is
    dropped here, it is not the stage's) so the two run side by side on
    their own sub-arrays. Its ports are stage 1's with an ``s2_`` prefix
    (``s2_engine`` its engine's commands), but for ``cand``: a query is
    stage 1's records, then stage 2's ``s2_q``, ``s2_dense`` and
    ``s2_ubags``. Stage 1's candidates are recorded on their way in
    (:class:`hw.survivors.Survivors`); its top-k list names the survivors,
    which are stage 2's candidates (their position in stage 1 is their id,
    so the answer names the query's candidates); stage 2's top-k list is the
    answer. The two share the feature fetch (:class:`hw.bag_arbiter.BagArbiter`),
    so stage 2 of one query overlaps stage 1 of the next ones. A query
    whose stage-1 list failed (no survivors) gives stage 2 one stand-in
    candidate (position 0, ids 0) and is answered with the error. The
    answer's status is the first error of stage 1, the survivors (``BAD_K``
    or a position past ``stage.max_candidates``: ``BAD_PAYLOAD``) and stage 2.
    The ``stages`` record (:func:`stages_layout`, written with the
    configuration) runs stage 1 alone instead: its list is the answer,
    stage 2 and the survivors are bypassed, and a query is stage 1's records.

A load (``LOAD_*``, ``CONFIGURE_STAGES``) waits until no query is under
way and the MLP engines are idle, so it never lands among queries. A load
the stage cannot run but :attr:`~hw.stage.StageEngine.conf_bad` lets
through is undefined (the host checks, :mod:`host.stage_program`).
"""

from amaranth.hdl import Cat, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .bag_arbiter import BagArbiter
from .command import CommandProcessor, Opcode, Status, header_layout, word_layout
from .config import Config
from .embedding import (EmbeddingLookup, _units, bank_write_layout, cache_write_layout,
                        desc_write_layout)
from .feature_fetch import FeatureFetch, param_layout as fetch_param_layout
from .loader import RecordRouter, qtag_layout
from .mlp_cluster import MLPCluster
from .mlp_isa import Status as EStatus, command_layout
from .query_guard import QueryGuard
from .result import ResultWriter
from .stage import StageEngine, StagePhase, StageStatus
from .survivors import SurvivorStatus, Survivors
from .topk import TopKFilter

__all__ = ["COUNTERS", "QUERIES", "stage_engine", "stage_engines", "ports", "query_ports",
           "stages_layout", "Accelerator"]

#: Queries whose frame is in but whose answer is not out yet, per status FIFO
#: (the router goes on to the next query's records meanwhile).
QUERIES = 4

#: The ``READ_COUNTERS`` words, in order (:data:`host.protocol.COUNTERS`).
COUNTERS = ("frames", "queries", "errors", "candidates", "macs", "lookup_bytes",
            "busy_cycles", "cache_hits", "cache_misses",
            *(f"s{s}_{n}" for s in (1, 2)
              for n in ("bottom_cycles", "user_cycles", "items_cycles", "engine_cycles")))

#: The stage engine's ports fed by records, in port order after the others.
_STAGE_PORTS = ("conf", "ldesc", "p0", "dot_params", "upair_params", "uw", "sw", "bw",
                "q", "ubags", "cand", "dense")

#: A query's ports, per stage (hw.query_guard): only a query's frame writes them.
_QUERY_PORTS = ("q", "dense", "ubags", "cand")


def stage_engine(config: Config, engine: int = 0, *,
                 layouts_only: bool = False) -> StageEngine:
    """The top level's stage engine on MLP engine ``engine`` (0: stage 1, 1:
    stage 2), sized by ``config.stage``. ``layouts_only``: built only for its
    ports' layouts and sizes (the host's device format), never elaborated, so
    Amaranth's unused-elaboratable warning is silenced for it."""
    st = config.stage
    stage = StageEngine(config, engine=engine, dim=st.dim, max_users=st.max_users,
                        max_items=st.max_items, max_hidden=st.max_hidden, max_pen=st.max_pen,
                        max_bottom=st.max_bottom, bottom_layers=st.bottom_layers,
                        staging=st.staging)
    if layouts_only:
        stage._MustUse__silence = True       # (amaranth._unused.MustUse)
    return stage


def stage_engines(config: Config, *, layouts_only: bool = False) -> list:
    """One stage engine per stage (``config.stage.stages``), on engines 0, 1."""
    return [stage_engine(config, e, layouts_only=layouts_only)
            for e in range(config.stage.stages)]


def ports(config: Config, stages: list | None = None) -> list:
    """``(name, layout)`` of every record port, in port order. Stage 2's
    ports (two stages) are stage 1's with an ``s2_`` prefix, ``s2_engine``
    its MLP engine's commands; it has no ``cand`` (its candidates are stage
    1's survivors)."""
    stages = stages or stage_engines(config, layouts_only=True)
    emb = config.embedding
    out = [("engine", command_layout(config.array, 0)),
           ("emb_desc", desc_write_layout(emb)),
           ("fetch_params", fetch_param_layout(emb))]
    if emb.onchip_banks:
        out.append(("bank_w", bank_write_layout(emb)))
    if emb.cached:
        out.append(("cache_w", cache_write_layout(emb)))
    out += [(n, getattr(stages[0], n).signature.members["payload"].shape)
            for n in _STAGE_PORTS]
    if len(stages) == 2:
        out.append(("s2_engine", command_layout(config.array, 1)))
        out += [(f"s2_{n}", getattr(stages[1], n).signature.members["payload"].shape)
                for n in _STAGE_PORTS if n != "cand"]
        out.append(("stages", stages_layout()))
    return out


def query_ports(config: Config) -> list:
    """The record ports of a query (:data:`_QUERY_PORTS`, stage 2's with an
    ``s2_`` prefix), in wire order: only a ``SUBMIT_QUERY`` frame writes
    them (:class:`hw.loader.RecordRouter`)."""
    out = list(_QUERY_PORTS)
    if config.stage.stages == 2:
        out += [f"s2_{n}" for n in _QUERY_PORTS if n != "cand"]
    return out


def stages_layout() -> data.StructLayout:
    """The ``stages`` record (two-stage top levels): ``one``: run stage 1
    alone (its list is the answer; stage 2 and the survivors are bypassed)."""
    return data.StructLayout({"one": 1})


def _engine_port(m, ld, sc, ec, resp, eresp):
    """An MLP engine: its commands written by records (``ld``), else its
    stage's (``sc``), each tagged with its sender (1: the stage); the
    answers tagged 1 go to the stage (``eresp``), the others are dropped: a
    load's SET_SPLIT or RUN, and a bad command's error. Returns a pulse: a
    dropped answer was an error (a load's bad command)."""
    with m.If(ld.valid):
        m.d.comb += [ec.valid.eq(1), ec.payload.eq(ld.payload), ec.payload.tag.eq(0),
                     ld.ready.eq(ec.ready)]
    with m.Else():
        m.d.comb += [ec.valid.eq(sc.valid), ec.payload.eq(sc.payload), ec.payload.tag.eq(1),
                     sc.ready.eq(ec.ready)]
    to_stage = resp.payload.tag
    m.d.comb += [eresp.valid.eq(resp.valid & to_stage), eresp.payload.eq(resp.payload),
                 resp.ready.eq(Mux(to_stage, eresp.ready, 1))]
    return (resp.valid & resp.ready & resp.payload.last & ~to_stage
            & (resp.payload.status != EStatus.OK))


def _answer_status(st):
    """A stage's status as the query's answer status."""
    return Mux(st == StageStatus.OK, Status.OK,
               Mux(st == StageStatus.BAD_LOOKUP, Status.BAD_ID, Status.DEVICE_ERROR))


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
        self.stages = stage_engines(config)
        self.emb = EmbeddingLookup(config.embedding)
        self.router = RecordRouter(ports(config, self.stages), counters=len(COUNTERS),
                                   query_ports=query_ports(config))
        st = config.stage
        self.guard = QueryGuard(self.stages, limit=(
            (st.max_candidates, 1 << config.topk.id_bits) if st.stages == 2
            else 1 << config.topk.id_bits))
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
        two = len(self.stages) == 2
        m.submodules.cp = cp = CommandProcessor()
        m.submodules.router = router = self.router
        m.submodules.stage = stage = self.stages[0]
        m.submodules.emb = emb = self.emb
        m.submodules.fetch = fetch = FeatureFetch(emb_cfg, cfg.stage.dim,
                                                  depth=cfg.stage.fetch_depth)
        m.submodules.cluster = cluster = MLPCluster(cfg.array)
        m.submodules.topk = topk = TopKFilter(cfg.topk)
        m.submodules.result = result = ResultWriter(cfg.topk)

        wiring.connect(m, wiring.flipped(self.i), cp.i)
        wiring.connect(m, cp.o, wiring.flipped(self.o))
        wiring.connect(m, cp.cmd, router.cmd)
        # queries are taken once every stage that runs has a configuration,
        # until tables or weights are loaded again; a configuration a stage
        # refuses (``conf_bad``) answers its frame BAD_CONFIG, and no query
        # is taken until a CONFIGURE_STAGES that refuses none
        bad_conf = Signal()
        cb = cp.cmd.payload
        confs = [(getattr(router, "s2_conf" if s else "conf"), st)
                 for s, st in enumerate(self.stages)]
        refused = Cat(rc.valid & rc.ready & st.conf_bad for rc, st in confs).any()
        m.d.comb += router.reject.eq(refused)
        have_conf = Signal(len(confs))
        for s, (rc, st) in enumerate(confs):
            with m.If(rc.valid & rc.ready & ~st.conf_bad):
                m.d.sync += have_conf[s].eq(1)
            with m.Elif(cp.cmd.valid & cp.cmd.ready & cb.first
                        & ((cb.opcode == Opcode.LOAD_WEIGHTS)
                           | (cb.opcode == Opcode.LOAD_TABLES))):
                m.d.sync += have_conf[s].eq(0)
        # (two stages: stage 2 too, unless stage 1 runs alone, ``one``)
        one = Signal()
        loaded = have_conf[0] & ((one | have_conf[1]) if two else 1)
        with m.If(refused):
            m.d.sync += bad_conf.eq(1)
        with m.Elif(cp.cmd.valid & cp.cmd.ready & cb.first
                    & (cb.opcode == Opcode.CONFIGURE_STAGES)):
            m.d.sync += bad_conf.eq(0)
        for c in range(emb_cfg.channels):
            wiring.connect(m, getattr(emb, f"m{c}"), wiring.flipped(getattr(self, f"m{c}")))

        # -- the records' ports ------------------------------------------------------
        # a query's records through the guard (each frame one whole query),
        # the others straight to the stage
        m.submodules.guard = guard = self.guard
        for name in guard.parts:
            wiring.connect(m, getattr(router, name), getattr(guard, f"i_{name}"))
        for name in _STAGE_PORTS:
            if name not in _QUERY_PORTS:
                wiring.connect(m, getattr(router, name), getattr(stage, name))
            elif name != "cand" or not two:
                wiring.connect(m, getattr(guard, f"o_{name}"), getattr(stage, name))
        for s in range(len(self.stages)):
            rc = getattr(router, "s2_conf" if s else "conf")
            with m.If(rc.valid & rc.ready & ~self.stages[s].conf_bad):
                m.d.sync += [guard.n_pooled[s].eq(rc.payload.n_pooled),
                             guard.dense_chunks[s].eq(rc.payload.dense_chunks)]
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

        # a load's engine commands that failed: no query runs until the
        # next LOAD_WEIGHTS (the model is not what the host loaded)
        fault = Signal()
        faults = [_engine_port(m, router.engine, stage.ecmd, cluster.cmd_0,
                               cluster.resp_0, stage.eresp)]
        if two:
            faults.append(_engine_port(m, router.s2_engine, self.stages[1].ecmd,
                                       cluster.cmd_1, cluster.resp_1, self.stages[1].eresp))
        with m.If(Cat(*faults).any()):
            m.d.sync += fault.eq(1)
        with m.Elif(cp.cmd.valid & cp.cmd.ready & cb.first & (cb.opcode == Opcode.LOAD_WEIGHTS)):
            m.d.sync += fault.eq(0)
        m.d.comb += router.loaded.eq(loaded & ~fault & ~bad_conf)

        # -- the query path ------------------------------------------------------------
        for u in range(_units(emb_cfg)):
            wiring.connect(m, getattr(fetch, f"i{u}"), getattr(emb, f"i{u}"))
            wiring.connect(m, getattr(emb, f"o{u}"), getattr(fetch, f"o{u}"))
        wiring.connect(m, stage.topk, topk.i)
        # the query's tag and frame status, from the guard once the query is
        # whole (the router goes on to the next query); a frame's error is
        # its answer's status
        wiring.connect(m, router.qtag, guard.i_qtag)
        m.submodules.qtags = qtags = SyncFIFOBuffered(width=qtag_layout().size,
                                                      depth=QUERIES)
        m.d.comb += [qtags.w_data.eq(guard.o_qtag.payload), qtags.w_en.eq(guard.o_qtag.valid),
                     guard.o_qtag.ready.eq(qtags.w_rdy)]
        qt = qtag_layout()(qtags.r_data)
        # (a query answered after a load's engine error ran on what that load
        # left: its engine answers come after the error's, so it is answered
        # after ``fault`` is set)
        q_status = Signal(Status)
        m.d.comb += q_status.eq(Mux(fault, Status.NOT_LOADED, qt.status))
        mt = result.meta
        m.d.comb += mt.payload.tag.eq(qt.tag)
        if not two:
            wiring.connect(m, stage.bags, fetch.bags)
            wiring.connect(m, fetch.o, stage.feat)
            wiring.connect(m, topk.o, result.i)
            st = stage.status
            both = qtags.r_rdy & st.valid
            m.d.comb += [mt.valid.eq(both),
                         mt.payload.status.eq(Mux(q_status != Status.OK, q_status,
                                                  _answer_status(st.payload))),
                         qtags.r_en.eq(both & mt.ready), st.ready.eq(both & mt.ready)]
            busy = stage.busy
        else:
            busy = self._stage_two(m, router, guard, cluster, fetch, stage, topk, result,
                                   qtags, q_status, one)

        # A load waits while a query is under way (from the guard's tag to its
        # answer) or an engine has work or answers owed: a load among queries
        # would mix old and new state, and a load's engine error shows before
        # the next load starts.
        in_flight = Signal(range(QUERIES + 2))
        m.d.sync += in_flight.eq(in_flight + (guard.o_qtag.valid & guard.o_qtag.ready)
                                 - (mt.valid & mt.ready))
        m.d.comb += router.hold.eq((in_flight != 0) | busy | cluster.pending.any())

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
            count["queries"].eq(count["queries"] + (mt.valid & mt.ready)),
            count["errors"].eq(count["errors"] + (cp.o.valid & cp.o.ready & o_first
                                                  & (header_layout()(ow.data).status != 0))),
            count["candidates"].eq(count["candidates"] + (router.cand.valid
                                                          & router.cand.ready)),
            count["lookup_bytes"].eq(count["lookup_bytes"] + beats * emb_cfg.bus_bytes),
            count["busy_cycles"].eq(count["busy_cycles"] + busy),
        ]
        # where each stage's cycles go (its phase), and its engine's busy cycles
        # (stage n runs on engine n - 1)
        for n, st in enumerate(self.stages, start=1):
            for name, phase in (("bottom", StagePhase.BOTTOM), ("user", StagePhase.USER),
                                ("items", StagePhase.ITEMS)):
                c = count[f"s{n}_{name}_cycles"]
                m.d.sync += c.eq(c + (st.phase == phase))
            c = count[f"s{n}_engine_cycles"]
            m.d.sync += c.eq(c + cluster.busy[n - 1])
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
        # (held from the first beat offered, taken or not: the command
        # processor writes an answer's header from its first beat before it
        # takes it, and a beat offered stays until it is taken)
        with m.If(cp.ans.valid):
            m.d.sync += [busy.eq(1), owner.eq(pick)]
        with m.If(cp.ans.valid & cp.ans.ready & cp.ans.payload.last):
            m.d.sync += busy.eq(0)
        re, we = router.err, result.err
        with m.If(re.valid):
            m.d.comb += [cp.cerr.valid.eq(1), cp.cerr.payload.eq(re.payload),
                         re.ready.eq(cp.cerr.ready)]
        with m.Else():
            m.d.comb += [cp.cerr.valid.eq(we.valid), cp.cerr.payload.eq(we.payload),
                         we.ready.eq(cp.cerr.ready)]
        return m

    def _stage_two(self, m, router, guard, cluster, fetch, stage, topk, result, qtags,
                   q_status, one):
        """Stage 2 (module documentation); returns the stages' busy."""
        cfg = self._cfg
        m.submodules.stage2 = stage2 = self.stages[1]
        m.submodules.topk2 = topk2 = TopKFilter(cfg.topk)
        m.submodules.arbiter = arb = BagArbiter(cfg.embedding, cfg.stage.dim, clients=2,
                                                depth=cfg.stage.fetch_depth)
        m.submodules.survivors = surv = Survivors(cfg, max_items=cfg.stage.max_items,
                                                  max_candidates=cfg.stage.max_candidates)
        for name in _STAGE_PORTS:
            if name not in _QUERY_PORTS:
                wiring.connect(m, getattr(router, f"s2_{name}"), getattr(stage2, name))
            elif name != "cand":
                wiring.connect(m, getattr(guard, f"o_s2_{name}"), getattr(stage2, name))
        for out, into in (
                # one feature fetch for both stages
                (stage.bags, arb.i0), (stage2.bags, arb.i1), (arb.o, fetch.bags),
                (fetch.o, arb.r), (arb.r0, stage.feat), (arb.r1, stage2.feat),
                (stage2.topk, topk2.i)):
            wiring.connect(m, out, into)
        # one stage (the ``stages`` record): stage 1 alone, the rest bypassed
        m.d.comb += router.stages.ready.eq(1)
        with m.If(router.stages.valid):
            m.d.sync += one.eq(router.stages.payload.one)
        m.d.comb += guard.one.eq(one)
        # stage 1's candidates are recorded on their way in; its list gives
        # stage 2's candidates (one stage: straight to stage 1; its list is
        # the answer)
        rc, sc, t1, t2, ri = guard.o_cand, stage.cand, topk.o, topk2.o, result.i
        m.d.comb += [surv.cand.payload.eq(rc.payload), surv.cand.valid.eq(rc.valid & ~one),
                     sc.valid.eq(Mux(one, rc.valid, surv.cand_o.valid)),
                     sc.payload.eq(Mux(one, rc.payload, surv.cand_o.payload)),
                     rc.ready.eq(Mux(one, sc.ready, surv.cand.ready)),
                     surv.cand_o.ready.eq(sc.ready & ~one),
                     surv.topk.payload.eq(t1.payload), surv.topk.valid.eq(t1.valid & ~one),
                     ri.valid.eq(Mux(one, t1.valid, t2.valid)),
                     ri.payload.eq(Mux(one, t1.payload, t2.payload)),
                     t1.ready.eq(Mux(one, ri.ready, surv.topk.ready)),
                     t2.ready.eq(ri.ready & ~one)]
        # stage 2's candidates: the survivors, or for a query without any (a
        # failed list) one stand-in (position 0, ids 0: every table has a
        # row 0) whose answer is dropped by the error status
        sw = Shape.cast(Status).width
        m.submodules.s1_status = s1 = SyncFIFOBuffered(width=sw, depth=QUERIES)
        m.submodules.sv_status = sv = SyncFIFOBuffered(width=sw, depth=QUERIES)
        m.d.comb += [s1.w_data.eq(_answer_status(stage.status.payload)),
                     s1.w_en.eq(stage.status.valid), stage.status.ready.eq(s1.w_rdy)]
        e, o, c2 = surv.err, surv.o, stage2.cand
        ok = e.payload.status == SurvivorStatus.OK
        with m.If(e.valid & sv.w_rdy):
            with m.If(ok):
                m.d.comb += [c2.valid.eq(o.valid), c2.payload.eq(o.payload),
                             o.ready.eq(c2.ready),
                             e.ready.eq(o.valid & c2.ready & (o.payload.left == 0))]
            with m.Else():
                m.d.comb += [c2.valid.eq(1), e.ready.eq(c2.ready)]
        bad_input = ((e.payload.status == SurvivorStatus.BAD_POS)
                     | (e.payload.status == SurvivorStatus.BAD_K))
        m.d.comb += [sv.w_en.eq(e.valid & e.ready),
                     sv.w_data.eq(Mux(ok, Status.OK, Mux(bad_input, Status.BAD_PAYLOAD,
                                                         Status.DEVICE_ERROR)))]
        # the answer's status: the first error of the frame, stage 1, the
        # survivors, stage 2 (one stage: the frame's, stage 1's)
        st2, mt = stage2.status, result.meta
        all_in = qtags.r_rdy & s1.r_rdy & (one | (sv.r_rdy & st2.valid))
        taken = all_in & mt.ready
        m.d.comb += [mt.valid.eq(all_in),
                     mt.payload.status.eq(
                         Mux(q_status != Status.OK, q_status,
                             Mux(one | (s1.r_data != Status.OK), s1.r_data,
                                 Mux(sv.r_data != Status.OK, sv.r_data,
                                     _answer_status(st2.payload))))),
                     qtags.r_en.eq(taken), s1.r_en.eq(taken),
                     sv.r_en.eq(taken & ~one), st2.ready.eq(taken & ~one)]
        return stage.busy | stage2.busy
