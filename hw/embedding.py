"""The embedding lookup unit (MicroRec): bags of row lookups in, sum-pooled
vectors out, rows read in parallel over AXI4 memory channels and on-chip
banks, dequantized from row-wise int8/int4.

Units
    ``channels`` AXI4 read masters (ports ``m0``, ``m1``, ...) and
    ``onchip_banks`` on-chip banks; a table lives on one unit, given by its
    descriptor. Unit ``u < channels`` is channel ``u``; unit ``channels + b``
    is bank ``b``. Every unit has its own lookup stream ``i<u>`` and pooled
    stream ``o<u>`` and works independently of the others, so that all of
    them run in parallel (MicroRec): the host (or the stage that issues the
    lookups) sends a bag to the unit its table lives on.

Descriptors (:func:`descriptor_layout`, written through ``desc``)
    Per table: ``valid``, ``onchip``, ``unit`` (channel or bank number),
    ``base`` (first beat of the table, in ``data_bits`` beats), ``rows``,
    ``dim`` (elements), ``bits4`` (int4 codes, else int8), ``row_beats``
    (beats per row: the burst length) and ``stride_shift``: row ``id``
    starts at beat ``base + (id << stride_shift)``. With a power-of-two
    stride and a base aligned to it, no burst crosses a 4 KiB boundary
    (AXI4 forbids it). :mod:`host.table_compiler` writes them. Rewriting a descriptor while its table has lookups in flight is
    undefined.

Rows (see :class:`~hw.config.EmbeddingConfig`)
    Bytes 0-3 of a row: the scale, bytes 4-7: the bias (int32, little
    endian, ``frac_bits`` fractional bits); then the codes: element ``p`` of
    an int8 row is byte ``8 + p``; of an int4 row, the low (``p`` even) or
    high nibble of byte ``8 + p // 2``. Element ``p`` of a row is
    ``code * scale + bias`` (exact, :attr:`~hw.config.EmbeddingConfig.value_bits`
    bits), and the pooled element is the exact sum over the bag
    (:attr:`~hw.config.EmbeddingConfig.acc_bits` bits), in units of
    ``2**-frac_bits``; elements ``p >= dim`` are zero.

Lookups in (:func:`lookup_layout`, stream ``i<u>``)
    One row per beat: ``table``, ``id``; ``last`` ends the bag. A beat with
    ``empty`` set carries no row (so ``empty, last`` alone is an empty bag,
    whose pooled vector is zero). The table of a bag is that of its first
    beat.

Pooled vectors out (:func:`pooled_layout`, stream ``o<u>``)
    One beat per bag, in the order the unit's bags came: ``status`` and ``pooled``
    (``max_dim`` elements). A bag with a bad status has a zero vector:
    ``BAD_TABLE`` (no such table, a descriptor not valid, or a table that
    lives on another unit), ``BAD_ID`` (an id at or past ``rows``, or a
    row past the end of the unit's address space), ``BAD_BAG`` (more than
    ``max_bag`` rows, or a beat naming another table than the bag's first),
    ``MEM_ERROR`` (the memory answered a read of the bag with SLVERR or
    DECERR). No row of a bad table or past the end of a table is ever read.

Caches (channels only; :attr:`~hw.config.EmbeddingConfig.cached`)
    In front of each channel, in this order: a **static cache** of
    ``static_rows`` rows the host pins (``static_ways``-way
    set-associative; the host places each row, :func:`host.cache.static_lines`,
    and loads lines and tags through ``cache_w`` before any lookup), then a
    **dynamic cache** of ``cache_sets`` x ``cache_ways`` lines of one row
    each, LRU or tree PLRU, then the channel. Both are exactly
    :class:`host.cache.CacheModel`: the set index is :func:`cache_set`; a
    miss allocates its line (and evicts) at once, so that a later lookup of
    the same row hits under the miss, merged with the read in flight (its
    data is the miss's, written into the line at the miss's readout, which
    comes first). A line filled by a read that failed keeps the error: its
    hits answer ``MEM_ERROR`` until it is evicted. Only rows the unit reads
    are looked up (not those of a bag already bad). The counters ``c<ch>``
    count static hits, dynamic hits, misses and evictions. A reset empties
    both caches (every tag is cleared, a set a cycle, before the unit takes
    anything) and the counters: load the static cache again after it.
    Writing the static cache while lookups run is undefined.

How it works
------------
Per unit, a front end checks each lookup against its table's descriptor
(every unit holds a copy of the descriptors), computes the row's address
and queues it; the unit issues one AXI
burst per row, each with its own ID (a slot; up to ``outstanding`` in
flight), takes every R beat as it comes (``rready`` is always high: there
is room for every burst in flight) into a reorder buffer indexed by ID, and
reads the rows back out in issue order into its pooling pipeline: the
header beat gives scale and bias, every byte lane is dequantized and added
to its element's accumulator, and at the end of a bag the vector goes to
the unit's output queue. R beats of different bursts must not interleave (AXI4 allows
it; HBM and DDR controllers that reorder return whole bursts).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .axi import AXI4ReadSignature, Burst, Resp
from .config import EmbeddingConfig, clog2

__all__ = ["ID_BITS", "TABLE_SALT", "Status", "Source", "descriptor_layout",
           "desc_write_layout", "lookup_layout", "pooled_layout", "bank_write_layout",
           "cache_write_layout", "cache_tag_layout", "counters_layout", "cache_set",
           "EmbeddingLookup"]

#: Width of a lookup's row id.
ID_BITS = 32
#: The per-table salt of a cache set index: ``(table * TABLE_SALT) mod sets``
#: (the same constant as :data:`host.cache.TABLE_SALT`).
TABLE_SALT = 0x9E3779B1


class Status(enum.Enum, shape=3):
    OK = 0
    BAD_ID = 1
    BAD_TABLE = 2
    BAD_BAG = 3
    MEM_ERROR = 4


class Source(enum.Enum, shape=2):
    """Where a row is read from."""
    MEMORY = 0
    DYNAMIC = 1
    STATIC = 2


def _log2(n: int) -> int:
    """Exact log2 of a power of two (0 for 1)."""
    assert n > 0 and n & (n - 1) == 0, n
    return n.bit_length() - 1


def _units(cfg: EmbeddingConfig) -> int:
    return cfg.channels + cfg.onchip_banks


def _at_least_2(n: int) -> int:
    """A memory's depth or a counter's range of ``n``, but at least 2: one set,
    one way or one row would give zero-width addresses (``[-1:0]`` in Verilog,
    which Verilator's lint refuses); the extra entry is never addressed."""
    return max(n, 2)


def _slot_beats(cfg: EmbeddingConfig) -> int:
    """Reorder-buffer words per slot: the longest row, to a power of two."""
    return 1 << clog2(cfg.max_row_beats) if cfg.max_row_beats > 1 else 1


def descriptor_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({
        "valid": 1,
        "onchip": 1,
        "unit": unsigned(clog2(max(cfg.channels, cfg.onchip_banks, 1))),
        "base": unsigned(cfg.addr_bits),
        "rows": unsigned(ID_BITS),
        "dim": unsigned(clog2(cfg.max_dim + 1)),
        "bits4": 1,
        "row_beats": unsigned(clog2(cfg.max_row_beats + 1)),
        "stride_shift": unsigned(clog2(clog2(cfg.max_row_beats) + 2)),
        # A Cartesian product of two tables: each row is two segments.
        "merged": 1,
        "seg_beats": unsigned(clog2(cfg.max_row_beats + 1)),
        "dim_b": unsigned(clog2(cfg.max_dim + 1)),
        "bits4_b": 1,
    })


def desc_write_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({"table": unsigned(clog2(cfg.max_tables)),
                              "desc": descriptor_layout(cfg)})


def lookup_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({
        "table": unsigned(clog2(cfg.max_tables)),
        "id": unsigned(ID_BITS),
        "last": 1,
        "empty": 1,
    })


def pooled_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({
        "status": Status,
        "pooled": data.ArrayLayout(signed(cfg.acc_bits), cfg.max_dim),
    })


def bank_write_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    return data.StructLayout({
        "bank": unsigned(clog2(max(cfg.onchip_banks, 1))),
        "addr": unsigned(clog2(cfg.onchip_words)),
        "data": unsigned(cfg.data_bits),
    })


def cache_tag_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    """A cache line's tag: the whole key."""
    return data.StructLayout({"valid": 1, "table": unsigned(clog2(cfg.max_tables)),
                              "id": unsigned(ID_BITS)})


def _static_words(cfg: EmbeddingConfig) -> int:
    return cfg.static_rows * _slot_beats(cfg)


def cache_write_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    """A write to a channel's static cache (stream ``cache_w``): with ``tag``,
    line ``addr`` (``way * static_sets + set``) gets the tag in the low bits
    of ``data`` (:func:`cache_tag_layout`); else word ``addr`` (``line *
    slot_beats + beat``, ``slot_beats`` the longest row's beats to a power
    of two) of the line data gets ``data``."""
    return data.StructLayout({
        "channel": unsigned(clog2(cfg.channels)),
        "tag": 1,
        "addr": unsigned(max(1, clog2(max(_static_words(cfg), 1)))),
        "data": unsigned(cfg.data_bits),
    })


def counters_layout(cfg: EmbeddingConfig) -> data.StructLayout:
    """A channel's cache counters (32 bits each, wrapping)."""
    return data.StructLayout({"static_hits": 32, "dynamic_hits": 32, "misses": 32,
                              "evictions": 32})


def cache_set(table, ident, sets: int):
    """The set of key ``(table, ident)`` in a cache of ``sets`` sets (a power
    of two), as :func:`host.cache.set_index` defines it: the XOR of the
    ``log2(sets)``-bit fields of the 32-bit id and of the table's salt."""
    b = _log2(sets)
    if not b:
        return Const(0, 1)
    h = (table * (TABLE_SALT % sets))[:b]
    for shift in range(0, ID_BITS, b):
        h = h ^ ident[shift:shift + b]
    return h


def _entry_layout(cfg):
    # A row (or a bag end without a row) queued to a unit.
    return data.StructLayout({
        "table": unsigned(clog2(cfg.max_tables)),
        "id": unsigned(ID_BITS),
        "read": 1,
        "addr": unsigned(cfg.addr_bits),        # in beats
        "beats": unsigned(clog2(cfg.max_row_beats + 1)),
        "bits4": 1,
        "dim": unsigned(clog2(cfg.max_dim + 1)),
        "last": 1,
        "status": Status,
        "merged": 1,
        "seg_beats": unsigned(clog2(cfg.max_row_beats + 1)),
        "dim_b": unsigned(clog2(cfg.max_dim + 1)),
        "bits4_b": 1,
    })


def _line_bits(cfg):
    return max(1, clog2(max(cfg.static_rows, cfg.dynamic_rows, 1)))


def _issue_layout(cfg):
    # An entry after the caches: where its row comes from, and the cache line
    # (the static line of a static hit; the line of a dynamic hit, or the one
    # a miss allocates).
    return data.StructLayout({"entry": _entry_layout(cfg), "src": Source,
                              "line": unsigned(_line_bits(cfg))})


def _meta_layout(cfg):
    return data.StructLayout({"issue": _issue_layout(cfg),
                              "slot": unsigned(clog2(cfg.outstanding))})


class _BankResponder(wiring.Component):
    """An on-chip bank behind the same AXI4 read interface as a channel:
    bursts are served in order, a beat a cycle; a burst past the end of the
    bank reads nothing and answers SLVERR."""

    def __init__(self, cfg: EmbeddingConfig):
        self._cfg = cfg
        super().__init__({
            "axi": In(AXI4ReadSignature(addr_width=cfg.addr_bits, data_width=cfg.data_bits,
                                        id_width=cfg.id_bits)),
            "w_addr": In(unsigned(clog2(cfg.onchip_words))),
            "w_data": In(unsigned(cfg.data_bits)),
            "w_en": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, axi = self._cfg, self.axi
        shift = clog2(cfg.bus_bytes)
        m.submodules.ram = ram = Memory(shape=cfg.data_bits, depth=cfg.onchip_words, init=[])
        wp = ram.write_port()
        rp = ram.read_port()
        m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en)]
        busy = Signal()
        word = Signal(cfg.addr_bits - shift + 1)
        left = Signal(8)
        rid = Signal(cfg.id_bits)
        bad = Signal()
        # One beat a cycle while busy and the previous beat was taken; the
        # next burst is accepted on the last beat of the current one, so
        # bursts follow each other without a gap.
        out_valid = Signal()
        step = busy & (~out_valid | axi.rready)
        last_step = step & (left == 0)
        accept = axi.arvalid & (~busy | last_step)
        m.d.comb += [axi.arready.eq(~busy | last_step), rp.addr.eq(word), rp.en.eq(step)]
        with m.If(step):
            m.d.sync += [word.eq(word + 1), left.eq(left - 1), out_valid.eq(1),
                         axi.rid.eq(rid), axi.rlast.eq(left == 0),
                         axi.rresp.eq(Mux(bad, Resp.SLVERR, Resp.OKAY))]
            with m.If(left == 0):
                m.d.sync += busy.eq(0)
        with m.Elif(axi.rready):
            m.d.sync += out_valid.eq(0)
        with m.If(accept):
            start = axi.araddr[shift:]
            m.d.sync += [busy.eq(1), word.eq(start), left.eq(axi.arlen), rid.eq(axi.arid),
                         bad.eq(start + axi.arlen >= cfg.onchip_words)]
        # The beat on the output is of the burst it was read for (bad may
        # already be the next burst's): its own flag, registered with it.
        out_bad = Signal()
        with m.If(step):
            m.d.sync += out_bad.eq(bad)
        # (rp.data holds while out_valid: the port is enabled only on a step)
        m.d.comb += [axi.rvalid.eq(out_valid), axi.rdata.eq(Mux(out_bad, 0, rp.data))]
        return m


class _Unit(wiring.Component):
    """One channel (or bank): front end, issue, reorder buffer, pooling.

    Lookups in on ``i``, ``axi`` out, pooled vectors out on ``o`` in the
    order of the bags; ``index`` is the unit's number (for the table check).
    """

    #: The output queue's depth, and the bags whose ends may be between the
    #: readout and the queue's reader (a credit): at least the loop's
    #: cycles (readout, token, dequantize, accumulate, queue write, its
    #: buffered read, the credit's return: 6), so that a bag a cycle goes
    #: round it (with 4, one-row bags went at two a three cycles).
    OUT_DEPTH = 8

    def __init__(self, cfg: EmbeddingConfig, index: int):
        self._cfg = cfg
        self._index = index
        # Channels have the caches (if any); banks are on chip already.
        self._cached = cfg.cached and index < cfg.channels
        members = {
            "i": In(stream.Signature(lookup_layout(cfg))),
            "desc": In(desc_write_layout(cfg)),
            "desc_en": In(1),
            "axi": Out(AXI4ReadSignature(addr_width=cfg.addr_bits, data_width=cfg.data_bits,
                                         id_width=cfg.id_bits)),
            "o": Out(stream.Signature(pooled_layout(cfg))),
        }
        if self._cached:
            members.update({"cw": In(cache_write_layout(cfg)), "cw_en": In(1),
                            "counters": Out(counters_layout(cfg)), "flushing": Out(1)})
        super().__init__(members)
        self.entries = stream.Signature(_entry_layout(cfg)).create(path=("entries",))
        self.issue = stream.Signature(_issue_layout(cfg)).create(path=("issue",))

    def elaborate(self, platform):
        m = Module()
        cfg, axi = self._cfg, self.axi
        self._front(m)
        if self._cached:
            dyn_data = self._caches(m)
        else:
            m.d.comb += [self.issue.valid.eq(self.entries.valid),      # src: MEMORY
                         self.issue.payload.entry.eq(self.entries.payload),
                         self.entries.ready.eq(self.issue.ready)]
        n_slots = cfg.outstanding
        slot_beats = _slot_beats(cfg)
        beat_bits = _log2(slot_beats)
        W = cfg.bus_bytes
        meta_l = _meta_layout(cfg)

        # -- issue: one AR per row read from memory, ID = slot (allocated in
        # order); rows from a cache go straight to the readout queue -------
        m.submodules.meta = meta = SyncFIFOBuffered(width=meta_l.size, depth=n_slots + 4)
        alloc = Signal(clog2(n_slots) + 1)      # slots allocated (mod 2 n)
        free = Signal(clog2(n_slots) + 1)       # slots retired (mod 2 n)
        in_flight = Signal(range(n_slots + 1))
        m.d.comb += in_flight.eq((alloc - free)[:len(alloc)])
        iss = self.issue.payload
        ent = iss.entry
        ar_busy = Signal()                      # an AR waits for arready
        need_slot = ent.read & (iss.src == Source.MEMORY)
        # The AR register takes a new burst while it is empty or handing its
        # burst over: a burst a cycle.
        can = (meta.w_rdy & (~need_slot | ((~ar_busy | axi.arready)
                                           & (in_flight < n_slots))))
        m.d.comb += self.issue.ready.eq(can)
        slot = alloc[:clog2(n_slots)] if n_slots > 1 else Const(0, 1)
        m.d.comb += [meta.w_en.eq(self.issue.valid & can),
                     meta.w_data.eq(Cat(iss, slot))]
        with m.If(ar_busy & axi.arready):
            m.d.sync += ar_busy.eq(0)
        with m.If(self.issue.valid & can & need_slot):
            m.d.sync += [alloc.eq(alloc + 1), ar_busy.eq(1),
                         axi.araddr.eq(ent.addr << clog2(W)),
                         axi.arlen.eq(ent.beats - 1),
                         axi.arid.eq(slot)]
        m.d.comb += [axi.arvalid.eq(ar_busy), axi.arsize.eq(clog2(W)),
                     axi.arburst.eq(Burst.INCR)]

        # -- responses: every beat into the reorder buffer -------------------
        m.submodules.rob = rob = Memory(shape=cfg.data_bits, depth=n_slots * slot_beats,
                                        init=[])
        wp = rob.write_port()
        rp = rob.read_port()
        done = Signal(n_slots)                  # slot's burst complete
        err = Signal(n_slots)                   # slot's burst had an error response
        r_beat = Signal(beat_bits + 1)
        r_err = Signal()
        m.d.comb += axi.rready.eq(1)
        rid = axi.rid[:clog2(n_slots)] if n_slots > 1 else Const(0, 1)
        set_done = Signal(n_slots)
        set_err = Signal(n_slots)
        in_range = r_beat < slot_beats
        m.d.comb += [wp.addr.eq(Cat(r_beat[:beat_bits], rid) if beat_bits else rid),
                     wp.data.eq(axi.rdata),
                     wp.en.eq(axi.rvalid & in_range)]
        with m.If(axi.rvalid):
            bad_beat = (axi.rresp != Resp.OKAY) | ~in_range
            with m.If(axi.rlast):
                m.d.sync += [r_beat.eq(0), r_err.eq(0)]
                m.d.comb += [set_done.eq(1 << rid), set_err.eq((r_err | bad_beat) << rid)]
            with m.Else():
                m.d.sync += [r_beat.eq(r_beat + 1), r_err.eq(r_err | bad_beat)]

        # -- readout in issue order --------------------------------------------
        # A row from memory waits for its burst; a row from a cache is there.
        head = Signal(meta_l)
        m.d.comb += head.eq(meta.r_data)
        he = head.issue.entry
        cur_valid = Signal()
        cur = Signal(meta_l)
        cur_err = Signal()
        beat = Signal(beat_bits + 1)
        ce = cur.issue.entry
        cur_mem = cur.issue.src == Source.MEMORY
        finishing = cur_valid & (beat == ce.beats - 1)
        clear_done = Signal(n_slots)
        # Bag ends in flight to the output queue (credit).
        ends = Signal(range(self.OUT_DEPTH + 1))
        end_issued = Signal()
        end_popped = Signal()
        # (counting the end the current row may issue in this very cycle)
        ends_now = ends + (cur_valid & ce.last & finishing)
        credit_ok = ends_now < self.OUT_DEPTH
        credit2_ok = ends_now < self.OUT_DEPTH - 1
        head_ready = done.bit_select(head.slot, 1) | (head.issue.src != Source.MEMORY)
        take_read = (meta.r_rdy & he.read & head_ready & (~cur_valid | finishing)
                     & (~he.last | Mux(he.merged, credit2_ok, credit_ok)))
        take_none = meta.r_rdy & ~he.read & ~cur_valid & (~he.last | credit_ok)
        m.d.comb += meta.r_en.eq(take_read | take_none)
        with m.If(take_read):
            m.d.sync += [cur_valid.eq(1), cur.eq(head), beat.eq(0),
                         cur_err.eq(err.bit_select(head.slot, 1)
                                    & (head.issue.src == Source.MEMORY))]
        with m.Elif(finishing):
            m.d.sync += cur_valid.eq(0)
        with m.If(cur_valid & ~finishing):
            m.d.sync += beat.eq(beat + 1)
        with m.If(finishing & cur_mem):
            m.d.sync += free.eq(free + 1)
            m.d.comb += clear_done.eq(1 << cur.slot)
        m.d.sync += [done.eq((done | set_done) & ~clear_done),
                     err.eq((err & ~clear_done) | set_err)]
        m.d.comb += rp.addr.eq(Cat(beat[:beat_bits], cur.slot) if beat_bits else cur.slot)

        # Token to the pooler, aligned with the RAM's registered read data.
        tok_valid = Signal()
        tok_data = Signal()         # a row beat (else a bag end alone)
        tok_first = Signal()
        tok_beat = Signal(beat_bits + 1)
        tok_end = Signal()          # the bag ends with this token
        tok_bits4 = Signal()
        tok_dim = Signal(clog2(cfg.max_dim + 1))
        tok_status = Signal(Status)
        tok_err = Signal()
        tok_src = Signal(Source)
        # The second segment of a merged row starts at beat seg_beats, with
        # its own header, and ends a vector of its own.
        in_b = ce.merged & (beat >= ce.seg_beats)
        seg_end = finishing | (ce.merged & (beat == ce.seg_beats - 1))
        cur_end = cur_valid & ce.last & seg_end
        m.d.sync += [tok_valid.eq((cur_valid) | take_none & he.last),
                     tok_data.eq(cur_valid),
                     tok_first.eq((beat == 0) | (ce.merged & (beat == ce.seg_beats))),
                     tok_beat.eq(beat - Mux(in_b, ce.seg_beats, 0)),
                     tok_end.eq(Mux(cur_valid, ce.last & seg_end, 1)),
                     tok_bits4.eq(Mux(in_b, ce.bits4_b, ce.bits4)),
                     tok_dim.eq(Mux(in_b, ce.dim_b, ce.dim)),
                     tok_status.eq(Mux(cur_valid, ce.status, he.status)),
                     tok_err.eq(cur_valid & cur_err),
                     tok_src.eq(Mux(cur_valid, cur.issue.src, Source.MEMORY))]
        m.d.comb += end_issued.eq(cur_end | (take_none & he.last))
        # The row beat and its error flag as signals: the pooler slices every
        # byte lane out of the row, and each slice of an expression would
        # rebuild the whole expression (Amaranth does not share common
        # subexpressions), e.g. a full-width source mux per lane.
        row = Signal(cfg.data_bits)
        row_err = Signal()
        if self._cached:
            line_row, line_err = dyn_data(cur, beat, tok_valid & tok_data, tok_src, rp.data,
                                          tok_err)
            m.d.comb += [row.eq(line_row), row_err.eq(line_err)]
        else:
            m.d.comb += [row.eq(rp.data), row_err.eq(tok_err)]

        # -- pooling --------------------------------------------------------
        # Stage 1: scale and bias of the row (from its header beat).
        hdr_scale = row[0:32].as_signed()
        hdr_bias = row[32:64].as_signed()
        scale = Signal(signed(32))
        bias = Signal(signed(32))
        with m.If(tok_valid & tok_data & tok_first):
            m.d.sync += [scale.eq(hdr_scale), bias.eq(hdr_bias)]
        # (signals, so that the lanes below share one mux)
        use_scale = Signal(signed(32))
        use_bias = Signal(signed(32))
        m.d.comb += [use_scale.eq(Mux(tok_first, hdr_scale, scale)),
                     use_bias.eq(Mux(tok_first, hdr_bias, bias))]
        # Stage 2: every lane dequantized, as int8 and as two int4 codes.
        vb = cfg.value_bits
        v8 = [Signal(signed(vb), name=f"v8_{l}") for l in range(W)]
        v4 = [[Signal(signed(vb), name=f"v4_{l}_{n}") for n in range(2)] for l in range(W)]
        for l in range(W):
            byte = row[8 * l:8 * l + 8]
            m.d.sync += [v8[l].eq(byte * use_scale + use_bias),
                         v4[l][0].eq(byte[0:4] * use_scale + use_bias),
                         v4[l][1].eq(byte[4:8] * use_scale + use_bias)]
        p_valid = Signal()
        p_data = Signal()
        p_beat = Signal(beat_bits + 1)
        p_end = Signal()
        p_bits4 = Signal()
        p_dim = Signal(clog2(cfg.max_dim + 1))
        p_status = Signal(Status)
        p_err = Signal()
        m.d.sync += [p_valid.eq(tok_valid), p_data.eq(tok_data & tok_valid),
                     p_beat.eq(tok_beat), p_end.eq(tok_valid & tok_end),
                     p_bits4.eq(tok_bits4), p_dim.eq(tok_dim), p_status.eq(tok_status),
                     p_err.eq(tok_valid & row_err)]
        # Stage 3: accumulate; at a bag end, the sum goes out and restarts.
        acc = [Signal(signed(cfg.acc_bits), name=f"acc{p}") for p in range(cfg.max_dim)]
        bag_err = Signal()
        out_vec = Signal(data.ArrayLayout(signed(cfg.acc_bits), cfg.max_dim))
        out_status = Signal(Status)
        out_valid = Signal()
        # Element p's code is in beat (8 + p) // W (int8) or (8 + p // 2) // W
        # (int4): one select signal per beat, shared by the beat's elements.
        sel8, sel4 = {}, {}
        for k in sorted({(8 + p) // W for p in range(cfg.max_dim)}):
            sel8[k] = Signal(name=f"sel8_{k}")
            m.d.comb += sel8[k].eq(~p_bits4 & (p_beat == k))
        for k in sorted({(8 + p // 2) // W for p in range(cfg.max_dim)}):
            sel4[k] = Signal(name=f"sel4_{k}")
            m.d.comb += sel4[k].eq(p_bits4 & (p_beat == k))
        for p in range(cfg.max_dim):
            b8 = 8 + p
            b4 = 8 + p // 2
            upd = Mux(p_data & (p < p_dim),
                      Mux(sel8[b8 // W], v8[b8 % W], Mux(sel4[b4 // W], v4[b4 % W][p % 2], 0)),
                      0)
            # (a signal: the sum goes to the accumulator and to the output,
            # and as an expression it would be built twice)
            nxt = Signal(signed(cfg.acc_bits), name=f"nxt{p}")
            m.d.comb += nxt.eq(acc[p] + upd)
            with m.If(p_valid):
                m.d.sync += acc[p].eq(Mux(p_end, 0, nxt))
            with m.If(p_end):
                m.d.sync += out_vec[p].eq(nxt)
        final_err = bag_err | p_err
        with m.If(p_valid):
            m.d.sync += bag_err.eq(Mux(p_end, 0, final_err))
        m.d.sync += out_valid.eq(p_end)
        with m.If(p_end):
            m.d.sync += out_status.eq(Mux(p_status != Status.OK, p_status,
                                          Mux(final_err, Status.MEM_ERROR, Status.OK)))
        # Output queue: a bad bag's vector is zero.
        m.submodules.out = out = SyncFIFOBuffered(width=pooled_layout(cfg).size,
                                                  depth=self.OUT_DEPTH)
        m.d.comb += [out.w_en.eq(out_valid),
                     out.w_data.eq(Cat(out_status,
                                       Mux(out_status == Status.OK, out_vec, 0))),
                     self.o.valid.eq(out.r_rdy), self.o.payload.eq(out.r_data),
                     out.r_en.eq(self.o.ready), end_popped.eq(out.r_rdy & self.o.ready)]
        m.d.sync += ends.eq(ends + end_issued - end_popped)
        return m

    def _caches(self, m):
        """The static and dynamic caches between ``entries`` and ``issue``:
        one stage, which looks each row's key up in both tag arrays (read as
        the entry comes in, so that the update of the entry before it, written
        as that one leaves, is already seen: the arrays are read-transparent)
        and decides where the row comes from; a miss allocates its line at
        once (the data follows at its readout, in order, before any later
        row can read the line). Returns the function that builds the line
        data arrays at the readout."""
        cfg = self._cfg
        inp, out = self.entries, self.issue
        a_valid = Signal()
        a = Signal(_entry_layout(cfg))
        # After reset every tag array is cleared, a set a cycle (memories keep
        # their contents across a reset): the unit takes nothing meanwhile.
        n_sets = max(cfg.static_sets, cfg.cache_sets, 1)
        flushing = self.flushing
        flushed = Signal()
        fset = Signal(range(_at_least_2(n_sets)))
        m.d.comb += flushing.eq(~flushed)
        with m.If(flushing):
            m.d.sync += fset.eq(fset + 1)
            with m.If(fset == n_sets - 1):
                m.d.sync += flushed.eq(1)
        m.d.comb += inp.ready.eq(~flushing & (~a_valid | out.ready))
        with m.If(inp.ready):
            m.d.sync += [a_valid.eq(inp.valid), a.eq(inp.payload)]
        leave = a_valid & out.ready
        m.d.comb += [out.valid.eq(a_valid), out.payload.entry.eq(a)]
        tag_l = cache_tag_layout(cfg)
        slot_beats = _slot_beats(cfg)
        cw = self.cw

        def match(tag):
            return tag.valid & (tag.table == a.table) & (tag.id == a.id)

        # (The hit vectors below are signals: they are used per way, and an
        # expression would be rebuilt, all its comparators, at every use.)

        # -- static: host-written tags and lines; line = way * sets + set ----
        s_hit = Const(0)
        s_line = Const(0)
        static_mem = None
        def set_of(sets):
            # the set of the entry coming in (to read the tags), and of the
            # entry in the stage
            tag_in = cache_set(inp.payload.table, inp.payload.id, sets)
            if sets > 1:
                # (a signal: it addresses every way's tag array, and the hash
                # as an expression would be built again for each)
                tag_in_hash, tag_in = tag_in, Signal(clog2(sets))
                m.d.comb += tag_in.eq(tag_in_hash)
            a_set = Signal(max(clog2(sets), 1))
            with m.If(inp.ready):
                m.d.sync += a_set.eq(tag_in)
            return tag_in, a_set

        if cfg.static_rows:
            sets, ways = cfg.static_sets, cfg.static_ways
            sb = _log2(sets)
            tag_in, a_set = set_of(sets)
            hits = Signal(ways)
            for w in range(ways):
                mem = Memory(shape=tag_l, depth=_at_least_2(sets), init=[])
                m.submodules[f"stag{w}"] = mem
                wp, rp = mem.write_port(), mem.read_port()
                m.d.comb += [wp.addr.eq(Mux(flushing, fset, cw.addr[:sb])),
                             wp.data.eq(Mux(flushing, 0, cw.data[:tag_l.size])),
                             wp.en.eq((flushing & (fset < sets))
                                      | (self.cw_en & cw.tag & (cw.addr[sb:] == w))),
                             rp.addr.eq(tag_in), rp.en.eq(inp.ready)]
                m.d.comb += hits[w].eq(match(rp.data))
            s_hit = Signal()
            m.d.comb += s_hit.eq(hits.any() & a.read)
            s_way = Signal(range(_at_least_2(ways)))
            for w in reversed(range(ways)):
                with m.If(hits[w]):
                    m.d.comb += s_way.eq(w)
            s_line = Cat(a_set[:sb], s_way) if sb else s_way
            static_mem = Memory(shape=cfg.data_bits,
                                depth=_at_least_2(cfg.static_rows * slot_beats),
                                init=[])
            m.submodules.sdata = static_mem
            swp = static_mem.write_port()
            m.d.comb += [swp.addr.eq(cw.addr), swp.data.eq(cw.data),
                         swp.en.eq(self.cw_en & ~cw.tag)]

        # -- dynamic: tags and replacement state, written as a row leaves ------
        d_hit = Const(0)
        d_line = Const(0)
        miss_evicts = Const(0)
        if cfg.dynamic_rows:
            sets, ways = cfg.cache_sets, cfg.cache_ways
            sb = _log2(sets)
            tag_in, a_set = set_of(sets)
            lookup = a.read & ~s_hit
            tags = []
            tag_w = []
            for w in range(ways):
                mem = Memory(shape=tag_l, depth=_at_least_2(sets), init=[])
                m.submodules[f"dtag{w}"] = mem
                wp = mem.write_port()
                rp = mem.read_port(transparent_for=(wp,))
                m.d.comb += [wp.addr.eq(Mux(flushing, fset, a_set)), rp.addr.eq(tag_in),
                             rp.en.eq(inp.ready)]
                tags.append(rp.data)
                tag_w.append(wp)
            hits = Signal(ways)
            m.d.comb += hits.eq(Cat(*[match(t) for t in tags]))
            valid = Cat(*[t.valid for t in tags])
            d_hit = hits.any() & lookup
            # the victim: the lowest empty way, else the policy's choice
            victim = Signal(range(_at_least_2(ways)))
            use = Signal(range(_at_least_2(ways)))
            state_w, new_state, policy_victim = self._replacement(m, tag_in, inp.ready,
                                                                  use, valid)
            m.d.comb += victim.eq(policy_victim)
            for w in reversed(range(ways)):
                with m.If(~valid[w]):
                    m.d.comb += victim.eq(w)
            with m.If(hits.any()):
                for w in reversed(range(ways)):
                    with m.If(hits[w]):
                        m.d.comb += use.eq(w)
            with m.Else():
                m.d.comb += use.eq(victim)
            d_line = Cat(a_set[:sb], use) if sb else use
            miss = lookup & ~hits.any()
            miss_evicts = valid.all()
            if state_w is not None:
                m.d.comb += [state_w.addr.eq(Mux(flushing, fset, a_set)),
                             state_w.data.eq(Mux(flushing, 0, new_state)),
                             state_w.en.eq((flushing & (fset < sets)) | (leave & lookup))]
            for w in range(ways):
                m.d.comb += [tag_w[w].data.valid.eq(~flushing),
                             tag_w[w].data.table.eq(a.table),
                             tag_w[w].data.id.eq(a.id),
                             tag_w[w].en.eq((flushing & (fset < sets))
                                            | (leave & miss & (victim == w)))]
        m.d.comb += [out.payload.src.eq(Mux(s_hit, Source.STATIC,
                                            Mux(d_hit, Source.DYNAMIC, Source.MEMORY))),
                     out.payload.line.eq(Mux(s_hit, s_line, d_line))]

        # -- counters -----------------------------------------------------------
        cnt = self.counters
        with m.If(leave & a.read):
            with m.If(s_hit):
                m.d.sync += cnt.static_hits.eq(cnt.static_hits + 1)
            with m.Elif(d_hit):
                m.d.sync += cnt.dynamic_hits.eq(cnt.dynamic_hits + 1)
            with m.Else():
                m.d.sync += cnt.misses.eq(cnt.misses + 1)
                if cfg.dynamic_rows:
                    with m.If(miss_evicts):
                        m.d.sync += cnt.evictions.eq(cnt.evictions + 1)

        def line_data(cur, beat, tok_row, tok_src, mem_data, mem_err):
            """The readout side: the row beat from its source. A miss's beats
            fill its dynamic line as they pass (with the burst's error flag, so
            that a hit on a line filled by a failed read fails too)."""
            beat_bits = _log2(slot_beats)
            row, row_err = mem_data, mem_err
            addr = lambda line: Cat(beat[:beat_bits], line) if beat_bits else line
            if cfg.dynamic_rows:
                lb = clog2(cfg.dynamic_rows)
                dmem = Memory(shape=cfg.data_bits + 1,
                              depth=_at_least_2(cfg.dynamic_rows * slot_beats),
                              init=[])
                m.submodules.ddata = dmem
                fwp = dmem.write_port()
                drp = dmem.read_port(transparent_for=(fwp,))
                tok_line = Signal(max(lb, 1))
                tok_rbeat = Signal(max(beat_bits, 1))
                m.d.sync += [tok_line.eq(cur.issue.line), tok_rbeat.eq(beat)]
                waddr = (Cat(tok_rbeat[:beat_bits], tok_line[:lb]) if beat_bits
                         else tok_line[:lb])
                m.d.comb += [drp.addr.eq(addr(cur.issue.line[:lb])),
                             fwp.addr.eq(waddr), fwp.data.eq(Cat(mem_data, mem_err)),
                             fwp.en.eq(tok_row & (tok_src == Source.MEMORY))]
                dyn = tok_src == Source.DYNAMIC
                row = Mux(dyn, drp.data[:cfg.data_bits], row)
                row_err = Mux(dyn, drp.data[cfg.data_bits], row_err)
            if static_mem is not None:
                srp = static_mem.read_port()
                lb = clog2(cfg.static_rows)
                m.d.comb += srp.addr.eq(addr(cur.issue.line[:lb]))
                st = tok_src == Source.STATIC
                row = Mux(st, srp.data, row)
                row_err = Mux(st, 0, row_err)
            return row, row_err
        return line_data

    def _replacement(self, m, set_in, load, use, valid):
        """The dynamic cache's replacement state (module docstring of
        :mod:`host.cache`), read like the tags: returns its write port (None
        with one way), the state after using way ``use`` (``valid``: the
        set's valid lines), and the policy's victim when every way is
        full."""
        cfg = self._cfg
        ways = cfg.cache_ways
        if ways == 1:
            return None, None, Const(0, 1)
        if cfg.cache_policy == "lru":
            # Ages: 0 the most recent; the line at age ways-1 is the victim.
            ab = clog2(ways)
            shape = data.ArrayLayout(unsigned(ab), ways)
        else:
            shape = unsigned(ways - 1)          # tree bits, node n at bit n-1
        mem = Memory(shape=shape, depth=_at_least_2(cfg.cache_sets), init=[])
        m.submodules.dstate = mem
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=(wp,))
        m.d.comb += [rp.addr.eq(set_in), rp.en.eq(load)]
        st = rp.data
        new = Signal(shape)
        victim = Signal(range(ways))
        if cfg.cache_policy == "lru":
            used_age = Mux(valid.bit_select(use, 1), st[use], ways - 1)
            for w in range(ways):
                older = valid[w] & (st[w] < used_age)
                m.d.comb += new[w].eq(Mux(use == w, 0, Mux(older, st[w] + 1, st[w])))
                with m.If(st[w] == ways - 1):
                    m.d.comb += victim.eq(w)
        else:
            levels = clog2(ways)
            bits = Cat(Const(0, 1), st)             # bit n: node n
            node = Const(1, levels + 1)
            for _ in range(levels):
                node = Cat(bits.bit_select(node, 1), node)[:levels + 1]
            m.d.comb += victim.eq(node[:levels])
            for n in range(1, ways):
                # nodes on the path of leaf ways + use: point away from it
                on_path = Const(0)
                away = Const(0)
                for lvl in range(1, levels + 1):
                    anc = (ways + use) >> lvl
                    child_lower = (((ways + use) >> (lvl - 1)) & 1) == 0
                    on_path = on_path | (anc == n)
                    away = Mux(anc == n, child_lower, away)
                m.d.comb += new[n - 1].eq(Mux(on_path, away, st[n - 1]))
        return wp, new, victim

    def _front(self, m):
        """Checks each lookup against its table's descriptor and queues rows
        and bag ends on ``self.entries``."""
        cfg = self._cfg
        entry_l = _entry_layout(cfg)
        desc_l = descriptor_layout(cfg)
        # -- descriptors --------------------------------------------------
        m.submodules.descs = descs = Memory(shape=desc_l, depth=cfg.max_tables, init=[])
        dwp = descs.write_port()
        drp = descs.read_port(domain="comb")
        m.d.comb += [dwp.addr.eq(self.desc.table), dwp.data.eq(self.desc.desc),
                     dwp.en.eq(self.desc_en)]

        # -- front: F1 registers the beat and its descriptor ----------------
        f1 = Signal(lookup_layout(cfg))
        f1_desc = Signal(desc_l)
        f1_valid = Signal()
        f1_table_ok = Signal()
        f2_ready = Signal()
        m.d.comb += self.i.ready.eq(~f1_valid | f2_ready)
        m.d.comb += drp.addr.eq(self.i.payload.table)
        with m.If(self.i.ready):
            m.d.sync += [f1_valid.eq(self.i.valid), f1.eq(self.i.payload),
                         f1_desc.eq(drp.data),
                         f1_table_ok.eq(self.i.payload.table < cfg.max_tables)]

        # F2: checks, address, the bag's unit and status.
        in_bag = Signal()
        bag_merged = Signal()
        bag_table = Signal.like(f1.table)
        bag_count = Signal(range(cfg.max_bag + 2))
        bag_status = Signal(Status)
        d = f1_desc
        u = self._index
        if u < cfg.channels:
            unit_ok = ~d.onchip & (d.unit == u)
        else:
            unit_ok = d.onchip & (d.unit == u - cfg.channels)
        table_good = f1_table_ok & d.valid & unit_ok
        first = ~in_bag
        merged = Mux(first, table_good & d.merged, bag_merged)
        row = ~f1.empty
        # the row's beats [addr, addr + row_beats) must lie inside the table
        # and inside the unit's address space (checked with an extra bit)
        addr = Signal(cfg.addr_bits + ID_BITS + 8)
        m.d.comb += addr.eq(d.base + (f1.id << d.stride_shift))
        space = (1 << cfg.addr_bits) // cfg.bus_bytes
        id_ok = (f1.id < d.rows) & (addr + d.row_beats <= space) & (d.row_beats != 0)
        # A bag's status is its worst problem: BAD_TABLE, then BAD_BAG, then
        # BAD_ID (then, in the unit, MEM_ERROR).
        status = Signal(Status)
        prior = Mux(first, Status.OK, bag_status)
        with m.If((prior == Status.BAD_TABLE) | (first & ~table_good)):
            m.d.comb += status.eq(Status.BAD_TABLE)
        with m.Elif((prior == Status.BAD_BAG)
                    | (row & ((~first & (f1.table != bag_table))
                              | (bag_count >= Mux(merged, 1, cfg.max_bag))))):
            m.d.comb += status.eq(Status.BAD_BAG)
        with m.Elif((prior == Status.BAD_ID) | (row & ~id_ok)):
            m.d.comb += status.eq(Status.BAD_ID)
        with m.Else():
            m.d.comb += status.eq(Status.OK)
        entry = Signal(entry_l)
        m.d.comb += [entry.read.eq(row & (status == Status.OK)),
                     entry.table.eq(f1.table), entry.id.eq(f1.id), entry.addr.eq(addr), entry.beats.eq(d.row_beats),
                     entry.bits4.eq(d.bits4), entry.dim.eq(d.dim),
                     entry.last.eq(f1.last), entry.status.eq(status),
                     entry.merged.eq(merged), entry.seg_beats.eq(d.seg_beats),
                     entry.dim_b.eq(d.dim_b), entry.bits4_b.eq(d.bits4_b)]

        # Only rows to read and bag ends are queued (an empty beat, or a row
        # of a bag already bad, is dropped here).
        # A merged table's bag gives two vectors: a bag end without a row is
        # queued twice (the beat is held for a cycle).
        entries = self.entries
        queue = entry.read | f1.last
        twice = f1.last & ~entry.read & merged
        again = Signal()            # the first of the two went last cycle
        go = f1_valid & (entries.ready | ~queue) & (~twice | again)
        m.d.comb += [f2_ready.eq(go), entries.valid.eq(f1_valid & queue),
                     entries.payload.eq(entry)]
        with m.If(f1_valid & twice & entries.ready):
            m.d.sync += again.eq(~again)
        with m.If(go):
            with m.If(f1.last):
                m.d.sync += [in_bag.eq(0), bag_count.eq(0), bag_status.eq(Status.OK)]
            with m.Else():
                m.d.sync += [in_bag.eq(1), bag_status.eq(status),
                             bag_count.eq(bag_count + row)]
                with m.If(first):
                    m.d.sync += [bag_table.eq(f1.table), bag_merged.eq(merged)]


class EmbeddingLookup(wiring.Component):
    """Embedding lookup unit. See the module documentation.

    Parameters
    ----------
    config : EmbeddingConfig

    Attributes
    ----------
    i0, i1, ... : In(stream.Signature(lookup_layout(config)))
        Lookups of unit ``u`` (its tables only).
    o0, o1, ... : Out(stream.Signature(pooled_layout(config)))
        Pooled vectors of unit ``u``, in the order of its bags.
    desc : In(stream.Signature(desc_write_layout(config)))
        Descriptor writes (always ready).
    bank_w : In(stream.Signature(bank_write_layout(config)))
        On-chip bank writes (always ready); only with ``onchip_banks > 0``.
    cache_w : In(stream.Signature(cache_write_layout(config)))
        Static cache writes (ready once the caches have cleared after reset:
        ``max(static sets, dynamic sets)`` cycles); only with caches.
    c0, c1, ... : Out(counters_layout(config))
        Cache counters of channel ``c``; only with caches.
    m0, m1, ... : Out(AXI4ReadSignature(...))
        One AXI4 read master per channel.
    """

    def __init__(self, config: EmbeddingConfig):
        if not isinstance(config, EmbeddingConfig):
            raise TypeError(f"config must be an EmbeddingConfig, not {config!r}")
        self._config = config
        members = {"desc": In(stream.Signature(desc_write_layout(config)))}
        for u in range(_units(config)):
            members[f"i{u}"] = In(stream.Signature(lookup_layout(config)))
            members[f"o{u}"] = Out(stream.Signature(pooled_layout(config)))
        if config.onchip_banks:
            members["bank_w"] = In(stream.Signature(bank_write_layout(config)))
        if config.cached:
            members["cache_w"] = In(stream.Signature(cache_write_layout(config)))
            for c in range(config.channels):
                members[f"c{c}"] = Out(counters_layout(config))
        for c in range(config.channels):
            members[f"m{c}"] = Out(AXI4ReadSignature(
                addr_width=config.addr_bits, data_width=config.data_bits,
                id_width=config.id_bits))
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        flushing = []
        for u in range(_units(cfg)):
            unit = _Unit(cfg, u)
            m.submodules[f"unit{u}"] = unit
            wiring.connect(m, wiring.flipped(getattr(self, f"i{u}")), unit.i)
            wiring.connect(m, unit.o, wiring.flipped(getattr(self, f"o{u}")))
            m.d.comb += [unit.desc.eq(self.desc.payload), unit.desc_en.eq(self.desc.valid)]
            if u < cfg.channels:
                wiring.connect(m, unit.axi, wiring.flipped(getattr(self, f"m{u}")))
                if cfg.cached:
                    w = self.cache_w.payload
                    m.d.comb += [unit.cw.eq(w), getattr(self, f"c{u}").eq(unit.counters),
                                 unit.cw_en.eq(self.cache_w.valid & self.cache_w.ready
                                               & (w.channel == u))]
                    flushing.append(unit.flushing)
            else:
                bank = _BankResponder(cfg)
                m.submodules[f"bank{u - cfg.channels}"] = bank
                wiring.connect(m, unit.axi, bank.axi)
                w = self.bank_w.payload
                m.d.comb += [bank.w_addr.eq(w.addr), bank.w_data.eq(w.data),
                             bank.w_en.eq(self.bank_w.valid & (w.bank == u - cfg.channels))]
        m.d.comb += self.desc.ready.eq(1)
        if cfg.onchip_banks:
            m.d.comb += self.bank_w.ready.eq(1)
        if cfg.cached:
            # (static cache writes wait while the caches clear after reset)
            m.d.comb += self.cache_w.ready.eq(~Cat(*flushing).any())
        return m
