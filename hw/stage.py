"""A stage engine: one DLRM ``"dot"`` stage of a query
(:class:`host.models.QuantizedStageModel`), from its dense features, user
bags and candidates to the top-k filter's input, on one MLP engine, with
the candidates in sub-batches whose lookups overlap the MLP of the
sub-batch before (RPAccel's sub-batching), and the small bottom MLP on a
unit of its own beside the engine.

A query goes through these phases (the numbers are the golden model's steps,
:mod:`host.models`):

``BOTTOM`` (1)
    The bottom MLP's output, which is user feature 0. The bottom MLP runs on
    a :class:`~hw.wide.RowMLP` (``n_bottom`` int8 ReLU layers, weights
    written on ``bw``), which takes the dense features (``dense``: int8
    chunks of ``lanes``, quantized by the host with the stage's input scale)
    as soon as they come: a query's bottom MLP runs while the query before
    is still on the engine, and this phase mostly finds it done. Keeping it
    off the engine keeps the engine's chain to the candidates; a bottom MLP
    wider than ``max_bottom`` or deeper than ``bottom_layers`` is refused by
    the host (:func:`host.stage_program.compile_stage`).
``USERS`` (2, 3)
    The user bags (``ubags``) go to the feature fetch (``bags``;
    :class:`hw.feature_fetch.FeatureFetch`), whose int8 vectors (``feat``)
    are the other user features.
``MAINU``, ``UPAIRS``, ``UPASS``, ``TOP_DESC`` (4, 6)
    The user features load the item interaction (``MAINU``); then the
    user-user dot products (a :class:`~hw.interaction.DotInteraction` fed
    the user features as its items), the user pass of the first top layer
    (a 32-bit :class:`~hw.wide.WideMatVec`) over ``[bottom output, user
    pairs]``, each output written into the engine as its channel's bias
    (``WRITE_PARAM``, with the channel's ``mult`` and ``shift`` kept here,
    ``p0``), and the top layers' descriptors. The first layer's parameters
    are in two regions of the engine's parameter memory, ``p0_base`` and
    ``p0_alt``, taken by the queries in turn (the first layer's descriptor
    names the query's): the engine takes a bias at once when the rows in
    flight, the query before's, read the other region. From ``MAINU`` on,
    the item features go through the item interaction (below), and the
    first sub-batch's commands go into the engine first, while the query
    before may still have rows in the array; the biases and the
    descriptors follow them, and then its ``RUN``.
``ITEMS`` (2-7)
    Every candidate (``cand``: its position and item
    ids) is sent as one-row bags on ``bags`` as soon as it comes - while the
    phases above still run - and its features go through the interaction
    and the activation packer (:class:`~hw.act_packer.ActPacker`) into a
    staging FIFO of engine commands. The candidates are cut into sub-batches
    of ``sb_rows``; a sub-batch's commands drain into the engine, then its
    ``RUN`` (the top layers but the last). Sub-batches alternate between the
    two halves of the engine's activation buffers, so the engine takes the
    next sub-batch's commands while one runs, and its ``RUN`` while the
    rows of the one before are still coming back; the lookups, interaction
    and packing of the sub-batches after go on meanwhile. Each result
    row (the penultimate activations) goes through the score head (a
    :class:`~hw.wide.WideMatVec`: the last layer with the score's wide
    requantization) with the candidate's position as its tag, to ``topk``
    (lane 0; ``last`` with the query's final candidate; ``k`` from ``q``).

Once the RUN of a query's last sub-batch is sent, the next query starts:
its user side runs on the engine while the last rows of the query before
come back through the score head. When a query's final score
has gone to ``topk``, its status leaves on ``status`` (``OK``, or an error:
the first of its bags the lookup unit refused, its rows the packer dropped,
a row the bottom MLP unit refused (``BAD_BOTTOM``) and the errors of its
user pass (a user-pass bias past the engine's parameter words is not
written: ``BAD_PARAM``), if any; else the first of
the engine's answers to its candidates and the score head; the top-k list
is still completed, so nothing waits).
``busy`` is high while a query is under way, and ``phase`` says where it
is (:class:`StagePhase`: the bottom MLP, the user side, the candidates, the
last of which also counts while only a handed-over query's scores are still
coming; the top level counts the cycles of each, ``READ_COUNTERS``). A
query's bags go out back to back with the previous query's: the lookups of
the next query start while this one finishes.

A query's ``q`` beat and its dense features wait in small FIFOs (two
queries, :data:`DENSE_FIFO`), and so do its user bags (two queries of
``max_users`` bags of ``max_bag`` rows), so its sender may go on to its
bags and candidates, and to what follows them, while the query before is
still running (on a two-stage top level stage 2 takes a query's user bags
only once the query before has its survivors, and the next query's parts
for stage 1 come after them): a sender must send a query's ``q``, then its
``dense``, then its ``ubags`` and ``cand`` (the stage takes the dense
features and the bags at once).

Everything a stage needs is written before its queries: the configuration
(``conf``, :func:`conf_layout`, checked by the host; one with a count out of
range, which would leave a loop here without its end, is refused, with
``conf_bad`` high while it is offered, and the old one stays; one that
passes these checks but not the host's is undefined), the layer descriptors
(``ldesc``: the top layers but the last), the first top layer's
``mult``/``shift`` per channel (``p0``), both interactions' pair parameters,
both wide units' weights and the bottom MLP's (``bw``); the engine's weight
and parameter memories are written through the engine's own command
stream.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .act_packer import ActPacker, PackStatus, engine_sides
from .config import Config, StageConfig, ceil_div, clog2
from .embedding import Status as LookupStatus
from .feature_fetch import bag_layout, feature_layout
from .interaction import DotInteraction, item_pairs, param_layout as pair_param_layout
from .mlp_isa import Opcode as EOp, Status as EStatus, command_layout, response_layout
from .topk import input_layout as topk_input_layout, k_bits
from .wide import (RowMLP, Status as WStatus, WideMatVec, mlp_write_layout,
                   write_layout as wide_write_layout)

#: Dense feature chunks the stage engine holds (two queries' worth of
#: ``DENSE_FIFO // 2`` chunks each at most: :func:`host.stage_program.compile_stage`
#: checks).
DENSE_FIFO = 16

__all__ = ["DENSE_FIFO", "StagePhase", "StageStatus", "conf_layout", "ldesc_layout", "p0_layout", "query_layout",
           "dense_layout", "cand_layout", "score_in", "StageEngine"]


class StagePhase(enum.Enum, shape=2):
    IDLE = 0
    BOTTOM = 1          #: waiting for the bottom MLP unit's output
    USER = 2            #: the user bags' features, the user pairs and pass, the top layers
    ITEMS = 3           #: the candidates (and a handed-over query's last scores)


class StageStatus(enum.Enum, shape=3):
    OK = 0
    BAD_LOOKUP = 1      #: the lookup unit refused a bag (e.g. an id past a table)
    BAD_ROW = 2         #: the activation packer dropped a row
    ENGINE = 3          #: the MLP engine answered an error
    BAD_SCORE = 4       #: the score head answered an error
    BAD_PARAM = 5       #: a user-pass bias for a parameter word past the engine's
                        #: (``p0_base`` or ``p0_alt`` out of range): not written
    BAD_BOTTOM = 6      #: the bottom MLP unit refused the row (its dimensions, or
                        #: the dense features' length)


def _max_chunks(config: Config, engine: int, n: int) -> int:
    """Chunks of ``n`` elements at the engine's narrowest side."""
    return ceil_div(n, min(engine_sides(config.array, engine)))


