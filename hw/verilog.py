"""Verilog from Amaranth components, without initializers for run-time RAMs.

Amaranth writes every memory's initial contents; for the large buffers that
the host loads at run time (weights, activations, parameters) those are all
zero, and Yosys spends minutes expanding them into ``initial`` blocks that no
one needs. :func:`to_verilog` drops all-zero initializers before Yosys runs:
such a RAM starts undefined, as a block RAM without an init file does, and
no block here reads a word it has not written.
"""

import gc
import re

from amaranth.back import rtlil
# Amaranth's own RTLIL-to-Verilog step (pinned: amaranth 0.5.10).
from amaranth.back.verilog import _convert_rtlil_text

__all__ = ["to_verilog", "strip_zero_meminit"]

_MEMINIT = re.compile(r"^ *cell \$meminit_v2 .*?^ *end\n", re.M | re.S)
_DATA = re.compile(r"^ *connect \\DATA (\d+)'([01]+)\s*$", re.M)


def strip_zero_meminit(rtlil_text: str) -> str:
    """Remove ``$meminit_v2`` cells whose data is all zeros."""
    def keep(match):
        d = _DATA.search(match.group(0))
        if d and set(d.group(2)) <= {"0"}:
            return ""
        return match.group(0)
    return _MEMINIT.sub(keep, rtlil_text)


def to_verilog(component, name: str) -> str:
    """Verilog for a ``wiring.Component``, ports named by path with ``__``.

    Python's garbage collector is off during Amaranth's conversion: the
    netlist is millions of small objects that live until the end, and the
    collector's passes over them roughly doubled the conversion time of the
    large blocks (measured on the default embedding lookup: 23.8 s with it,
    12.6 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        text = rtlil.convert(component, name=name, emit_src=False)
    finally:
        if enabled:
            gc.enable()
    return _convert_rtlil_text(strip_zero_meminit(text))
