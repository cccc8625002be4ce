"""The row-wise formats and the golden pooled lookup against PyTorch's
quantized embedding ops (FBGEMM inside plain CPU torch): the prepacked bytes
must be identical, and the golden pooled vectors within the stated bound of
torch's fp32 results on the same rows."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install torch==2.13.0")

from host.embedding import (EmbeddingStatus, fbgemm_4bit_prepack, fbgemm_byte_prepack,  # noqa: E402
                            pooled_error_bound, pooled_lookup, pooled_to_float,
                            row_magnitude, to_fixed_point, unpack_fused)
from host.table_compiler import (MergePolicy, TableSpec, bags_from_lists,  # noqa: E402
                                 compile_tables, golden_pooled)
from hw.config import EmbeddingConfig  # noqa: E402


def random_tables(seed):
    """Tables of several shapes and ranges, each with constant rows."""
    rng = np.random.default_rng(seed)
    for rows, dim, spread in ((1, 2, 1.0), (17, 4, 1e-3), (64, 6, 1.0), (100, 16, 50.0),
                              (33, 30, 1.0), (250, 64, 0.1), (40, 128, 3.0)):
        w = (rng.standard_normal((rows, dim)) * spread).astype(np.float32)
        w[0] = w[0, 0]
        if rows > 2:
            w[1] = 0.0
            w[2] = np.float32(1e-20)
        if rows > 4:
            w[3] = np.linspace(-1, 1, dim, dtype=np.float32)   # ties in the rounding
        yield w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byte_prepack_is_identical(seed):
    for w in random_tables(seed):
        want = torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(w)).numpy()
        assert np.array_equal(fbgemm_byte_prepack(w), want), w.shape


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_4bit_prepack_is_identical(seed):
    for w in random_tables(seed):
        want = torch.ops.quantized.embedding_bag_4bit_prepack(torch.from_numpy(w)).numpy()
        assert np.array_equal(fbgemm_4bit_prepack(w), want), w.shape


def torch_pooled(packed: np.ndarray, bits: int, offsets, ids) -> np.ndarray:
    op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if bits == 8
          else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
    out = op(torch.from_numpy(packed), torch.from_numpy(np.asarray(ids, np.int64)),
             torch.from_numpy(np.asarray(offsets, np.int64)), mode=0,
             include_last_offset=True)
    return out.numpy().astype(np.float64)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("frac_bits", [10, 16, 24])
def test_golden_pooled_against_torch(bits, frac_bits):
    rng = np.random.default_rng(bits + frac_bits)
    for w in random_tables(frac_bits):
        w = w * np.float32(0.5)                 # |scale|, |bias| < 2**(31-24) at frac 24
        packed = fbgemm_byte_prepack(w) if bits == 8 else fbgemm_4bit_prepack(w)
        table = unpack_fused(packed, bits)       # the same FBGEMM rows torch reads
        fx = to_fixed_point(table, frac_bits)
        lengths = rng.integers(0, 65, 200)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = rng.integers(0, table.rows, offsets[-1])
        pooled, status = pooled_lookup(fx, offsets, ids, max_bag=64)
        assert np.all(status == EmbeddingStatus.OK)
        ref = torch_pooled(packed, bits, offsets, ids)
        err = np.abs(pooled_to_float(pooled, frac_bits) - ref)
        bound = pooled_error_bound(bits, frac_bits, lengths, row_magnitude(table).max())
        assert np.all(err <= bound[:, None]), (w.shape, float((err - bound[:, None]).max()))


def test_compiled_images_against_torch():
    """Through the compiler: FBGEMM bytes in, golden pooled vectors out of the
    channel and bank images, within the bound of torch on the same bytes."""
    rng = np.random.default_rng(5)
    cfg = EmbeddingConfig(channels=2, data_bits=128, onchip_banks=1, onchip_words=64,
                          max_dim=64, max_bag=16)
    weights = {"user": rng.standard_normal((5000, 32)), "cat": rng.standard_normal((7, 16)),
               "item": rng.standard_normal((300, 64)), "tag": rng.standard_normal((40, 8))}
    bits = {"user": 8, "cat": 4, "item": 4, "tag": 8}
    packed = {n: (fbgemm_byte_prepack(w) if bits[n] == 8 else fbgemm_4bit_prepack(w))
              for n, w in weights.items()}
    specs = [TableSpec(n, packed[n], bits[n], "fused",
                       pooling_factor=1 if n in ("cat", "item") else 4.0) for n in weights]
    compiled = compile_tables(specs, cfg, MergePolicy(max_growth=1.0))   # cat*item
    assert any(t.merged for t in compiled.address_map.tables)
    n_items = 64
    bags = {n: [list(rng.integers(0, len(w), 1 if n in ("cat", "item") else rng.integers(0, 17)))
                for _ in range(n_items)] for n, w in weights.items()}
    out = golden_pooled(compiled, bags)
    for n in weights:
        offsets, ids = bags_from_lists(bags[n])
        pooled, status = out[n]
        assert np.all(status == EmbeddingStatus.OK)
        ref = torch_pooled(packed[n], bits[n], offsets, ids)
        table = unpack_fused(packed[n], bits[n])
        bound = pooled_error_bound(bits[n], cfg.frac_bits, np.diff(offsets),
                                   row_magnitude(table).max())
        assert np.all(np.abs(pooled_to_float(pooled, cfg.frac_bits) - ref) <= bound[:, None]), n
