"""The MLP engine: runs whole int8 MLPs on one (sub-)array by tiling.

For each layer the engine walks row blocks of ``acc_rows`` rows; within a
block, output tiles ``n``; within those, input tiles ``k``. For every tile
``(k, n)`` it shifts the ``K x S`` weight tile (the sub-array's rows and
columns in the active mode; ``K = S`` but in a row split) into the array's
idle weight register (the *loader*) while the previous tile streams its rows through
the array (the *streamer*): weights double-buffer, and consecutive tiles run
back to back. Column sums are added into an ``acc_rows`` deep int32
accumulator; on the last input tile of an output tile they are requantized
(:mod:`host.numerics` spells out the arithmetic) and written to the other
activation buffer, which the next layer reads. A whole MLP runs without the
host; the host sees one response frame per RUN.

Two tiles are in flight at most, one per weight register ("parity"). A
parity is loaded again only once the last row of its previous tile has
passed every processing element (a countdown of ``K + S - 3`` cycles), so
the array never needs to stall: every row injected is a row whose result
the engine takes. Every row carries what its result needs past the array
(its parameter word, read at the accumulator's read, and its destination
word), so a tile's requantization does not hold its weight register: a
one-row tile is bound by the array's skew, not by its whole latency and the
requantizer's. A RUN hands its answer to the sender once its last tiles
are loaded; the sender reads each row once it is written (its last output
chunk, counted per RUN), while the rows after it still come. Meanwhile the
next RUN is checked and loads its first tile into the other weight
register (during its checks, the *prefetch*, when that register is free),
so that its rows follow the last rows of the RUN before without a gap;
writes into the input rows those still read wait for them. Writes outside
a RUN's window go in while it runs, and outside a bound of it while it is
checked.

In a row split (``K < S``) an activation word holds ``S / K`` input tiles:
input tile ``k`` is lanes ``(k % (S/K)) * K ..`` of word ``k // (S/K)``,
moved to lanes ``0 .. K-1`` on the way into the array.

Commands and memory layouts: :mod:`hw.mlp_isa`.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig, ceil_div, clog2
from .mlp_isa import Opcode, Status, command_layout, response_layout
from .primitives import BlockRAM, PipelinedMultiplier
from .systolic import SubArrayPort, SystolicArray

__all__ = ["MLPEngine", "REQUANT_LATENCY", "SPLIT_SETTLE"]

#: Cycles a SET_SPLIT waits before it looks at ``peers_busy``: the other
#: engines' ``hold`` rises two cycles after the wait begins, a RUN taken by
#: one of them in the cycle before shows in its ``busy`` a cycle later, and
#: in the registered ``peers_busy`` a cycle after that.
SPLIT_SETTLE = 3

#: Cycles from an accumulator result to its int8 value in the buffer.
REQUANT_LATENCY = 9 + PipelinedMultiplier.LATENCY
#: Cycles from a row's read request to its activations at the array port:
#: the RAM's, a register after the buffer select, one after the lane select.
INJECT_LATENCY = BlockRAM.LATENCY + 2
#: Shortest tile, in cycles (see the streamer): a row's accumulator is read
#: BlockRAM.LATENCY cycles before its sums leave the array, and its write
#: must be presented before that read.
MIN_TILE_CYCLES = BlockRAM.LATENCY + 1

_PARAM = data.StructLayout({"bias": signed(32), "mult": unsigned(16),
                            "shift": unsigned(6)})


class MLPEngine(wiring.Component):
    """Runs int8 MLP layers of any shape on one sub-array port.

    Parameters
    ----------
    config : ArrayConfig
    engine : int
        Which sub-array port this engine drives; sets its width
        (``config.engine_lanes(engine)``). Engine 0 also owns the split
        register (``SET_SPLIT``).

    Attributes
    ----------
    cmd : In(stream.Signature(command_layout(config, engine)))
    resp : Out(stream.Signature(response_layout(config, engine)))
    array : Out(SubArrayPort)
    split : In(range(len(config.modes)))
        The array's current mode (an index into ``config.modes``).
    busy : Out(1)
        High from an accepted RUN or SET_SPLIT, or a command refused, until
        its answer is sent.
    queued : Out(1)
        A command waits in the engine's command buffer (a ring of three
        slots: ``cmd.ready`` is a register, and the engine decides on a
        command from registers beside it).
    split_req, split_value : Out
        (engine 0) A one-cycle request to set the array's split.
    split_wait : Out(1)
        (engine 0) A SET_SPLIT waits for the other engines.
    peers_busy : In(1)
        (engine 0) Any other engine was busy in the cycle before (registered
        by the cluster): SET_SPLIT waits for it.
    hold : In(1)
        (other engines) Take no command: engine 0 was waiting to set the
        split two cycles before (the cluster's *split lock*).

    The split lock: a SET_SPLIT waits at least :data:`SPLIT_SETTLE` cycles,
    then until ``peers_busy`` is low. The other engines take no command
    from the second cycle after it started waiting, so a RUN one of them
    took before that shows in ``peers_busy`` by then, and none starts while
    the split changes; both signals are registered (``hold`` twice), so no
    path runs from one engine's state to another's control.
    """

    def __init__(self, config: ArrayConfig, *, engine: int = 0):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        if not isinstance(engine, int) or not 0 <= engine < config.engines:
            raise ValueError(f"engine must be in 0..{config.engines - 1}, "
                             f"not {engine!r}")
        self._config = config
        self._engine = engine
        self._lanes = config.engine_lanes(engine)
        members = {
            "cmd": In(stream.Signature(command_layout(config, engine))),
            "resp": Out(stream.Signature(response_layout(config, engine))),
            "array": Out(SubArrayPort(lanes=self._lanes,
                                      psum_bits=config.psum_bits)),
            "split": In(range(len(config.modes))),
            "busy": Out(1),
            "queued": Out(1),
        }
        if engine == 0:
            members.update({
                "split_req": Out(1),
                "split_value": Out(range(len(config.modes))),
                "split_wait": Out(1),
                "peers_busy": In(1),
            })
        else:
            members["hold"] = In(1)
        super().__init__(members)

    @property
    def config(self):
        return self._config

    @property
    def engine(self):
        return self._engine

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes = self._lanes
        # the command being decided on: the head of the command buffer (below)
        cmd_l = command_layout(cfg, self._engine)
        cmd = Signal(cmd_l, name="cmd_head", reset_less=True)
        args = cmd.args
        act_words = cfg.act_words(self._engine)

        # -- the active mode, as this engine sees it ---------------------
        # ``side`` (S): the sub-array's columns, an output tile and an
        # activation word; ``k_side`` (K): its rows, an input tile; ``parts``
        # = S / K input tiles a word.
        modes = [(fr, fc) for fr, fc in cfg.modes if self._engine < fr * fc]
        side = Signal(range(lanes + 1))
        log_side = Signal(range(clog2(lanes) + 1))
        k_side = Signal(range(lanes + 1))
        log_k = Signal(range(clog2(lanes) + 1))
        parts_m1 = Signal(range(max(2, *(fr // fc for fr, fc in modes))))
        available = Signal()
        latency = Signal(range(2 * lanes + PipelinedMultiplier.LATENCY + 3))
        max_lat = 0
        w_reuse = Signal(range(2 * lanes + 1))  # see the countdowns below
        side_m1 = Signal(range(lanes + 1))      # side - 1
        k_side_m1 = Signal(range(lanes + 1))    # k_side - 1
        # log2 of a layer's most chunks of S, ``max_dim / S`` rounded up to a
        # power of two (a bound of a RUN's window before its checks)
        chunks_lg = {mode: clog2(ceil_div(cfg.max_dim, cfg.mode_sides(mode)[1]))
                     for mode in modes}
        log_chunks = Signal(range(max(chunks_lg.values(), default=0) + 1))
        # (registered: the mode changes only while every engine is idle,
        # and an engine takes no command in the cycle after it changes; see
        # the split lock)
        m.d.sync += [side.eq(0), log_side.eq(0), k_side.eq(0), log_k.eq(0), parts_m1.eq(0),
                     available.eq(0), latency.eq(0), w_reuse.eq(0), side_m1.eq(0),
                     k_side_m1.eq(0), log_chunks.eq(0)]
        with m.Switch(self.split):
            for idx, mode in enumerate(cfg.modes):
                with m.Case(idx):
                    if mode in modes:
                        k, s = cfg.mode_sides(mode)
                        lat = SystolicArray.latency(cfg, self._engine, mode)
                        max_lat = max(max_lat, lat)
                        m.d.sync += [side.eq(s), log_side.eq(s.bit_length() - 1),
                                     log_chunks.eq(chunks_lg[mode]),
                                     k_side.eq(k), log_k.eq(k.bit_length() - 1),
                                     side_m1.eq(s - 1), k_side_m1.eq(k - 1),
                                     parts_m1.eq(s // k - 1),
                                     available.eq(1), latency.eq(lat),
                                     w_reuse.eq(max(k + s - 3, 0))]
        # an input tile's first lane in its word, for each mode's tiles
        k_offsets = sorted({q * k for k, s in map(cfg.mode_sides, modes)
                            for q in range(s // k)})

        # -- memories ------------------------------------------------------
        # Block RAMs read with a latency of BlockRAM.LATENCY; both of their
        # ports are registered, so they are fed and read by flip-flops only.
        def block_ram(name, shape, depth):
            ram = BlockRAM(width=Shape.cast(shape).width, depth=depth, target=cfg.dsp)
            m.submodules[name] = ram
            return (SimpleNamespace(addr=ram.w_addr, data=shape(ram.w_data), en=ram.w_en),
                    SimpleNamespace(addr=ram.r_addr, data=shape(ram.r_data)))
        ram_lat = BlockRAM.LATENCY

        def delayed(value, cycles, name):
            """``value`` from ``cycles`` cycles ago, with each stage."""
            stages = [value]
            for d in range(cycles):
                t = Signal.like(value, name=f"{name}_d{d + 1}")
                m.d.sync += t.eq(stages[-1])
                stages.append(t)
            return stages

        row_shape = data.ArrayLayout(signed(8), lanes)
        w_wr, w_rd = block_ram("wmem", row_shape, cfg.weight_words)
        pmems = [block_ram(f"pmem{j}", _PARAM, cfg.param_words) for j in range(lanes)]
        layer_shape = args.layer.shape()
        m.submodules.ltab = ltab = Memory(shape=layer_shape,
                                          depth=cfg.max_layers, init=[])
        l_wr = ltab.write_port()
        l_rd = ltab.read_port(domain="comb")
        acts = [block_ram(f"act{b}", row_shape, act_words) for b in range(2)]
        acc_wr, acc_rd = block_ram("acc", data.ArrayLayout(signed(32), lanes), cfg.acc_rows)

        # -- run-wide registers ---------------------------------------------
        rows = Signal(range(cfg.max_rows + 1))
        # Each RUN's parity; per parity, the rows of the RUN whose last
        # output chunk is written (in row order), so that its sender reads
        # each row as soon as it is complete, while the rest still come.
        run_par = Signal()
        fin_rows = [Signal(range(cfg.max_rows + 1), name=f"fin_rows{b}") for b in range(2)]
        base = Signal.like(args.run.base)       # the RUN's first activation word
        cycles = Signal(32)
        err_status = Signal(Status)
        err_info = Signal(32)
        # the tags of the commands being answered (echoed in their answers)
        err_tag = Signal()
        run_tag = Signal()
        split_tag = Signal()
        split_index = Signal.like(self.split)

        # Layer being checked or run, read from the table and registered:
        # a state that changes ``layer`` goes through a *_READ state first.
        layer = Signal(range(cfg.max_layers + 1))
        m.d.comb += l_rd.addr.eq(layer)
        desc = Signal(layer_shape)
        m.d.sync += desc.eq(l_rd.data)
        n_layers_m1 = Signal(range(cfg.max_layers))
        # ``layer == n_layers_m1``, a cycle late (neither changes in the
        # cycles before it is read)
        last_layer = Signal()
        m.d.sync += last_layer.eq(layer == n_layers_m1)
        # ceil(dim / side) in two registered steps: dim + side - 1, then >>.
        in_plus = Signal(range(cfg.max_dim + lanes + 1))        # input tiles
        out_plus = Signal.like(in_plus)                         # output tiles
        in_wplus = Signal.like(in_plus)                         # input words
        plus_dims = [in_plus.eq(desc.in_dim + k_side_m1),
                     out_plus.eq(desc.out_dim + side_m1),
                     in_wplus.eq(desc.in_dim + side_m1)]
        kt = Signal(range(cfg.max_dim + 1))
        nt = Signal(range(cfg.max_dim + 1))
        kw = Signal(range(cfg.max_dim + 1))     # words of a row of the layer's input
        nt_m1 = Signal.like(nt)
        prev_out = Signal.like(desc.out_dim)

        # -- the tile sequencer (offers one tile descriptor at a time) -----
        seq_take = Signal()
        seq_k = Signal.like(kt)
        seq_n = Signal.like(nt)
        seq_rb = Signal(range(cfg.max_rows + cfg.acc_rows + 1))
        seq_src = Signal(range(act_words + cfg.max_rows + 1))   # k * rows
        seq_dst = Signal(range(act_words + cfg.max_rows + 1))   # n * rows
        seq_w = Signal(range(cfg.weight_words + lanes + 1))
        seq_p = Signal(range(cfg.param_words + 1))
        rows_left = Signal(range(cfg.max_rows + 1))
        # Rows in the current block, and the cycles its tiles take, minus one;
        # registered (a take is never followed by another in the next cycle,
        # the loader is busy, so one cycle of delay is harmless).
        blk = Signal(range(cfg.acc_rows + 1))
        blk_len_m1 = Signal(range(max(cfg.acc_rows, MIN_TILE_CYCLES)))
        m.d.sync += [
            blk.eq(Mux(rows_left > cfg.acc_rows, cfg.acc_rows, rows_left)),
            blk_len_m1.eq(Mux(rows_left > cfg.acc_rows, cfg.acc_rows,
                              Mux(rows_left < MIN_TILE_CYCLES, MIN_TILE_CYCLES,
                                  rows_left)) - 1),
        ]

        # Where the tile offered is, from registers: the last input tile, the
        # last output tile, the last row block. (A take is never followed by
        # another in the next cycle, so flags computed from the values of
        # the cycle before are up to date at every take; the first take of a
        # layer comes two cycles after kt, nt and rows_left are set.)
        seq_last_k = Signal()
        seq_last_n = Signal()
        seq_last_blk = Signal()
        m.d.sync += [seq_last_k.eq(seq_k + 1 == kt), seq_last_n.eq(seq_n + 1 == nt),
                     seq_last_blk.eq(rows_left <= cfg.acc_rows)]

        # Per-parity tile slots.
        FREE, LOADING, READY, STREAMING = range(4)
        slot_state = [Signal(2, name=f"slot{b}_state") for b in range(2)]
        slot_count = [Signal(range(cfg.acc_rows + 1), name=f"slot{b}_count")
                      for b in range(2)]
        slot_len_m1 = [Signal.like(blk_len_m1, name=f"slot{b}_len_m1") for b in range(2)]
        slot_src = [Signal.like(seq_src, name=f"slot{b}_src") for b in range(2)]
        slot_dst = [Signal.like(seq_dst, name=f"slot{b}_dst") for b in range(2)]
        slot_p = [Signal.like(seq_p, name=f"slot{b}_p") for b in range(2)]
        slot_off = [Signal(range(lanes), name=f"slot{b}_off") for b in range(2)]
        slot_first = [Signal(name=f"slot{b}_first") for b in range(2)]
        slot_last = [Signal(name=f"slot{b}_last") for b in range(2)]
        # (the RUN's last layer's last output tile: its rows complete theirs)
        slot_fin = [Signal(name=f"slot{b}_fin") for b in range(2)]
        # (the layer's ReLU and the RUN's parity: the next RUN may set up its
        # first layer while this tile's rows are still issued)
        slot_relu = [Signal(name=f"slot{b}_relu") for b in range(2)]
        slot_rp = [Signal(name=f"slot{b}_rp") for b in range(2)]
        # Set when a tile's last row is issued (cycle I). The parity's
        # weights may be shifted again once that row has passed every PE: it
        # reads its last weight INJECT_LATENCY + (K - 1) + (S - 1) cycles
        # after I (the skew to the last row, then across the columns), and a
        # tile taken in cycle T shifts first in T + INJECT_LATENCY (the read,
        # then a register, as for the rows), so T >= I + K + S - 2 is safe;
        # the countdown (D, from I + 1) allows T >= I + 1 + D. ``tail``
        # counts until the last row issued has left the requantizer.
        countdown = [Signal(range(2 * lanes + 1), name=f"slot{b}_countdown")
                     for b in range(2)]
        assert INJECT_LATENCY == BlockRAM.LATENCY + 2
        drain = lambda lat: lat + REQUANT_LATENCY + INJECT_LATENCY + 3
        tail = Signal(range(drain(max_lat) + 1))
        tail_nz = Signal()      # ``tail != 0``, from a register (it gates taking a command)
        drain_cycles = Signal.like(tail)
        m.d.sync += drain_cycles.eq(drain(latency))
        relu = Signal()
        src_buf = Signal()
        dst_buf = Signal()
        for cd in (*countdown, tail):
            with m.If(cd != 0):
                m.d.sync += cd.eq(cd - 1)
        # (set below, with ``tail``, when a tile's last row is issued; the
        # drain is never 0 cycles)
        m.d.sync += tail_nz.eq(tail > 1)

        # -- the loader: weight tiles into the idle register ---------------
        ld_par = Signal()
        ld_busy = Signal()
        ld_left = Signal(range(lanes + 1))
        ld_addr = Signal.like(seq_w)
        ld_slot = Signal()
        ld_shift = Signal()
        ld_shift_buf = Signal()
        ld_shift_last = Signal()
        # A take needs the FSM in LAYER_RUN, the loader idle and parity
        # ``ld_par`` loadable (its slot FREE, its countdown 0), worked out a
        # cycle ahead into ``take_ok``, so that a take is a flip-flop: the
        # FSM is in LAYER_RUN next cycle if it is in LAYER_PREPARE or in
        # LAYER_RUN and takes nothing now (``run_next``), the loader is
        # idle next cycle unless it takes now or is busy past this one, and
        # a slot FREE with a countdown of at most 1 is loadable next cycle
        # (a take is followed by a loader busy cycle and a take of the other
        # parity).
        can_load = [(slot_state[b] == FREE) & (countdown[b] <= 1) for b in range(2)]
        take_ok = Signal()
        run_next = Signal()     # (below the FSM)
        # The prefetch: while a RUN is checked, its first tile loads into the
        # idle register (``ld_par``'s) when that one is free, without a slot;
        # the RUN's first take then finds it loaded (``pre_hit``) and only
        # fills its slot, READY a cycle later (the streamer's fields load
        # from the slot in between). Nothing is taken while it loads.
        pf_start = Signal()     # (in CHECK_DIMS, below)
        pf_busy = Signal()      # a prefetch is loading
        ld_pf = Signal()        # the loader's load is a prefetch
        pf_valid = Signal()     # the prefetch's RUN has not failed
        pre_loaded = Signal()   # register ``pre_par`` holds weight words ``pre_w ..``
        pre_par = Signal()
        pre_w = Signal.like(seq_w)
        pre_ready = Signal()    # (a cycle after a take that found its tile loaded)
        pre_slot = Signal()
        pre_hit = Signal()
        m.d.comb += pre_hit.eq(pre_loaded & (pre_par == ld_par) & (pre_w == seq_w))
        m.d.sync += take_ok.eq(~seq_take & run_next & (~ld_busy | (ld_left == 1))
                               & ~pf_busy
                               & Mux(ld_par, can_load[1], can_load[0]))
        m.d.comb += seq_take.eq(take_ok)
        m.d.sync += pre_ready.eq(0)
        with m.If(pre_ready):
            for pb in range(2):
                with m.If(pre_slot == pb):
                    m.d.sync += slot_state[pb].eq(READY)
        with m.If(pf_start):
            m.d.sync += [pf_busy.eq(1), pf_valid.eq(1), ld_pf.eq(1), pre_loaded.eq(0),
                         pre_par.eq(ld_par),
                         pre_w.eq(desc.w_base), ld_busy.eq(1), ld_left.eq(k_side),
                         ld_slot.eq(ld_par), ld_addr.eq(desc.w_base + k_side_m1)]
        with m.If(seq_take):
            b = ld_par
            for pb in range(2):
                with m.If(b == pb):
                    m.d.sync += [
                        slot_state[pb].eq(LOADING),
                        slot_count[pb].eq(blk),
                        slot_len_m1[pb].eq(blk_len_m1),
                        slot_src[pb].eq(seq_src + seq_rb),
                        slot_dst[pb].eq(seq_dst + seq_rb),
                        slot_p[pb].eq(seq_p),
                        slot_off[pb].eq((seq_k & parts_m1) << log_k),
                        slot_first[pb].eq(seq_k == 0),
                        slot_last[pb].eq(seq_last_k),
                        slot_fin[pb].eq(last_layer & seq_last_n),
                        slot_relu[pb].eq(relu),
                        slot_rp[pb].eq(run_par),
                    ]
            m.d.sync += [ld_par.eq(~ld_par), pre_loaded.eq(0), ld_pf.eq(0)]
            with m.If(pre_hit):
                m.d.sync += [pre_ready.eq(1), pre_slot.eq(b)]
            with m.Else():
                m.d.sync += [ld_busy.eq(1), ld_left.eq(k_side), ld_slot.eq(b),
                             ld_addr.eq(seq_w + k_side_m1)]
        m.d.comb += w_rd.addr.eq(ld_addr)
        with m.If(ld_busy):
            m.d.sync += [ld_addr.eq(ld_addr - 1), ld_left.eq(ld_left - 1)]
            with m.If(ld_left == 1):
                m.d.sync += ld_busy.eq(0)
        # Read issued (cycle c), RAM output (c + BlockRAM.LATENCY): shift.
        rd_busy = delayed(ld_busy, ram_lat, "rd_busy")
        ld_last = Signal()
        ld_shift_pf = Signal()
        m.d.comb += [ld_last.eq(ld_busy & (ld_left == 1)),
                     ld_shift.eq(rd_busy[-1]),
                     ld_shift_buf.eq(delayed(ld_slot, ram_lat, "rd_slot")[-1]),
                     ld_shift_last.eq(delayed(ld_last, ram_lat, "rd_last")[-1]),
                     ld_shift_pf.eq(delayed(ld_pf, ram_lat, "rd_pf")[-1])]
        loader_busy = Signal()
        m.d.comb += loader_busy.eq(Cat(*rd_busy).any())
        # The weights reach the array a cycle after the RAM, registered like
        # the activations (whose path is a cycle longer by the same register,
        # so the countdowns above hold as they are).
        m.d.sync += [self.array.weights.eq(w_rd.data),
                     self.array.w_load.eq(ld_shift),
                     self.array.w_buf.eq(ld_shift_buf)]
        with m.If(ld_shift_last & ld_shift_pf):
            m.d.sync += [pf_busy.eq(0), pre_loaded.eq(pf_valid)]
        with m.Elif(ld_shift_last):
            for pb in range(2):
                with m.If(ld_shift_buf == pb):
                    m.d.sync += slot_state[pb].eq(READY)

        # -- the streamer: rows of activations into the array -------------
        # A tile takes at least MIN_TILE_CYCLES cycles (idle rows pad it), so
        # a row's accumulator is never re-read while its last write is in
        # flight: the read-modify-write needs no forwarding.
        st_par = Signal()
        st_row = Signal(range(max(cfg.acc_rows, MIN_TILE_CYCLES) + 1))
        st_issue = Signal()
        st_addr = Signal.like(seq_src)
        cur_state = Mux(st_par, slot_state[1], slot_state[0])
        # The current tile's fields, registered: reloaded from slot st_par
        # while idle, and from the other slot as a tile ends (a slot's fields
        # are written at its take, long before it is READY).
        cur_count = Signal.like(slot_count[0])
        cur_len_m1 = Signal.like(slot_len_m1[0])
        cur_off = Signal.like(slot_off[0])
        cur_first = Signal()
        cur_last = Signal()
        cur_fin = Signal()
        cur_relu = Signal()
        cur_rp = Signal()
        cur_p = Signal.like(slot_p[0])
        cur_dst = Signal.like(slot_dst[0])
        def load_cur(par):
            return [cur_count.eq(Mux(par, slot_count[1], slot_count[0])),
                    cur_len_m1.eq(Mux(par, slot_len_m1[1], slot_len_m1[0])),
                    cur_off.eq(Mux(par, slot_off[1], slot_off[0])),
                    cur_first.eq(Mux(par, slot_first[1], slot_first[0])),
                    cur_last.eq(Mux(par, slot_last[1], slot_last[0])),
                    cur_fin.eq(Mux(par, slot_fin[1], slot_fin[0])),
                    cur_relu.eq(Mux(par, slot_relu[1], slot_relu[0])),
                    cur_rp.eq(Mux(par, slot_rp[1], slot_rp[0])),
                    cur_p.eq(Mux(par, slot_p[1], slot_p[0])),
                    cur_dst.eq(Mux(par, slot_dst[1], slot_dst[0])),
                    st_addr.eq(Mux(par, slot_src[1], slot_src[0]))]
        m.d.comb += st_issue.eq((cur_state == READY) | (cur_state == STREAMING))
        # per row: its parameter word, (last tiles) destination word, ReLU
        # and RUN parity, so that a RUN's last rows may still be issued and
        # in flight while the next RUN sets up and loads its first tile.
        # (Their buffers are the next RUN's first layer's too, unless that
        # layer reads the RUN's output buffer and so waits for its sender:
        # ``src_buf`` and ``dst_buf`` need no copy.)
        inj = Signal(data.StructLayout({"valid": 1, "par": 1, "row": range(cfg.acc_rows),
                                        "off": range(lanes), "first": 1, "last": 1,
                                        "fin": 1, "rp": 1,
                                        "p": len(seq_p), "dst": len(seq_dst), "relu": 1}))
        # ``st_row == cur_len_m1``, kept in a register a cycle ahead (the
        # compare would sit in front of the enables of the tile's fields)
        st_last = Signal(init=1)
        with m.If(st_issue):
            last_row = st_last
            with m.If(last_row):
                m.d.sync += st_last.eq(Mux(st_par, slot_len_m1[0], slot_len_m1[1]) == 0)
            with m.Else():
                m.d.sync += st_last.eq(st_row + 1 == cur_len_m1)
            for pb in range(2):
                with m.If(st_par == pb):
                    m.d.sync += slot_state[pb].eq(Mux(last_row, FREE, STREAMING))
                    with m.If(last_row):
                        m.d.sync += [countdown[pb].eq(w_reuse), tail.eq(drain_cycles),
                                     tail_nz.eq(1)]
            m.d.sync += st_row.eq(Mux(last_row, 0, st_row + 1))
            with m.If(last_row):
                m.d.sync += [st_par.eq(~st_par), *load_cur(~st_par)]
            with m.Else():
                m.d.sync += st_addr.eq(st_addr + 1)
        with m.Else():
            m.d.sync += [*load_cur(st_par),
                         st_last.eq(st_row == Mux(st_par, slot_len_m1[1], slot_len_m1[0]))]
        m.d.sync += [
            inj.valid.eq(st_issue & (st_row < cur_count)),
            inj.par.eq(st_par),
            inj.row.eq(st_row),
            inj.off.eq(cur_off),
            inj.first.eq(cur_first),
            inj.last.eq(cur_last),
            inj.fin.eq(cur_fin),
            inj.rp.eq(cur_rp),
            inj.p.eq(cur_p),
            inj.dst.eq(cur_dst + st_row),
            inj.relu.eq(cur_relu),
        ]

        # Activation buffers: one reader and one writer each at a time.
        run_src = Signal(row_shape)
        out_rd_addr = Signal(range(act_words + cfg.max_rows + 1))
        out_buf = Signal()
        out_data = Signal(row_shape)
        dst_we = Signal()
        dst_addr = Signal.like(seq_dst)
        dst_data = Signal(row_shape)
        # Commands write the memories from registers, a cycle after they are
        # taken: the RAMs' write ports are then driven by flip-flops only.
        # (A RUN reads nothing before its second cycle.)
        cmd_act_we = Signal()
        cmd_act = Signal.like(args.act)
        write_regs = [w_wr, l_wr] + [pw for pw, _ in pmems]
        for b, (awr, ard) in enumerate(acts):
            with m.If(src_buf == b):
                m.d.comb += ard.addr.eq(st_addr)
            with m.Else():
                m.d.comb += ard.addr.eq(out_rd_addr)
            with m.If(cmd_act_we & (cmd_act.buf == b)):
                m.d.comb += [awr.addr.eq(cmd_act.addr), awr.data.eq(cmd_act.data),
                             awr.en.eq(1)]
            with m.Elif(dst_we & (dst_buf == b)):
                m.d.comb += [awr.addr.eq(dst_addr), awr.data.eq(dst_data),
                             awr.en.eq(1)]
        # Read data is registered (in the RAM); the activations are
        # registered after the buffer select (the RAMs' bank select sits in
        # front of it) and once more after the lane select, before they
        # enter the array.
        act_q = [acts[b][1].data for b in range(2)]
        run_src_q = Signal(row_shape, reset_less=True)
        m.d.sync += run_src_q.eq(run_src)
        inj_stages = delayed(inj, ram_lat + 1, "inj")
        inj_d = inj_stages[-2]        # aligned with run_src_q
        inj_dd = inj_stages[-1]       # aligned with act_out
        act_out = Signal(row_shape)
        sel_out = Signal()
        m.d.comb += [
            run_src.eq(Mux(src_buf, act_q[1].as_value(), act_q[0].as_value())),
            out_data.eq(Mux(out_buf, act_q[1].as_value(), act_q[0].as_value())),
            self.array.act.eq(act_out),
            self.array.sel.eq(sel_out),
        ]
        m.d.sync += sel_out.eq(inj_d.par)
        with m.If(inj_d.valid):
            # the row's input tile, from its lanes of the word
            with m.Switch(inj_d.off):
                for o in k_offsets:
                    with m.Case(o):
                        m.d.sync += act_out.eq(Cat(*(run_src_q[i + o]
                                                     for i in range(lanes - o))))
        with m.Else():
            m.d.sync += act_out.eq(0)
        # issue -> inj -> ... (read data) -> inj_d / run_src_q -> inj_dd / act_out
        assert INJECT_LATENCY == 2 + ram_lat

        # -- the collector: accumulate, requantize, write ------------------
        taps = [inj_dd]
        for d in range(max_lat):
            t = Signal.like(inj, name=f"meta_{d + 1}")
            m.d.sync += t.eq(taps[-1])
            taps.append(t)
        # (each chosen by the mode's latency from the tap a stage before,
        # into a register: the choice stays off the accumulator's adder)
        exit_meta = Signal.like(inj)
        pre_meta = Signal.like(inj)      # the accumulator read, ram_lat cycles ahead
        p_meta = Signal.like(inj)        # the parameter read, its data at stage 1
        with m.Switch(latency):
            for lat in sorted({SystolicArray.latency(cfg, self._engine, f)
                               for f in modes}):
                with m.Case(lat):
                    assert lat > ram_lat
                    m.d.sync += [exit_meta.eq(taps[lat - 1]),
                                 pre_meta.eq(taps[lat - ram_lat - 1]),
                                 p_meta.eq(taps[lat - ram_lat])]
        m.d.comb += acc_rd.addr.eq(pre_meta.row)
        for _, prd in pmems:
            m.d.comb += prd.addr.eq(p_meta.p)
        acc_q_in = acc_rd.data
        acc_new = Signal(data.ArrayLayout(signed(32), lanes))
        for j in range(lanes):
            psum = self.array.psum[j]
            m.d.comb += acc_new[j].eq(
                Mux(exit_meta.first, psum, acc_q_in[j] + psum))
        m.d.comb += [acc_wr.addr.eq(exit_meta.row), acc_wr.data.eq(acc_new),
                     acc_wr.en.eq(exit_meta.valid)]

        # Requantization pipeline: a row's parameters are read for it (they
        # arrive in stage 1) and go along with it.
        rq_meta = Signal(data.StructLayout({"valid": 1, "dst": len(seq_dst), "relu": 1,
                                            "fin": 1, "rp": 1}))
        metas = [rq_meta]
        m.d.sync += [rq_meta.valid.eq(exit_meta.valid & exit_meta.last),
                     rq_meta.dst.eq(exit_meta.dst), rq_meta.relu.eq(exit_meta.relu),
                     rq_meta.fin.eq(exit_meta.fin), rq_meta.rp.eq(exit_meta.rp)]
        for d in range(REQUANT_LATENCY - 1):
            t = Signal.like(rq_meta, name=f"rq_meta_{d + 1}")
            m.d.sync += t.eq(metas[-1])
            metas.append(t)
        acc_q = Signal.like(acc_new)
        m.d.sync += acc_q.eq(acc_new)                       # stage 1
        k = 2 + PipelinedMultiplier.LATENCY     # the stage of the DSPs' products
        for j in range(lanes):
            prm = pmems[j][1].data                          # stage 1
            mult = Signal(16, name=f"rq_mult{j}")
            # the clamped shift, registered in stage 2 and carried; the
            # rounding constant derived from it a stage before its adder
            shift = Signal(range(52), name=f"rq_shift{j}")
            m.d.sync += [mult.eq(prm.mult),
                         shift.eq(Mux(prm.shift > 51, 51, prm.shift))]   # stage 2
            shifts = delayed(shift, k + 2, f"rq_shift{j}")  # [d]: stage 2 + d
            round_ = Signal(signed(52), name=f"rq_round{j}")
            m.d.sync += round_.eq((Const(1, 53) << shifts[k - 1])[1:])   # stage k + 2

            t = Signal(signed(33), name=f"rq_t{j}")
            m.d.sync += t.eq(acc_q[j] + prm.bias)           # stage 2
            lo = PipelinedMultiplier(a_width=18, b_width=17, target=cfg.dsp)
            hi = PipelinedMultiplier(a_width=16, b_width=17, target=cfg.dsp)
            m.submodules[f"rq_lo{j}"] = lo
            m.submodules[f"rq_hi{j}"] = hi
            m.d.comb += [lo.a.eq(Cat(t[:17], Const(0, 1))),
                         hi.a.eq(t[17:33]),
                         lo.b.eq(Cat(mult, Const(0, 1))),
                         hi.b.eq(Cat(mult, Const(0, 1)))]
            # stages 3 .. k in the multipliers; their outputs are registered
            # once more in the fabric, next to the adder (the DSP rows are
            # far from the rest).
            lo_p = Signal.like(lo.p, name=f"rq_lo_p{j}", reset_less=True)
            hi_p = Signal.like(hi.p, name=f"rq_hi_p{j}", reset_less=True)
            m.d.sync += [lo_p.eq(lo.p), hi_p.eq(hi.p)]        # stage k+1
            prod = Signal(signed(50), name=f"rq_p{j}")
            m.d.sync += prod.eq((hi_p << 17) + lo_p)        # stage k+2
            rounded = Signal(signed(52), name=f"rq_r{j}")
            m.d.sync += rounded.eq(prod + round_)           # stage k+3
            # The arithmetic shift in two steps: by 8 s, then by the rest.
            coarse = Signal(signed(52), name=f"rq_c{j}")
            sh_c = shifts[k + 1]
            m.d.sync += coarse.eq(rounded >> Cat(Const(0, 3), sh_c[3:]))   # stage k+4
            shifted = Signal(signed(52), name=f"rq_s{j}")
            sh_f = shifts[k + 2]
            m.d.sync += shifted.eq(coarse >> sh_f[:3])      # stage k+5
            # Saturation decided from registered flags: shifted fits int8
            # iff bits 7 .. 51 are all equal to its sign.
            neg = Signal(name=f"rq_neg{j}")
            over = Signal(name=f"rq_over{j}")
            under = Signal(name=f"rq_under{j}")
            low8 = Signal(signed(8), name=f"rq_low{j}")
            upper = shifted[7:]
            m.d.sync += [neg.eq(shifted[-1]),
                         over.eq(~shifted[-1] & upper.any()),
                         under.eq(shifted[-1] & ~upper.all()),
                         low8.eq(shifted[:8])]                # stage k+6
            clipped = Mux(metas[-2].relu & neg, 0,
                          Mux(over, 127, Mux(under, -128, low8)))
            m.d.sync += dst_data[j].eq(clipped)             # stage k+7
        assert REQUANT_LATENCY == 1 + PipelinedMultiplier.LATENCY + 8
        out_meta = metas[-1]        # aligned with dst_data
        pre_out = metas[-2]
        m.d.sync += dst_addr.eq(pre_out.dst)
        m.d.comb += dst_we.eq(out_meta.valid)

        # -- response FIFO for result rows ----------------------------------
        # Deep enough to cover the read latency: a row a cycle.
        # The read data is registered once more before the FIFO: the buffers'
        # bank select and the FIFO's write port are far apart (the critical
        # path of the ECP5 preset at 119 MHz).
        rfifo_depth = ram_lat + 5
        m.submodules.rfifo = rfifo = SyncFIFOBuffered(width=lanes * 8, depth=rfifo_depth)
        out_issue = Signal()
        out_inflight = Signal(ram_lat + 1)     # bit d: a read issued d + 1 cycles ago
        m.d.sync += out_inflight.eq(Cat(out_issue, out_inflight[:-1]))
        out_data_q = Signal.like(out_data)
        m.d.sync += out_data_q.eq(out_data)
        m.d.comb += [rfifo.w_data.eq(out_data_q.as_value()),
                     rfifo.w_en.eq(out_inflight[-1])]
        # Rows owed to the FIFO (in flight or in it), counted in a register
        # instead of adding up the level and the reads in flight; a row read
        # from the FIFO counts a cycle late (``popped``: the answer's ready
        # comes from the far side), which only delays an issue or the
        # trailer by a cycle.
        out_owed = Signal(range(rfifo_depth + 1))
        popped = Signal()
        m.d.sync += [popped.eq(rfifo.r_en & rfifo.r_rdy),
                     out_owed.eq(out_owed + out_issue - popped)]
        out_row = Signal(range(cfg.max_rows + 1))
        chunk_left = Signal.like(nt)      # the row's chunks after this one
        snd_nt0 = Signal()                  # one chunk a row (``snd_nt_m1 == 0``)

        for b in range(2):
            with m.If(out_meta.valid & out_meta.fin & (out_meta.rp == b)):
                m.d.sync += fin_rows[b].eq(fin_rows[b] + 1)

        # -- the sender: a finished RUN's rows and trailer, in the background --
        # Once a RUN's last layer is written the engine hands its answer to
        # the sender and takes commands again: the next RUN computes while
        # this one's rows leave. The sender reads buffer ``out_buf``, words
        # ``snd_lo .. snd_hi - 1``, which nothing writes until it is done.
        snd_active = Signal()
        # per buffer, words ``snd_lo .. snd_to[b] - 1`` that nothing may
        # write: in ``out_buf`` the sender's rows (``snd_hi``), in the other
        # the input rows the RUN's last tile still reads (``in_live``), kept
        # per buffer so that a command's check is one compare a buffer
        snd_on = [Signal(name=f"snd_on{b}") for b in range(2)]
        snd_to = [Signal(range(act_words + 1), name=f"snd_to{b}") for b in range(2)]
        snd_end = Signal()                  # the trailer leaves: the sender is done
        snd_lo = Signal.like(base)
        snd_hi = Signal(range(act_words + 1))
        snd_rows = Signal.like(rows)
        snd_nt_m1 = Signal.like(nt)
        snd_info = Signal(32)
        # the RUN's input rows (in buffer ``in_buf``) that its last tile has
        # still to read, until the tile's slot (``in_slot``) is free
        in_live = Signal()
        in_buf = Signal()
        in_slot = Signal()
        in_done = Signal()
        # the RUN's rows are not all written yet (a cycle late): its answer's
        # cycle count goes on
        snd_counting = Signal()
        snd_par = Signal()                  # the RUN's parity
        snd_tag = Signal()
        # ``out_row == snd_rows``, kept in a register: the compare would
        # otherwise sit in front of ``resp.valid``
        done_issuing = Signal()
        # The sender decides from registers alone; each is kept a cycle
        # ahead, or a cycle late where late is safe:
        # - ``written``: row ``out_row`` is written (a read presented after
        #   the write), from the values of the cycle before (``fin_rows``
        #   only grows while the sender reads its parity);
        # - ``owed_zero``: no row owed to the FIFO (late by a cycle: rows
        #   are only owed while issuing);
        # - ``last_chunk`` (``chunk_left == 0``), ``last_row``
        #   (``out_row + 1 == snd_rows``, from ``rows_after``: the rows after
        #   ``out_row``), ``next_row_addr`` (the first word of row
        #   ``out_row + 1``).
        written = Signal()
        owed_zero = Signal()
        last_chunk = Signal()
        last_row = Signal()
        rows_after = Signal.like(rows)
        next_row_addr = Signal.like(out_rd_addr)
        fin_snd = Mux(snd_par, fin_rows[1], fin_rows[0])
        row_done = out_issue & last_chunk
        m.d.sync += [
            written.eq(Mux(row_done, out_row + 1 < fin_snd, out_row < fin_snd)),
            owed_zero.eq((out_owed == 0) & ~out_issue),
            snd_counting.eq(fin_snd != snd_rows),
        ]
        with m.If(snd_active & snd_counting):
            m.d.sync += snd_info.eq(snd_info + 1)
        with m.If(snd_active):
            m.d.comb += [self.busy.eq(1), self.resp.payload.tag.eq(snd_tag)]
            room = (out_owed < rfifo_depth) & written
            m.d.comb += out_issue.eq(room & ~done_issuing)
            with m.If(out_issue):
                m.d.sync += [chunk_left.eq(Mux(last_chunk, snd_nt_m1, chunk_left - 1)),
                             last_chunk.eq(Mux(last_chunk, snd_nt0, chunk_left == 1)),
                             out_rd_addr.eq(Mux(last_chunk, next_row_addr,
                                                out_rd_addr + snd_rows))]
                with m.If(last_chunk):
                    m.d.sync += [out_row.eq(out_row + 1), next_row_addr.eq(next_row_addr + 1),
                                 rows_after.eq(rows_after - 1), last_row.eq(rows_after == 1),
                                 done_issuing.eq(last_row)]
            # (every row read and sent: none owed)
            with m.If(done_issuing & owed_zero):
                m.d.comb += [self.resp.valid.eq(1),
                             self.resp.payload.status.eq(Status.OK),
                             self.resp.payload.info.eq(snd_info),
                             self.resp.payload.last.eq(1)]
                with m.If(self.resp.ready):
                    m.d.comb += snd_end.eq(1)
                    m.d.sync += [snd_active.eq(0), snd_on[0].eq(0), snd_on[1].eq(0)]
            with m.Else():
                m.d.comb += [self.resp.valid.eq(rfifo.r_rdy),
                             self.resp.payload.data.eq(rfifo.r_data)]
        # (the FIFO holds rows only while they are owed: it is empty when
        # anything else answers, so its read enable needs no condition)
        m.d.comb += rfifo.r_en.eq(self.resp.ready)

        # -- writes into the activation buffers while a RUN is under way --------
        # ``win_valid``: a RUN was taken; its window is ``base .. win_hi - 1``
        # (in both buffers). A WRITE_ACT outside it (and outside
        # the rows the sender has still to read, and the input rows the RUN
        # before still reads) is taken, unless a result row is written into
        # the same buffer in the cycle its write lands.
        # From the RUN's take to its last check, ``win_hi`` is a bound of the
        # window, ``base + (rows << log_chunks)``, so that writes outside it
        # go in while the RUN is checked; then the window itself, which the
        # checks grow in ``win_ex``.
        win_valid = Signal()
        win_hi = Signal(range(act_words + (cfg.max_rows << max(chunks_lg.values(), default=0)) + 1))
        win_ex = Signal(range(act_words + 1))
        # The RUN's window and the sender's rows do not overlap, a cycle
        # late (set below the FSM).
        win_clear = Signal()
        act = args.act
        # The parameter entries of the layer being set up, and so, in IDLE,
        # those the rows still in flight read (only the last layer of the
        # RUN handed over has rows then: a layer starts once the one before
        # has drained, and a RUN hands over once the sender of the one
        # before is done). A WRITE_PARAM outside them is taken at once.
        live_plo = Signal.like(desc.p_base)
        live_phi = Signal(len(desc.p_base) + len(nt))

        # -- the command buffer ---------------------------------------------
        # The head's decision, worked out ahead: which write it enables, or
        # that it starts a RUN or a SET_SPLIT, or the status it fails with
        # (a RUN's NOT_AVAILABLE from ``available`` when the decision loads:
        # it loads again when the split changes, below).
        decision = {
            "do_weights": 1, "do_param": 1, "do_act": 1, "do_layer": 1,
            "is_run": 1, "is_split": 1, "fail": 1, "status": Status,
            "is_param": 1,
            "ctl": 1,               # a RUN, a SET_SPLIT or a failing command: the FSM moves
            "act": 2,               # a write of activations, one-hot by buffer
        }
        # a slot's: the compares of a write of activations' address
        ck_l = data.StructLayout({
            **decision,
            "to_sender": 1,         # into rows the sender or a last tile has still to read
            "outside_run": 1,       # outside the RUN's window
            "p_live": 1,            # a parameter entry the rows in flight read
        })
        # the head's: what its take waits for
        chk_l = data.StructLayout({
            **decision,
            "act_wait": 1,          # a write of activations waits for the sender's rows
            "bg_ok": 1,             # it may be taken while a RUN computes
            "param_wait": 1,        # a WRITE_PARAM that waits for the rows in flight
        })

        def outside(c):
            a = c.args.act.addr
            return (a < base) | (a >= win_hi)

        def into_sender(c):
            a = c.args.act
            return Mux(a.buf, snd_on[1] & (a.addr < snd_to[1]),
                       snd_on[0] & (a.addr < snd_to[0])) & (a.addr >= snd_lo)

        def into_live(c):
            a = c.args.param.addr
            return (a >= live_plo) & (a < live_phi)

        def cmp(c):
            return into_sender(c), outside(c), into_live(c)

        def checks(c):
            a = c.args
            op = c.op
            ok = {
                Opcode.WRITE_WEIGHTS: a.weights.addr < cfg.weight_words,
                Opcode.WRITE_PARAM: (a.param.addr < cfg.param_words) & (a.param.lane < lanes),
                Opcode.WRITE_ACT: a.act.addr < act_words,
                Opcode.SET_LAYER: a.layer.index < cfg.max_layers,
                Opcode.RUN: ((a.run.rows != 0) & (a.run.rows <= cfg.max_rows)
                             & (a.run.layers != 0) & (a.run.layers <= cfg.max_layers)),
                Opcode.SET_SPLIT: Const(int(self._engine == 0), 1) & (a.split.index < len(cfg.modes)),
            }
            bad = {Opcode.WRITE_WEIGHTS: Status.BAD_ADDRESS, Opcode.WRITE_PARAM: Status.BAD_ADDRESS,
                   Opcode.WRITE_ACT: Status.BAD_ADDRESS, Opcode.SET_LAYER: Status.BAD_ADDRESS,
                   Opcode.RUN: Status.BAD_RUN,
                   Opcode.SET_SPLIT: (Status.BAD_SPLIT if self._engine == 0
                                      else Status.NOT_AVAILABLE)}
            # (the opcode and its checks passed)
            do = {o: (op == o) & v for o, v in ok.items()}
            good = Cat(do.values()).any()
            status = Status.BAD_OPCODE
            for o in ok:
                status = Mux(op == o, bad[o], status)
            do_act = do[Opcode.WRITE_ACT]
            return ck_l(Cat(
                do[Opcode.WRITE_WEIGHTS], do[Opcode.WRITE_PARAM], do_act,
                do[Opcode.SET_LAYER], op == Opcode.RUN, do[Opcode.SET_SPLIT],
                ~good, status,
                op == Opcode.WRITE_PARAM,
                (op == Opcode.RUN) | do[Opcode.SET_SPLIT] | ~good,
                do_act & ~a.act.buf, do_act & a.act.buf,
                *cmp(c)))

        # Commands wait in a ring of three slots, the head at ``rd``. A free
        # slot loads the input, and the input's checks (``ck``), in every
        # cycle: taking a command enables a few flip-flops, no command bits,
        # and the head's decision (``chk``) loads from registers, a cycle
        # after the head's slot is written or, when the head is taken, from
        # the next slot. So a command waits at least a cycle, and three
        # slots (one written, one waiting, the head) pass one a cycle.
        # ``cmd.ready`` is a register.
        n_slots = 3

        def pick(values, i):
            # values[i]
            out = values[-1]
            for k in reversed(range(len(values) - 1)):
                out = Mux(i == k, values[k], out)
            return out

        slots = [Signal(cmd_l, name=f"cmd_slot{i}", reset_less=True) for i in range(n_slots)]
        ck = [Signal(ck_l, name=f"cmd_ck{i}") for i in range(n_slots)]
        full = Signal(n_slots)
        rd = Signal(range(n_slots))
        wr = Signal(range(n_slots))
        head_valid = Signal()   # ``chk`` holds the decision on slot ``rd``
        chk = Signal(chk_l)
        take_head = Signal()
        advance = Signal()      # ``chk`` loads
        quiet = Signal()        # (below)
        m.d.comb += [advance.eq(take_head | (~head_valid & ~quiet)),
                     cmd.eq(pick([c.as_value() for c in slots], rd)),
                     self.queued.eq(full.any())]
        put = Signal()
        m.d.comb += put.eq(self.cmd.valid & self.cmd.ready)
        put_at = Cat(put & (wr == i) for i in range(n_slots))
        # (a take leaves a slot free: ``take_head`` enters ``cmd.ready`` last)
        m.d.sync += [full.eq((full & ~Mux(take_head, Cat(rd == i for i in range(n_slots)), 0))
                             | put_at),
                     self.cmd.ready.eq(take_head | ~(full | put_at).all())]
        for i in range(n_slots):
            with m.If(~full[i]):
                m.d.sync += [slots[i].eq(self.cmd.payload), ck[i].eq(checks(self.cmd.payload))]
        with m.If(put):
            m.d.sync += wr.eq(Mux(wr == n_slots - 1, 0, wr + 1))
        with m.If(take_head):
            m.d.sync += rd.eq(Mux(rd == n_slots - 1, 0, rd + 1))
        with m.If(advance):
            # (the next slot's when the head is taken)
            rot = lambda v: v[1:] + v[:1]
            cks = [c.as_value() for c in ck]
            src = ck_l(Mux(head_valid, pick(rot(cks), rd), pick(cks, rd)))
            unavailable = src.is_run & ~available
            m.d.sync += [*(chk[name].eq(src[name]) for name in decision),
                         chk.fail.eq(src.fail | unavailable),
                         chk.status.eq(Mux(unavailable, Status.NOT_AVAILABLE, src.status)),
                         chk.act_wait.eq(src.do_act & src.to_sender),
                         chk.bg_ok.eq(src.do_act & src.outside_run & ~src.to_sender & win_valid),
                         chk.param_wait.eq(src.is_param & src.p_live),
                         head_valid.eq(Mux(head_valid, pick(rot(list(full)), rd),
                                           pick(list(full), rd)))]
        # The compares (and the window's flag) are those of the cycle the
        # checks load. When the window or the sender's rows change
        # (``chk_new``: the window at the RUN's last check, the sender's rows
        # at the hand-over and when the sender is done), the slots'
        # compares are worked out again into ``fl``, loaded in the next cycle
        # (``refresh``) into those that were full, and the head's decision
        # loads again after that. Nothing is taken, and ``chk`` does not
        # load, in the cycle of the change and the two after: ``quiet``.
        chk_new = Signal()
        refresh = Signal()
        fl = [Signal(3, name=f"cmd_fl{i}") for i in range(n_slots)]
        full_d = Signal(n_slots)
        m.d.sync += [chk_new.eq(0), refresh.eq(chk_new), quiet.eq(chk_new), full_d.eq(full),
                     *(fl[i].eq(Cat(cmp(c))) for i, c in enumerate(slots))]
        with m.If(refresh):
            m.d.sync += head_valid.eq(0)
            for i in range(n_slots):
                with m.If(full_d[i]):
                    m.d.sync += Cat(ck[i].to_sender, ck[i].outside_run, ck[i].p_live).eq(fl[i])
        split_d = Signal.like(self.split)
        m.d.sync += split_d.eq(self.split)
        # (``available`` follows the split a cycle later)
        with m.If(snd_end | (self.split != split_d)):
            m.d.sync += [chk_new.eq(1), quiet.eq(1)]
        may_take = Signal()
        m.d.comb += may_take.eq(head_valid & ~quiet
                                & (1 if self._engine == 0 else ~self.hold))
        # A write of activations waits while a result row is written into
        # its buffer in the cycle its write lands: ``res[b]``, a row in
        # ``pre_out`` for buffer b, kept a cycle ahead (``dst_buf`` never
        # changes while rows are in flight).
        res = Signal(2)
        m.d.sync += res.eq(Mux(metas[-3].valid, Mux(dst_buf, 0b10, 0b01), 0))
        act_to_result = (chk.act & res).any()
        bg_take = Signal()
        m.d.comb += bg_take.eq(may_take & chk.bg_ok & ~act_to_result)

        # -- the control FSM ------------------------------------------------
        def fail(status, info=None, tag=None):
            # (in IDLE the answer's info and tag load in every cycle: the
            # command's opcode and tag)
            # (a prefetch for the failing RUN is of no use: ``pf_valid``)
            m.d.sync += [err_status.eq(status), pf_valid.eq(0), win_valid.eq(0)]
            if info is not None:
                m.d.sync += [err_info.eq(info), err_tag.eq(tag)]
            m.next = "ERROR"

        # The write registers load the payload in every cycle and only their
        # enables depend on the command being taken: ``cmd.ready`` drives a
        # few flip-flops, not the clock enables of every data bit.
        m.d.sync += [cmd_act_we.eq(0), *(w.en.eq(0) for w in write_regs),
                     cmd_act.eq(act),
                     w_wr.addr.eq(args.weights.addr), w_wr.data.eq(args.weights.data),
                     l_wr.addr.eq(args.layer.index), l_wr.data.eq(args.layer)]
        for pwr, _ in pmems:
            m.d.sync += [pwr.addr.eq(args.param.addr), pwr.data.bias.eq(args.param.bias),
                         pwr.data.mult.eq(args.param.mult),
                         pwr.data.shift.eq(args.param.shift)]
        with m.If(bg_take):
            m.d.comb += take_head.eq(1)
            m.d.sync += cmd_act_we.eq(1)
        settle = Signal(SPLIT_SETTLE)   # (a cycle in SPLIT_WAIT a bit, from the bottom)
        issued = Signal()       # (LAYER_DRAIN)
        loaded = Signal()       # (LAYER_DRAIN)
        m.d.sync += [issued.eq(0), loaded.eq(0)]
        hand = Signal()         # (the hand-over, below)
        m.d.sync += hand.eq(0)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                take = Signal()
                # (a RUN's last rows may still be in flight: they read their
                # parameters on the way, and each takes the activation RAM's
                # write port in the cycle it is written)
                m.d.comb += take.eq(may_take & ~chk.act_wait & ~act_to_result
                                    & ~(chk.param_wait & (tail_nz | in_live)))
                m.d.comb += take_head.eq(take)
                # The FSM moves only for the commands whose take does not
                # wait for the sender's rows or a result row (``ctl``: no
                # write of activations), so its transitions read this
                # shorter condition, equal to ``take`` for them.
                take_ctl = Signal()
                m.d.comb += take_ctl.eq(may_take & chk.ctl
                                        & ~(chk.param_wait & (tail_nz | in_live)))
                # A RUN's or SET_SPLIT's registers, and an error answer's
                # info, load the head's fields in every idle cycle (nothing
                # reads them while idle but the hand-over, in the first idle
                # cycle, before they change), so that taking a command
                # enables only a few flip-flops.
                r = args.run
                m.d.sync += [rows.eq(r.rows), base.eq(r.base),
                             win_hi.eq(r.base + (r.rows << log_chunks)), win_ex.eq(r.base),
                             n_layers_m1.eq(r.layers - 1), layer.eq(0), cycles.eq(0),
                             run_tag.eq(cmd.tag), split_index.eq(args.split.index),
                             split_tag.eq(cmd.tag), settle.eq(0),
                             err_info.eq(cmd.op), err_tag.eq(cmd.tag)]
                with m.If(take):
                    m.d.sync += [w_wr.en.eq(chk.do_weights), cmd_act_we.eq(chk.do_act),
                                 l_wr.en.eq(chk.do_layer)]
                    for j, (pwr, _) in enumerate(pmems):
                        m.d.sync += pwr.en.eq(chk.do_param & (args.param.lane == j))
                with m.If(take_ctl):
                    with m.If(chk.fail):
                        fail(chk.status)
                    with m.Elif(chk.is_run):
                        # (the slots' compares are worked out again for the
                        # window's bound)
                        m.d.sync += [run_par.eq(~run_par), pre_loaded.eq(0), win_valid.eq(1),
                                     chk_new.eq(1), quiet.eq(1)]
                        m.next = "CHECK_READ"
                    if self._engine == 0:
                        with m.Elif(chk.is_split):
                            m.next = "SPLIT_WAIT"

            with m.State("ERROR"):
                # (after the answer the sender still owes: responses keep order)
                m.d.comb += self.busy.eq(1)
                with m.If(~snd_active):
                    m.d.comb += [self.resp.valid.eq(1),
                                 self.resp.payload.status.eq(err_status),
                                 self.resp.payload.info.eq(err_info),
                                 self.resp.payload.tag.eq(err_tag),
                                 self.resp.payload.last.eq(1)]
                    with m.If(self.resp.ready):
                        m.next = "IDLE"

            if self._engine == 0:
                with m.State("SPLIT_WAIT"):
                    m.d.comb += [self.busy.eq(1), self.split_wait.eq(1)]
                    with m.If(~settle[-1]):
                        m.d.sync += settle.eq(Cat(1, settle[:-1]))
                    with m.Elif(~self.peers_busy & ~snd_active):
                        m.d.comb += [self.split_req.eq(1),
                                     self.split_value.eq(split_index)]
                        m.d.sync += cycles.eq(0)
                        m.next = "TRAILER"

            # Check every layer before anything runs, a few steps a layer.
            need_w = Signal(range((cfg.max_dim + 1) ** 2 * lanes + cfg.weight_words + 1))
            need_src = Signal(range((cfg.max_dim + 1) * (cfg.max_rows + 1) + 1))
            need_dst = Signal.like(need_src)
            dims_ok = Signal()
            tiles = Signal(range((cfg.max_dim + 1) ** 2 + 1))
            # The products run on pipelined multipliers (registered DSPs),
            # not in one combinational cycle.
            prods = {}
            for name, a, b in (("tiles", kt, nt), ("src", kw, rows), ("dst", nt, rows)):
                mul = PipelinedMultiplier(a_width=len(a) + 1, b_width=len(b) + 1,
                                          target=cfg.dsp)
                m.submodules[f"check_{name}"] = mul
                m.d.comb += [mul.a.eq(a), mul.b.eq(b)]
                prods[name] = mul.p
            wait = Signal(range(PipelinedMultiplier.LATENCY + 1))
            need_p = Signal(len(desc.p_base) + len(nt) + 1)
            src_hi = Signal(len(need_src) + 1)
            dst_hi = Signal.like(src_hi)
            # (the window grows to the larger of src_hi and dst_hi, from
            # compares of the CHECK_LIMITS cycle, below the FSM)
            src_gt_dst = Signal()
            src_gt_win = Signal()
            dst_gt_win = Signal()
            bounds_bad = Signal()
            with m.State("CHECK_READ"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                # (the sender of the RUN before the last is done: this RUN's
                # parity is free, and none of its rows is written yet)
                for pb in range(2):
                    with m.If(run_par == pb):
                        m.d.sync += fin_rows[pb].eq(0)
                m.next = "CHECK_DIMS"
            with m.State("CHECK_DIMS"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                # (the RUN's first tile, into a free register: its countdown
                # run out, as a take's would be a cycle later)
                free_reg = Mux(ld_par, (slot_state[1] == FREE) & (countdown[1] == 0),
                               (slot_state[0] == FREE) & (countdown[0] == 0))
                m.d.comb += pf_start.eq((layer == 0) & ~ld_busy & ~loader_busy & free_reg)
                m.d.sync += [
                    *plus_dims,
                    dims_ok.eq((desc.in_dim != 0) & (desc.in_dim <= cfg.max_dim)
                               & (desc.out_dim != 0) & (desc.out_dim <= cfg.max_dim)
                               & ((layer == 0) | (desc.in_dim == prev_out))),
                ]
                m.next = "CHECK_TILES"
            with m.State("CHECK_TILES"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.d.sync += [kt.eq(in_plus >> log_k), nt.eq(out_plus >> log_side),
                             kw.eq(in_wplus >> log_side), wait.eq(0)]
                m.next = "CHECK_PRODUCTS"
            with m.State("CHECK_PRODUCTS"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [cycles.eq(cycles + 1), wait.eq(wait + 1)]
                with m.If(wait == PipelinedMultiplier.LATENCY):
                    m.d.sync += [tiles.eq(prods["tiles"]), need_src.eq(prods["src"]),
                                 need_dst.eq(prods["dst"])]
                    m.next = "CHECK_WEIGHTS"
            with m.State("CHECK_WEIGHTS"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.d.sync += [need_w.eq((tiles << log_k) + desc.w_base),
                             need_p.eq(desc.p_base + nt),
                             src_hi.eq(need_src + base), dst_hi.eq(need_dst + base)]
                m.next = "CHECK_LIMITS"
            with m.State("CHECK_LIMITS"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.next = "CHECK_BOUNDS"
            with m.State("CHECK_BOUNDS"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(bounds_bad):
                    fail(Status.BAD_LAYER, layer, run_tag)
                with m.Else():
                    win_next = Mux(src_gt_dst & src_gt_win, src_hi,
                                   Mux(~src_gt_dst & dst_gt_win, dst_hi, win_ex))
                    m.d.sync += win_ex.eq(win_next)
                    with m.If(last_layer):
                        m.d.sync += [layer.eq(0), win_hi.eq(win_next), quiet.eq(1),
                                     chk_new.eq(1)]
                        m.next = "LAYER_READ"
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), prev_out.eq(desc.out_dim)]
                        m.next = "CHECK_READ"

            with m.State("LAYER_READ"):
                # A layer starts once it does not read the buffer the sender
                # reads, and the RUN's window does not overlap the sender's.
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(~snd_active | ((out_buf != layer[0]) & win_clear)):
                    m.next = "LAYER_SETUP"

            with m.State("LAYER_SETUP"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    cycles.eq(cycles + 1), *plus_dims,
                    seq_k.eq(0), seq_n.eq(0), seq_rb.eq(0), rows_left.eq(rows),
                    seq_src.eq(base), seq_dst.eq(base), seq_w.eq(desc.w_base),
                    seq_p.eq(desc.p_base), relu.eq(desc.relu),
                    src_buf.eq(layer[0]), dst_buf.eq(~layer[0]),
                ]
                m.next = "LAYER_TILES"
            with m.State("LAYER_TILES"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [cycles.eq(cycles + 1), kt.eq(in_plus >> log_k),
                             nt.eq(out_plus >> log_side)]
                m.next = "LAYER_PREPARE"
            with m.State("LAYER_PREPARE"):
                # the flags of the first tile and the first block's length
                # settle into registers
                m.d.comb += self.busy.eq(1)
                m.d.sync += [cycles.eq(cycles + 1), nt_m1.eq(nt - 1),
                             live_plo.eq(desc.p_base), live_phi.eq(desc.p_base + nt)]
                m.next = "LAYER_RUN"
            with m.State("LAYER_RUN"):
                # (the sequencer's counters step below the FSM: a take
                # happens only in here)
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(seq_take & seq_last_k & seq_last_n & seq_last_blk):
                    m.next = "LAYER_DRAIN"
            with m.State("LAYER_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                # (all of the layer's rows issued: from a register, a cycle
                # late; it stays high once set, nothing is taken in here)
                m.d.sync += [issued.eq((slot_state[0] == FREE) & (slot_state[1] == FREE)
                                       & ~loader_busy),
                             loaded.eq(~ld_busy & ~loader_busy)]
                with m.If(last_layer):
                    # The last layer's tiles are all loaded: the sender takes
                    # over and reads each row once it is written, while the
                    # next RUN is checked, sets up and loads its first tile
                    # into the other weight register, so that its rows
                    # follow this RUN's last rows. Until the last tile's rows
                    # are all issued (``in_live``), a write into the input
                    # rows it still reads waits, and so does a WRITE_PARAM
                    # into the parameter entries they read (``live_plo``).
                    # The trailer's count is the RUN's cycles to its last
                    # row written, as if it had waited.
                    with m.If(loaded & ~snd_active):
                        m.d.sync += [hand.eq(1), win_valid.eq(0), quiet.eq(1)]
                        m.next = "IDLE"
                with m.Elif(issued & ~tail_nz):
                    m.d.sync += layer.eq(layer + 1)
                    m.next = "LAYER_READ"

            with m.State("TRAILER"):
                # (SET_SPLIT's answer; it waited for the sender)
                m.d.comb += [self.busy.eq(1), self.resp.valid.eq(1),
                             self.resp.payload.status.eq(Status.OK),
                             self.resp.payload.info.eq(cycles),
                             self.resp.payload.tag.eq(split_tag),
                             self.resp.payload.last.eq(1)]
                with m.If(self.resp.ready):
                    m.next = "IDLE"

        m.d.comb += run_next.eq(fsm.ongoing("LAYER_PREPARE") | fsm.ongoing("LAYER_RUN"))
        # (``win_clear``, low in the cycle after every CHECK_BOUNDS, where the
        # window may grow)
        m.d.sync += win_clear.eq(((base >= snd_hi) | (win_ex <= snd_lo))
                                 & ~fsm.ongoing("CHECK_BOUNDS"))
        with m.If(seq_take):
            last_k = seq_last_k
            last_n = seq_last_n
            # (the next word once this one's input tiles are done)
            last_part = (seq_k & parts_m1) == parts_m1
            m.d.sync += [seq_k.eq(Mux(last_k, 0, seq_k + 1)),
                         seq_src.eq(Mux(last_k, base,
                                        Mux(last_part, seq_src + rows, seq_src))),
                         seq_w.eq(seq_w + k_side)]
            with m.If(last_k):
                m.d.sync += [seq_n.eq(Mux(last_n, 0, seq_n + 1)),
                             seq_dst.eq(Mux(last_n, base, seq_dst + rows)),
                             seq_p.eq(Mux(last_n, desc.p_base, seq_p + 1))]
                with m.If(last_n):
                    m.d.sync += [seq_w.eq(desc.w_base),
                                 seq_rb.eq(seq_rb + cfg.acc_rows),
                                 rows_left.eq(rows_left - blk)]
        # One-hot: each state's decode is a flip-flop, not a compare of the
        # state register (Yosys re-encodes the state only when asked, since
        # it has an initial value).
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        # A layer's limits and the window's compares, in every cycle from
        # registers (set in CHECK_DIMS and CHECK_WEIGHTS, held in
        # CHECK_LIMITS), read in CHECK_BOUNDS: no state gates them.
        m.d.sync += [bounds_bad.eq(~dims_ok | (need_w > cfg.weight_words)
                                   | (src_hi > act_words) | (dst_hi > act_words)
                                   | (need_p > cfg.param_words)),
                     src_gt_dst.eq(src_hi > dst_hi), src_gt_win.eq(src_hi > win_ex),
                     dst_gt_win.eq(dst_hi > win_ex)]
        # The RUN's last tile's rows are all issued (its slot free): its
        # input rows may be written (the flag falls two cycles later, after
        # the last row's read; the slots' checks are worked out again).
        m.d.sync += in_done.eq(in_live & Mux(in_slot, slot_state[1] == FREE,
                                             slot_state[0] == FREE))
        with m.If(in_done):
            m.d.sync += [in_live.eq(0), chk_new.eq(1), quiet.eq(1)]
            for b in range(2):
                with m.If(in_buf == b):
                    m.d.sync += snd_on[b].eq(0)
        # The hand-over, in the cycle after the last layer's tiles are loaded
        # (the FSM's first cycle back in IDLE, when the RUN's registers still
        # hold it): the sender's registers load, enabled by this flip-flop
        # alone. Nothing is taken in this cycle or the two after (``quiet``).
        with m.If(hand):
            # (a RUN has rows: ``done_issuing`` starts low)
            m.d.comb += self.busy.eq(1)
            m.d.sync += [out_row.eq(0), chunk_left.eq(nt_m1), snd_nt0.eq(nt_m1 == 0),
                         done_issuing.eq(0),
                         written.eq(0), last_chunk.eq(nt_m1 == 0), last_row.eq(rows == 1),
                         rows_after.eq(rows - 1),
                         next_row_addr.eq(base + 1), out_rd_addr.eq(base), out_buf.eq(~layer[0]),
                         snd_active.eq(1), snd_on[0].eq(1), snd_on[1].eq(1),
                         snd_to[0].eq(Mux(src_buf, dst_hi, src_hi)),
                         snd_to[1].eq(Mux(src_buf, src_hi, dst_hi)),
                         in_live.eq(1), in_buf.eq(src_buf),
                         in_slot.eq(~ld_par),
                         snd_lo.eq(base), snd_hi.eq(dst_hi), snd_rows.eq(rows),
                         snd_nt_m1.eq(nt_m1), snd_info.eq(cycles),
                         snd_par.eq(run_par), snd_tag.eq(run_tag), quiet.eq(1),
                         chk_new.eq(1)]
        return m
