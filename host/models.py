"""DLRM-style stage models: config, presets, weights on disk, the float forward
pass and the quantized (golden) forward pass. Pure NumPy; torch is never
imported here.

A stage model (ARCHITECTURE.md section 1) scores the candidates of one query::

    bottom MLP(dense)                   once per query  (DLRM: ReLU on every layer)
    user embeddings (sum-pooled bags)   once per query
    item embeddings (one id per table)  per candidate
    interaction: "dot" or "concat"      per candidate (user-only parts per query)
    top MLP -> one score                per candidate (ReLU on hidden layers; the
                                        last layer is linear: the score is DLRM's
                                        logit, before its monotone sigmoid)

Features and their order
------------------------
The interaction sees the features ``T = [bottom output, table 0, table 1,
...]`` in config order (no bottom output when there are no dense features);
user tables must come before item tables, so the first ``U`` features are
per-query (``U`` = bottom output + user tables) and the rest per candidate.

* ``"concat"``: the top MLP's input is ``concat(T)`` (DLRM ``R = cat([x] + ly)``).
* ``"dot"``: DLRM's pairwise dot products ``z_ij = <T_i, T_j>`` for ``i > j``,
  in row-major lower-triangular order -- ``(1,0), (2,0), (2,1), (3,0), ...``,
  which is ``numpy.tril_indices(F, -1)`` and DLRM_Net's ``li, lj =
  torch.tril_indices(ni, nj, offset=-1)`` -- appended to the bottom output:
  the top input is ``concat(bottom output, z)`` (DLRM ``R = cat([x] + [Zflat])``,
  ``arch_interaction_itself=False``). Every feature has ``embedding_dim``
  elements, so the bottom MLP must end in ``embedding_dim``.

In both modes the top input's first :attr:`StageModelConfig.user_top_rows`
elements depend on the user alone (the bottom output and the user
embeddings, or the bottom output and the user-user pairs, which come first
in row-major order), so the first top layer splits into a user part, one
matrix-vector product per query, and an item part per candidate
(ARCHITECTURE.md section 1). :meth:`StageModelConfig.macs` counts the work
that way.

Weights on disk (npz + JSON)
----------------------------
:func:`save_params` writes two files from one stem ``P``:

* ``P.npz``: numpy's zip of ``.npy`` arrays (no pickles), float32:
  ``bottom.<l>.weight`` ``(in, out)`` and ``bottom.<l>.bias`` ``(out,)`` for
  each bottom layer ``l``, ``top.<l>.weight`` / ``top.<l>.bias`` likewise,
  ``table.<name>`` ``(rows, embedding_dim)`` for each table. A layer computes
  ``y = x @ weight + bias`` (the transpose of ``torch.nn.Linear.weight``).
* ``P.json``: ``{"format": "recaccel-stage-model", "version": 1,
  "config": {...}, "weights": "P.npz", "sha256": <of the npz file>,
  "arrays": {name: {"shape": [...], "dtype": "float32"}}}``; the config as
  :meth:`StageModelConfig.to_dict` writes it.

:func:`load_params` checks all of it and names the tensor, the expected and
the found shape of anything wrong.

Quantized stage (the golden model of a stage)
---------------------------------------------
:func:`quantize_stage_model` turns float weights and calibration queries into
a :class:`QuantizedStageModel`, whose :meth:`QuantizedStageModel.scores`
computes every integer the accelerator computes (the hardware does not
exist yet for steps 4-7; this is what it is to do):

1. Dense features: ``q = clamp(round_half_even(x / s_dense), -127, 127)`` on
   the host (:meth:`host.quantize.QuantizedMLP.quantize_input`); the bottom
   MLP runs in int8 (:func:`host.numerics.int8_mlp`), calibrated by
   :func:`host.quantize.calibrate_mlp`; its int8 output has scale ``s_b``.
2. Embeddings: the tables are FBGEMM row-wise 8-bit or 4-bit
   (:func:`host.embedding.quantize_8bit` / :func:`~host.embedding.quantize_nbit`),
   held by the hardware with fixed-point scale and bias
   (:func:`host.embedding.to_fixed_point`, ``frac_bits``); the lookup unit
   pools exactly (:func:`host.embedding.pooled_lookup`: integer sums in units
   of ``2**-frac_bits``).
3. Pooled sum to int8, per feature (table) ``t``: ``e = requantize_pooled(p,
   mult_t, shift_t)`` = ``clamp((p * mult_t + 2**(shift_t-1)) >> shift_t,
   -128, 127)`` (round half up), with ``(mult_t, shift_t) =
   pooled_output_params(s_t, frac_bits)``, i.e. ``mult_t / 2**shift_t ~=
   2**-frac_bits / s_t``, so ``e ~= round(pooled value / s_t)``;
   ``s_t = max |pooled value| / 127`` over the calibration queries (on the
   float model).
4. Interaction. ``"concat"``: the segments keep their own scales. ``"dot"``:
   ``z_ij = sum_k T_i[k] * T_j[k]`` exactly (``|z| <= dim * 2**14``), then
   ``z_q = requantize(z_ij, 0, mult_ij, shift_ij, relu=False)`` (int8, round
   half up, :func:`host.numerics.requantize`) with ``mult_ij / 2**shift_ij ~=
   s_i * s_j / s_ij`` and ``s_ij = max |z_ij| / 127`` on the float model.
5. The top input is int8 with a scale per element (``s_in``: its segment's,
   ``s_b``, ``s_t`` or ``s_ij``). The first top layer folds them into its
   weights, ``W' = diag(s_in) @ W``, so that the hardware sees plain int8
   layers. Hidden layers requantize to int8 (:func:`host.numerics.requantize`;
   output scales ``max |h| / 127`` of the float model's activations on the
   calibration queries, and weights per output channel, exactly as
   :func:`host.quantize.calibrate_mlp` does: :func:`quantize_layer`).
6. The first top layer runs in two passes (ARCHITECTURE.md section 1). Its
   user rows ``W'_u`` and item rows ``W'_i`` are quantized apart, each per
   output channel (``s_wu``, ``s_wi``), because the user rows, constant
   within a query, are often far larger and would otherwise leave the item
   rows, which alone rank the candidates, a few int8 levels. The user pass
   (one row per query) turns its accumulator into a bias of the item pass,
   in the item accumulator's units::

       beta = requantize_wide(x_u @ W_u + b_u, mult_u, shift_u, 32)
            = clamp(((acc_u + b_u) * mult_u + 2**(shift_u-1)) >> shift_u, int32)
       mult_u / 2**shift_u ~= s_wu / s_wi,   b_u = rint(b / s_wu)

   and the item pass (per candidate) is an int8 layer whose int32 bias is
   ``beta``: ``h = requantize(x_i @ W_i, beta, mult, shift, relu)``. The
   hardware needs for this a requantizer mode with a 32-bit output, which
   the score (step 7) needs too, and the bias registers written from it.
7. The score (what the top-k filter receives): **the last layer's int32
   accumulator plus its bias, before requantization**, ``t = acc + bias``
   (33 bits, exact), through the same wide requantizer with ``mult = 1``::

       score = clamp((t + 2**(score_shift-1)) >> score_shift,
                     -2**(score_bits-1), 2**(score_bits-1) - 1)

   (round half up; ``t`` itself when ``score_shift = 0``). ``score_bits =
   32`` gives ``score_shift = 0`` for any layer of up to 2**16 inputs;
   narrower scores get the smallest shift that keeps ``2 * max |t|`` over
   the calibration queries in range. Both steps are monotone, so the ranking
   is the accumulator's up to ties. The int8 output was not chosen: its 256
   levels tie hundreds of the 4096 candidates of a stage, and the tie rule
   (lower id first) would then choose the survivors instead of the model. A
   score unit stands for :attr:`ScoreFormat.scale` in the float model's
   logit.

Calibration covers every per-query quantity with one sample per query
(dense features, bottom output, user pools and pairs), so it wants many
users (their candidates can be few).

Rounding: host-side inputs round half to even (``numpy.rint``); every
hardware requantization rounds half up and saturates
(:mod:`host.numerics`). Integer matrix products are computed as float64
products of small integers, which is exact (every partial sum is an
integer below 2**53), and checked against :func:`host.numerics.int8_layer`.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .datasets import ML100K_ITEMS, ML100K_USERS
from .embedding import (EmbeddingStatus, FixedPointTable, RowwiseTable, pooled_lookup,
                        pooled_output_params, quantize_8bit, quantize_nbit,
                        requantize_pooled, to_fixed_point)
from .numerics import (QuantLayer, check_requant_params, int8_mlp, requantize, round_shift,
                       wrap_int32)
from .quantize import QuantizedMLP, calibrate_mlp, quantize_multiplier

__all__ = [
    "TableSpec", "StageModelConfig", "MacCount", "KAGGLE_TABLE_ROWS", "PRESETS",
    "stage_preset", "Query", "StageModelParams", "init_params", "save_params",
    "load_params", "StageModel", "ScoreFormat", "QuantizedStageModel",
    "quantize_layer", "quantize_stage_model", "interaction_pairs", "requantize_wide",
    "FORMAT", "FORMAT_VERSION",
]

FORMAT = "recaccel-stage-model"
FORMAT_VERSION = 1

INTERACTIONS = ("dot", "concat")
SIDES = ("user", "item")


# -- config --------------------------------------------------------------------

def _check_int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo \
            or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name}: must be an integer {rng}, not {v!r}")
    return int(v)


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: a sparse feature of the user or of the item."""

    name: str
    rows: int
    side: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(f"table name: must be a non-empty string without '.', "
                             f"not {self.name!r}")
        object.__setattr__(self, "rows", _check_int(f"table {self.name!r} rows",
                                                    self.rows, 1, 1 << 32))
        if self.side not in SIDES:
            raise ValueError(f"table {self.name!r} side: must be 'user' or 'item', "
                             f"not {self.side!r}")


