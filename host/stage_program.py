"""Compiles a quantized stage (:class:`host.models.QuantizedStageModel`)
for the hardware stage engine (:class:`hw.stage.StageEngine`), and turns
queries into its input beats.

Everything here is a layout the hardware defines; the payloads are plain
dicts in the blocks' data layouts (what a testbench sets, or what the
command processor's handlers will unpack from a frame). Anything the engine
cannot run is refused here, naming the reason, before anything is sent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hw.config import Config, StageConfig, ceil_div
from hw.mlp_isa import Opcode

from .mlp_program import EngineTarget, _chunk, compile_mlp
from .models import Query, QuantizedStageModel

__all__ = ["StageLimits", "StageProgram", "compile_stage"]


@dataclass(frozen=True)
class StageLimits:
    """The sizes a :class:`hw.stage.StageEngine` was built with (its
    constructor's arguments)."""

    dim: int
    max_users: int
    max_items: int
    max_hidden: int
    max_pen: int
    max_bottom: int = StageConfig.max_bottom
    bottom_layers: int = StageConfig.bottom_layers

    @classmethod
    def of(cls, engine) -> "StageLimits":
        return cls(engine._dim, engine._U, engine._I, engine._max_hidden, engine._max_pen,
                   engine._max_bottom, engine._bottom_layers)


@dataclass
class StageProgram:
    """A stage placed on a stage engine: what to write before its queries,
    and each query's beats."""

    config: Config
    target: EngineTarget
    limits: StageLimits
    model: QuantizedStageModel
    table_base: int
    conf: dict
    engine_cmds: list[int]                 # packed engine commands (weights, params)
    ldesc: list[dict] = field(default_factory=list)
    p0: list[dict] = field(default_factory=list)
    dot_params: list[dict] = field(default_factory=list)
    upair_params: list[dict] = field(default_factory=list)
    uw: list[dict] = field(default_factory=list)
    sw: list[dict] = field(default_factory=list)
    bw: list[dict] = field(default_factory=list)
    fetch_params: list[dict] = field(default_factory=list)

    # -- a query's beats -----------------------------------------------------------
    def dense_beats(self, query: Query) -> list[dict]:
        """The dense features, quantized with the bottom MLP's input scale, in
        chunks of the engine's lanes (one row for the bottom MLP unit)."""
        m = self.model
        if m.bottom is None:
            return []
        x = m.bottom.quantize_input(np.asarray(query.dense, np.float64)[None, :])
        L = self.target.lanes
        chunks = _chunk(x.astype(np.int8), L, L)[0]
        return [{"data": c.tolist(), "last": i == len(chunks) - 1}
                for i, c in enumerate(chunks)]

    def ubag_beats(self, query: Query) -> list[dict]:
        cfg = self.model.config
        n = len(cfg.user_tables)
        out = []
        for t, ids in enumerate(query.user_ids):
            ids = [int(i) for i in np.asarray(ids).reshape(-1)]
            beats = [{"table": self.table_base + t, "id": i, "last": j == len(ids) - 1,
                      "empty": 0} for j, i in enumerate(ids)] or \
                    [{"table": self.table_base + t, "id": 0, "last": 1, "empty": 1}]
            out += [{"lookup": b, "item": 0, "group_last": t == n - 1} for b in beats]
        return out

    def cand_beats(self, query: Query) -> list[dict]:
        ids = np.asarray(query.item_ids)
        pos = query.positions if query.positions is not None else np.arange(ids.shape[0])
        pad = self.limits.max_items - ids.shape[1]
        return [{"pos": int(p), "ids": [int(v) for v in row] + [0] * pad,
                 "left": ids.shape[0] - 1 - c}
                for c, (p, row) in enumerate(zip(pos, ids))]


def _layer_desc(target: EngineTarget, beat: int) -> dict:
    d = target.cmd_layout.from_bits(beat)
    layer = d.args.layer
    return {name: int(getattr(layer, name)) for name in
            ("in_dim", "out_dim", "w_base", "p_base", "relu")}


def _matvec_writes(layer, lanes: int, chunks: int) -> list[dict]:
    """The writes of ``layer`` (``weight`` ``(in, out)``, ``bias``, ``mult``,
    ``shift``) into a :class:`hw.wide.WideMatVec` of ``lanes`` lanes and
    ``chunks`` weight words per output: each output's weight words, then its
    parameters; then the dimensions."""
    from hw.wide import WriteKind
    w = np.asarray(layer.weight)
    n_in, n_out = w.shape
    out = []
    for j in range(n_out):
        col = np.zeros(ceil_div(n_in, lanes) * lanes, np.int8)
        col[:n_in] = w[:, j]
        out += [{"kind": WriteKind.WEIGHT, "addr": j * chunks + c,
                 "data": {"weight": col[c * lanes:(c + 1) * lanes].tolist()}}
                for c in range(ceil_div(n_in, lanes))]
        out.append({"kind": WriteKind.PARAM, "addr": j, "data": {"param": {
            "bias": int(layer.bias[j]), "mult": int(layer.mult[j]),
            "shift": int(layer.shift[j])}}})
    out.append({"kind": WriteKind.DIMS, "addr": 0,
                "data": {"dims": {"in_dim": n_in, "out_dim": n_out}}})
    return out


def compile_stage(model: QuantizedStageModel, config: Config, limits: StageLimits, *,
                  engine: int = 0, split: int = 1, sb_rows: int = 64,
                  table_base: int = 0) -> StageProgram:
    """Place ``model`` on a stage engine built with ``limits``.

    ``sb_rows`` is the sub-batch (candidates per RUN); the stage's tables are
    the lookup unit's tables ``table_base ..`` in the model's order.
    ``ValueError`` names what does not fit.
    """
    mcfg = model.config
    if mcfg.interaction != "dot":
        raise ValueError(f"{mcfg.name}: the stage engine runs 'dot' stages, not "
                         f"{mcfg.interaction!r}")
    if model.score.bits != config.topk.score_bits:
        raise ValueError(f"{mcfg.name}: scores of {model.score.bits} bits; the top-k "
                         f"filter takes topk.score_bits = {config.topk.score_bits}")
    if len(model.layers) < 2:
        raise ValueError(f"{mcfg.name}: the stage engine needs two top layers or more")
    if mcfg.embedding_dim != limits.dim:
        raise ValueError(f"{mcfg.name}: embedding dim {mcfg.embedding_dim}; the stage "
                         f"engine's is {limits.dim}")
    n_users, n_items = mcfg.n_user_features, len(mcfg.item_tables)
    if not 1 <= n_users <= limits.max_users or n_items > limits.max_items:
        raise ValueError(f"{mcfg.name}: {n_users} user features and {n_items} item "
                         f"tables; the stage engine takes 1..{limits.max_users} and up "
                         f"to {limits.max_items}")
    if model.layers[0].out_dim > limits.max_hidden or model.layers[-1].in_dim > limits.max_pen:
        raise ValueError(f"{mcfg.name}: top layers {model.layers[0].out_dim} wide and a "
                         f"penultimate of {model.layers[-1].in_dim}; the stage engine "
                         f"takes {limits.max_hidden} and {limits.max_pen}")
    if table_base + len(mcfg.tables) > config.embedding.max_tables:
        raise ValueError(f"{mcfg.name}: tables {table_base}.. past embedding.max_tables "
                         f"{config.embedding.max_tables}")
    target = EngineTarget(config.array, engine, split)
    S, lanes = target.side, target.lanes
    from hw.stage import DENSE_FIFO
    if ceil_div(mcfg.dense_features, lanes) > DENSE_FIFO // 2:
        raise ValueError(f"{mcfg.name}: {mcfg.dense_features} dense features are more than "
                         f"{DENSE_FIFO // 2} chunks of {lanes}, what the stage engine holds")
    bottom = list(model.bottom.layers) if model.bottom else []
    if bottom:
        widest = max(max(l.in_dim, l.out_dim) for l in bottom)
        if len(bottom) > limits.bottom_layers or widest > limits.max_bottom:
            raise ValueError(f"{mcfg.name}: a bottom MLP of {len(bottom)} layers up to "
                             f"{widest} wide; the stage engine's bottom MLP unit takes "
                             f"{limits.bottom_layers} layers up to {limits.max_bottom} "
                             f"(stage.bottom_layers, stage.max_bottom)")
        if not all(l.relu for l in bottom):
            raise ValueError(f"{mcfg.name}: the stage engine's bottom MLP unit has ReLU "
                             f"on every layer")
    if not 1 <= sb_rows <= config.array.max_rows:
        raise ValueError(f"sb_rows: must be in 1 .. {config.array.max_rows}, not {sb_rows}")
    # a sub-batch runs in half of the engine's activation buffers (hw.stage)
    half = config.array.act_words(engine) // 2
    widest = max(max(ceil_div(l.in_dim, S), ceil_div(l.out_dim, S)) for l in model.layers[:-1])
    if sb_rows * widest > half:
        raise ValueError(f"sb_rows: {sb_rows} rows of {widest} chunks of {S} (the widest top "
                         f"layer) do not fit half of the engine's activation buffer "
                         f"({half} words); at most {half // widest}")

    # the engine: the top layers but the last. With a user pass, the first
    # layer's biases written here are replaced by each query's before its
    # items, in two regions in turn (hw.stage): p0_base = 0 and p0_alt past
    # the layers' entries, written the same here. Where the second does not
    # fit, p0_alt = p0_base: a query's biases then wait for the rows before.
    first, last = model.layers[0], model.layers[-1]
    n_p = sum(ceil_div(l.out_dim, S) for l in model.layers[:-1])
    n_p0 = ceil_div(first.out_dim, S)
    fits = n_p + n_p0 <= config.array.param_words
    p0_alt = n_p if model.user_layer is not None and fits else 0
    cmds, ldesc = [], []
    for beat in compile_mlp(list(model.layers[:-1]), target).load_commands:
        c = target.cmd_layout.from_bits(beat)
        if c.op == Opcode.SET_LAYER:
            ldesc.append({"index": len(ldesc), "desc": _layer_desc(target, beat)})
        else:
            cmds.append(beat)
            if p0_alt and c.op == Opcode.WRITE_PARAM and c.args.param.addr < n_p0:
                cmds.append(target.moved_param(beat, p0_alt))
    nb = len(bottom)
    nu_t = len(mcfg.user_tables)
    nup = mcfg.n_user_pairs
    u_rows = mcfg.user_top_rows
    conf = {
        "has_bottom": int(model.bottom is not None), "n_bottom": nb,
        "n_top": len(model.layers) - 1, "n_pooled": nu_t, "n_items": n_items,
        "dense_chunks": ceil_div(mcfg.dense_features, lanes) if bottom else 0,
        "item_tables": [table_base + nu_t + a for a in range(n_items)]
                       + [0] * (limits.max_items - n_items),
        "log_side": S.bit_length() - 1, "sb_rows": sb_rows,
        "pen_chunks": ceil_div(last.in_dim, S),
        "user_pass": int(model.user_layer is not None),
        "u_chunks": ceil_div(u_rows, limits.dim) if model.user_layer is not None else 0,
        "p0_base": 0, "p0_alt": p0_alt,
    }
    prog = StageProgram(config, target, limits, model, table_base, conf, cmds, ldesc)
    prog.p0 = [{"j": j, "mult": int(first.mult[j]), "shift": int(first.shift[j])}
               for j in range(first.out_dim)]
    prog.dot_params = [{"pair": k, "mult": int(model.pair_mult[nup + k]),
                        "shift": int(model.pair_shift[nup + k])}
                       for k in range(len(model.pair_mult) - nup)]
    prog.upair_params = [{"pair": k, "mult": int(model.pair_mult[k]),
                          "shift": int(model.pair_shift[k])} for k in range(nup)]
    prog.fetch_params = [{"table": table_base + t, "mult": int(model.emb_mult[t]),
                          "shift": int(model.emb_shift[t])} for t in range(len(mcfg.tables))]
    # the user pass: x_u = [bottom output, user pairs] in dim-wide chunks
    if model.user_layer is not None:
        d = limits.dim
        prog.uw = _matvec_writes(model.user_layer, d,
                                 ceil_div(d + limits.max_users * (limits.max_users - 1) // 2,
                                          d))
    # the bottom MLP unit (hw.wide.RowMLP): a unit per layer
    for n, layer in enumerate(bottom):
        prog.bw += [{"layer": n, "w": w}
                    for w in _matvec_writes(layer, lanes, ceil_div(limits.max_bottom, lanes))]
    # the score head: the last layer over the engine's response chunks (S
    # features in the first lanes of each)
    side_packed = _chunk(np.asarray(last.weight).T, S, lanes).reshape(-1, 1)
    prog.sw = _matvec_writes(dataclasses.replace(last, weight=side_packed), lanes,
                             ceil_div(last.in_dim, S))
    return prog
