"""Fast packing of nested values into Amaranth data layouts, and back.

``layout.const(value).as_bits()`` is the reference but costs close to a
millisecond a beat, which dominates a testbench or a driver streaming
thousands of beats. :class:`Packer` walks the layout once and reads every
field's offset and shape from it (nothing is written by hand); packing is
then integer shifts. ``tests/test_packing.py`` checks it against Amaranth.
"""

from __future__ import annotations

import enum

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["Packer"]


class Packer:
    """Packs nested dicts / sequences / ints / enums into a layout's bits."""

    def __init__(self, shape):
        self.shape = shape
        if isinstance(shape, (data.StructLayout, data.UnionLayout)):
            self.kind = "struct" if isinstance(shape, data.StructLayout) else "union"
            self.fields = {name: (f.offset, Packer(f.shape)) for name, f in shape}
        elif isinstance(shape, data.ArrayLayout):
            self.kind = "array"
            self.elem = Packer(shape.elem_shape)
            self.length = shape.length
            self.stride = Shape.cast(shape.elem_shape).width
        elif isinstance(shape, type) and issubclass(shape, enum.Enum):
            self.kind = "enum"
            self.enum = shape
        else:
            self.kind = "int"
            s = Shape.cast(shape)
            self.signed = s.signed
        self.width = Shape.cast(shape).width
        self.mask = (1 << self.width) - 1

    def pack(self, value) -> int:
        k = self.kind
        if k == "int":
            v = int(value)
            lo = -(1 << (self.width - 1)) if self.signed else 0
            hi = (1 << (self.width - 1)) - 1 if self.signed else self.mask
            if not lo <= v <= hi:
                raise ValueError(f"{v} does not fit {self.shape}")
            return v & self.mask
        if k == "enum":
            v = value.value if isinstance(value, enum.Enum) else int(value)
            return v & self.mask
        if k == "array":
            if len(value) != self.length:
                raise ValueError(f"expected {self.length} elements, not {len(value)}")
            if self.stride == 8 and self.elem.kind == "int":
                a = np.asarray(value)
                if a.min(initial=0) < (-128 if self.elem.signed else 0) or \
                        a.max(initial=0) > (127 if self.elem.signed else 255):
                    raise ValueError(f"an element does not fit {self.shape}")
                return int.from_bytes(a.astype(np.int64).astype(np.uint8).tobytes(), "little")
            bits = 0
            for i, v in enumerate(value):
                bits |= self.elem.pack(v) << (i * self.stride)
            return bits
        bits = 0
        if k == "union" and len(value) > 1:
            raise ValueError("a union takes one member at a time")
        for name, v in value.items():
            try:
                offset, sub = self.fields[name]
            except KeyError:
                raise ValueError(f"{self.shape} has no field {name!r}") from None
            bits |= sub.pack(v) << offset
        return bits

    def unpack(self, bits: int):
        """Nested dicts (every union member decoded), lists and ints."""
        bits &= self.mask
        k = self.kind
        if k == "int":
            if self.signed and bits >> (self.width - 1):
                return bits - (1 << self.width)
            return bits
        if k == "enum":
            try:
                return self.enum(bits)
            except ValueError:
                return bits
        if k == "array":
            if self.stride == 8 and self.elem.kind == "int":
                a = np.frombuffer(bits.to_bytes(self.length, "little"), dtype=np.uint8)
                return (a.view(np.int8) if self.elem.signed else a).astype(np.int64).tolist()
            return [self.elem.unpack(bits >> (i * self.stride)) for i in range(self.length)]
        return {name: sub.unpack(bits >> offset)
                for name, (offset, sub) in self.fields.items()}