def interaction_pairs(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """DLRM's pair order: ``(i, j)`` with ``i > j``, row-major lower triangle
    (``numpy.tril_indices(n, -1)``, as ``torch.tril_indices(n, n, offset=-1)``)."""
    return np.tril_indices(n_features, -1)


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one stage: ``per_query`` once for the user,
    ``per_candidate`` for each candidate."""

    per_query: int
    per_candidate: int

    def total(self, n_candidates: int) -> int:
        return self.per_query + n_candidates * self.per_candidate


@dataclass(frozen=True)
class StageModelConfig:
    """A DLRM-style stage model (see the module docstring).

    Parameters
    ----------
    name : str
    dense_features : int
        User dense features (0: no bottom MLP).
    bottom_mlp : tuple of int
        Output width of each bottom layer (empty iff ``dense_features == 0``).
    tables : tuple of TableSpec
        User tables first, then item tables (at least one).
    embedding_dim : int
        Elements per embedding row.
    interaction : str
        ``"dot"`` or ``"concat"``.
    top_mlp : tuple of int
        Output width of each top layer; the last is 1 (the score).
    pooling : str
        ``"sum"`` (the only pooling the lookup unit does).
    """

    name: str
    dense_features: int
    bottom_mlp: tuple[int, ...]
    tables: tuple[TableSpec, ...]
    embedding_dim: int
    interaction: str
    top_mlp: tuple[int, ...]
    pooling: str = "sum"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: must be a non-empty string, not {self.name!r}")
        _check_int("dense_features", self.dense_features, 0, 1 << 16)
        object.__setattr__(self, "bottom_mlp", tuple(
            _check_int(f"bottom_mlp[{i}]", d, 1, 1 << 16)
            for i, d in enumerate(self.bottom_mlp)))
        object.__setattr__(self, "top_mlp", tuple(
            _check_int(f"top_mlp[{i}]", d, 1, 1 << 16) for i, d in enumerate(self.top_mlp)))
        _check_int("embedding_dim", self.embedding_dim, 1, 4096)
        tables = tuple(self.tables)
        for t in tables:
            if not isinstance(t, TableSpec):
                raise ValueError(f"tables: entries must be TableSpec, not {t!r}")
        object.__setattr__(self, "tables", tables)
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"tables: names repeat: {names}")
        sides = [t.side for t in tables]
        if "item" not in sides:
            raise ValueError("tables: at least one item table is needed (without one "
                             "every candidate gets the same score)")
        if "user" in sides[sides.index("item"):]:
            raise ValueError(f"tables: user tables must come before item tables, not "
                             f"{[f'{t.name}:{t.side}' for t in tables]}")
        if (self.dense_features == 0) != (len(self.bottom_mlp) == 0):
            raise ValueError(f"bottom_mlp: {self.bottom_mlp!r} with dense_features = "
                             f"{self.dense_features}: a bottom MLP needs dense features "
                             f"and dense features need a bottom MLP")
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction: must be 'dot' or 'concat', not "
                             f"{self.interaction!r}")
        if self.interaction == "dot":
            if self.bottom_mlp and self.bottom_mlp[-1] != self.embedding_dim:
                raise ValueError(f"bottom_mlp: a dot interaction needs the bottom MLP "
                                 f"to end in embedding_dim = {self.embedding_dim}, not "
                                 f"{self.bottom_mlp[-1]}")
            if self.n_features < 2:
                raise ValueError("interaction: 'dot' needs at least two features")
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp: must end in 1 (the score), not {self.top_mlp!r}")
        if self.pooling != "sum":
            raise ValueError(f"pooling: only 'sum' is supported, not {self.pooling!r}")

    # -- derived ------------------------------------------------------------------
    @property
    def user_tables(self) -> tuple[TableSpec, ...]:
        return tuple(t for t in self.tables if t.side == "user")

    @property
    def item_tables(self) -> tuple[TableSpec, ...]:
        return tuple(t for t in self.tables if t.side == "item")

    @property
    def has_bottom(self) -> bool:
        return self.dense_features > 0

    @property
    def bottom_dims(self) -> tuple[int, ...]:
        """Widths from input to output: ``(dense_features, *bottom_mlp)``."""
        return (self.dense_features, *self.bottom_mlp) if self.has_bottom else ()

    @property
    def bottom_out(self) -> int:
        return self.bottom_mlp[-1] if self.has_bottom else 0

    @property
    def n_features(self) -> int:
        """Features of the interaction: the bottom output (if any) and the tables."""
        return int(self.has_bottom) + len(self.tables)

    @property
    def n_user_features(self) -> int:
        """``U``: the per-query features (bottom output and user tables)."""
        return int(self.has_bottom) + len(self.user_tables)

    @property
    def n_pairs(self) -> int:
        f = self.n_features
        return f * (f - 1) // 2 if self.interaction == "dot" else 0

    @property
    def n_user_pairs(self) -> int:
        u = self.n_user_features
        return u * (u - 1) // 2 if self.interaction == "dot" else 0

    @property
    def top_in(self) -> int:
        if self.interaction == "dot":
            return self.bottom_out + self.n_pairs
        return self.bottom_out + len(self.tables) * self.embedding_dim

    @property
    def user_top_rows(self) -> int:
        """Leading elements of the top input that depend on the user alone."""
        if self.interaction == "dot":
            return self.bottom_out + self.n_user_pairs
        return self.bottom_out + len(self.user_tables) * self.embedding_dim

    @property
    def top_dims(self) -> tuple[int, ...]:
        return (self.top_in, *self.top_mlp)

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight tensor, by name, with its shape (the npz's contents)."""
        out = {}
        for prefix, dims in (("bottom", self.bottom_dims), ("top", self.top_dims)):
            for l in range(len(dims) - 1):
                out[f"{prefix}.{l}.weight"] = (dims[l], dims[l + 1])
                out[f"{prefix}.{l}.bias"] = (dims[l + 1],)
        for t in self.tables:
            out[f"table.{t.name}"] = (t.rows, self.embedding_dim)
        return out

    # -- cost ---------------------------------------------------------------------
    def macs(self) -> MacCount:
        """MACs with the user/item split: per query the bottom MLP, the
        user-user pairs and the user rows of the first top layer; per
        candidate the other pairs, the item rows of the first top layer and
        the other top layers. Pooling additions are not MACs."""
        d = self.embedding_dim
        bottom = sum(a * b for a, b in zip(self.bottom_dims, self.bottom_dims[1:]))
        top = self.top_dims
        first_out = top[1]
        rest = sum(a * b for a, b in zip(top[1:], top[2:]))
        per_query = bottom + self.n_user_pairs * d + self.user_top_rows * first_out
        per_cand = ((self.n_pairs - self.n_user_pairs) * d
                    + (self.top_in - self.user_top_rows) * first_out + rest)
        return MacCount(per_query, per_cand)

    def macs_unsplit_per_candidate(self) -> int:
        """MACs per candidate when everything runs per candidate (as DLRM and
        RecPipe's performance model run a batch of items)."""
        d = self.embedding_dim
        mlp = sum(a * b for dims in (self.bottom_dims, self.top_dims)
                  for a, b in zip(dims, dims[1:]))
        return mlp + self.n_pairs * d

    def lookups_per_candidate(self) -> int:
        return len(self.item_tables)

    # -- (de)serialization --------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "dense_features": self.dense_features,
                "bottom_mlp": list(self.bottom_mlp), "embedding_dim": self.embedding_dim,
                "tables": [{"name": t.name, "rows": t.rows, "side": t.side}
                           for t in self.tables],
                "interaction": self.interaction, "top_mlp": list(self.top_mlp),
                "pooling": self.pooling}

    @classmethod
    def from_dict(cls, d: Mapping) -> "StageModelConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"stage model config: must be a mapping, not {type(d).__name__}")
        known = {"name", "dense_features", "bottom_mlp", "embedding_dim", "tables",
                 "interaction", "top_mlp", "pooling"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"stage model config: unknown fields {sorted(extra)}")
        missing = known - {"pooling"} - set(d)
        if missing:
            raise ValueError(f"stage model config: missing fields {sorted(missing)}")
        tables = []
        for i, t in enumerate(d["tables"]):
            if not isinstance(t, Mapping) or set(t) != {"name", "rows", "side"}:
                raise ValueError(f"tables[{i}]: must have exactly name, rows and side, "
                                 f"not {t!r}")
            tables.append(TableSpec(t["name"], t["rows"], t["side"]))
        return cls(d["name"], d["dense_features"], tuple(d["bottom_mlp"]), tuple(tables),
                   d["embedding_dim"], d["interaction"], tuple(d["top_mlp"]),
                   d.get("pooling", "sum"))

    def with_max_rows(self, max_rows: int) -> "StageModelConfig":
        """The same model with every table capped at ``max_rows`` rows (DLRM's
        ``--max-ind-range``: ids are taken modulo the table size upstream)."""
        _check_int("max_rows", max_rows, 1)
        return StageModelConfig(
            self.name, self.dense_features, self.bottom_mlp,
            tuple(TableSpec(t.name, min(t.rows, max_rows), t.side) for t in self.tables),
            self.embedding_dim, self.interaction, self.top_mlp, self.pooling)


