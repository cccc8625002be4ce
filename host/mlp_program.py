"""Compiles int8 MLPs into MLP-engine commands, and decodes the answers.

The memory layouts are those of :mod:`hw.mlp_isa`; the command and response
formats are its data layouts, so nothing here knows a bit offset. Everything
that cannot run is refused here, with the reason, before a command is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hw.config import ArrayConfig, ceil_div
from hw.mlp_isa import Opcode, Status, command_layout, response_layout

from .numerics import QuantLayer
from .packing import Packer

__all__ = ["EngineTarget", "MLPProgram", "EngineError", "compile_mlp"]


class EngineError(RuntimeError):
    """The engine answered with an error status."""

    def __init__(self, status: Status, info: int):
        self.status = status
        self.info = info
        super().__init__(f"engine error {status.name} (info {info})")


@dataclass(frozen=True)
class EngineTarget:
    """Where a program runs: an engine of a config, in a mode of the array
    (``split``: a square split factor such as 1 or 2, or a ``(rows,
    columns)`` mode such as ``(2, 1)``, a row split;
    :attr:`hw.config.ArrayConfig.modes`)."""

    config: ArrayConfig
    engine: int = 0
    split: int | tuple[int, int] = 1

    def __post_init__(self):
        cfg = self.config
        r, c = cfg.mode(self.split)         # (a ValueError naming the modes)
        if not 0 <= self.engine < cfg.engines:
            raise ValueError(f"engine: {self.engine} is not below "
                             f"array.engines {cfg.engines}")
        if self.engine >= r * c:
            raise ValueError(f"engine: {self.engine} has no sub-array in mode "
                             f"{self.split!r} ({r * c} sub-arrays)")

    @property
    def side(self) -> int:
        """The sub-array's columns: an output tile, and an activation word."""
        return self.config.mode_sides(self.split)[1]

    @property
    def k_side(self) -> int:
        """The sub-array's rows: an input tile (``side`` but in a row split)."""
        return self.config.mode_sides(self.split)[0]

    @property
    def lanes(self) -> int:
        return self.config.engine_lanes(self.engine)

    @property
    def split_index(self) -> int:
        return self.config.mode_index(self.split)

    @cached_property
    def cmd_layout(self):
        return command_layout(self.config, self.engine)

    @cached_property
    def resp_layout(self):
        return response_layout(self.config, self.engine)

    @cached_property
    def _cmd_packer(self):
        return Packer(self.cmd_layout)

    @cached_property
    def _resp_packer(self):
        return Packer(self.resp_layout)

    def pack(self, op: Opcode, **args) -> int:
        """One command beat as an integer."""
        return self._cmd_packer.pack({"op": op, "args": args})

    def moved_param(self, beat: int, offset: int) -> int:
        """A ``WRITE_PARAM`` beat, its entry ``offset`` entries further on."""
        c = self.cmd_layout.from_bits(beat)
        if c.op != Opcode.WRITE_PARAM:
            raise ValueError(f"not a WRITE_PARAM: {c.op}")
        fields = {name: getattr(c.args.param, name)
                  for name, _ in self.cmd_layout["args"].shape["param"].shape}
        fields["addr"] += offset
        return self.pack(Opcode.WRITE_PARAM, param=fields)

    def unpack_response(self, bits: int) -> dict:
        """One response beat: ``data`` (list), ``status``, ``last``, ``info``."""
        return self._resp_packer.unpack(bits)


