"""The device format of payloads: port records (:mod:`hw.loader`), packed
from the blocks' own data layouts (:class:`host.packing.Packer`)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from amaranth.hdl import Shape

from hw.loader import record_header

from .packing import Packer

__all__ = ["RecordWriter"]


class RecordWriter:
    """Builds a payload of records for a router whose ports are ``ports``
    (``(name, layout)`` pairs, as :class:`hw.loader.RecordRouter` takes)."""

    def __init__(self, ports: Sequence):
        self._index = {name: i for i, (name, _) in enumerate(ports)}
        self._packers = {name: Packer(layout) for name, layout in ports}
        self._words = {name: -(-Shape.cast(layout).width // 64) for name, layout in ports}
        self._out: list[int] = []

    def add(self, port: str, beats: Iterable) -> "RecordWriter":
        """A record of ``beats`` (dicts in the port's layout, or packed ints)."""
        if port not in self._index:
            raise ValueError(f"no port {port!r}; the ports are {sorted(self._index)}")
        packer, n = self._packers[port], self._words[port]
        body = []
        for b in beats:
            bits = b if isinstance(b, int) else packer.pack(b)
            body += [(bits >> (64 * w)) & ((1 << 64) - 1) for w in range(n)]
        count = len(body) // n
        if count:
            self._out += [record_header(self._index[port], count)] + body
        return self

    def words(self) -> np.ndarray:
        return np.array(self._out, dtype=np.uint64)