# -- presets -------------------------------------------------------------------

#: Criteo Kaggle's 26 table sizes, ascending, as PAPERS.md lists them (MP-Rec).
KAGGLE_TABLE_ROWS = (3, 4, 10, 15, 18, 24, 27, 105, 305, 583, 633, 1460, 2173, 3194,
                     5652, 5683, 12517, 14992, 93145, 142572, 286181, 2202608, 5461306,
                     7046547, 8351593, 10131227)


def _kaggle_tables() -> tuple[TableSpec, ...]:
    """Criteo's features are anonymous, so the user/item split is a
    convention: in the ascending list above, even positions are user tables
    and odd positions item tables (13 each, small and large on both sides);
    table ``c<k>`` is position ``k``. User tables first."""
    user = [TableSpec(f"c{k}", r, "user") for k, r in enumerate(KAGGLE_TABLE_ROWS) if k % 2 == 0]
    item = [TableSpec(f"c{k}", r, "item") for k, r in enumerate(KAGGLE_TABLE_ROWS) if k % 2 == 1]
    return tuple(user + item)


def _rm(name, dim, bottom, top):
    # RecPipe (PAPERS.md): Criteo Kaggle, 13 dense features, 26 tables, concat.
    return StageModelConfig(name, 13, bottom, _kaggle_tables(), dim, "concat", top)