@dataclass
class MLPProgram:
    """An MLP placed in an engine's memories: the commands that load it and
    the ones that run a batch through it."""

    target: EngineTarget
    layers: list[QuantLayer]
    load_commands: list[int]
    #: the first weight word and parameter entry after the program's
    w_end: int = 0
    p_end: int = 0

    @property
    def out_dim(self) -> int:
        return self.layers[-1].out_dim

    def max_rows_per_run(self, words: int | None = None) -> int:
        """Most rows a RUN of this MLP takes in ``words`` activation words
        (default: the whole buffer)."""
        t, cfg = self.target, self.target.config
        words = cfg.act_words(t.engine) if words is None else words
        widest = max(max(ceil_div(l.in_dim, t.side), ceil_div(l.out_dim, t.side))
                     for l in self.layers)
        return min(cfg.max_rows, words // widest)

    def input_commands(self, x: np.ndarray, base: int = 0) -> list[int]:
        """Write a batch of int8 rows into activation buffer 0, for a RUN
        with this ``base``."""
        t = self.target
        x = np.asarray(x)
        rows = self._check_batch(x, base)
        chunks = _chunk(x, t.side, t.lanes)           # (rows, chunks, lanes)
        out = []
        for c in range(chunks.shape[1]):
            for r in range(rows):
                out.append(t.pack(Opcode.WRITE_ACT, act={
                    "buf": 0, "addr": base + c * rows + r,
                    "data": chunks[r, c].tolist()}))
        return out

    def run_command(self, rows: int, base: int = 0) -> int:
        return self.target.pack(Opcode.RUN, run={"layers": len(self.layers),
                                                 "rows": rows, "base": base})

    def decode_run(self, beats: list[int], rows: int) -> tuple[np.ndarray, int]:
        """The answer to a RUN: ``(int8 outputs (rows, out_dim), cycles)``."""
        t = self.target
        beats = [t.unpack_response(b) for b in beats]
        if not beats:
            raise ValueError("no response beats")
        trailer = beats[-1]
        if not trailer["last"]:
            raise ValueError("the response does not end with a trailer beat")
        if trailer["status"] != Status.OK:
            raise EngineError(Status(trailer["status"]), trailer["info"])
        nchunks = ceil_div(self.out_dim, t.side)
        data_beats = beats[:-1]
        if len(data_beats) != rows * nchunks:
            raise ValueError(f"expected {rows * nchunks} data beats, found "
                             f"{len(data_beats)}")
        y = np.array([b["data"] for b in data_beats],
                     dtype=np.int8).reshape(rows, nchunks, t.lanes)
        y = y[:, :, :t.side].reshape(rows, nchunks * t.side)[:, :self.out_dim]
        return y, trailer["info"]

    def _check_batch(self, x, base=0):
        if x.ndim != 2 or x.dtype != np.int8:
            raise ValueError(f"a batch must be int8 (rows, features), not "
                             f"{x.dtype} {x.shape}")
        if x.shape[1] != self.layers[0].in_dim:
            raise ValueError(f"the batch has {x.shape[1]} features; the MLP "
                             f"takes {self.layers[0].in_dim}")
        rows = x.shape[0]
        words = self.target.config.act_words(self.target.engine)
        if not 0 <= base < words:
            raise ValueError(f"base: must be in 0 .. {words - 1}, not {base}")
        most = self.max_rows_per_run(words - base)
        if not 1 <= rows <= most:
            raise ValueError(f"a run from word {base} takes 1 to {most} rows "
                             f"for this MLP, not {rows}")
        return rows


def _chunk(a: np.ndarray, side: int, lanes: int) -> np.ndarray:
    """``(r, d)`` -> ``(r, ceil(d/side), lanes)``, zero padded."""
    r, d = a.shape
    n = ceil_div(d, side)
    out = np.zeros((r, n, lanes), dtype=a.dtype)
    padded = np.zeros((r, n * side), dtype=a.dtype)
    padded[:, :d] = a
    out[:, :, :side] = padded.reshape(r, n, side)
    return out


def compile_mlp(layers: list[QuantLayer], target: EngineTarget, *,
                w_base: int = 0, p_base: int = 0) -> MLPProgram:
    """Lay out ``layers`` in the engine's memories and return the program.

    Raises ``ValueError`` naming the layer when anything does not fit.
    """
    cfg, side, k_side, lanes = target.config, target.side, target.k_side, target.lanes
    if not layers:
        raise ValueError("an MLP needs at least one layer")
    if len(layers) > cfg.max_layers:
        raise ValueError(f"{len(layers)} layers; the engine holds "
                         f"array.max_layers = {cfg.max_layers}")
    cmds = []
    w, p = w_base, p_base
    for i, layer in enumerate(layers):
        if i and layer.in_dim != layers[i - 1].out_dim:
            raise ValueError(f"layer {i}: takes {layer.in_dim} inputs but layer "
                             f"{i - 1} gives {layers[i - 1].out_dim}")
        for name, d in (("in", layer.in_dim), ("out", layer.out_dim)):
            if d > cfg.max_dim:
                raise ValueError(f"layer {i}: {name}_dim {d} exceeds "
                                 f"array.max_dim {cfg.max_dim}")
        kt, nt = ceil_div(layer.in_dim, k_side), ceil_div(layer.out_dim, side)
        if w + kt * nt * k_side > cfg.weight_words:
            raise ValueError(
                f"layer {i} ({layer.in_dim}x{layer.out_dim}): its weights need "
                f"{kt * nt * k_side} words at {w}, beyond array.weight_words "
                f"{cfg.weight_words}")
        if p + nt > cfg.param_words:
            raise ValueError(f"layer {i}: its parameters need {nt} entries at "
                             f"{p}, beyond array.param_words {cfg.param_words}")
        cmds.append(target.pack(Opcode.SET_LAYER, layer={
            "index": i, "in_dim": layer.in_dim, "out_dim": layer.out_dim,
            "w_base": w, "p_base": p, "relu": int(layer.relu)}))
        wpad = np.zeros((kt * k_side, nt * side), dtype=np.int8)
        wpad[:layer.in_dim, :layer.out_dim] = layer.weight
        for n in range(nt):
            for k in range(kt):
                tile = wpad[k * k_side:(k + 1) * k_side, n * side:(n + 1) * side]
                for row in tile:
                    data = np.zeros(lanes, dtype=np.int8)
                    data[:side] = row
                    cmds.append(target.pack(Opcode.WRITE_WEIGHTS, weights={
                        "addr": w, "data": data.tolist()}))
                    w += 1
        for n in range(nt):
            for j in range(side):
                ch = n * side + j
                if ch < layer.out_dim:
                    b, m_, s = (int(layer.bias[ch]), int(layer.mult[ch]),
                                int(layer.shift[ch]))
                else:
                    b, m_, s = 0, 1, 0
                cmds.append(target.pack(Opcode.WRITE_PARAM, param={
                    "addr": p + n, "lane": j, "bias": b, "mult": m_, "shift": s}))
        p += nt
    program = MLPProgram(target, list(layers), cmds, w_end=w, p_end=p)
    if program.max_rows_per_run() < 1:
        raise ValueError("the activation buffers cannot hold one row of this MLP "
                         f"(array.max_dim {cfg.max_dim}, max_rows {cfg.max_rows})")
    return program
