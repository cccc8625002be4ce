"""Bit-exact integer arithmetic of the accelerator (the golden model's core).

Every integer the hardware computes in an MLP layer is computed here, with the
same widths, rounding and saturation. Nothing here imports a simulator.

Numerics of one int8 layer, ``y = requantize(x @ W + b)``:

* ``x``: int8 activations, symmetric (zero point 0); ``W``: int8 weights,
  symmetric, per output channel scale; products are exact (16 bits).
* Accumulation in int32, two's complement, wrapping modulo 2**32 (the sum of
  ``in_dim`` products cannot wrap for ``in_dim <= 131072``). Inside the array
  a column adds at most ``dim`` products in a ``16 + clog2(dim) + 1`` bit
  partial sum, which is exact; tiles are then added in the int32 accumulator.
  Because wrapping addition is associative, the order of tiles is irrelevant.
* Requantization per output channel ``j`` with an int32 ``bias[j]``, an
  unsigned 16-bit ``mult[j]`` (1 .. 65535) and a 6-bit ``shift[j]``::

      t = acc + bias[j]                      # 33-bit, exact
      p = t * mult[j]                        # 49-bit, exact
      r = (p + 2**(shift-1)) >> shift        # round half up (towards +inf);
                                             # r = p when shift == 0
      r = max(r, 0) if relu                  # optional ReLU
      y = clamp(r, -128, 127)                # saturate to int8

  so ``y ~= (acc + bias) * mult / 2**shift``, rounded half up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MULT_BITS", "SHIFT_BITS", "wrap_int32", "check_requant_params", "round_shift",
           "requantize",
           "QuantLayer", "int8_layer", "int8_mlp", "float_mlp", "save_layers",
           "load_layers"]

MULT_BITS = 16
SHIFT_BITS = 6


def wrap_int32(v: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of an integer array to int32."""
    return (np.asarray(v, dtype=np.int64).astype(np.uint64)
            & np.uint64(0xFFFF_FFFF)).astype(np.uint32).view(np.int32)


def check_requant_params(mult, shift) -> tuple[np.ndarray, np.ndarray]:
    """``mult`` and ``shift`` as int64 arrays, checked against their fields."""
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any((mult < 1) | (mult >= 1 << MULT_BITS)):
        raise ValueError(f"mult must be in 1..{(1 << MULT_BITS) - 1}")
    if np.any((shift < 0) | (shift >= 1 << SHIFT_BITS)):
        raise ValueError(f"shift must be in 0..{(1 << SHIFT_BITS) - 1}")
    return mult, shift


def round_shift(p, shift) -> np.ndarray:
    """``(p + 2**(shift-1)) >> shift``: the requantizer's rounding, half up
    (towards +inf), arithmetic shift, no rounding term when ``shift == 0``.
    ``p`` is an int64 array, or an object array of Python ints where int64
    would overflow."""
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    if np.asarray(p).dtype == object:
        return (p + half.astype(object)) >> shift.astype(object)
    return np.right_shift(p + half, shift)


def requantize(acc, bias, mult, shift, relu: bool) -> np.ndarray:
    """int32 accumulators to int8, per output channel (last axis)."""
    acc = np.asarray(acc, dtype=np.int64)
    bias = np.asarray(bias, dtype=np.int64)
    mult, shift = check_requant_params(mult, shift)
    r = round_shift((acc + bias) * mult, shift)  # |p| < 2**49: fits int64
    if relu:
        r = np.maximum(r, 0)
    return np.clip(r, -128, 127).astype(np.int8)


@dataclass(frozen=True)
class QuantLayer:
    """One int8 layer as the hardware runs it: ``in_dim`` x ``out_dim``.

    ``weight`` is int8 ``(in_dim, out_dim)``; ``bias`` int32, ``mult``
    uint16 and ``shift`` uint8 have ``out_dim`` entries.
    """

    weight: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    relu: bool

    def __post_init__(self):
        w = np.asarray(self.weight)
        if w.ndim != 2 or w.dtype != np.int8:
            raise ValueError(f"weight must be a 2-D int8 array, not "
                             f"{w.dtype} {w.shape}")
        out = w.shape[1]
        for name, dt in (("bias", np.int32), ("mult", np.uint16),
                         ("shift", np.uint8)):
            v = np.asarray(getattr(self, name))
            if v.shape != (out,):
                raise ValueError(f"{name}: expected shape ({out},), found "
                                 f"{v.shape}")
            object.__setattr__(self, name, v.astype(dt))
        if np.any(self.mult == 0):
            raise ValueError("mult: must be at least 1")
        if np.any(self.shift >= 1 << SHIFT_BITS):
            raise ValueError(f"shift: must be below {1 << SHIFT_BITS}")

    @property
    def in_dim(self):
        return self.weight.shape[0]

    @property
    def out_dim(self):
        return self.weight.shape[1]

    @property
    def macs_per_row(self):
        return self.in_dim * self.out_dim


def int8_layer(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """One layer, bit-exact: int8 ``(rows, in_dim)`` -> int8 ``(rows, out)``."""
    x = np.asarray(x)
    if x.dtype != np.int8 or x.ndim != 2 or x.shape[1] != layer.in_dim:
        raise ValueError(f"activations must be int8 (rows, {layer.in_dim}), "
                         f"not {x.dtype} {x.shape}")
    acc = wrap_int32(x.astype(np.int64) @ layer.weight.astype(np.int64))
    return requantize(acc, layer.bias, layer.mult, layer.shift, layer.relu)


def int8_mlp(x: np.ndarray, layers: list[QuantLayer]) -> np.ndarray:
    """A whole MLP, layer after layer, as the engine runs it."""
    for layer in layers:
        x = int8_layer(x, layer)
    return x


def float_mlp(x: np.ndarray, weights, biases, relus) -> np.ndarray:
    """The float reference: ``x @ W + b`` with optional ReLU per layer."""
    x = np.asarray(x, dtype=np.float64)
    for w, b, relu in zip(weights, biases, relus):
        x = x @ np.asarray(w, dtype=np.float64) + np.asarray(b, dtype=np.float64)
        if relu:
            x = np.maximum(x, 0.0)
    return x


def save_layers(path, layers: list[QuantLayer]) -> None:
    """Save quantized layers as ``.npz`` (``weight_<l>``, ``bias_<l>``,
    ``mult_<l>``, ``shift_<l>``, ``relu_<l>`` for each layer ``l``)."""
    arrays = {}
    for l, layer in enumerate(layers):
        arrays.update({f"weight_{l}": layer.weight, f"bias_{l}": layer.bias,
                       f"mult_{l}": layer.mult, f"shift_{l}": layer.shift,
                       f"relu_{l}": np.array(layer.relu)})
    np.savez(path, **arrays)


def load_layers(path) -> list[QuantLayer]:
    with np.load(path) as f:
        n = sum(1 for k in f.files if k.startswith("weight_"))
        return [QuantLayer(f[f"weight_{l}"], f[f"bias_{l}"], f[f"mult_{l}"],
                           f[f"shift_{l}"], bool(f[f"relu_{l}"])) for l in range(n)]
