"""Embedding rows and the table compiler, NumPy only: FBGEMM's quantizers
against a row-by-row transcription of FBGEMM's C reference, byte layouts,
the golden pooled lookup against exact integers and against the float
computation within the stated bound, placement, merging, the lookup stream
and the address map."""

import json

import numpy as np
import pytest

from host.embedding import (EmbeddingStatus, FixedPointTable, RowwiseTable, bag_status,
                            fbgemm_4bit_prepack, fbgemm_byte_prepack, float_pooled_lookup,
                            pack_fused, pack_hw_rows, pack_qparams_first,
                            pooled_error_bound, pooled_lookup, pooled_output_params,
                            pooled_to_float, quantize_8bit, quantize_nbit,
                            requantize_pooled, row_magnitude, to_fixed_point,
                            unpack_fused, unpack_hw_rows, unpack_qparams_first)
from host.numerics import requantize
from host.packing import Packer
from host.table_compiler import (AddressMap, LookupStream, MergePolicy, TableSpec,
                                 bags_from_lists, bank_writes, build_lookup_stream,
                                 compile_tables, descriptor_values, descriptor_words,
                                 descriptor_writes, golden_pooled, golden_stream,
                                 pack_descriptor, stride_beats, unpack_descriptor)
from hw.config import Config, EmbeddingConfig
from hw.embedding import bank_write_layout, desc_write_layout, descriptor_layout

F32 = np.float32


def random_table(rng, rows, dim, spread=1.0):
    w = (rng.standard_normal((rows, dim)) * spread).astype(F32)
    w[0] = w[0, 0]                         # a constant row
    if rows > 2:
        w[1] = 0.0                         # an all-zero row
    return w


# -- FBGEMM's quantizers, transcribed row by row from QuantUtils.cc ------------

def fbgemm_ref_8bit(w):
    rows = []
    for row in w:
        mn, mx = F32(row.min()), F32(row.max())
        rng = F32(mx - mn)
        scale = F32(rng / F32(255.0))
        inv = F32(F32(255.0) / F32(rng + F32(1e-8)))
        codes = [int(np.rint(F32(F32(x - mn) * inv))) & 0xFF for x in row]
        rows.append(bytes(codes) + np.array([scale, mn], "<f4").tobytes())
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(w), -1)


