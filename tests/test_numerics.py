"""The golden model's arithmetic: against plain Python integers, and the
quantized layer against the float layer within the quantization error."""

import numpy as np
import pytest

from host.numerics import QuantLayer, int8_layer, int8_mlp, requantize, wrap_int32
from host.quantize import calibrate_mlp, quantize_multiplier


def requantize_reference(acc, bias, mult, shift, relu):
    """One value with Python's unbounded integers, rounding half up."""
    p = (acc + bias) * mult
    r = p if shift == 0 else (p + (1 << (shift - 1))) // (1 << shift)
    if relu:
        r = max(r, 0)
    return min(127, max(-128, r))


def test_requantize_matches_integer_reference():
    rng = np.random.default_rng(0)
    n = 20000
    acc = rng.integers(-(1 << 31), 1 << 31, n)
    bias = rng.integers(-(1 << 31), 1 << 31, n)
    mult = rng.integers(1, 1 << 16, n)
    shift = rng.integers(0, 64, n)
    # small shifts and small accumulators too, where rounding ties happen
    acc[:5000] = rng.integers(-300, 300, 5000)
    bias[:5000] = 0
    mult[:5000] = 1
    shift[:5000] = rng.integers(0, 5, 5000)
    for relu in (False, True):
        got = requantize(acc, bias, mult, shift, relu)
        ref = [requantize_reference(int(a), int(b), int(m), int(s), relu)
               for a, b, m, s in zip(acc, bias, mult, shift)]
        assert got.tolist() == ref


def test_round_half_up():
    # 5/2 = 2.5 -> 3 ; -5/2 = -2.5 -> -2 ; 3/2 = 1.5 -> 2 ; -3/2 -> -1
    got = requantize(np.array([5, -5, 3, -3]), 0, np.ones(4), np.ones(4), False)
    assert got.tolist() == [3, -2, 2, -1]


def test_int32_wrap():
    assert wrap_int32(np.array([1 << 31, -(1 << 31) - 1])).tolist() == [-(1 << 31), (1 << 31) - 1]


def test_layer_is_exact_integer_matmul():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (7, 33)).astype(np.int8)
    layer = QuantLayer(rng.integers(-128, 128, (33, 5)).astype(np.int8),
                       rng.integers(-1000, 1000, 5), rng.integers(1, 1 << 16, 5),
                       rng.integers(0, 30, 5), True)
    got = int8_layer(x, layer)
    for r in range(7):
        for j in range(5):
            acc = sum(int(x[r, k]) * int(layer.weight[k, j]) for k in range(33))
            assert got[r, j] == requantize_reference(
                acc, int(layer.bias[j]), int(layer.mult[j]), int(layer.shift[j]), True)


def test_quantize_multiplier_precision():
    real = np.geomspace(1e-9, 60000, 500)
    mult, shift = quantize_multiplier(real)
    approx = mult / np.exp2(shift.astype(float))
    normal = real < 1.0
    assert np.all(mult >= 1)
    assert np.all(np.abs(approx[normal] / real[normal] - 1) <= 2.0 ** -15)


def test_quantized_layer_within_quantization_error():
    """|y_int8 * s_y - y_float| <= the bound from the scales, element by element:
    input rounding (s_x/2 each), weight rounding (s_w/2 each), their product,
    the bias rounding (s_x s_w / 2), the multiplier's relative error and the
    output rounding (s_y / 2)."""
    rng = np.random.default_rng(2)
    i, o = 48, 24
    w = rng.normal(0, 0.2, (i, o))
    b = rng.normal(0, 0.5, o)
    calib = rng.normal(0, 1, (512, i))
    q = calibrate_mlp([w], [b], [False], calib)
    x = rng.normal(0, 0.8, (256, i))
    xq = q.quantize_input(x)
    y = q.dequantize_output(int8_layer(xq, q.layers[0]))
    ref = x @ w + b
    s_x, s_y = q.input_scale, q.output_scale
    s_w = np.max(np.abs(w), axis=0) / 127
    bound = (np.abs(x) @ np.broadcast_to(s_w / 2, (i, o))
             + (s_x / 2) * np.sum(np.abs(w), axis=0)
             + i * s_x * s_w / 4 + s_x * s_w / 2
             + np.abs(ref) * 2.0 ** -14 + s_y / 2)
    inside = np.abs(ref) <= 127 * s_y        # saturation is not quantization error
    assert inside.mean() > 0.95
    assert np.all(np.abs(y - ref)[inside] <= bound[inside] + 1e-9)


def test_mlp_quantization_error_is_small():
    rng = np.random.default_rng(3)
    dims = [13, 64, 32, 8]
    ws = [rng.normal(0, 1 / np.sqrt(a), (a, b)) for a, b in zip(dims, dims[1:])]
    bs = [rng.normal(0, 0.1, b) for b in dims[1:]]
    relus = [True, True, False]
    q = calibrate_mlp(ws, bs, relus, rng.normal(0, 1, (1024, 13)))
    x = rng.normal(0, 1, (512, 13))
    y = q.dequantize_output(int8_mlp(q.quantize_input(x), q.layers))
    from host.numerics import float_mlp
    ref = float_mlp(x, ws, bs, relus)
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < 0.03


def test_bad_layers_are_refused():
    with pytest.raises(ValueError, match="bias: expected shape"):
        QuantLayer(np.zeros((3, 2), np.int8), np.zeros(3), np.ones(2), np.zeros(2), False)
    with pytest.raises(ValueError, match="weight must be a 2-D int8"):
        QuantLayer(np.zeros((3, 2)), np.zeros(2), np.ones(2), np.zeros(2), False)
    with pytest.raises(ValueError, match="mult"):
        QuantLayer(np.zeros((3, 2), np.int8), np.zeros(2), np.zeros(2), np.zeros(2), False)
