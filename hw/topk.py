"""An exact streaming top-k filter: RPAccel's filter unit, without the
approximation.

Lists of (score, id) pairs stream in, ``lanes`` pairs a cycle; at the end of
each list the best ``k`` leave, best first. "Best" is the total order
(score descending, id ascending): of two equal scores the lower id wins, so
the result is unique even with ties (and with duplicate ids, which are
allowed: ids are opaque, and two identical pairs are interchangeable).
:mod:`host.topk` is the golden model.

Input (:func:`input_layout`), one beat a cycle
    ``pairs[j]`` with ``valid[j]`` for lane ``j`` (any mask: a list of any
    length fits, and lanes may be idle mid-list); ``last`` ends the list (the
    pairs of that beat still belong to it; a ``last`` beat with no valid lane
    ends the list too, so ``valid = 0, last = 1`` alone is an empty list);
    ``k`` is read on the ``last`` beat only (a producer may simply hold it
    for the whole list). ``1 <= k <= k_max`` is a good list.

Output (:func:`output_layout`), one beat per pair
    For a good list: ``min(k, n)`` pair beats (``last = 0``, ``rank`` 0, 1,
    ..., best first), then one trailer beat: ``last = 1``, ``status = OK``,
    ``rank`` = number of pairs sent, ``score``/``id`` zero. An empty list is
    the trailer alone. For ``k = 0`` or ``k > k_max`` the pairs are dropped
    and the trailer alone says ``status = BAD_K`` (``rank = 0``); the unit goes
    on with the next list. Lists leave in the order they came.

How it works
------------
Lane ``j`` feeds its own systolic insertion chain (:class:`TopKChain`) of
``k_max`` compare-and-swap cells (:class:`TopKCell`); a cell keeps the better
of its pair and the arriving one and passes the loser on, registered, so no
path holds more than one comparator. To clear 200 MHz on an ECP5 the
compare and its use are a cycle apart: a cell compares in one cycle and
selects the kept and the passed pair in the next, and to still take a pair
every cycle it interleaves two independent insertion runs, one on even and
one on odd cycles (each cell holds one pair of each). A lane's list is thus
split by cycle parity into two runs, each ranked exactly; merging them (and
the lanes) gives the exact top-k, since the best ``k`` of a union are among
the best ``k`` of each part.

The end of a list is a marker on two consecutive tokens, one per run: the
list's last beat carries the second, and the token sent just before it (a
pair of the list or a bubble), still in the register in front of the chain,
gets the first. When a marker reaches cell ``i`` the cell hands the run's
pair it holds - rank ``i`` of that run - to a second register chain running
back up to the head, and empties itself for the next list, whose pairs
follow the markers without a gap. A cell hands off a rank only if
``i < k``; the first that does not (or a tail stage past the last cell)
hands off an end token. The tokens of each run fill a FIFO (distributed
RAM); per lane a merge at half rate (:class:`TopKMerge`, ``half_rate=True``:
compare in one cycle, pop in the next) joins the two runs, a tree of
full-rate merges joins the lanes, and the output stage sends the first
``k`` pairs, then the trailer, and drops the rest of the list.

Back to back: pairs of the next list enter right behind the markers; only a
list's last beat may wait: until ``3 r + 5`` cycles after the previous
list's (so that hand-offs do not collide with the previous list's tokens
travelling up; ``r`` bounds the ranks a run handed off, ``min(k, pairs in
the run)``, within a factor 2), until every run FIFO has room for a whole
run, and until the queue of k values for the output stage has room. The
run merge takes a token at most every other cycle, and so does the output
stage for the pairs it sends; the tokens after the ``k``-th it drops one a
cycle. A list of ``m`` beats goes at full rate when
``m >= max(4 (k + 1), 2 P (k + 1) + k, 3 k + 5) + 8``; shorter lists can
make the input wait (at ``P = 1``, lists of 4096 pairs go at full rate for
any ``k`` up to 1021; at ``P = 4``, for ``k`` up to 112). Nothing fans out to a whole chain: the chains never stall
(bubbles fill the gaps), output backpressure stops at the FIFOs, and every
control decision is one or two LUTs after registers.

Latency (``P = 1``, no backpressure): see ``benchmarks/topk.py``; the trailer
of a list with ``k = k_max`` leaves about ``2 k`` cycles after its last beat
was taken.
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import TopKConfig
from .primitives import Skid

__all__ = ["Status", "score_shape", "pair_layout", "input_layout", "output_layout",
           "k_bits", "fifo_depth", "TokenFIFO", "TopKCell", "TopKChain", "TopKMerge",
           "TopKFilter"]


class Status(enum.Enum, shape=2):
    OK = 0
    BAD_K = 1       #: k = 0 or k > k_max; the list's pairs were dropped


def _check_config(config):
    if not isinstance(config, TopKConfig):
        raise TypeError(f"config must be a TopKConfig, not {config!r}")


def score_shape(config: TopKConfig):
    return signed(config.score_bits) if config.signed else unsigned(config.score_bits)


def k_bits(config: TopKConfig) -> int:
    """Width of the ``k`` field: ``0 .. k_max`` and at least one illegal value
    above, so that a too-large ``k`` is answered and not wrapped."""
    return (config.k_max + 1).bit_length()


def fifo_depth(config: TopKConfig) -> int:
    """RAM entries of a run FIFO: a whole run (``k_max`` ranks and an end
    token) and some slack for the previous list's last tokens, in whole
    banks of :class:`TokenFIFO`."""
    return -(-(config.k_max + 9) // TokenFIFO.BANK) * TokenFIFO.BANK


def pair_layout(config: TopKConfig) -> data.StructLayout:
    return data.StructLayout({"score": score_shape(config),
                              "id": unsigned(config.id_bits)})


def input_layout(config: TopKConfig) -> data.StructLayout:
    return data.StructLayout({
        "pairs": data.ArrayLayout(pair_layout(config), config.lanes),
        "valid": unsigned(config.lanes),
        "last": 1,
        "k": unsigned(k_bits(config)),
    })


def output_layout(config: TopKConfig) -> data.StructLayout:
    return data.StructLayout({
        "score": score_shape(config),
        "id": unsigned(config.id_bits),
        # Rank of a pair beat; on the trailer, the number of pairs sent.
        "rank": unsigned(config.k_max.bit_length()),
        "last": 1,
        "status": Status,
    })


def _entry_layout(config):
    # A token of a run's result: a pair, or the end of the list (pair unused).
    return data.StructLayout({"end": 1, "pair": pair_layout(config)})


def _up_layout(config):
    # A token on a chain's way up; ``run`` says which of the list's two runs.
    return data.StructLayout({"valid": 1, "run": 1, "entry": _entry_layout(config)})


def _down_layout(config):
    # What moves down a chain: a pair (if valid), and an end-of-list marker
    # (if mark) with the list's k, which run it closes and whether every cell
    # above handed off a rank.
    return data.StructLayout({
        "valid": 1,
        "pair": pair_layout(config),
        "mark": 1,
        "run": 1,
        "k": unsigned(k_bits(config)),
        "emit": 1,
    })


def _tree(values, combine):
    """Reduce ``values`` pairwise (a balanced tree, log depth)."""
    values = list(values)
    while len(values) > 1:
        values = [combine(*values[n:n + 2]) if n + 1 < len(values) else values[n]
                  for n in range(0, len(values), 2)]
    return values[0]


def _greater(a, b):
    """Unsigned ``a > b`` as the top bit of one subtraction, like _beats."""
    a, b = Value.cast(a), Value.cast(b)
    width = max(len(a), len(b)) + 1

    def widen(v):
        return Cat(v, Const(0, width - len(v)))
    return (widen(b) - widen(a))[width - 1]


def _beats(a, b, a_valid=None, b_valid=None, *, or_ties=False):
    """``a`` ranks before ``b``: higher score, or equal score and lower id
    (and, with the valid bits, any valid pair before an invalid one); with
    ``or_ties``, also when the two are equal (``not _beats(b, a)``).

    One unsigned compare of two concatenations, i.e. one carry chain with
    no equality or tie logic after it and no inverters before it: the order
    ``(valid, score, ~id)`` is rearranged so that every bit is taken as is,
    with the id fields and a signed score's sign bits swapped between sides
    (``~x > ~y`` is ``y > x``).
    """
    sa, sb = Value.cast(a.score), Value.cast(b.score)
    if sa.shape().signed:
        top_a, top_b = sb[-1], sa[-1]
    else:
        top_a, top_b = sa[-1], sb[-1]
    left = [b.id, sa[:-1], top_a]
    right = [a.id, sb[:-1], top_b]
    if a_valid is not None:
        left.append(a_valid)
        right.append(b_valid)
    # The top bit of a subtraction: the sum output of the chain's top stage,
    # not a carry-out (nor an inverted one) that needs a LUT after the
    # chain. It is the borrow of right - left (left > right), or, with a 1
    # on top of left, the absence of a borrow in left - right (left >= right).
    if or_ties:
        left, right = Cat(*left, 1), Cat(*right, 0)
        return (left - right)[len(left) - 1]
    left, right = Cat(*left, 0), Cat(*right, 0)
    return (right - left)[len(left) - 1]


class TokenFIFO(Elaboratable):
    """A first-in first-out queue in distributed RAM, read at half rate.

    The interface of :class:`amaranth.lib.fifo.SyncFIFOBuffered` (``r_data``
    and ``r_rdy`` are registers), for clock rates a block RAM cannot reach on
    an ECP5 (its clock-to-output alone is over 5 ns). The RAM is split into
    banks of 16 entries (one LUT RAM deep); every cycle each bank's entry at
    the read address is registered, and the bank multiplexer works between
    those registers and the output register, so no path holds both a RAM
    read and a wide multiplexer. An entry moves to the output at most every
    other cycle (the registered read must catch up after a move), which the
    half-rate merge that reads these queues never exceeds.

    ``depth`` (rounded up to whole banks) RAM entries plus the output
    register. ``w_en`` must only be raised while ``w_rdy`` is (the run
    FIFOs count credits instead). Every control signal is decided from
    registers and the enables.
    """

    BANK = 16

    def __init__(self, *, width: int, depth: int):
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an integer of at least 2, not {depth!r}")
        self.width = width
        self.banks = -(-depth // self.BANK)
        self.depth = self.banks * self.BANK
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.w_rdy = Signal()
        self.r_data = Signal(width, reset_less=True)
        self.r_rdy = Signal()
        self.r_en = Signal()

    def elaborate(self, platform):
        m = Module()
        produce_lo, consume_lo = Signal(4), Signal(4)
        hi = range(max(self.banks, 2))      # at least one bit for Verilog's sake
        produce_hi = Signal(hi)
        consume_hi = Signal(hi)
        level = Signal(range(self.depth + 1))       # entries in the RAM
        nonempty = Signal()                         # level != 0, as a register
        full = Signal()                             # level == depth, as a register
        ahead = [Signal(self.width, name=f"ahead{b}", reset_less=True)
                 for b in range(self.banks)]
        ahead_hi = Signal(hi)
        ahead_valid = Signal()      # ahead[ahead_hi] is the RAM's oldest entry
        move = Signal()             # it goes to the output register now
        for b in range(self.banks):
            ram = Memory(shape=self.width, depth=self.BANK, init=[])
            m.submodules[f"bank{b}"] = ram
            wp = ram.write_port()
            rp = ram.read_port(domain="comb")
            m.d.comb += [wp.addr.eq(produce_lo), wp.data.eq(self.w_data),
                         wp.en.eq(self.w_en & (produce_hi == b)),
                         rp.addr.eq(consume_lo)]
            m.d.sync += ahead[b].eq(rp.data)
        m.d.comb += [self.w_rdy.eq(~full),
                     move.eq(ahead_valid & (~self.r_rdy | self.r_en))]
        # What ahead holds after a move is the moved entry: not valid again
        # until the read address has moved on.
        m.d.sync += [ahead_hi.eq(consume_hi), ahead_valid.eq(nonempty & ~move)]

        def step(lo, hi):
            return [lo.eq(lo + 1),
                    hi.eq(Mux(lo == self.BANK - 1,
                              Mux(hi == self.banks - 1, 0, hi + 1), hi))]

        with m.If(self.w_en):
            m.d.sync += step(produce_lo, produce_hi)
        with m.If(move):
            m.d.sync += step(consume_lo, consume_hi)
            m.d.sync += [self.r_data.eq(_select(ahead, ahead_hi)), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        with m.If(self.w_en & ~move):
            m.d.sync += [level.eq(level + 1), nonempty.eq(1),
                         full.eq(level == self.depth - 1)]
        with m.Elif(move & ~self.w_en):
            m.d.sync += [level.eq(level - 1), nonempty.eq(level != 1), full.eq(0)]
        return m


def _select(values, index):
    """``values[index]`` as a multiplexer tree."""
    if len(values) == 1:
        return values[0]
    return data.ArrayLayout(unsigned(len(values[0])), len(values))(Cat(*values))[index]


class TopKCell(wiring.Component):
    """One compare-and-swap cell of an insertion chain, two runs interleaved.

    On every cycle the cell compares the token arriving on ``down_i`` with the
    pair it holds for that token's run (runs alternate cycle by cycle), and
    registers the decision; on the next cycle it applies it: keeps the
    better pair and registers the other on ``down_o``, with the marker
    fields. A marker (applied after its pair) closes the run in this cell:
    one cycle later the cell registers the run's pair on ``up_o`` - as rank
    ``index`` if ``index < k`` and every cell above handed off a rank, as an
    end token if it is the first that does not - and the run starts empty.
    Otherwise ``up_o`` registers ``up_i``.

    A token spends two cycles in a cell: ``down_o`` is ``down_i``'s loser two
    cycles later, and a marker's hand-off leaves on ``up_o`` three cycles
    after the marker arrived.

    Parameters
    ----------
    config : TopKConfig
    index : int
        Position in the chain (0 = best).

    Attributes
    ----------
    down_i : In(down layout)
    down_o : Out(down layout)
    up_i : In(up layout)
    up_o : Out(up layout)
    """

    def __init__(self, config: TopKConfig, *, index: int):
        _check_config(config)
        if not isinstance(index, int) or not 0 <= index < config.k_max:
            raise ValueError(f"index must be in 0..{config.k_max - 1}, not {index!r}")
        self._config = config
        self._index = index
        super().__init__({
            "down_i": In(_down_layout(config)),
            "down_o": Out(_down_layout(config)),
            "up_i": In(_up_layout(config)),
            "up_o": Out(_up_layout(config)),
        })

    @property
    def config(self):
        return self._config

    @property
    def index(self):
        return self._index

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        pair = pair_layout(cfg)
        x = self.down_i
        # Only valid and marker bits are reset; the data registers need none,
        # which keeps the reset net small.
        cmp_pair = Signal(pair, reset_less=True)    # held pair of the run compared now
        cmp_valid = Signal()
        app_pair = Signal(pair, reset_less=True)    # held pair of the run applied now
        app_valid = Signal()
        arr = Signal(_down_layout(cfg), reset_less=True)   # last cycle's arrival
        arr_valid, arr_mark = Signal(), Signal()
        take_r = Signal(reset_less=True)            # last cycle's decision
        arr_in_k = Signal(reset_less=True)          # index < the arrival's k
        o_valid, o_mark = Signal(), Signal()
        o_rest = Signal(_down_layout(cfg), reset_less=True)
        hand = Signal()                             # hand off cmp_pair this cycle
        hand_end = Signal(reset_less=True)
        hand_run = Signal(reset_less=True)
        u_valid = Signal()
        u_rest = Signal(_up_layout(cfg), reset_less=True)

        # The compare: a carry chain between registers, driving one register.
        # With both pairs invalid its result is arbitrary and harmless.
        take = Signal()
        m.d.comb += take.eq(_beats(x.pair, cmp_pair, x.valid, cmp_valid))
        m.d.sync += [take_r.eq(take), arr.eq(x), arr_valid.eq(x.valid),
                     arr_mark.eq(x.mark), arr_in_k.eq(x.k > self._index),
                     app_pair.eq(cmp_pair), app_valid.eq(cmp_valid)]

        # The apply, for the other run: multiplexers after registers.
        win = Mux(take_r, arr.pair, app_pair)
        win_valid = arr_valid | app_valid
        rank_ok = win_valid & arr_in_k
        m.d.sync += [
            cmp_pair.eq(win),
            cmp_valid.eq(win_valid & ~arr_mark),
            o_valid.eq(arr_valid & app_valid),
            o_rest.pair.eq(Mux(take_r, app_pair, arr.pair)),
            o_mark.eq(arr_mark),
            o_rest.run.eq(arr.run),
            o_rest.k.eq(arr.k),
            o_rest.emit.eq(arr.emit & rank_ok),
            hand.eq(arr_mark & arr.emit),
            hand_end.eq(~rank_ok),
            hand_run.eq(arr.run),
        ]
        # The hand-off: the closed run's pair is still in cmp_pair (invalid
        # for the compare) in the cycle after the apply.
        with m.If(hand):
            m.d.sync += [u_valid.eq(1), u_rest.run.eq(hand_run),
                         u_rest.entry.end.eq(hand_end), u_rest.entry.pair.eq(cmp_pair)]
        with m.Else():
            m.d.sync += [u_valid.eq(self.up_i.valid), u_rest.run.eq(self.up_i.run),
                         u_rest.entry.eq(self.up_i.entry)]

        m.d.comb += [
            self.down_o.valid.eq(o_valid), self.down_o.pair.eq(o_rest.pair),
            self.down_o.mark.eq(o_mark), self.down_o.run.eq(o_rest.run),
            self.down_o.k.eq(o_rest.k), self.down_o.emit.eq(o_rest.emit),
            self.up_o.valid.eq(u_valid), self.up_o.run.eq(u_rest.run),
            self.up_o.entry.eq(u_rest.entry),
        ]
        return m


class TopKChain(wiring.Component):
    """A systolic insertion chain of ``k_max`` cells for one lane.

    ``i`` must come from a register (it feeds cell 0's comparator). Tokens on
    even and odd cycles form two independent runs. Per list, each run is
    closed by a marker; for a marker of run ``s`` on ``i`` in cycle ``t``,
    ``o`` carries ``r = min(k, n, k_max)`` rank tokens of that run, best
    first, then its end token, all with ``run = s``: rank ``q`` (or the end,
    ``q = r``) in cycle ``t + 3 q + 3``. The chain never stalls; a list's
    markers must follow the previous list's by at least ``3 r + 2`` cycles
    (``r`` the most ranks either of its runs handed off) or the hand-offs
    collide with tokens on their way up.

    Attributes
    ----------
    i : In(down layout)
    o : Out(up layout)
    """

    #: Cycles from a marker on ``i`` to rank ``q`` on ``o``: ``3 q + LATENCY``.
    LATENCY = 3

    def __init__(self, config: TopKConfig):
        _check_config(config)
        self._config = config
        super().__init__({
            "i": In(_down_layout(config)),
            "o": Out(_up_layout(config)),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        cells = []
        for index in range(cfg.k_max):
            cell = TopKCell(cfg, index=index)
            m.submodules[f"cell{index}"] = cell
            cells.append(cell)
        m.d.comb += cells[0].down_i.eq(self.i)
        for upper, lower in zip(cells, cells[1:]):
            m.d.comb += [lower.down_i.eq(upper.down_o), upper.up_i.eq(lower.up_o)]
        # Past the last cell: the end token of a run that filled every cell,
        # on the hand-off timing of a cell k_max (three cycles).
        tail = cells[-1].down_o
        delay = [Signal(2, name=f"tail{n}") for n in range(3)]    # (valid, run)
        m.d.sync += delay[0].eq(Cat(tail.mark & tail.emit, tail.run))
        for src, dst in zip(delay, delay[1:]):
            m.d.sync += dst.eq(src)
        m.d.comb += [cells[-1].up_i.valid.eq(delay[-1][0]),
                     cells[-1].up_i.run.eq(delay[-1][1]),
                     cells[-1].up_i.entry.end.eq(1),
                     self.o.eq(cells[0].up_o)]
        return m


class TopKMerge(wiring.Component):
    """Merges two sorted token streams, list by list, into one.

    Each input carries, per list, pairs best first and then an end token; the
    output carries both lists' pairs in order (ties: ``a`` first) and one
    end token. Registered output; a pair leaves only when both inputs show a
    token, since the other side's could be better.

    Parameters
    ----------
    config : TopKConfig
    half_rate : bool
        Compare in one cycle and pop in the next: one token every other
        cycle, and the comparator drives a single register (the clock rate
        of the insertion cells). Otherwise one token a cycle.

    Attributes
    ----------
    a, b : In(stream.Signature(entry layout))
    o : Out(stream.Signature(entry layout))
    """

    def __init__(self, config: TopKConfig, *, half_rate: bool = False):
        _check_config(config)
        self._config = config
        self._half_rate = bool(half_rate)
        entry = stream.Signature(_entry_layout(config))
        super().__init__({"a": In(entry), "b": In(entry), "o": Out(entry)})

    @property
    def config(self):
        return self._config

    @property
    def half_rate(self):
        return self._half_rate

    def elaborate(self, platform):
        m = Module()
        a, b, o = self.a.payload, self.b.payload, self.o
        can_load = ~o.valid | o.ready
        both = self.a.valid & self.b.valid
        # An end token ranks below every pair (its "valid" bit is low), so
        # one carry chain decides; of two end tokens either may go first.
        a_first = Signal()
        m.d.comb += a_first.eq(_beats(a.pair, b.pair, ~a.end, ~b.end, or_ties=True))
        both_end = a.end & b.end
        if self._half_rate:
            # Compare cycle: the carry chain's result goes straight into a
            # register (pick_a); the output cycle follows only if the output
            # register is then surely free (empty now, or handing its token
            # over now). Output cycle: pops from registers, no comparator.
            decided = Signal()
            pick_a = Signal()
            ends = Signal()
            with m.If(~decided):
                m.d.sync += [decided.eq(both & can_load), pick_a.eq(a_first),
                             ends.eq(both_end)]
                with m.If(o.ready):
                    m.d.sync += o.valid.eq(0)
            with m.Else():
                m.d.sync += [decided.eq(0), o.valid.eq(1),
                             o.payload.eq(Mux(pick_a, a, b))]
            m.d.comb += [self.a.ready.eq(decided & (pick_a | ends)),
                         self.b.ready.eq(decided & (~pick_a | ends))]
        else:
            go = Signal()
            m.d.comb += go.eq(both & can_load)
            with m.If(can_load):
                m.d.sync += o.valid.eq(go)
            with m.If(go):
                m.d.sync += o.payload.eq(Mux(a_first, a, b))
            m.d.comb += [self.a.ready.eq(go & (a_first | both_end)),
                         self.b.ready.eq(go & (~a_first | both_end))]
        return m


class TopKFilter(wiring.Component):
    """Exact streaming top-k over lists of (score, id) pairs.

    See the module documentation for the protocol, the order and the
    architecture.

    Parameters
    ----------
    config : TopKConfig
        ``k_max``, ``lanes`` (``P``), ``score_bits``, ``signed``, ``id_bits``.

    Attributes
    ----------
    i : In(stream.Signature(input_layout(config)))
        ``P`` pairs, their valid mask, ``last`` and ``k`` (read on ``last``).
    o : Out(stream.Signature(output_layout(config)))
        One pair per beat, best first, then a trailer with ``last`` and
        ``status``.
    """

    def __init__(self, config: TopKConfig):
        _check_config(config)
        self._config = config
        super().__init__({
            "i": In(stream.Signature(input_layout(config))),
            "o": Out(stream.Signature(output_layout(config))),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes, k_max = cfg.lanes, cfg.k_max
        kr = range(k_max + 1)

        # -- input: one register (s1) ----------------------------------------
        # A list ends with markers on two consecutive tokens, one per run.
        # When s1 holds a list's last beat and the markers may go, the token
        # sent the cycle before (a pair of the list, or a bubble) is still in
        # the feed registers in front of cell 0: it gets the first marker
        # there (the marker fields do not touch the comparator) and s1 goes
        # with the second. That token never carries the previous list's
        # marker: markers are at least five cycles apart (marker_ok).
        s1 = Signal(input_layout(cfg), reset_less=True)
        s1_valid = Signal()
        s1_bad = Signal(reset_less=True)
        s1_k = Signal(kr)           # 0 for a bad k
        m.d.comb += s1_k.eq(Mux(s1_bad, 0, s1.k))
        parity = Signal()           # which run a token sent now belongs to
        m.d.sync += parity.eq(~parity)
        # Pairs of the open list sent so far, per run and lane (saturating).
        sent = [[Signal(kr, name=f"sent{p}_{j}") for j in range(lanes)] for p in range(2)]

        # -- admission bookkeeping ------------------------------------------
        # A list's markers are admitted in one cycle (admit, cycle a); the
        # cycles after it work out, one register step each, the pairs per run
        # (pend_n, a), whether they exceed k (over, a+1), the ranks per run
        # (pend_r, a+2), the tokens to reserve and a bound on the largest rank
        # (reserve, r_any: the OR of the ranks, at most twice the largest;
        # a+3), then the credits and the gap (a+4).
        depth = fifo_depth(cfg)
        credits = [[Signal(range(depth + 1), init=depth, name=f"credits{j}_{r}")
                    for r in range(2)] for j in range(lanes)]
        gap = Signal(range(6 * k_max + 1))
        gap_zero = Signal(init=1)   # gap == 0, as a register
        gap_small = Signal(init=1)  # gap <= 1, as a register
        pend_n = [[Signal(range(k_max + 2), name=f"pend_n{j}_{r}") for r in range(2)]
                  for j in range(lanes)]
        pend_k = Signal(kr)
        over = [[Signal(name=f"over{j}_{r}") for r in range(2)] for j in range(lanes)]
        pend_r = [[Signal(kr, name=f"pend_r{j}_{r}") for r in range(2)] for j in range(lanes)]
        r_any = Signal(kr)
        admit = Signal()
        admitted = [Signal(name=f"admitted{n}") for n in range(1, 6)]   # admit, delayed
        marker_ok = Signal()        # a register: computed a cycle ahead
        m.submodules.meta = meta = TokenFIFO(width=len(s1_k) + 1, depth=8)
        m.d.sync += [admitted[0].eq(admit)] + [b.eq(a) for a, b in zip(admitted, admitted[1:])]
        room = Signal()             # every run FIFO has room for a run (a cycle late)
        m.d.sync += room.eq(Cat(*(c >= k_max + 1 for lane in credits for c in lane)).all())
        # Credits and gap only grow (resp. shrink) between admissions, so a
        # value computed a cycle early is safe except while an admission's
        # updates are on their way and reach room (the six cycles after it).
        m.d.sync += marker_ok.eq(gap_small & room & meta.w_rdy & ~admit
                                 & ~Cat(*admitted).any())

        # -- what goes out this cycle: one LUT after registers ---------------
        # s1_end: s1 holds a list's last beat (s1_valid & s1.last, as one
        # register), so that s1's enable, which fans out to all of s1, is a
        # single two-input LUT after registers.
        s1_end = Signal()
        m.d.comb += admit.eq(s1_end & marker_ok)
        send = Signal()             # s1's pairs leave
        m.d.comb += send.eq(s1_valid & (~s1_end | marker_ok))
        s1_free = Signal()
        m.d.comb += [s1_free.eq(~s1_end | marker_ok), self.i.ready.eq(s1_free)]
        with m.If(s1_free):
            k = self.i.payload.k
            m.d.sync += [s1_valid.eq(self.i.valid), s1.eq(self.i.payload),
                         s1_end.eq(self.i.valid & self.i.payload.last),
                         s1_bad.eq((k == 0) | (k > k_max))]

        for p in range(2):
            for j in range(lanes):
                n = sent[p][j]
                with m.If(admit):
                    m.d.sync += n.eq(0)
                with m.Elif(send & (parity == p) & s1.valid[j] & (n != k_max)):
                    m.d.sync += n.eq(n + 1)

        with m.If(admit):
            m.d.sync += pend_k.eq(s1_k)
            for j in range(lanes):
                # Run 0 is the feed token's (sent last cycle), run 1 gets
                # s1's pairs now.
                this = Mux(parity, sent[1][j], sent[0][j])
                other = Mux(parity, sent[0][j], sent[1][j])
                m.d.sync += [pend_n[j][0].eq(other),
                             pend_n[j][1].eq(this + s1.valid[j])]
        with m.If(admitted[0]):
            for j in range(lanes):
                for r in range(2):
                    m.d.sync += over[j][r].eq(_greater(pend_n[j][r], pend_k))
        with m.If(admitted[1]):
            for j in range(lanes):
                for r in range(2):
                    m.d.sync += pend_r[j][r].eq(Mux(over[j][r], pend_k, pend_n[j][r]))
        with m.If(admitted[2]):
            m.d.sync += r_any.eq(_tree([r for lane in pend_r for r in lane],
                                       lambda x, y: x | y))
        with m.If(admitted[3]):
            m.d.sync += [gap.eq(r_any + (r_any << 1)),
                         gap_zero.eq(r_any == 0), gap_small.eq(r_any == 0)]
        with m.Elif(~gap_zero):
            m.d.sync += [gap.eq(gap - 1), gap_zero.eq(gap == 1), gap_small.eq(gap <= 2)]
        # The list's k for the output stage, written a cycle later from
        # registers (marker_ok waits for the queue's level to catch up).
        meta_w_en = Signal()
        meta_w_data = Signal(len(s1_k) + 1, reset_less=True)
        m.d.sync += [meta_w_en.eq(admit), meta_w_data.eq(Cat(s1_k, s1_bad))]
        m.d.comb += [meta.w_en.eq(meta_w_en), meta.w_data.eq(meta_w_data)]

        # -- the chains, their run FIFOs and the merges ---------------------
        entry = _entry_layout(cfg)
        lane_streams = []
        for j in range(lanes):
            feed = Signal(_down_layout(cfg), name=f"feed{j}")
            m.d.sync += [feed.valid.eq(send & s1.valid[j]),
                         feed.pair.eq(s1.pairs[j]),
                         feed.mark.eq(admit),           # the second marker
                         feed.run.eq(1),
                         feed.k.eq(s1_k),
                         feed.emit.eq(1)]
            chain = TopKChain(cfg)
            m.submodules[f"chain{j}"] = chain
            m.d.comb += [chain.i.eq(feed),
                         # the first marker, on the token in the feed registers
                         chain.i.mark.eq(feed.mark | admit),
                         chain.i.run.eq(feed.run & ~admit),
                         chain.i.k.eq(Mux(admit, s1_k, feed.k))]
            node = TopKMerge(cfg, half_rate=True)
            m.submodules[f"runs{j}"] = node
            # A register between the chain's head and the FIFOs, with the
            # write enable of each FIFO decoded.
            up_data = Signal(entry, name=f"up_data{j}", reset_less=True)
            m.d.sync += up_data.eq(chain.o.entry)
            for r, port in enumerate((node.a, node.b)):
                fifo = TokenFIFO(width=entry.size, depth=depth)
                m.submodules[f"fifo{j}_{r}"] = fifo
                up_write = Signal(name=f"up_write{j}_{r}")
                m.d.sync += up_write.eq(chain.o.valid & (chain.o.run == r))
                # A skid buffer between the FIFO and the merge: the merge's
                # pop stays local, and the FIFO reads on a registered ready.
                head = Skid(entry)
                m.submodules[f"head{j}_{r}"] = head
                m.d.comb += [fifo.w_en.eq(up_write),
                             fifo.w_data.eq(up_data),
                             head.i.valid.eq(fifo.r_rdy), head.i.payload.eq(fifo.r_data),
                             fifo.r_en.eq(head.i.ready)]
                wiring.connect(m, head.o, port)
                # Registered pop and reservation, then one sum: the credits
                # lag a cycle (on the safe side).
                c = credits[j][r]
                popped = Signal(name=f"popped{j}_{r}")
                reserve = Signal(range(k_max + 2), name=f"reserve{j}_{r}")
                m.d.sync += [popped.eq(fifo.r_en & fifo.r_rdy),
                             reserve.eq(Mux(admitted[2], pend_r[j][r] + 1, 0)),
                             c.eq(c + popped - reserve)]
            skid = Skid(entry)
            m.submodules[f"runs{j}_skid"] = skid
            wiring.connect(m, node.o, skid.i)
            lane_streams.append(skid.o)

        level = 0
        while len(lane_streams) > 1:
            merged = []
            for n in range(0, len(lane_streams), 2):
                node = TopKMerge(cfg)
                m.submodules[f"lanes{level}_{n // 2}"] = node
                wiring.connect(m, lane_streams[n], node.a)
                wiring.connect(m, lane_streams[n + 1], node.b)
                skid = Skid(entry)
                m.submodules[f"lanes{level}_{n // 2}_skid"] = skid
                wiring.connect(m, node.o, skid.i)
                merged.append(skid.o)
            lane_streams = merged
            level += 1
        tokens = lane_streams[0]
        tok = tokens.payload

        # -- output: the first k pairs with their rank, the trailer, and the
        # rest of the list dropped. A list's k is taken off the meta queue
        # into registers first, the state is one-hot, and a token is taken
        # into an input register on a registered ready (so at most every
        # other cycle): every decision is one or two LUTs after registers.
        idle = Signal(init=1)       # waiting for the next list's k
        taking = Signal()           # sending pairs (the end token: trailer)
        closing = Signal()          # k pairs sent (or a bad k): trailer next
        skipping = Signal()         # trailer sent; drop the list's remaining tokens
        left = Signal(kr)           # pairs still to send
        bad = Signal()
        count = Signal(kr)          # pairs sent
        fin = Signal(entry, reset_less=True)
        fin_valid = Signal()
        want = Signal(init=1)       # ready for a token, as a register
        # The output register, then a skid buffer to the port: the port's
        # ready reaches no further than the skid.
        m.submodules.out_skid = out_skid = Skid(output_layout(cfg))
        wiring.connect(m, out_skid.o, wiring.flipped(self.o))
        o = out_skid.i
        # The output register surely free this cycle, as a register: it was
        # empty or handing its beat over last cycle, and not written then.
        # (So it is written at most every other cycle.)
        can_load = Signal()
        wrote = Signal()
        m.d.sync += can_load.eq((~o.valid | o.ready) & ~wrote)
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        # While skipping, every token is dropped as it comes, one a cycle: the
        # token in fin is consumed in the same cycle, so ready may be high.
        m.d.comb += [tokens.ready.eq(want | skipping), meta.r_en.eq(idle),
                     wrote.eq(can_load & ((closing | (taking & fin_valid))))]
        arrive = tokens.valid & tokens.ready
        consume = Signal()
        m.d.comb += consume.eq(fin_valid & (skipping | (taking & can_load)))
        with m.If(arrive):
            m.d.sync += [fin.eq(tok), fin_valid.eq(1)]
        with m.Elif(consume):
            m.d.sync += fin_valid.eq(0)
        m.d.sync += want.eq(~((fin_valid & ~consume) | arrive))

        def trailer():
            m.d.sync += [o.valid.eq(1), o.payload.last.eq(1),
                         o.payload.status.eq(Mux(bad, Status.BAD_K, Status.OK)),
                         o.payload.rank.eq(count),
                         o.payload.score.eq(0), o.payload.id.eq(0)]

        with m.If(idle & meta.r_rdy):
            k = meta.r_data[:len(s1_k)]
            m.d.sync += [idle.eq(0), taking.eq(k != 0), closing.eq(k == 0), left.eq(k),
                         bad.eq(meta.r_data[len(s1_k)]), count.eq(0)]
        with m.If(skipping & fin_valid & fin.end):
            m.d.sync += [skipping.eq(0), idle.eq(1)]
        with m.If(closing & can_load):
            # the trailer without waiting for the end token, which is then
            # dropped with the rest
            trailer()
            m.d.sync += [closing.eq(0), skipping.eq(1)]
        with m.If(taking & can_load & fin_valid):
            with m.If(fin.end):
                trailer()
                m.d.sync += [taking.eq(0), idle.eq(1)]
            with m.Else():
                m.d.sync += [o.valid.eq(1), o.payload.last.eq(0),
                             o.payload.status.eq(Status.OK),
                             o.payload.rank.eq(count),
                             o.payload.score.eq(fin.pair.score),
                             o.payload.id.eq(fin.pair.id),
                             count.eq(count + 1), left.eq(left - 1)]
                with m.If(left == 1):
                    m.d.sync += [taking.eq(0), closing.eq(1)]
        return m