def _ml_tables() -> tuple[TableSpec, ...]:
    # MovieLens-100K (host.movielens): the user's id and a bag of the items in
    # their recent training history, then the candidate's item id.
    return (TableSpec("user_id", ML100K_USERS, "user"),
            TableSpec("user_history", ML100K_ITEMS, "user"),
            TableSpec("item_id", ML100K_ITEMS, "item"))


#: Dense user features of the MovieLens presets (host.movielens.user_dense).
ML_DENSE_FEATURES = 3

#: Named stage models. RM-*: RecPipe's Kaggle models (PAPERS.md: dim 4/16/32;
#: bottom 13-64-4, 13-64-16, 13-512-256-128-64-32; top 64-1, 64-1, 96-1;
#: concat). ml-*: MovieLens-100K-sized models of this project (RecPipe's own
#: MovieLens models are NeuMF, not DLRM): small, filter and medium with the
#: dot interaction, large with concat.
PRESETS: dict[str, StageModelConfig] = {
    "rm-small": _rm("rm-small", 4, (64, 4), (64, 1)),
    "rm-med": _rm("rm-med", 16, (64, 16), (64, 1)),
    "rm-large": _rm("rm-large", 32, (512, 256, 128, 64, 32), (96, 1)),
    "ml-small": StageModelConfig("ml-small", ML_DENSE_FEATURES, (16, 8), _ml_tables(), 8,
                                 "dot", (16, 1)),
    "ml-med": StageModelConfig("ml-med", ML_DENSE_FEATURES, (64, 16), _ml_tables(), 16,
                               "dot", (64, 1)),
    # the cheap filter in front of ml-med (the two-stage top level: both
    # stages share the feature fetch, so the same embedding dim)
    "ml-filter": StageModelConfig("ml-filter", ML_DENSE_FEATURES, (16, 16), _ml_tables(), 16,
                                  "dot", (16, 1)),
    "ml-large": StageModelConfig("ml-large", ML_DENSE_FEATURES, (128, 64), _ml_tables(), 64,
                                 "concat", (256, 64, 1)),
}