def score_in(config: Config, engine: int, max_pen: int) -> int:
    """The score head's ``max_in``: its input is the engine's response rows,
    ``lanes`` wide chunks of which the side's first lanes hold data."""
    return _max_chunks(config, engine, max_pen) * config.array.engine_lanes(engine)


def conf_layout(config: Config, engine: int, max_users: int, max_items: int,
                max_hidden: int, max_pen: int, dim: int,
                bottom_layers: int) -> data.StructLayout:
    arr = config.array
    lanes = arr.engine_lanes(engine)
    return data.StructLayout({
        "has_bottom": 1,
        "n_bottom": unsigned(clog2(bottom_layers + 1)),     # bottom layers
        "n_top": unsigned(clog2(arr.max_layers + 1)),       # top layers but the last
        "n_pooled": unsigned(clog2(max_users + 1)),         # user tables
        "n_items": unsigned(clog2(max_items + 1)),          # item tables
        "dense_chunks": unsigned(clog2(DENSE_FIFO // 2 + 1)),  # a query's dense chunks
        "item_tables": data.ArrayLayout(unsigned(clog2(config.embedding.max_tables)),
                                        max_items),
        "log_side": unsigned(clog2(clog2(lanes) + 1)),      # the sub-array side
        "sb_rows": unsigned(clog2(arr.max_rows + 1)),       # rows per sub-batch
        "pen_chunks": unsigned(clog2(_max_chunks(config, engine, max_pen) + 1)),
        "user_pass": 1,                                     # the first layer has user rows
        "u_chunks": unsigned(clog2(ceil_div(dim + max_users * (max_users - 1) // 2, dim)
                                   + 1)),
        "p0_base": unsigned(clog2(arr.param_words)),        # the first layer's p_base
        "p0_alt": unsigned(clog2(arr.param_words)),         # ... every other query's
    })


def ldesc_layout(config: Config, engine: int) -> data.StructLayout:
    layer = command_layout(config.array, engine)["args"].shape["layer"].shape
    return data.StructLayout({"index": unsigned(clog2(config.array.max_layers)),
                              "desc": layer})


def p0_layout(max_hidden: int) -> data.StructLayout:
    return data.StructLayout({"j": unsigned(clog2(max_hidden)), "mult": unsigned(16),
                              "shift": unsigned(6)})


def query_layout(config: Config) -> data.StructLayout:
    return data.StructLayout({"k": unsigned(k_bits(config.topk))})


def dense_layout(lanes: int) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(8), lanes), "last": 1})


def cand_layout(config: Config, max_items: int) -> data.StructLayout:
    # ``left``: the query's candidates after this one (0: the last); the
    # sub-batch a candidate opens is sized from it. A query has at most
    # ``2 ** id_bits`` candidates, so ``left`` fits ``id_bits``: with one
    # item table and 16-bit ids a candidate is one 64-bit word on the
    # command stream (two with a bit more), which bounds how fast they come.
    return data.StructLayout({"pos": unsigned(config.topk.id_bits),
                              "ids": data.ArrayLayout(unsigned(32), max_items),
                              "left": unsigned(config.topk.id_bits)})


