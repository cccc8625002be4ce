"""Calibration: int8 scales for a float MLP from its weights and sample inputs.

* Weights: symmetric per output channel, ``s_w[j] = max|W[:, j]| / 127``.
* Activations: symmetric per tensor, ``s = max|a| / 127`` over the
  calibration samples, at the input of every layer and at the output.
* Bias: ``round_half_even(b / (s_in * s_w))`` in int32.
* Requantization: the real multiplier ``s_in * s_w[j] / s_out`` as
  ``mult / 2**shift`` with ``mult`` normalised into ``[2**15, 2**16)``, the
  most precise form the 16-bit multiplier allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .numerics import MULT_BITS, SHIFT_BITS, QuantLayer, float_mlp

__all__ = ["QuantizedMLP", "quantize_multiplier", "calibrate_mlp"]


def quantize_multiplier(real: np.ndarray):
    """``mult / 2**shift ~= real`` for each positive ``real``."""
    real = np.asarray(real, dtype=np.float64)
    if np.any(~np.isfinite(real)) or np.any(real <= 0):
        raise ValueError("requantization multipliers must be positive and finite")
    max_shift = (1 << SHIFT_BITS) - 1
    shift = (MULT_BITS - 1) - np.floor(np.log2(real)).astype(np.int64)
    shift = np.clip(shift, 0, max_shift)
    mult = np.rint(real * np.exp2(shift)).astype(np.int64)
    # Rounding up to 2**16 overflows the field: take one bit less precision.
    over = mult >= 1 << MULT_BITS
    shift = np.where(over & (shift > 0), shift - 1, shift)
    mult = np.rint(real * np.exp2(shift)).astype(np.int64)
    if np.any(mult >= 1 << MULT_BITS):
        raise ValueError(f"a requantization multiplier of {real.max():g} is too "
                         f"large for {MULT_BITS} bits")
    return np.maximum(mult, 1).astype(np.uint16), shift.astype(np.uint8)


@dataclass(frozen=True)
class QuantizedMLP:
    layers: list[QuantLayer]
    input_scale: float
    output_scale: float

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x) / self.input_scale),
                       -127, 127).astype(np.int8)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) * self.output_scale


def _act_scale(a: np.ndarray) -> float:
    m = float(np.max(np.abs(a))) if a.size else 0.0
    return m / 127.0 if m > 0 else 1.0


def calibrate_mlp(weights, biases, relus, samples: np.ndarray) -> QuantizedMLP:
    """Quantize a float MLP (``W_l`` is ``(in, out)``) with ``samples`` as the
    calibration inputs."""
    if not (len(weights) == len(biases) == len(relus)) or not weights:
        raise ValueError("weights, biases and relus must have the same, "
                         "non-zero length")
    acts = [np.asarray(samples, dtype=np.float64)]
    for w, b, relu in zip(weights, biases, relus):
        acts.append(float_mlp(acts[-1], [w], [b], [relu]))
    scales = [_act_scale(a) for a in acts]
    layers = []
    for l, (w, b, relu) in enumerate(zip(weights, biases, relus)):
        w = np.asarray(w, dtype=np.float64)
        s_w = np.max(np.abs(w), axis=0) / 127.0
        s_w = np.where(s_w > 0, s_w, 1.0)
        wq = np.clip(np.rint(w / s_w), -127, 127).astype(np.int8)
        acc_scale = scales[l] * s_w
        bq = np.clip(np.rint(np.asarray(b, dtype=np.float64) / acc_scale),
                     -(1 << 31), (1 << 31) - 1).astype(np.int32)
        mult, shift = quantize_multiplier(acc_scale / scales[l + 1])
        layers.append(QuantLayer(wq, bq, mult, shift, bool(relu)))
    return QuantizedMLP(layers, scales[0], scales[-1])