def fbgemm_ref_nbit(w, bits):
    qmax = (1 << bits) - 1
    rows = []
    with np.errstate(over="ignore", divide="ignore"):
        for row in w:
            mn, mx = F32(row.min()), F32(row.max())
            bias16 = np.float16(mn)
            mn = F32(bias16)
            rng = F32(mx - mn)
            scale = F32(1.0) if rng == 0 else F32(rng / F32(qmax))
            scale = F32(np.float16(scale))
            if scale == 0:
                scale = F32(1.0)
            inv = F32(F32(1.0) / scale)
            if np.isinf(inv):
                scale = inv = F32(1.0)
            codes = [min(max(int(np.rint(F32(F32(x - mn) * inv))), 0), qmax) for x in row]
            packed = bytearray((len(codes) * bits + 7) // 8)
            for j, c in enumerate(codes):
                packed[j * bits // 8] |= c << (j * bits % 8)
            rows.append(bytes(packed) + np.array([np.float16(scale), bias16], "<f2").tobytes())
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(w), -1)


@pytest.mark.parametrize("dim", [1, 2, 7, 8, 33, 64])
@pytest.mark.parametrize("spread", [1e-6, 1.0, 300.0])
def test_quantizers_match_fbgemm_reference(dim, spread):
    rng = np.random.default_rng(dim)
    w = random_table(rng, 40, dim, spread)
    w[3] = F32(1e-30)                      # tiny constant row: subnormal ranges
    w[4, 0] = w[4, 0] + F32(5e-8)          # tiny range
    assert np.array_equal(fbgemm_byte_prepack(w), fbgemm_ref_8bit(w))
    assert np.array_equal(fbgemm_4bit_prepack(w), fbgemm_ref_nbit(w, 4))
    t8 = quantize_nbit(w, 8)
    assert np.array_equal(pack_qparams_first(t8, 1)[:, 4:], fbgemm_ref_nbit(w, 8)[:, :-4])


def test_quantizer_known_answers():
    t = quantize_8bit(np.array([[0.0, 1.0, 0.5], [2.0, 2.0, 2.0]]))
    assert t.codes.tolist() == [[0, 255, 128], [0, 0, 0]]      # 127.5 -> 128 (half even)
    assert t.scale.tolist() == [F32(1 / 255), 0.0] and t.bias.tolist() == [0.0, 2.0]
    t4 = quantize_nbit(np.array([[0.0, 1.5, 3.0, 0.75], [2.0, 2.0, 2.0, 2.0]]), 4)
    assert t4.codes.tolist() == [[0, 8, 15, 4], [0, 0, 0, 0]]   # 7.5 -> 8, 3.75 -> 4
    assert t4.scale.tolist() == [float(np.float16(0.2)), 1.0]     # fp16 scale; 1.0 if constant
    with pytest.raises(ValueError, match="finite"):
        quantize_8bit(np.array([[0.0, np.nan]]))


# -- byte layouts ---------------------------------------------------------------

def test_fused_layouts_round_trip_and_known_bytes():
    rng = np.random.default_rng(1)
    for dim in (1, 5, 6, 16):
        w = random_table(rng, 9, dim)
        b8 = fbgemm_byte_prepack(w)
        assert b8.shape == (9, dim + 8)
        assert np.array_equal(pack_fused(unpack_fused(b8, 8)), b8)
        b4 = fbgemm_4bit_prepack(w)
        assert b4.shape == (9, (dim + 1) // 2 + 4)
        t4 = unpack_fused(b4, 4, dim)
        assert t4.dim == dim and np.array_equal(pack_fused(t4), b4)
    # element 2i in the low nibble; fp16 scale, fp16 bias last
    t = RowwiseTable(np.array([[1, 2, 3]], np.uint8), [1.0], [-2.0], 4)
    assert pack_fused(t).tolist() == [[0x21, 0x03, 0x00, 0x3C, 0x00, 0xC0]]
    with pytest.raises(ValueError, match="fp16"):
        pack_fused(RowwiseTable(np.zeros((1, 2), np.uint8), [0.1], [0.0], 4))
    with pytest.raises(ValueError, match="do not hold"):
        unpack_fused(np.zeros((2, 10), np.uint8), 4, dim=7)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("align", [1, 16])
def test_qparams_first_layout(bits, align):
    rng = np.random.default_rng(bits + align)
    w = random_table(rng, 7, 12)
    t = quantize_nbit(w, bits)
    data = pack_qparams_first(t, align)
    body = 4 + (12 if bits == 8 else 6)
    assert data.shape == (7, -(-body // align) * align)
    assert not data[:, body:].any()                         # zero padding
    assert np.array_equal(data[:, :2].copy().view("<f2")[:, 0], t.scale.astype(np.float16))
    assert np.array_equal(data[:, 2:4].copy().view("<f2")[:, 0], t.bias.astype(np.float16))
    back = unpack_qparams_first(data, 12, bits)
    assert np.array_equal(back.codes, t.codes) and np.array_equal(back.scale, t.scale)
    # the same codes as FBGEMM's fused layout, qparams moved to the front
    fused = pack_fused(t) if bits == 4 else None
    if fused is not None:
        assert np.array_equal(data[:, 4:body], fused[:, :-4])
        assert np.array_equal(data[:, :4], fused[:, -4:])


def test_hardware_row_layout():
    cfg = EmbeddingConfig(data_bits=64, frac_bits=24)
    t = FixedPointTable(np.array([[1, 2, 3]], np.uint8), np.array([1 << 23]),
                        np.array([-1]), 4, 24)
    row = pack_hw_rows(t, cfg)
    assert row.shape == (1, cfg.row_beats(3, 4) * 8) == (1, 16)
    assert row[0].tolist() == [0x00, 0x00, 0x80, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
                               0x21, 0x03] + [0] * 6
    rng = np.random.default_rng(2)
    for bits, dim in ((8, 13), (4, 13), (4, 64)):
        w = random_table(rng, 11, dim)
        fx = to_fixed_point(quantize_8bit(w) if bits == 8 else quantize_nbit(w, 4), 24, "t")
        rows = pack_hw_rows(fx, cfg)
        assert rows.shape[1] == cfg.row_beats(dim, bits) * cfg.bus_bytes
        back = unpack_hw_rows(rows, dim, bits, 24)
        assert np.array_equal(back.codes, fx.codes)
        assert np.array_equal(back.scale_q, fx.scale_q) and np.array_equal(back.bias_q, fx.bias_q)


def test_fixed_point_rounding_and_range():
    # ties to even: 0.5 -> 0, 1.5 -> 2, -0.5 -> 0, -1.5 -> -2 (in units of 2**-24)
    u = 2.0 ** -25
    t = RowwiseTable(np.zeros((4, 1), np.uint8), [u, 3 * u, -u, -3 * u], [0, 0, 0, 0], 8)
    assert to_fixed_point(t, 24).scale_q.tolist() == [0, 2, 0, -2]
    big = RowwiseTable(np.zeros((3, 2), np.uint8), [0.1, 0.1, 200.0], [0, 0, 0], 8)
    with pytest.raises(ValueError, match=r"table 'huge', row 2: scale 200.0.*lower embedding.frac_bits"):
        to_fixed_point(big, 24, "huge")
    assert to_fixed_point(big, 16, "huge").scale_q[2] == 200 << 16
    edge = RowwiseTable(np.zeros((2, 1), np.uint8), [0, 0], [-128.0, 128.0], 8)   # -2**31 fits, 2**31 does not
    with pytest.raises(ValueError, match="row 1: bias"):
        to_fixed_point(edge, 24)


# -- golden pooling -------------------------------------------------------------

def reference_pool(fx, bags, max_bag):
    """Python integers, bag by bag."""
    out, status = [], []
    for bag in bags:
        if len(bag) > max_bag:
            out.append([0] * fx.dim), status.append(EmbeddingStatus.BAD_BAG)
        elif any(i < 0 or i >= fx.rows for i in bag):
            out.append([0] * fx.dim), status.append(EmbeddingStatus.BAD_ID)
        else:
            out.append([sum(int(fx.codes[i, j]) * int(fx.scale_q[i]) + int(fx.bias_q[i])
                            for i in bag) for j in range(fx.dim)])
            status.append(EmbeddingStatus.OK)
    return out, status


@pytest.mark.parametrize("bits", [8, 4])
def test_pooled_lookup_is_exact(bits):
    rng = np.random.default_rng(3)
    w = random_table(rng, 30, 9, 5.0)
    fx = to_fixed_point(quantize_8bit(w) if bits == 8 else quantize_nbit(w, 4), 24)
    bags = [list(rng.integers(0, 30, rng.integers(0, 9))) for _ in range(200)]
    bags += [[], [29], [30], [-1, 0], list(range(9)), [0] * 8, [31] * 9]
    offsets, ids = bags_from_lists(bags)
    pooled, status = pooled_lookup(fx, offsets, ids, max_bag=8)
    ref, ref_status = reference_pool(fx, bags, 8)
    assert pooled.tolist() == ref
    assert status.tolist() == ref_status
    assert status[-1] == EmbeddingStatus.BAD_BAG          # length before ids
    # any order of a bag's rows gives the same sums
    perm = np.concatenate([rng.permutation(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:])])
    assert np.array_equal(pooled_lookup(fx, offsets, perm, 8)[0], pooled)


def test_acc_bits_cover_worst_case():
    cfg = EmbeddingConfig(max_bag=64)
    worst = 64 * (255 * ((1 << 31) - 1) + (1 << 31) - 1)
    assert worst < 1 << (cfg.acc_bits - 1)
    fx = FixedPointTable(np.full((1, 2), 255, np.uint8), np.array([(1 << 31) - 1]),
                         np.array([(1 << 31) - 1]), 8, 24)
    pooled, _ = pooled_lookup(fx, [0, 64], np.zeros(64, int), 64)
    assert pooled[0, 0] == worst


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("frac_bits", [8, 16, 24])
def test_pooled_against_float_within_bound(bits, frac_bits):
    rng = np.random.default_rng(bits * 100 + frac_bits)
    w = random_table(rng, 500, 24, 2.0)
    t = quantize_8bit(w) if bits == 8 else quantize_nbit(w, 4)
    fx = to_fixed_point(t, frac_bits)
    lengths = rng.integers(0, 65, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, 500, offsets[-1])
    pooled, status = pooled_lookup(fx, offsets, ids, 64)
    assert np.all(status == EmbeddingStatus.OK)
    err = np.abs(pooled_to_float(pooled, frac_bits) - float_pooled_lookup(t, offsets, ids))
    fixed_part = lengths * 2.0 ** bits * 2.0 ** -(frac_bits + 1)
    m = row_magnitude(t).max()
    assert np.all(err <= fixed_part[:, None] + 1e-12 * (lengths[:, None] + 1) * m)
    assert np.all(err <= pooled_error_bound(bits, frac_bits, lengths, m)[:, None])
    if frac_bits == 8:                      # the bound is not vacuous
        assert err.max() > 0.05 * fixed_part.max()


def test_error_bound_formula():
    assert pooled_error_bound(8, 24, 0, 1.0) == 0
    b = pooled_error_bound(4, 10, 3, 0.0)
    assert b == 3 * 16 * 2.0 ** -11
    u = 2.0 ** -24
    assert pooled_error_bound(8, 24, 2, 5.0) == pytest.approx(
        2 * 256 * 2.0 ** -25 + 4 * u / (1 - 4 * u) * 2 * 5.0)


def test_bag_status_checks_offsets():
    with pytest.raises(ValueError, match="offsets"):
        bag_status([0, 3], [1, 2], 5, 8)
    assert bag_status([0], [], 5, 8).size == 0


def test_requantize_pooled_matches_numerics_and_wide_sums():
    rng = np.random.default_rng(4)
    acc = rng.integers(-(1 << 31), 1 << 31, (500, 4))
    mult = rng.integers(1, 1 << 16, 4)
    shift = rng.integers(0, 64, 4)
    assert np.array_equal(requantize_pooled(acc, mult, shift),
                          requantize(acc, 0, mult, shift, False))
    wide = rng.integers(-(1 << 57), 1 << 57, (300, 4))
    wide[:50] = rng.integers(-600, 600, (50, 4))
    for m, s in ((mult, shift), (np.array([65535, 1, 3, 40000]), np.array([63, 0, 1, 50]))):
        got = requantize_pooled(wide, m, s)
        ref = [[min(127, max(-128, (int(p) * int(mm) + ((1 << int(ss)) >> 1)) >> int(ss)))
                for p, mm, ss in zip(row, m, s)] for row in wide]
        assert got.tolist() == ref


def test_pooled_output_params():
    frac = 24
    x = np.linspace(-3.0, 3.0, 1001)
    pooled = np.rint(x * 2 ** frac).astype(np.int64)
    scale = 3.0 / 127
    mult, shift = pooled_output_params(scale, frac)
    y = requantize_pooled(pooled, mult, shift).astype(int)
    assert np.all(np.abs(y - x / scale) <= 0.5 + 1e-3)


# -- the table compiler ---------------------------------------------------------

def small_cfg(**kw):
    base = dict(channels=2, data_bits=64, addr_bits=20, id_bits=3, outstanding=8,
                onchip_banks=2, onchip_words=64, max_tables=8, max_dim=16, max_bag=8)
    base.update(kw)
    return EmbeddingConfig(**base)


def spec(rng, name, rows, dim, bits=8, pf=2.0, **kw):
    return TableSpec(name, random_table(rng, rows, dim), bits, pooling_factor=pf, **kw)


def direct_golden(s: TableSpec, cfg, offsets, ids):
    return pooled_lookup(to_fixed_point(s.rowwise(), cfg.frac_bits, s.name),
                         offsets, ids, cfg.max_bag)


def random_bags(rng, specs, n_items, bad=False):
    bags = {}
    for s in specs:
        rows = s.rowwise().rows
        if s.pooling_factor == 1:
            b = [[int(rng.integers(0, rows))] for _ in range(n_items)]
        else:
            b = [list(rng.integers(0, rows, rng.integers(0, 7))) for _ in range(n_items)]
        if bad:
            b[1] = [rows]                             # past the end
            if s.pooling_factor != 1:
                b[2] = [0] * 9                        # too long
        bags[s.name] = b
    return bags


def check_layout(c):
    """Every table where the map says, rows at power-of-two strides from an
    aligned base, no burst across 4 KiB, no overlaps, within the images."""
    cfg, m = c.config, c.address_map
    bus = cfg.bus_bytes
    spans = {}
    for t in m.tables:
        assert t.stride_beats == stride_beats(t.row_beats) >= t.row_beats
        assert t.stride_beats & (t.stride_beats - 1) == 0
        assert t.base_beat(bus) % t.stride_beats == 0
        if t.kind == "channel":
            assert t.base % bus == 0
            first = t.base
            addr = c.row_addresses(t.index, np.arange(t.rows))
            assert np.all(addr // 4096 == (addr + t.row_beats * bus - 1) // 4096)
            spans.setdefault(("c", t.unit), []).append((first, first + t.size_bytes(bus)))
        else:
            spans.setdefault(("b", t.unit), []).append((t.base, t.base + t.rows * t.stride_beats))
    for (kind, unit), ss in spans.items():
        ss.sort()
        assert all(a[1] <= b[0] for a, b in zip(ss, ss[1:]))
        if kind == "c":
            assert c.channel_images[unit].size == m.channel_bytes[unit] == ss[-1][1]
            assert ss[-1][1] <= 1 << cfg.addr_bits
        else:
            assert m.bank_words[unit] == ss[-1][1] <= cfg.onchip_words


def test_placement_on_chip_and_channels():
    rng = np.random.default_rng(5)
    cfg = small_cfg()
    # at 8 bytes a beat: a (dim 4, int4) row is 2 beats, a (dim 16, int8) row 3,
    # stored 4 apart; banks hold 64 words
    specs = [spec(rng, "tiny", 5, 4, 4), spec(rng, "small", 15, 16),
             spec(rng, "mid", 30, 16), spec(rng, "big", 2000, 16), spec(rng, "big2", 500, 8)]
    c = compile_tables(specs, cfg)
    m = c.address_map
    kinds = {t.name: (t.kind, t.unit) for t in m.tables}
    assert kinds["tiny"][0] == kinds["small"][0] == "onchip"     # 10 and 60 words
    assert kinds["tiny"][1] != kinds["small"][1]                  # traffic spread over banks
    assert kinds["mid"][0] == kinds["big"][0] == kinds["big2"][0] == "channel"
    check_layout(c)
    for s in specs:
        t = m.tables[m.feature(s.name)[0]]
        assert [g.feature for g in t.segments] == [s.name]
        want = pack_hw_rows(to_fixed_point(s.rowwise(), cfg.frac_bits), cfg)
        assert np.array_equal(c.read_rows(t.index, np.arange(t.rows)), want)
    # the padding between rows is zero
    big = m.tables[m.feature("big")[0]]
    img = c.channel_images[big.unit][big.base:big.base + big.size_bytes(8)].reshape(big.rows, -1)
    assert img.shape[1] == 32 and not img[:, 24:].any()


def test_channels_balance_traffic_not_bytes():
    rng = np.random.default_rng(6)
    cfg = small_cfg(onchip_banks=0)
    specs = [spec(rng, "cold", 4000, 16, pf=0.5)] + \
            [spec(rng, f"hot{k}", 40, 16, pf=pf) for k, pf in enumerate([8, 7, 5, 4, 2])]
    m = compile_tables(specs, cfg, None).address_map
    traffic = m.channel_traffic()
    total = sum(t.traffic for t in m.tables)
    # beats per query {1.5, 24, 21, 15, 12, 6}: the best split is 40.5 / 39, the
    # greedy one 42 / 37.5; balancing bytes would put every hot table together (66).
    assert max(traffic) == 42.0 and sum(traffic) == total
    hot_units = {t.unit for t in m.tables if t.name.startswith("hot")}
    assert hot_units == {0, 1}


def test_lpt_against_brute_force():
    rng = np.random.default_rng(7)
    cfg = small_cfg(channels=3, onchip_banks=0)
    for trial in range(5):
        pfs = rng.integers(1, 20, 7) / 2
        specs = [spec(rng, f"t{k}", 10, 16, pf=float(p) + 0.01) for k, p in enumerate(pfs)]
        m = compile_tables(specs, cfg, None).address_map
        loads = [t.traffic for t in m.tables]
        best = min(max(sum(l for l, a in zip(loads, assign) if a == ch) for ch in range(3))
                   for assign in np.ndindex(*(3,) * len(loads)))
        assert max(m.channel_traffic()) <= 4 / 3 * best + 1e-9


def test_compiler_errors():
    rng = np.random.default_rng(8)
    cfg = small_cfg(addr_bits=12, onchip_banks=0)            # 4 KiB per channel
    with pytest.raises(ValueError, match=r"table 'huge': 8000 bytes do not fit a channel of 4096"):
        compile_tables([spec(rng, "huge", 250, 16)], cfg)      # 250 rows of 4 beats of 8
    with pytest.raises(ValueError, match=r"table 'c'.*do not fit in any channel"):
        compile_tables([spec(rng, n, 100, 16) for n in "abc"], cfg)
    with pytest.raises(ValueError, match=r"table 'wide': dim 17 is wider than embedding.max_dim = 16"):
        compile_tables([spec(rng, "wide", 3, 17)], cfg)
    with pytest.raises(ValueError, match=r"9 tables \(from 9 features\) are more than embedding.max_tables = 8"):
        compile_tables([spec(rng, f"t{k}", 3, 4) for k in range(9)], small_cfg())
    with pytest.raises(ValueError, match="repeated"):
        compile_tables([spec(rng, "a", 3, 4), spec(rng, "a", 3, 4)], small_cfg())
    with pytest.raises(ValueError, match="pooling_factor"):
        spec(rng, "a", 3, 4, pf=-1.0)
    with pytest.raises(ValueError, match="4 KiB"):
        compile_tables([spec(rng, "long", 2, 4096)], EmbeddingConfig(max_dim=4096))  # 129 beats
    with pytest.raises(ValueError, match="row 0: scale"):
        compile_tables([TableSpec("s", np.array([[0.0, 1e5]]))], small_cfg())


def test_input_formats_compile_alike():
    rng = np.random.default_rng(9)
    cfg = small_cfg()
    w8, w4 = random_table(rng, 12, 10), random_table(rng, 12, 10)
    a = compile_tables([TableSpec("x", w8, 8), TableSpec("y", w4, 4)], cfg)
    b = compile_tables([TableSpec("x", fbgemm_byte_prepack(w8), 8, "fused"),
                        TableSpec("y", fbgemm_4bit_prepack(w4), 4, "fused")], cfg)
    c = compile_tables([TableSpec("x", fbgemm_byte_prepack(w8), 8, "fused"),
                        TableSpec("y", pack_qparams_first(quantize_nbit(w4, 4)), 4,
                                  "qparams_first", dim=10)], cfg)
    for other in (b, c):
        assert other.address_map == a.address_map
        assert all(np.array_equal(p, q) for p, q in zip(a.bank_images, other.bank_images))
        assert all(np.array_equal(p, q) for p, q in zip(a.channel_images, other.channel_images))
    with pytest.raises(ValueError, match="need dim"):
        TableSpec("y", pack_qparams_first(quantize_nbit(w4, 4)), 4, "qparams_first").rowwise()


def test_merging_heuristic():
    rng = np.random.default_rng(10)
    cfg = EmbeddingConfig(channels=2, data_bits=256, onchip_banks=0, max_dim=64)
    # bus 32 bytes: dim 16 int8 and dim 32 int4 rows are one beat; max_row_beats 3
    specs = [spec(rng, "u", 3, 16, pf=1), spec(rng, "v", 7, 16, pf=1),
             spec(rng, "w", 50, 32, 4, pf=1), spec(rng, "x", 900, 16, pf=1),
             spec(rng, "multi", 4, 16, pf=2), spec(rng, "large", 100000, 16, pf=1),
             spec(rng, "wide", 5, 64, pf=1)]                     # 3 beats: no room to merge
    m = compile_tables(specs, cfg, MergePolicy(small_rows=1000, max_growth=0.1)).address_map
    merged = {t.name: t for t in m.tables if t.merged}
    # candidates by rows: u 3, v 7, w 50, x 900 (wide fills a burst, multi takes two
    # ids, large is not small). u pairs with the largest, x; then v with w.
    assert set(merged) == {"u*x", "v*w"}
    ux = merged["u*x"]
    assert ux.rows == 2700 and ux.row_beats == 2 and ux.lookups_per_query == 1
    assert [(s.feature, s.beat_offset, s.id_stride) for s in ux.segments] == \
        [("u", 0, 900), ("x", 1, 1)]
    assert len(m.tables) == 5
    # a tight growth budget merges nothing; so does None
    tight = compile_tables(specs, cfg, MergePolicy(small_rows=1000, max_growth=1e-4)).address_map
    assert not any(t.merged for t in tight.tables)
    off = compile_tables(specs, cfg, None).address_map
    assert len(off.tables) == len(specs)


def test_merged_row_bytes_and_lookups():
    rng = np.random.default_rng(11)
    cfg = EmbeddingConfig(channels=2, data_bits=256, onchip_banks=1, onchip_words=16,
                          max_dim=64, max_bag=8)
    specs = [spec(rng, "a", 4, 16, pf=1), spec(rng, "b", 30, 32, 4, pf=1),
             spec(rng, "c", 60, 16, pf=3)]
    merged = compile_tables(specs, cfg, MergePolicy(max_growth=5.0))
    plain = compile_tables(specs, cfg, None)
    t = merged.address_map.tables[0]
    assert t.name == "a*b" and t.merged and t.kind == "channel"
    # row (i, j) is row i of a, then row j of b, each on its own beats
    ra = pack_hw_rows(to_fixed_point(specs[0].rowwise(), cfg.frac_bits), cfg)
    rb = pack_hw_rows(to_fixed_point(specs[1].rowwise(), cfg.frac_bits), cfg)
    i, j = 3, 17
    assert np.array_equal(merged.read_rows(0, [i * 30 + j])[0], np.concatenate([ra[i], rb[j]]))
    # the merged lookup answers exactly what the separate tables do
    bags = random_bags(rng, specs, 50, bad=True)
    got, want = golden_pooled(merged, bags), golden_pooled(plain, bags)
    for name in ("a", "b", "c"):
        assert np.array_equal(got[name][0], want[name][0])
        assert np.array_equal(got[name][1], want[name][1])
        off, ids = bags_from_lists(bags[name])
        p, st = direct_golden(specs["abc".index(name)], cfg, off, ids)
        assert np.array_equal(got[name][0], p) and np.array_equal(got[name][1], st)
    assert got["a"][1][1] == got["b"][1][1] == EmbeddingStatus.BAD_ID
    assert got["c"][1][2] == EmbeddingStatus.BAD_BAG
    stream = build_lookup_stream(merged.address_map, bags)
    assert stream.ids[stream.offsets[0]] == bags["a"][0][0] * 30 + bags["b"][0][0]
    assert stream.ids[stream.offsets[2]] == t.rows             # item 1: a past the end
    bad = dict(bags, a=[[0, 1]] + bags["a"][1:])
    with pytest.raises(ValueError, match=r"feature 'a' is merged into table 'a\*b'.*item 0 has 2"):
        build_lookup_stream(merged.address_map, bad)


def test_lookup_stream_order_and_golden_stream():
    rng = np.random.default_rng(12)
    cfg = small_cfg()
    specs = [spec(rng, "p", 6, 8), spec(rng, "q", 300, 16), spec(rng, "r", 9, 3, 4)]
    c = compile_tables(specs, cfg)
    check_layout(c)
    bags = random_bags(rng, specs, 20, bad=True)
    s = build_lookup_stream(c.address_map, bags)
    T = len(c.address_map.tables)
    assert s.item.tolist() == [i for i in range(20) for _ in range(T)]
    assert s.table.tolist() == list(range(T)) * 20
    for k in range(s.bags):
        name = c.address_map.tables[s.table[k]].segments[0].feature
        assert s.ids[s.offsets[k]:s.offsets[k + 1]].tolist() == list(bags[name][s.item[k]])
    status, vectors = golden_stream(c, s)
    per_feature = golden_pooled(c, bags)
    for k in range(s.bags):
        name = c.address_map.tables[s.table[k]].segments[0].feature
        assert status[k] == per_feature[name][1][s.item[k]]
        assert np.array_equal(vectors[k][0], per_feature[name][0][s.item[k]])
    for k in range(s.bags):
        assert s.unit[k] == c.address_map.stream_unit(s.table[k])
    units = {c.address_map.stream_unit(t.index) for t in c.address_map.tables}
    assert sum(s.unit_bags(u).size for u in units) == s.bags
    # a table index without a descriptor, and a table asked on another unit's stream
    u1 = c.address_map.stream_unit(1)
    odd = LookupStream(np.array([u1, u1, u1 + 1]), np.zeros(3, int), np.array([1, 7, 1]),
                       np.array([0, 1, 2, 3]), np.array([0, 0, 0]))
    st, vec = golden_stream(c, odd)
    assert st.tolist() == [EmbeddingStatus.OK, EmbeddingStatus.BAD_TABLE,
                           EmbeddingStatus.BAD_TABLE] and vec[1] == ()
    with pytest.raises(ValueError, match="no bags for feature 'r'"):
        build_lookup_stream(c.address_map, {"p": bags["p"], "q": bags["q"]})
    with pytest.raises(ValueError, match="ids must be"):
        build_lookup_stream(c.address_map, dict(bags, p=[[-1]] + bags["p"][1:]))
    with pytest.raises(ValueError, match="different numbers of items"):
        build_lookup_stream(c.address_map, dict(bags, p=bags["p"][:-1]))


def test_address_map_json_round_trip():
    rng = np.random.default_rng(13)
    cfg = Config.preset("microrec-u280").embedding
    specs = [spec(rng, "a", 3, 16, pf=1), spec(rng, "b", 200, 16, pf=1),
             spec(rng, "c", 5000, 64, pf=4.5), spec(rng, "d", 10, 8, 4)]
    m = compile_tables(specs, cfg, MergePolicy(max_growth=0.1)).address_map
    text = m.to_json()
    assert AddressMap.from_json(text) == m
    assert AddressMap.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    d = json.loads(text)
    assert d["tables"][0]["segments"][0]["feature"] == "a" and d["tables"][0]["merged"]


def test_descriptors_and_load_commands():
    rng = np.random.default_rng(14)
    cfg = small_cfg(onchip_banks=1, onchip_words=16)
    specs = [spec(rng, "a", 2, 4, 4), spec(rng, "b", 3, 3, 4), spec(rng, "c", 100, 16),
             spec(rng, "d", 7, 1)]
    c = compile_tables(specs, cfg)
    m = c.address_map
    words = descriptor_words(m, cfg)
    assert len(words) == cfg.max_tables and words[len(m.tables):] == \
        [0] * (cfg.max_tables - len(m.tables))
    layout = descriptor_layout(cfg)
    for t in m.tables:
        f = unpack_descriptor(words[t.index], cfg)
        assert f == Packer(layout).unpack(layout.const(
            {k: v for k, v in descriptor_values(t, 8).items() if k in f}).as_value().value)
        assert f["valid"] == 1 and f["onchip"] == (t.kind == "onchip") and f["unit"] == t.unit
        assert f["base"] == t.base_beat(8) and f["rows"] == t.rows and f["dim"] == t.dim
        assert f["bits4"] == (t.bits == 4) and f["row_beats"] == t.row_beats
        assert 1 << f["stride_shift"] == t.stride_beats
    writes = descriptor_writes(m, cfg)
    p = Packer(desc_write_layout(cfg))
    assert [p.unpack(w)["table"] for w in writes] == [t.index for t in m.tables]
    assert [Packer(layout).pack(p.unpack(w)["desc"]) for w in writes] == words[:len(m.tables)]
    bw = [Packer(bank_write_layout(cfg)).unpack(w) for w in bank_writes(c)]
    assert len(bw) == m.bank_words[0] > 0
    for w in bw:
        assert w["data"] == int.from_bytes(c.bank_images[w["bank"]][w["addr"]].tobytes(), "little")
    # a merged table: the second segment's fields in the descriptor
    merged = compile_tables([spec(rng, "x", 2, 4, pf=1), spec(rng, "y", 3, 4, pf=1)],
                            small_cfg(max_dim=32), MergePolicy(max_growth=10.0))
    t = merged.address_map.tables[0]
    assert t.merged and t.row_beats == 4 and t.segments[1].beat_offset == 2
    v = descriptor_values(t, 8)
    assert (v["merged"], v["seg_beats"], v["dim_b"], v["bits4_b"]) == (1, 2, 4, 0)
    f = unpack_descriptor(descriptor_words(merged.address_map, merged.config)[0],
                          merged.config)
    assert (f["merged"], f["seg_beats"], f["dim_b"], f["bits4_b"]) == (1, 2, 4, 0)


def test_presets_compile():
    rng = np.random.default_rng(15)
    for name, merge in (("tiny", None), ("default", None), ("ecp5", None),
                        ("microrec-u280", None), ("microrec-u280", MergePolicy(max_growth=1.0))):
        cfg = Config.preset(name).embedding
        dim = min(cfg.max_dim, 16)
        specs = [spec(rng, f"f{k}", int(r), dim, bits, pf=pf)
                 for k, (r, bits, pf) in enumerate([(3, 8, 1), (40, 4, 1), (1000, 8, 2.0),
                                                    (5000, 4, 1.0)])]
        c = compile_tables(specs, cfg, merge)
        check_layout(c)
        assert any(t.merged for t in c.address_map.tables) == (merge is not None)
        bags = random_bags(rng, specs, 10)
        out = golden_pooled(c, bags)
        for s in specs:
            off, ids = bags_from_lists(bags[s.name])
            p, st = direct_golden(s, cfg, off, ids)
            assert np.array_equal(out[s.name][0], p) and np.array_equal(out[s.name][1], st)


def test_memory_errors():
    rng = np.random.default_rng(16)
    cfg = small_cfg(onchip_banks=0)
    specs = [spec(rng, "p", 60, 16), spec(rng, "q", 50, 8)]
    c = compile_tables(specs, cfg)
    p = c.address_map.tables[0]
    lo = int(c.row_addresses(0, [40])[0]) + 5        # inside row 40's burst
    errors = {p.unit: [(lo, lo + 1)]}
    bags = {"p": [[1, 2], [40], [39, 41], [40, 60], [40] * 9], "q": [[0]] * 5}
    got = golden_pooled(c, bags, errors)
    assert got["p"][1].tolist() == [EmbeddingStatus.OK, EmbeddingStatus.MEM_ERROR,
                                    EmbeddingStatus.OK, EmbeddingStatus.BAD_ID,
                                    EmbeddingStatus.BAD_BAG]
    assert not got["p"][0][1].any()
    assert np.array_equal(got["p"][0][0], golden_pooled(c, bags)["p"][0][0])
    assert got["q"][1].tolist() == [EmbeddingStatus.OK] * 5