class StageEngine(wiring.Component):
    """See the module documentation.

    Parameters
    ----------
    config : Config
    engine : int
        The MLP engine (and sub-array) the stage runs on.
    dim : int
        The embedding dimension (every interaction feature's length; the
        bottom MLP's output).
    max_users, max_items : int
        Most user features (the bottom output included) and item tables.
    max_hidden : int
        Widest first top layer (the user pass's outputs).
    max_pen : int
        Widest penultimate activation (the score head's input).
    max_bottom, bottom_layers : int
        Widest bottom MLP layer (its input included) and most bottom layers
        (the bottom MLP unit, :class:`~hw.wide.RowMLP`).
    staging : int
        Engine commands the staging FIFO holds. A sub-batch may have more:
        its drain starts before it is complete.
    """

    def __init__(self, config: Config, *, engine: int = 0, dim: int, max_users: int,
                 max_items: int, max_hidden: int, max_pen: int,
                 max_bottom: int = StageConfig.max_bottom,
                 bottom_layers: int = StageConfig.bottom_layers, staging: int = 512):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {config!r}")
        arr = config.array
        if not isinstance(engine, int) or isinstance(engine, bool) \
                or not 0 <= engine < arr.engines:
            raise ValueError(f"engine: must be in 0 .. {arr.engines - 1}, not {engine!r}")
        for name, v, lo, hi in (("dim", dim, 1, config.embedding.max_dim),
                                ("max_users", max_users, 1, 16),
                                ("max_items", max_items, 1, 16),
                                ("max_hidden", max_hidden, 1, arr.max_dim),
                                ("max_pen", max_pen, 1, arr.max_dim),
                                ("max_bottom", max_bottom, 1, 4096),
                                ("bottom_layers", bottom_layers, 1, 16),
                                ("staging", staging, 2, 1 << 16)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be an integer in {lo} .. {hi}, not {v!r}")
        if not config.topk.signed:
            raise ValueError("topk.signed: scores are signed")
        self._cfg, self._engine = config, engine
        self._dim, self._U, self._I = dim, max_users, max_items
        self._max_hidden, self._max_pen, self._staging = max_hidden, max_pen, staging
        self._max_bottom, self._bottom_layers = max_bottom, bottom_layers
        self._lanes = lanes = arr.engine_lanes(engine)
        self._pairs = item_pairs(max_users, max_items)
        self._upairs = max_users * (max_users - 1) // 2
        self._uin = dim + self._upairs
        emb = config.embedding
        super().__init__({
            "conf": In(stream.Signature(conf_layout(config, engine, max_users, max_items,
                                                    max_hidden, max_pen, dim,
                                                    bottom_layers))),
            "ldesc": In(stream.Signature(ldesc_layout(config, engine))),
            "p0": In(stream.Signature(p0_layout(max_hidden))),
            "dot_params": In(stream.Signature(pair_param_layout(self._pairs))),
            "upair_params": In(stream.Signature(pair_param_layout(max(self._upairs, 1)))),
            "uw": In(stream.Signature(wide_write_layout(dim, self._uin, max_hidden))),
            "sw": In(stream.Signature(wide_write_layout(lanes, score_in(config, engine,
                                                                        max_pen), 1))),
            "bw": In(stream.Signature(mlp_write_layout(lanes, max_bottom, bottom_layers))),
            "q": In(stream.Signature(query_layout(config))),
            "dense": In(stream.Signature(dense_layout(lanes))),
            "ubags": In(stream.Signature(bag_layout(emb))),
            "cand": In(stream.Signature(cand_layout(config, max_items))),
            "bags": Out(stream.Signature(bag_layout(emb))),
            "feat": In(stream.Signature(feature_layout(dim))),
            "ecmd": Out(stream.Signature(command_layout(arr, engine))),
            "eresp": In(stream.Signature(response_layout(arr, engine))),
            "topk": Out(stream.Signature(topk_input_layout(config.topk))),
            "status": Out(stream.Signature(StageStatus)),
            "busy": Out(1),
            "phase": Out(StagePhase),
            "conf_bad": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, arr = self._cfg, self._cfg.array
        lanes, dim, U, I = self._lanes, self._dim, self._U, self._I
        sides = engine_sides(arr, self._engine)
        pos_bits = cfg.topk.id_bits
        vec_l = data.ArrayLayout(signed(8), dim)

        # -- configuration and tables ---------------------------------------------
        conf = Signal(self.conf.payload.shape())
        m.d.comb += self.conf.ready.eq(1)
        configured = Signal()
        # a configuration it cannot run is refused (``conf_bad``; the old one
        # stays): counts out of range would leave a loop without its end
        c_in = self.conf.payload
        c_users = c_in.has_bottom + c_in.n_pooled
        c_side_ok = Cat(c_in.log_side == s.bit_length() - 1 for s in sides).any()
        max_u_chunks = ceil_div(dim + self._upairs, dim)

        def over(v, hi):
            # (a compare the field's width already decides is not written)
            return v > hi if (1 << len(v)) - 1 > hi else Const(0)
        m.d.comb += self.conf_bad.eq(
            (c_in.n_items == 0) | over(c_in.n_items, I) | (c_users == 0) | over(c_users, U)
            | ~c_side_ok | (c_in.sb_rows == 0) | over(c_in.sb_rows, arr.max_rows)
            | (c_in.pen_chunks == 0)
            | over(c_in.pen_chunks, _max_chunks(cfg, self._engine, self._max_pen))
            | (c_in.user_pass & ((c_in.u_chunks == 0) | over(c_in.u_chunks, max_u_chunks)))
            | (c_in.n_top == 0) | over(c_in.n_top, arr.max_layers)
            | Mux(c_in.has_bottom,
                  (c_in.n_bottom == 0) | over(c_in.n_bottom, self._bottom_layers)
                  | (c_in.dense_chunks == 0) | over(c_in.dense_chunks, DENSE_FIFO // 2),
                  c_in.dense_chunks != 0))
        # the query's region of the first layer's parameters: ``p0_base`` and
        # ``p0_alt`` in turn, so that a query's user-pass biases go into the
        # engine while the rows of the query before (which read the other
        # region) are in flight
        qpar = Signal()
        with m.If(self.conf.valid & ~self.conf_bad):
            m.d.sync += [conf.eq(self.conf.payload), configured.eq(1), qpar.eq(0)]
        p0_at = Signal.like(conf.p0_base)
        m.d.comb += p0_at.eq(Mux(qpar, conf.p0_alt, conf.p0_base))
        side_m1 = Signal(range(lanes))
        with m.Switch(conf.log_side):
            for s in sides:
                with m.Case(s.bit_length() - 1):
                    m.d.comb += side_m1.eq(s - 1)
        m.submodules.ldesc = ldesc = Memory(shape=ldesc_layout(cfg, self._engine)["desc"].shape,
                                            depth=arr.max_layers, init=[])
        lw = ldesc.write_port()
        lr = ldesc.read_port(domain="comb")
        m.d.comb += [self.ldesc.ready.eq(1), lw.addr.eq(self.ldesc.payload.index),
                     lw.data.eq(self.ldesc.payload.desc), lw.en.eq(self.ldesc.valid)]
        m.submodules.p0 = p0 = Memory(shape=data.StructLayout({"mult": 16, "shift": 6}),
                                      depth=self._max_hidden, init=[])
        pw = p0.write_port()
        pr = p0.read_port(domain="comb")
        m.d.comb += [self.p0.ready.eq(1), pw.addr.eq(self.p0.payload.j),
                     pw.data.mult.eq(self.p0.payload.mult),
                     pw.data.shift.eq(self.p0.payload.shift), pw.en.eq(self.p0.valid)]

        # -- the blocks -------------------------------------------------------------
        m.submodules.dot = dot = DotInteraction(dim, U, I)
        wiring.connect(m, wiring.flipped(self.dot_params), dot.params)
        if U >= 2:
            m.submodules.upair = upair = DotInteraction(dim, 0, U)
            wiring.connect(m, wiring.flipped(self.upair_params), upair.params)
        else:
            upair = None
            m.d.comb += self.upair_params.ready.eq(1)
        m.submodules.upass = upass = WideMatVec(lanes=dim, max_in=self._uin,
                                                max_out=self._max_hidden, bits=32, tag_bits=1,
                                                target=arr.dsp)
        wiring.connect(m, wiring.flipped(self.uw), upass.w)
        m.submodules.score = score = WideMatVec(
            lanes=lanes, max_in=score_in(cfg, self._engine, self._max_pen), max_out=1,
            bits=cfg.topk.score_bits, tag_bits=pos_bits, target=arr.dsp)
        wiring.connect(m, wiring.flipped(self.sw), score.w)
        # the bottom MLP, beside the engine: it takes each query's dense
        # features as they come, so the next query's runs while this one's
        # candidates do
        m.submodules.bottom_mlp = bmlp = RowMLP(lanes=lanes, max_dim=self._max_bottom,
                                                layers=self._bottom_layers, target=arr.dsp)
        wiring.connect(m, wiring.flipped(self.bw), bmlp.w)
        m.d.comb += bmlp.n_layers.eq(conf.n_bottom)
        # Sub-batches alternate between the halves of the engine's activation
        # buffers, so that one's commands go in while the one before runs.
        half = arr.act_words(self._engine) // 2
        m.submodules.packer = packer = ActPacker(arr, engine=self._engine,
                                                 max_elems=self._pairs, words=half)
        cmd_l = command_layout(arr, self._engine)
        m.submodules.staging = staging = SyncFIFOBuffered(width=cmd_l.size,
                                                          depth=self._staging)
        # per candidate: its position and whether it ends the query (score
        # side), whether it ends its sub-batch (packer side); per sub-batch
        # its rows (packer control)
        q_depth = 2 * arr.max_rows + 64
        m.submodules.posq = posq = SyncFIFOBuffered(width=pos_bits + 1, depth=q_depth)
        m.submodules.rowq = rowq = SyncFIFOBuffered(width=1, depth=q_depth)
        m.submodules.sbq = sbq = SyncFIFOBuffered(width=len(conf.sb_rows), depth=8)

        # -- a query's header and dense features wait in FIFOs, so that the next
        # query's bags (which come after them) can go while this one finishes
        # (depth 3: a buffered FIFO of 2 has a one-entry memory, which lints badly)
        m.submodules.qfifo = qfifo = SyncFIFOBuffered(width=len(self.q.payload.as_value()),
                                                      depth=3)
        m.submodules.dfifo = dfifo = SyncFIFOBuffered(
            width=len(self.dense.payload.as_value()), depth=DENSE_FIFO)
        m.d.comb += [qfifo.w_data.eq(self.q.payload), qfifo.w_en.eq(self.q.valid),
                     self.q.ready.eq(qfifo.w_rdy),
                     dfifo.w_data.eq(self.dense.payload), dfifo.w_en.eq(self.dense.valid),
                     self.dense.ready.eq(dfifo.w_rdy)]
        m.submodules.ubq = ubq = SyncFIFOBuffered(
            width=len(self.ubags.payload.as_value()),
            depth=2 * U * cfg.embedding.max_bag)
        m.d.comb += [ubq.w_data.eq(self.ubags.payload), ubq.w_en.eq(self.ubags.valid),
                     self.ubags.ready.eq(ubq.w_rdy)]
        q_in = query_layout(cfg)(qfifo.r_data)
        dense_in = dense_layout(lanes)(dfifo.r_data)
        m.d.comb += [bmlp.i.valid.eq(dfifo.r_rdy), dfifo.r_en.eq(bmlp.i.ready),
                     bmlp.i.payload.x.eq(dense_in.data), bmlp.i.payload.last.eq(dense_in.last)]

        # -- query state ------------------------------------------------------------
        k = Signal.like(self.q.payload.k)
        err = Signal(StageStatus)
        users = [Signal(vec_l, name=f"user{u}") for u in range(U)]
        n_users = Signal(range(U + 1))              # conf: has_bottom + n_pooled
        m.d.comb += n_users.eq(conf.has_bottom + conf.n_pooled)
        zu = Signal(data.ArrayLayout(signed(8), max(self._upairs, 1)))
        at = Signal(range(max(arr.max_layers, U, 64) + 1))   # a phase's step

        def fail(status):
            with m.If(err == StageStatus.OK):
                m.d.sync += err.eq(status)

        bottom = Signal(vec_l)                      # the bottom MLP's output
        # the next query's, collected as the unit gives it
        b_next = Signal(vec_l)
        b_full = Signal()
        b_bad = Signal()                            # the unit refused the row
        bo = bmlp.o.payload
        m.d.comb += bmlp.o.ready.eq(~b_full)
        with m.If(bmlp.o.valid & ~b_full):
            for e in range(dim):
                with m.If(bo.j == e):
                    m.d.sync += b_next[e].eq(bo.value)
            m.d.sync += [b_bad.eq(b_bad | bo.bad), b_full.eq(bo.last)]
        # user feature u (the bottom output is feature 0 when there is one)
        def user(u):
            return Mux(conf.has_bottom & (u == 0), bottom.as_value(), users[u].as_value())

        ecmd = self.ecmd.payload
        resp = self.eresp.payload
        scoring = Signal()              # the ITEMS phase: the engine is the driver's
        finished = Signal()             # a query's final score went to topk
        # A query hands over once its last sub-batch's RUN is sent
        # (``sent_last``): the next query's bottom MLP and user side then use
        # the engine while this one's last rows come back through the score
        # head (``pend``). Its status leaves once its final score has gone to
        # the top-k filter (``st_valid``). The errors of the engine's answers
        # to the candidates and of the score head go to ``err_s`` (the
        # scores path takes one query at a time), the others to ``err``.
        sent_last = Signal()
        pend = Signal()
        k_p = Signal.like(k)
        err_p = Signal(StageStatus)     # the handed-over query's ``err``
        err_s = Signal(StageStatus)
        st_valid = Signal()
        st_val = Signal(StageStatus)

        def fail_s(status):
            with m.If(err_s == StageStatus.OK):
                m.d.sync += err_s.eq(status)

        # The row counts of the RUNs under way (and whether each is its
        # query's last) wait here for their answers, which are the score
        # path's.
        run_rows = Signal.like(packer.done.payload.rows)
        m.submodules.runq = runq = SyncFIFOBuffered(width=len(run_rows) + 1, depth=4)

        # the engine driver has a sub-batch's commands in and waits to RUN it
        # (the user pass's biases and the top layers' descriptors go in then,
        # below: behind a query's first sub-batch, so that they do not hold
        # its writes up while the query before still has rows in the array)
        eng_run = Signal()
        m.d.comb += self.busy.eq(1)         # (but in IDLE with no query handed over)
        with m.FSM(name="query") as query_fsm:
            with m.State("IDLE"):
                m.d.comb += [qfifo.r_en.eq(1), self.busy.eq(pend | st_valid)]
                with m.If(pend | st_valid):
                    m.d.comb += self.phase.eq(StagePhase.ITEMS)
                with m.If(qfifo.r_rdy):
                    m.d.sync += [k.eq(q_in.k), err.eq(StageStatus.OK), at.eq(0)]
                    with m.If(conf.has_bottom):
                        m.next = "BOTTOM"
                    with m.Else():
                        m.next = "USERS"
            with m.State("BOTTOM"):
                # the query's bottom output (often collected already, below)
                m.d.comb += self.phase.eq(StagePhase.BOTTOM)
                with m.If(b_full):
                    m.d.sync += [bottom.eq(b_next), b_full.eq(0), b_bad.eq(0)]
                    with m.If(b_bad):
                        fail(StageStatus.BAD_BOTTOM)
                    m.next = "USERS"
            with m.State("USERS"):
                m.d.comb += self.phase.eq(StagePhase.USER)
                f = self.feat.payload
                with m.If(at == conf.n_pooled):
                    m.d.sync += at.eq(0)
                    m.next = "MAINU"
                with m.Else():
                    # the query's user features (its item features come after them)
                    m.d.comb += self.feat.ready.eq(~f.item)
                    with m.If(self.feat.valid & ~f.item):
                        with m.If(f.status != LookupStatus.OK):
                            fail(StageStatus.BAD_LOOKUP)
                        for u in range(U):
                            with m.If(conf.has_bottom + at == u):
                                m.d.sync += users[u].eq(f.vec)
                        m.d.sync += at.eq(at + 1)
            with m.State("UPAIRS"):
                m.d.comb += self.phase.eq(StagePhase.USER)
                if upair is not None:
                    up = upair.i.payload
                    with m.If(at < n_users):
                        m.d.comb += [upair.i.valid.eq(1), up.item.eq(1),
                                     up.last.eq(at == n_users - 1)]
                        for u in range(U):
                            with m.If(at == u):
                                m.d.comb += up.vec.eq(user(u))
                        with m.If(upair.i.ready):
                            m.d.sync += at.eq(at + 1)
                    m.d.comb += upair.o.ready.eq(1)
                    with m.If(upair.o.valid):
                        m.d.sync += [zu.eq(upair.o.payload.pairs.as_value()[:len(zu.as_value())]),
                                     at.eq(0)]
                        m.next = "UPASS"
            with m.State("UPASS"):
                m.d.comb += self.phase.eq(StagePhase.USER)
                # the input: [bottom output, user pairs] (or the pairs alone), in
                # dim-wide chunks
                xu_n = ceil_div(dim + len(zu.as_value()) // 8, dim) * dim
                xu = Signal(xu_n * 8)
                m.d.comb += xu.eq(Mux(conf.has_bottom, Cat(bottom.as_value(), zu.as_value()),
                                      zu.as_value()))
                ui = upass.i.payload
                with m.If(at < conf.u_chunks):
                    m.d.comb += [upass.i.valid.eq(1), ui.last.eq(at == conf.u_chunks - 1),
                                 ui.end.eq(1), ui.tag.eq(0)]
                    for c in range(xu_n // dim):
                        with m.If(at == c):
                            m.d.comb += ui.x.eq(xu[c * dim * 8:(c + 1) * dim * 8])
                    with m.If(upass.i.ready):
                        m.d.sync += at.eq(at + 1)
                # each output is its channel's bias, written into the engine;
                # one past the engine's parameter words is not written (the
                # engine would answer the write with an error, which nothing
                # here waits for) and fails the query
                uo = upass.o.payload
                p_addr = Signal(range((1 << len(conf.p0_base)) + self._max_hidden))
                p_past = Signal()
                m.d.comb += [p_addr.eq(p0_at + (uo.j >> conf.log_side)),
                             p_past.eq(p_addr >= arr.param_words)]
                m.d.comb += [pr.addr.eq(uo.j),
                             self.ecmd.valid.eq(upass.o.valid & ~p_past & eng_run),
                             upass.o.ready.eq((self.ecmd.ready & eng_run) | p_past),
                             ecmd.op.eq(EOp.WRITE_PARAM),
                             ecmd.args.param.addr.eq(p_addr),
                             ecmd.args.param.lane.eq(uo.j & side_m1),
                             ecmd.args.param.bias.eq(uo.value),
                             ecmd.args.param.mult.eq(pr.data.mult),
                             ecmd.args.param.shift.eq(pr.data.shift)]
                with m.If(upass.o.valid & upass.o.ready):
                    with m.If(uo.status != WStatus.OK):
                        fail(StageStatus.BAD_SCORE)
                    with m.If(p_past):
                        fail(StageStatus.BAD_PARAM)
                    with m.If(uo.last):
                        m.d.sync += at.eq(0)
                        m.next = "TOP_DESC"
            with m.State("MAINU"):
                m.d.comb += self.phase.eq(StagePhase.USER)
                di = dot.i.payload
                with m.If(at == n_users):
                    m.d.sync += at.eq(0)
                    # (with one user feature, or a unit built for one, no pairs)
                    pairs = (n_users >= 2) if upair is not None else Const(0)
                    with m.If(conf.user_pass & pairs):
                        m.next = "UPAIRS"
                    with m.Elif(conf.user_pass):
                        m.next = "UPASS"
                    with m.Else():
                        m.next = "TOP_DESC"
                with m.Else():
                    m.d.comb += [dot.i.valid.eq(1), di.item.eq(0)]
                    for u in range(U):
                        with m.If(at == u):
                            m.d.comb += di.vec.eq(user(u))
                    with m.If(dot.i.ready):
                        m.d.sync += at.eq(at + 1)
            with m.State("TOP_DESC"):
                m.d.comb += self.phase.eq(StagePhase.USER)
                with m.If(at == conf.n_top):
                    m.d.sync += qpar.eq(~qpar)
                    m.next = "ITEMS"
                with m.Else():
                    m.d.comb += [lr.addr.eq(at), self.ecmd.valid.eq(eng_run),
                                 ecmd.op.eq(EOp.SET_LAYER), ecmd.args.layer.eq(lr.data),
                                 ecmd.args.layer.index.eq(at)]
                    with m.If((at == 0) & conf.user_pass):
                        m.d.comb += ecmd.args.layer.p_base.eq(p0_at)
                    with m.If(self.ecmd.ready & eng_run):
                        m.d.sync += at.eq(at + 1)
            with m.State("ITEMS"):
                m.d.comb += self.phase.eq(StagePhase.ITEMS)
                m.d.comb += scoring.eq(1)
                # (every item feature of the query is in once its last RUN is sent)
                with m.If(sent_last & ~pend):
                    m.d.sync += [pend.eq(1), sent_last.eq(0), k_p.eq(k), err_p.eq(err)]
                    m.next = "IDLE"

        # Once the item interaction holds the query's user features (after
        # MAINU), its item features go in, and the engine driver (below)
        # sends the first sub-batch's commands (``feeding``) while the user
        # pass runs and the query before still has rows in the array; the
        # user pass's biases and the top layers' descriptors follow them
        # (``eng_run``: the engine takes a bias or a descriptor only once the
        # RUN before has handed over, and the writes meanwhile). The RUNs
        # wait for ``scoring``.
        feeding = Signal()
        m.d.comb += feeding.eq(query_fsm.ongoing("UPAIRS") | query_fsm.ongoing("UPASS")
                               | query_fsm.ongoing("TOP_DESC") | scoring)
        with m.If(feeding):
            f = self.feat.payload
            di = dot.i.payload
            m.d.comb += [dot.i.valid.eq(self.feat.valid & f.item), di.item.eq(1),
                         di.last.eq(f.last), di.vec.eq(f.vec),
                         self.feat.ready.eq(dot.i.ready & f.item)]
            with m.If(self.feat.valid & f.item & dot.i.ready
                      & (f.status != LookupStatus.OK)):
                fail(StageStatus.BAD_LOOKUP)

        # -- the issuer: the bags of the queries, back to back -------------------------
        a = Signal(range(max(I, 2)))                # the candidate's item table
        row = Signal.like(conf.sb_rows)             # the candidate's row in its sub-batch
        c = self.cand.payload
        # per sub-batch: whether it is its query's last
        m.submodules.lastq = lastq = SyncFIFOBuffered(width=1, depth=8)
        room = posq.w_rdy & rowq.w_rdy & sbq.w_rdy & lastq.w_rdy
        c_last = c.left == 0
        sb_end = (row == conf.sb_rows - 1) | c_last
        sb_size = Mux(c.left < conf.sb_rows, c.left + 1, conf.sb_rows)
        with m.FSM(name="issue"):
            with m.State("UB"):
                ub = bag_layout(cfg.embedding)(ubq.r_data)
                with m.If(~configured):
                    pass
                with m.Elif(conf.n_pooled == 0):
                    m.next = "IB"
                with m.Else():
                    m.d.comb += [self.bags.valid.eq(ubq.r_rdy), ubq.r_en.eq(self.bags.ready),
                                 self.bags.payload.eq(ub), self.bags.payload.item.eq(0)]
                    with m.If(ubq.r_rdy & self.bags.ready & ub.lookup.last & ub.group_last):
                        m.next = "IB"
            with m.State("IB"):
                bp = self.bags.payload
                m.d.comb += [self.bags.valid.eq(self.cand.valid & room),
                             bp.lookup.last.eq(1), bp.item.eq(1),
                             bp.group_last.eq(a == conf.n_items - 1)]
                for t in range(I):
                    with m.If(a == t):
                        m.d.comb += [bp.lookup.table.eq(conf.item_tables[t]),
                                     bp.lookup.id.eq(c.ids[t])]
                with m.If(self.cand.valid & room & self.bags.ready):
                    with m.If(a == conf.n_items - 1):
                        m.d.comb += [self.cand.ready.eq(1),
                                     posq.w_en.eq(1), posq.w_data.eq(Cat(c.pos, c_last)),
                                     rowq.w_en.eq(1), rowq.w_data.eq(sb_end),
                                     sbq.w_en.eq(row == 0), sbq.w_data.eq(sb_size),
                                     lastq.w_en.eq(row == 0),
                                     lastq.w_data.eq(c.left < conf.sb_rows)]
                        m.d.sync += [a.eq(0), row.eq(Mux(sb_end, 0, row + 1))]
                        with m.If(c_last):
                            m.next = "UB"
                    with m.Else():
                        m.d.sync += a.eq(a + 1)

        # -- the packer: interaction rows into engine commands, staged -----------------
        pi = packer.i.payload
        m.d.comb += [packer.i.valid.eq(dot.o.valid & rowq.r_rdy),
                     pi.n.eq(dot.o.payload.n), pi.elems.eq(dot.o.payload.pairs),
                     pi.last.eq(rowq.r_data[0]),
                     dot.o.ready.eq(packer.i.ready & rowq.r_rdy),
                     rowq.r_en.eq(dot.o.valid & packer.i.ready & rowq.r_rdy)]
        pc = packer.ctl.payload
        m.d.comb += [packer.ctl.valid.eq(sbq.r_rdy), pc.side.eq(side_m1 + 1),
                     pc.rows.eq(sbq.r_data), pc.base.eq(0), pc.buf.eq(0),
                     sbq.r_en.eq(packer.ctl.ready)]
        m.d.comb += [staging.w_data.eq(packer.o.payload), staging.w_en.eq(packer.o.valid),
                     packer.o.ready.eq(staging.w_rdy)]
        written = Signal(32)                        # commands staged, ever
        drained = Signal(32)                        # commands sent to the engine, ever
        staged = packer.o.valid & staging.w_rdy
        m.d.sync += written.eq(written + staged)

        # -- the engine driver: a sub-batch's commands, then its RUN -------------------
        # The engine takes the commands of a sub-batch while the one before
        # runs, in the other half of its buffers (``region``), and its RUN
        # while that one's rows are still coming back.
        have_done = Signal()
        target = Signal(32)
        region = Signal()
        with m.FSM(name="engine") as engine_fsm:
            with m.State("DRAIN"):
                with m.If(feeding):
                    m.d.comb += packer.done.ready.eq(~have_done)
                    with m.If(packer.done.valid & ~have_done):
                        m.d.sync += [have_done.eq(1), target.eq(written + staged),
                                     run_rows.eq(packer.done.payload.rows)]
                        with m.If(packer.done.payload.status != PackStatus.OK):
                            fail(StageStatus.BAD_ROW)
                    more = ~(have_done & (drained == target))
                    m.d.comb += [self.ecmd.valid.eq(staging.r_rdy & more),
                                 self.ecmd.payload.eq(staging.r_data),
                                 ecmd.args.act.addr.eq(
                                     cmd_l(staging.r_data).args.act.addr + region * half),
                                 staging.r_en.eq(self.ecmd.ready & more)]
                    with m.If(staging.r_rdy & more & self.ecmd.ready):
                        m.d.sync += drained.eq(drained + 1)
                    with m.If(have_done & (drained == target)):
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(scoring):
                    ready = runq.w_rdy & lastq.r_rdy
                    m.d.comb += [self.ecmd.valid.eq(ready), ecmd.op.eq(EOp.RUN),
                                 ecmd.args.run.layers.eq(conf.n_top),
                                 ecmd.args.run.rows.eq(run_rows),
                                 ecmd.args.run.base.eq(region * half),
                                 runq.w_data.eq(Cat(run_rows, lastq.r_data))]
                    with m.If(self.ecmd.ready & ready):
                        m.d.comb += [runq.w_en.eq(1), lastq.r_en.eq(1)]
                        m.d.sync += [have_done.eq(0), region.eq(~region)]
                        with m.If(lastq.r_data):
                            m.d.sync += sent_last.eq(1)
                        m.next = "DRAIN"

        m.d.comb += eng_run.eq(engine_fsm.ongoing("RUN"))

        # -- the scores: result rows through the score head, to the top-k filter ---
        chunk = Signal.like(conf.pen_chunks)
        flush = Signal.like(run_rows)
        si = score.i.payload
        row_last = chunk == conf.pen_chunks - 1
        m.d.comb += [si.tag.eq(posq.r_data[:pos_bits]),
                     si.end.eq(posq.r_data[pos_bits] & row_last), si.last.eq(row_last)]
        take_row = score.i.valid & score.i.ready & row_last
        m.d.comb += posq.r_en.eq(take_row)
        with m.If(score.i.valid & score.i.ready):
            m.d.sync += chunk.eq(Mux(row_last, 0, chunk + 1))
        # After a query's last RUN, wait until its final score has gone
        # (``FINAL``), so that ``err_s`` is one query's.
        flush_final = Signal()
        with m.FSM(name="scores"):
            with m.State("ROWS"):
                with m.If(runq.r_rdy):
                    run_final = runq.r_data[len(run_rows)]
                    with m.If(resp.last):
                        m.d.comb += [self.eresp.ready.eq(1), runq.r_en.eq(self.eresp.valid)]
                        with m.If(self.eresp.valid):
                            with m.If(resp.status != EStatus.OK):
                                # no rows came: score zero rows in their place
                                fail_s(StageStatus.ENGINE)
                                m.d.sync += [flush.eq(runq.r_data[:len(run_rows)]),
                                             flush_final.eq(run_final)]
                                m.next = "FLUSH"
                            with m.Elif(run_final):
                                m.next = "FINAL"
                    with m.Else():
                        m.d.comb += [score.i.valid.eq(self.eresp.valid & posq.r_rdy),
                                     si.x.eq(resp.data),
                                     self.eresp.ready.eq(score.i.ready & posq.r_rdy)]
            with m.State("FLUSH"):
                with m.If(flush == 0):
                    m.next = "ROWS"
                    with m.If(flush_final):
                        m.next = "FINAL"
                with m.Else():
                    m.d.comb += [score.i.valid.eq(posq.r_rdy), si.x.eq(0)]
                    with m.If(take_row):
                        m.d.sync += flush.eq(flush - 1)
            with m.State("FINAL"):
                # (the query was handed over before its final trailer came)
                with m.If(~pend):
                    m.next = "ROWS"
        so = score.o.payload
        tp = self.topk.payload
        # (a query's final score waits while the status before it is owed)
        go = ~(so.end & st_valid)
        m.d.comb += [self.topk.valid.eq(score.o.valid & go),
                     score.o.ready.eq(self.topk.ready & go),
                     tp.pairs[0].score.eq(so.value), tp.pairs[0].id.eq(so.tag),
                     tp.valid.eq(1), tp.last.eq(so.end), tp.k.eq(Mux(pend, k_p, k))]
        bad_score = so.status != WStatus.OK
        with m.If(score.o.valid & self.topk.ready & go):
            with m.If(bad_score):
                fail_s(StageStatus.BAD_SCORE)
            m.d.comb += finished.eq(so.end)
        # The status: the query's first error but those of its scores, else
        # the first of those. (A query always finishes after its hand-over: its
        # final rows are scored only once the query before has finished.)
        scores_err = Mux(err_s != StageStatus.OK, err_s,
                         Mux(bad_score, StageStatus.BAD_SCORE, StageStatus.OK))
        with m.If(finished):
            m.d.sync += [st_valid.eq(1), pend.eq(0), err_s.eq(StageStatus.OK),
                         st_val.eq(Mux(err_p != StageStatus.OK, err_p, scores_err))]
        m.d.comb += [self.status.valid.eq(st_valid), self.status.payload.eq(st_val)]
        with m.If(st_valid & self.status.ready):     # (never in a cycle that finishes)
            m.d.sync += st_valid.eq(0)
        return m