def stage_preset(name: str, max_rows: int | None = None) -> StageModelConfig:
    """A preset by name, optionally with tables capped at ``max_rows``."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise ValueError(f"stage model preset: {name!r} is not one of "
                         f"{sorted(PRESETS)}") from None
    return cfg if max_rows is None else cfg.with_max_rows(max_rows)


# -- queries -------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Query:
    """One user and their candidates.

    Parameters
    ----------
    dense : float array, (dense_features,)
    user_ids : tuple of int arrays
        One bag per user table, in config order (sum-pooled; may be empty).
    item_ids : int array, (N, item tables)
        One id per item table per candidate.
    candidates : int array, (N,), optional
        What each candidate is (e.g. its item id), for the metrics; by
        default ``positions``.
    positions : int array, (N,), optional
        Each candidate's index in the query's original list: the id the
        top-k filter sees and breaks ties with (lower first). ``arange(N)``
        by default; :meth:`subset` keeps them through the stages.
    """

    dense: np.ndarray
    user_ids: tuple
    item_ids: np.ndarray
    candidates: np.ndarray | None = None
    positions: np.ndarray | None = None

    def __post_init__(self):
        dense = np.asarray(self.dense, dtype=np.float64).reshape(-1)
        user = tuple(np.asarray(b, dtype=np.int64).reshape(-1) for b in self.user_ids)
        items = np.asarray(self.item_ids, dtype=np.int64)
        if items.ndim != 2:
            raise ValueError(f"item_ids: must be (candidates, item tables), not shape "
                             f"{items.shape}")
        n = items.shape[0]
        pos = np.arange(n, dtype=np.int64) if self.positions is None \
            else np.asarray(self.positions, dtype=np.int64).reshape(-1)
        cand = pos if self.candidates is None \
            else np.asarray(self.candidates, dtype=np.int64).reshape(-1)
        if pos.shape != (n,) or cand.shape != (n,):
            raise ValueError(f"positions and candidates: one per candidate ({n}), not "
                             f"{pos.size} and {cand.size}")
        for k, v in (("dense", dense), ("user_ids", user), ("item_ids", items),
                     ("candidates", cand), ("positions", pos)):
            object.__setattr__(self, k, v)

    @property
    def n_candidates(self) -> int:
        return self.item_ids.shape[0]

    def subset(self, index) -> "Query":
        """The same user with the candidates ``index`` (into this query)."""
        index = np.asarray(index, dtype=np.int64)
        return Query(self.dense, self.user_ids, self.item_ids[index],
                     self.candidates[index], self.positions[index])

    def check(self, config: StageModelConfig) -> None:
        """``ValueError`` unless the query fits ``config`` (shapes, id ranges)."""
        if self.dense.shape != (config.dense_features,):
            raise ValueError(f"query dense: {config.name} takes {config.dense_features} "
                             f"dense features, found {self.dense.size}")
        ut, it = config.user_tables, config.item_tables
        if len(self.user_ids) != len(ut):
            raise ValueError(f"query user_ids: {config.name} has {len(ut)} user tables, "
                             f"found {len(self.user_ids)} bags")
        if self.item_ids.shape[1] != len(it):
            raise ValueError(f"query item_ids: {config.name} has {len(it)} item tables, "
                             f"found {self.item_ids.shape[1]} columns")
        for t, ids in zip(ut + it, list(self.user_ids) + list(self.item_ids.T)):
            if ids.size and (ids.min() < 0 or ids.max() >= t.rows):
                bad = int(ids[(ids < 0) | (ids >= t.rows)][0])
                raise ValueError(f"query: id {bad} of table {t.name!r} is outside "
                                 f"0..{t.rows - 1}")


# -- parameters ----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class StageModelParams:
    """Float weights of a stage model: ``arrays`` maps every name of
    :meth:`StageModelConfig.array_shapes` to a float32 array of that shape."""

    config: StageModelConfig
    arrays: Mapping[str, np.ndarray]

    def __post_init__(self):
        shapes = self.config.array_shapes()
        extra = sorted(set(self.arrays) - set(shapes))
        if extra:
            raise ValueError(f"{self.config.name}: unexpected tensors {extra}")
        out = {}
        for name, shape in shapes.items():
            if name not in self.arrays:
                raise ValueError(f"tensor {name!r} is missing (expected shape {shape})")
            a = np.asarray(self.arrays[name])
            if a.shape != shape:
                raise ValueError(f"tensor {name!r}: expected shape {shape}, found {a.shape}")
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"tensor {name!r}: expected float32, found {a.dtype}")
            a = a.astype(np.float32)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"tensor {name!r}: has non-finite values")
            a.setflags(write=False)
            out[name] = a
        object.__setattr__(self, "arrays", out)

    def _layers(self, prefix, n):
        return ([self.arrays[f"{prefix}.{l}.weight"] for l in range(n)],
                [self.arrays[f"{prefix}.{l}.bias"] for l in range(n)])

    @property
    def bottom(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return self._layers("bottom", len(self.config.bottom_mlp))

    @property
    def top(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return self._layers("top", len(self.config.top_mlp))

    def table(self, name: str) -> np.ndarray:
        return self.arrays[f"table.{name}"]


def init_params(config: StageModelConfig, seed: int = 0,
                table_scale: float | None = None) -> StageModelParams:
    """Random weights as DLRM initializes them: layer weights normal with
    std ``sqrt(2 / (in + out))``, biases normal with std ``sqrt(1 / out)``,
    table rows uniform in ``+-sqrt(1 / rows)``, or in ``+-table_scale`` if
    given (DLRM's range makes the rows of large tables tiny, so that
    candidates barely differ; trained rows are nearer 0.1 .. 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in config.array_shapes().items():
        if name.startswith("table."):
            r = math.sqrt(1.0 / shape[0]) if table_scale is None else float(table_scale)
            arrays[name] = rng.uniform(-r, r, size=shape).astype(np.float32)
        elif name.endswith(".weight"):
            arrays[name] = (rng.standard_normal(shape)
                            * math.sqrt(2.0 / (shape[0] + shape[1]))).astype(np.float32)
        else:
            arrays[name] = (rng.standard_normal(shape)
                            * math.sqrt(1.0 / shape[0])).astype(np.float32)
    return StageModelParams(config, arrays)


def _stem(path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".npz") else p


def save_params(params: StageModelParams, path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.npz`` (see the module docstring);
    ``path`` may name either file or the stem. Returns both paths."""
    stem = _stem(path)
    jpath, npath = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
    with open(npath, "wb") as f:
        np.savez(f, **params.arrays)
    digest = hashlib.sha256(npath.read_bytes()).hexdigest()
    meta = {"format": FORMAT, "version": FORMAT_VERSION,
            "config": params.config.to_dict(), "weights": npath.name, "sha256": digest,
            "arrays": {k: {"shape": list(v.shape), "dtype": "float32"}
                       for k, v in params.arrays.items()}}
    jpath.write_text(json.dumps(meta, indent=1) + "\n")
    return jpath, npath


def load_params(path) -> StageModelParams:
    """Read weights written by :func:`save_params` (no torch needed).

    Raises
    ------
    ValueError
        A missing, corrupt or truncated file, an unknown format or version, a
        tensor missing, unreadable or of the wrong shape (named, with the
        expected and the found shape), or weights that do not match the
        digest in the JSON.
    """
    stem = _stem(path)
    jpath = stem.with_name(stem.name + ".json")
    try:
        meta = json.loads(jpath.read_text())
    except OSError as e:
        raise ValueError(f"{jpath}: cannot read the model description ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{jpath}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{jpath}: not a {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{jpath}: format version {meta.get('version')!r}; this reader "
                         f"knows version {FORMAT_VERSION}")
    config = StageModelConfig.from_dict(meta.get("config"))
    npath = jpath.with_name(str(meta.get("weights", stem.name + ".npz")))
    shapes = config.array_shapes()
    arrays = {}
    try:
        # Our own handle: numpy leaves its file open when the zip is damaged.
        with open(npath, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            for name, shape in shapes.items():
                if name not in f.files:
                    raise ValueError(f"{npath}: tensor {name!r} is missing (expected "
                                     f"shape {shape})")
                try:
                    a = f[name]
                except Exception as e:      # a damaged member: zlib, zip or npy errors
                    raise ValueError(f"{npath}: tensor {name!r} is unreadable ({e})") \
                        from None
                if a.shape != shape:
                    raise ValueError(f"{npath}: tensor {name!r}: expected shape {shape}, "
                                     f"found {a.shape}")
                if a.dtype != np.float32:
                    raise ValueError(f"{npath}: tensor {name!r}: expected float32, found "
                                     f"{a.dtype}")
                arrays[name] = a
            extra = sorted(set(f.files) - set(shapes))
            if extra:
                raise ValueError(f"{npath}: unexpected tensors {extra}")
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{npath}: not a readable npz file, corrupt or truncated "
                         f"({e})") from None
    digest = hashlib.sha256(npath.read_bytes()).hexdigest()
    if meta.get("sha256") not in (None, digest):
        raise ValueError(f"{npath}: contents do not match the SHA-256 recorded in "
                         f"{jpath.name} (corrupt, or changed after saving)")
    return StageModelParams(config, arrays)


# -- float forward ---------------------------------------------------------------

def _mlp(x, weights, biases, relu_last: bool) -> list[np.ndarray]:
    """Every layer's output (float64); ReLU after all layers but maybe the last."""
    outs = []
    for l, (w, b) in enumerate(zip(weights, biases)):
        x = x @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        if relu_last or l < len(weights) - 1:
            x = np.maximum(x, 0.0)
        outs.append(x)
    return outs


def _item_pairs(t_user, t_item) -> np.ndarray:
    """The pairs ``(i, j)``, ``i >= U``, in row-major order, per candidate.

    ``t_user`` (U, d) is shared; ``t_item`` (N, I, d). Exact for integer
    inputs below 2**26 in magnitude sums (float64 products of int8 values).
    """
    zui = t_item @ t_user.T                                     # (N, I, U)
    zii = t_item @ np.swapaxes(t_item, 1, 2)                    # (N, I, I)
    parts = []
    for a in range(t_item.shape[1]):
        parts.append(zui[:, a, :])
        parts.append(zii[:, a, :a])
    return np.concatenate(parts, axis=1)


def _user_pairs(t_user) -> np.ndarray:
    li, lj = interaction_pairs(t_user.shape[0])
    return (t_user @ t_user.T)[li, lj]


class StageModel:
    """The float stage model (float64 arithmetic on the float32 weights).

    ``scores(query)`` is the logit per candidate, computed with the
    user/item split; ``scores_unsplit`` is the textbook per-candidate DLRM
    forward (the reference the split is checked against).
    """

    integer_scores = False

    def __init__(self, params: StageModelParams):
        self.params = params
        self.config = params.config

    def _user(self, q: Query):
        cfg, p = self.config, self.params
        feats, acts = [], {}
        if cfg.has_bottom:
            w, b = p.bottom
            bottom = _mlp(q.dense[None, :], w, b, relu_last=True)
            acts["bottom"] = bottom
            feats.append(bottom[-1][0])
        pooled = [p.table(t.name)[ids].astype(np.float64).sum(axis=0)
                  for t, ids in zip(cfg.user_tables, q.user_ids)]
        acts["user_pooled"] = pooled
        rows = feats + pooled
        t_user = np.stack(rows) if rows else np.zeros((0, cfg.embedding_dim))
        return t_user, acts

    def _item(self, q: Query):
        cfg, p = self.config, self.params
        cols = [p.table(t.name)[q.item_ids[:, a]].astype(np.float64)
                for a, t in enumerate(cfg.item_tables)]
        return np.stack(cols, axis=1)                            # (N, I, d)

    def activations(self, query: Query) -> dict:
        """Every intermediate value for one query: ``bottom`` (layer outputs,
        (1, out) each), ``user_pooled`` / ``item_pooled`` (per table, (d,) and
        (N, d)), ``top_in_user`` (user_top_rows,), ``top_in_item`` (N, rest),
        ``top`` (each top layer's output, (N, out)); the last is the score."""
        query.check(self.config)
        cfg = self.config
        t_user, acts = self._user(query)
        t_item = self._item(query)
        acts["item_pooled"] = [t_item[:, a] for a in range(t_item.shape[1])]
        bottom = [acts["bottom"][-1][0]] if cfg.has_bottom else []
        if cfg.interaction == "dot":
            u = np.concatenate(bottom + [_user_pairs(t_user)])
            i = _item_pairs(t_user, t_item)
        else:
            u = t_user.reshape(-1)
            i = t_item.reshape(t_item.shape[0], -1)
        acts["top_in_user"], acts["top_in_item"] = u, i
        w, b = self.params.top
        w0 = np.asarray(w[0], np.float64)
        r = cfg.user_top_rows
        h = (u @ w0[:r])[None, :] + i @ w0[r:] + np.asarray(b[0], np.float64)
        if len(w) > 1:
            h = np.maximum(h, 0.0)
        acts["top"] = [h] + _mlp(h, w[1:], b[1:], relu_last=False)
        return acts

    def scores(self, query: Query) -> np.ndarray:
        return self.activations(query)["top"][-1][:, 0]

    def scores_unsplit(self, query: Query) -> np.ndarray:
        """DLRM's forward, one row per candidate: broadcast the user features,
        ``T = stack(features)``, ``Z = T T^T``, take ``tril_indices(-1)``."""
        query.check(self.config)
        cfg = self.config
        n = query.n_candidates
        t_user, _ = self._user(query)
        t = np.concatenate([np.broadcast_to(t_user, (n,) + t_user.shape),
                            self._item(query)], axis=1)          # (N, F, d)
        x = [t[:, 0, :]] if cfg.has_bottom else []
        if cfg.interaction == "dot":
            li, lj = interaction_pairs(cfg.n_features)
            r = np.concatenate(x + [(t @ np.swapaxes(t, 1, 2))[:, li, lj]], axis=1)
        else:
            r = t.reshape(n, -1)
        w, b = self.params.top
        return _mlp(r, w, b, relu_last=False)[-1][:, 0]


# -- quantized forward -----------------------------------------------------------

def _imatmul(a, b) -> np.ndarray:
    """Exact integer product of int8-range matrices, through float64 BLAS:
    every product and partial sum is an integer below 2**53 in magnitude."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape[-1] >= 1 << 30:
        raise ValueError("inner dimension too large for an exact float64 product")
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def _int8_layer(x, layer: QuantLayer) -> np.ndarray:
    """:func:`host.numerics.int8_layer`, with the fast exact product."""
    acc = wrap_int32(_imatmul(x, layer.weight))
    return requantize(acc, layer.bias, layer.mult, layer.shift, layer.relu)


def requantize_wide(acc, bias, mult, shift, bits: int) -> np.ndarray:
    """:func:`host.numerics.requantize` without ReLU, saturating to a signed
    ``bits``-bit integer instead of int8: ``clamp(((acc + bias) * mult +
    2**(shift-1)) >> shift, -2**(bits-1), 2**(bits-1) - 1)`` (round half up;
    no rounding term when ``shift == 0``). int64 result."""
    acc = np.asarray(acc, dtype=np.int64)
    bias = np.asarray(bias, dtype=np.int64)
    mult, shift = check_requant_params(mult, shift)
    r = round_shift((acc + bias) * mult, shift)  # |p| < 2**49: fits int64
    return np.clip(r, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def _act_scale(m: float) -> float:
    """``max|a| / 127`` (1.0 for an all-zero activation), as host.quantize."""
    return m / 127.0 if m > 0 else 1.0


def _weight_scale(w: np.ndarray) -> np.ndarray:
    s_w = np.max(np.abs(w), axis=0) / 127.0 if w.shape[0] else np.ones(w.shape[1])
    return np.where(s_w > 0, s_w, 1.0)


def quantize_layer(weight, bias, relu: bool, in_scale, out_scale) -> tuple[QuantLayer, np.ndarray]:
    """One layer quantized exactly as :func:`host.quantize.calibrate_mlp` does
    it, with given activation scales: per output channel ``s_w = max|W[:, j]| /
    127``, ``W_q = clamp(rint(W / s_w), -127, 127)``, ``b_q = rint(b / (s_in *
    s_w))``, ``mult / 2**shift ~= s_in * s_w / s_out``.

    Returns the layer and ``s_w`` (the accumulator's scale is ``s_in * s_w``).
    """
    w = np.asarray(weight, dtype=np.float64)
    s_w = _weight_scale(w)
    wq = np.clip(np.rint(w / s_w), -127, 127).astype(np.int8)
    acc_scale = in_scale * s_w
    bq = np.clip(np.rint(np.asarray(bias, dtype=np.float64) / acc_scale),
                 -(1 << 31), (1 << 31) - 1).astype(np.int32)
    mult, shift = quantize_multiplier(acc_scale / out_scale)
    return QuantLayer(wq, bq, mult, shift, bool(relu)), s_w


@dataclass(frozen=True)
class ScoreFormat:
    """The score the top-k filter receives (module docstring, step 7):
    ``requantize_wide(acc, bias, 1, shift, bits)`` of the last layer; one
    unit is ``scale`` in the float model's logit."""

    bits: int
    shift: int
    scale: float

    @property
    def range(self) -> tuple[int, int]:
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1


@dataclass(frozen=True, eq=False)
class QuantizedStageModel:
    """A stage as the accelerator runs it (see the module docstring).

    Attributes
    ----------
    bottom : QuantizedMLP or None
        The calibrated bottom MLP (``None`` without dense features).
    tables, fixed : tuples
        Each table in FBGEMM row-wise form and in the hardware's fixed-point form.
    emb_scale, emb_mult, emb_shift : arrays, one per table
        The int8 output of each table's pooled sums (step 3).
    pair_scale, pair_mult, pair_shift : arrays, one per pair
        The dot products' requantization (empty for concat).
    top_in_scale : float array (top_in,)
        The scale of each top-input element (folded into the first layer).
    user_layer : QuantLayer or None
        The first top layer's user rows; its requantization is wide (32-bit
        output): the per-query bias of the item pass (step 6).
    layers : tuple of QuantLayer
        The top layers; ``layers[0]`` holds the first layer's item rows (its
        bias is zero when ``user_layer`` exists: the per-query bias replaces
        it); the last layer's ``mult`` is 1 and ``shift`` the score's shift.
    score : ScoreFormat
    """

    config: StageModelConfig
    emb_bits: int
    frac_bits: int
    max_bag: int
    bottom: QuantizedMLP | None
    tables: tuple[RowwiseTable, ...]
    fixed: tuple[FixedPointTable, ...]
    emb_scale: np.ndarray
    emb_mult: np.ndarray
    emb_shift: np.ndarray
    pair_scale: np.ndarray
    pair_mult: np.ndarray
    pair_shift: np.ndarray
    top_in_scale: np.ndarray
    user_layer: QuantLayer | None
    layers: tuple[QuantLayer, ...]
    score: ScoreFormat

    integer_scores = True

    @property
    def feature_scale(self) -> np.ndarray:
        """Scale of each interaction feature's int8 vector (bottom output first)."""
        b = [self.bottom.output_scale] if self.bottom is not None else []
        return np.asarray(b + list(self.emb_scale), dtype=np.float64)

    def _pooled(self, t: int, offsets, ids) -> np.ndarray:
        pooled, status = pooled_lookup(self.fixed[t], offsets, ids, self.max_bag)
        bad = np.flatnonzero(status != EmbeddingStatus.OK)
        if bad.size:
            raise ValueError(f"table {self.config.tables[t].name!r}: bag {int(bad[0])} "
                             f"answered {EmbeddingStatus(int(status[bad[0]])).name}")
        return requantize_pooled(pooled, self.emb_mult[t], self.emb_shift[t])

    def int8_features(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-3: the interaction's int8 features, user (U, d) and item (N, I, d)."""
        query.check(self.config)
        cfg = self.config
        user = []
        if self.bottom is not None:
            x = self.bottom.quantize_input(query.dense[None, :])
            user.append(int8_mlp(x, list(self.bottom.layers))[0])
        nu = len(cfg.user_tables)
        for t, ids in enumerate(query.user_ids):
            user.append(self._pooled(t, [0, ids.size], ids)[0])
        n = query.n_candidates
        item = [self._pooled(nu + a, np.arange(n + 1), query.item_ids[:, a])
                for a in range(len(cfg.item_tables))]
        u = np.stack(user) if user else np.zeros((0, cfg.embedding_dim), np.int8)
        return u, np.stack(item, axis=1)

    def top_inputs(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """Step 4: the int8 top input, user part (user_top_rows,) and item part
        (N, top_in - user_top_rows)."""
        cfg = self.config
        u, i = self.int8_features(query)
        if cfg.interaction == "concat":
            return u.reshape(-1), i.reshape(i.shape[0], -1)
        nu = cfg.n_user_pairs
        zu = _imatmul(u, u.T)[interaction_pairs(u.shape[0])]
        zi = np.rint(_item_pairs(u.astype(np.float64), i.astype(np.float64))).astype(np.int64)
        zu = requantize(zu, 0, self.pair_mult[:nu], self.pair_shift[:nu], False)
        zi = requantize(zi, 0, self.pair_mult[nu:], self.pair_shift[nu:], False)
        bottom = [u[0]] if self.bottom is not None else []
        return np.concatenate(bottom + [zu]).astype(np.int8), zi

    def user_bias(self, user_input: np.ndarray) -> np.ndarray:
        """Step 6, user pass: the per-query int32 bias of the item pass, (out,)."""
        first = self.layers[0]
        if self.user_layer is None:
            return first.bias.astype(np.int64)
        ul = self.user_layer
        acc = wrap_int32(_imatmul(np.asarray(user_input)[None, :], ul.weight))[0]
        return requantize_wide(acc, ul.bias, ul.mult, ul.shift, 32)

    def accumulators(self, query: Query, *, shift: bool = False) -> np.ndarray:
        """The last layer's ``acc + bias`` per candidate (int64), or with
        ``shift`` the score."""
        u, i = self.top_inputs(query)
        beta = self.user_bias(u)
        x = i
        for l, layer in enumerate(self.layers):
            acc = wrap_int32(_imatmul(x, layer.weight))
            bias = beta if l == 0 else layer.bias
            if l < len(self.layers) - 1:
                x = requantize(acc, bias, layer.mult, layer.shift, layer.relu)
            elif shift:
                return requantize_wide(acc, bias, layer.mult, layer.shift,
                                       self.score.bits)[:, 0]
            else:
                return acc[:, 0].astype(np.int64) + np.asarray(bias, np.int64)[0]
        raise AssertionError("a stage has at least one top layer")

    def scores(self, query: Query) -> np.ndarray:
        """Integer scores (int64 holding ``score.bits``-bit values), one per candidate."""
        return self.accumulators(query, shift=True)

    def scores_float(self, query: Query) -> np.ndarray:
        """The scores in the float model's units (``score * score.scale``)."""
        return self.scores(query).astype(np.float64) * self.score.scale


def quantize_stage_model(params: StageModelParams, calibration: Sequence[Query],
                         emb_bits: int = 8, frac_bits: int = 24, score_bits: int = 32,
                         max_bag: int = 1 << 16) -> QuantizedStageModel:
    """Quantize a stage for the accelerator (module docstring, steps 1-7).

    Parameters
    ----------
    params : StageModelParams
    calibration : sequence of Query
        Activation ranges come from the float model on these queries (all
        their candidates).
    emb_bits : int
        8 (FBGEMM 8-bit row-wise, fp32 scale and bias) or 4 (4-bit, fp16).
    frac_bits : int
        Fractional bits of the fixed-point row scale and bias
        (``hw.config.EmbeddingConfig.frac_bits``).
    score_bits : int
        Width of the score fed to the top-k filter (``TopKConfig.score_bits``).
    max_bag : int
        The lookup unit's longest bag.
    """
    cfg = params.config
    if emb_bits not in (4, 8):
        raise ValueError(f"emb_bits: must be 8 or 4, not {emb_bits!r}")
    _check_int("score_bits", score_bits, 2, 64)
    if not calibration:
        raise ValueError("calibration: at least one query is needed")
    model = StageModel(params)
    acts = [model.activations(q) for q in calibration]

    def amax(values):
        return max(float(np.max(np.abs(v), initial=0.0)) for v in values)

    # 1. bottom MLP (host.quantize.calibrate_mlp; ReLU on every layer, as DLRM).
    bottom = None
    if cfg.has_bottom:
        w, b = params.bottom
        dense = np.stack([q.dense for q in calibration])
        bottom = calibrate_mlp(w, b, [True] * len(w), dense)

    # 2-3. tables and the per-feature int8 output of their pooled sums.
    tables, fixed = [], []
    for t in cfg.tables:
        wt = params.table(t.name)
        rw = quantize_8bit(wt) if emb_bits == 8 else quantize_nbit(wt, 4)
        tables.append(rw)
        fixed.append(to_fixed_point(rw, frac_bits, t.name))
    pooled = [[a["user_pooled"][k] for a in acts] for k in range(len(cfg.user_tables))] + \
        [[a["item_pooled"][k] for a in acts] for k in range(len(cfg.item_tables))]
    emb_scale = np.array([_act_scale(amax(v)) for v in pooled])
    emb_mult, emb_shift = pooled_output_params(emb_scale, frac_bits)
    feat_scale = np.asarray(([bottom.output_scale] if bottom else []) + list(emb_scale))

    # 4. interaction: the scale of each top-input element.
    nb = cfg.bottom_out
    if cfg.interaction == "dot":
        zmax = np.concatenate([
            np.max([np.abs(a["top_in_user"][nb:]) for a in acts], axis=0),
            np.max([np.max(np.abs(a["top_in_item"]), axis=0) for a in acts], axis=0)])
        pair_scale = np.array([_act_scale(m) for m in zmax])
        li, lj = interaction_pairs(cfg.n_features)
        pair_mult, pair_shift = quantize_multiplier(feat_scale[li] * feat_scale[lj]
                                                    / pair_scale)
        in_scale = np.concatenate([np.full(nb, feat_scale[0] if bottom else 1.0),
                                   pair_scale])
    else:
        pair_scale = np.zeros(0)
        pair_mult, pair_shift = np.zeros(0, np.uint16), np.zeros(0, np.uint8)
        in_scale = np.repeat(feat_scale, [nb] * bool(bottom)
                             + [cfg.embedding_dim] * len(cfg.tables))

    # 5. top MLP: hidden output scales from the float activations.
    w, b = params.top
    n_top = len(w)
    out_scale = [_act_scale(amax(a["top"][l] for a in acts)) for l in range(n_top - 1)]
    r = cfg.user_top_rows
    # 6. first layer: input scales folded into the weights; the item rows and
    # the user rows quantized apart, the user part entering as a bias.
    w0 = np.asarray(w[0], np.float64) * in_scale[:, None]
    last0 = n_top == 1
    s1 = 1.0 if last0 else out_scale[0]
    item0, s_wi = quantize_layer(w0[r:], b[0], not last0, 1.0, s1)
    user_layer = None
    if r:
        s_wu = _weight_scale(w0[:r])
        wu = np.clip(np.rint(w0[:r] / s_wu), -127, 127).astype(np.int8)
        bu = np.clip(np.rint(np.asarray(b[0], np.float64) / s_wu),
                     -(1 << 31), (1 << 31) - 1).astype(np.int32)
        try:
            mu, su = quantize_multiplier(s_wu / s_wi)
        except ValueError as e:
            raise ValueError(f"{cfg.name}: the user rows of the first top layer are too "
                             f"large for the item rows' accumulator ({e})") from None
        user_layer = QuantLayer(wu, bu, mu, su, False)
        item0 = QuantLayer(item0.weight, np.zeros(item0.out_dim, np.int32), item0.mult,
                           item0.shift, item0.relu)
    layers = [item0]
    acc_scale = s_wi
    for l in range(1, n_top):
        layer, s_w = quantize_layer(w[l], b[l], l < n_top - 1, out_scale[l - 1],
                                    out_scale[l] if l < n_top - 1 else 1.0)
        layers.append(layer)
        acc_scale = out_scale[l - 1] * s_w
    acc_scale = float(acc_scale[0])

    # 7. the score: the last layer's acc + bias, shifted to fit score_bits.
    def with_score(shift):
        last = layers[-1]
        ls = layers[:-1] + [QuantLayer(last.weight, last.bias, np.ones(1, np.uint16),
                                       np.full(1, shift, np.uint8), False)]
        return QuantizedStageModel(cfg, emb_bits, frac_bits, max_bag, bottom, tuple(tables),
                                   tuple(fixed), emb_scale, emb_mult, emb_shift, pair_scale,
                                   pair_mult, pair_shift, in_scale, user_layer, tuple(ls),
                                   ScoreFormat(score_bits, shift, acc_scale * 2.0 ** shift))

    q = with_score(0)
    tmax = max(int(np.max(np.abs(q.accumulators(c)), initial=0)) for c in calibration)
    shift = max(0, (2 * tmax).bit_length() - (score_bits - 1))
    if shift >= 1 << 6:
        raise ValueError(f"score_bits: {score_bits} bits cannot hold scores of "
                         f"{tmax.bit_length()} bits with a 6-bit shift")
    return with_score(shift)
