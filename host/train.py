"""Training the MovieLens stage models (optional extra: CPU PyTorch).

Torch is imported inside the functions that need it, never at module import;
without it they raise :class:`TorchUnavailable`, which says to
``pip install torch==2.13.0`` (the ``recaccel[torch]`` extra). What training
writes is read without torch: :func:`host.models.save_params` (npz + JSON).

What is trained
---------------
Any stage config with the MovieLens layout of the ``ml-*`` presets
(:func:`host.models.stage_preset`): ``ML_DENSE_FEATURES`` dense features and
the tables ``user_id`` (user), ``user_history`` (user, a bag) and ``item_id``
(item). The torch module is the float model of :class:`host.models.StageModel`
in DLRM_Net's form: bottom MLP with ReLU on every layer, sum-pooled bags
(``embedding_bag``), features ``T = [bottom output, user_id, user_history,
item_id]``, ``"dot"``: ``cat(bottom output, (T T^T)[tril_indices(F, -1)])``,
``"concat"``: ``cat(T)``, top MLP with ReLU on hidden layers and a linear
score (the logit). :func:`to_params` exports it (``weight`` transposed), and
the exported :class:`~host.models.StageModel` scores as the torch module does
(``tests/test_train.py``).

Data: implicit feedback from a :class:`host.movielens.LeaveLastOut` split.
Every training rating ``(user, item)`` is a positive, whatever its rating; the
held-out items are never seen. A positive at position ``t`` of the user's
time-ordered training items has as ``user_history`` the ``history`` items
before it (``t - history .. t - 1``), as the query of the held-out positive
has the last ``history`` training items before it
(:func:`host.movielens.movielens_queries`), so the model never sees the
target inside its own bag; ``user_id`` is ``[user]`` and the dense features
are :func:`host.movielens.user_dense` of the split.

Loss: binary cross-entropy on the logits (DLRM's loss), each positive
against ``negatives`` items drawn uniformly from the items the user has not
rated in training (the queries' candidates are drawn from the same set),
label 1 for the positive and 0 for the negatives. Adam, minibatches of
``batch_size`` positives in a random order each epoch, ``weight_decay`` as an
L2 penalty on the embedding rows a batch uses (scaled by the batch) and on
nothing else.

Determinism: the initial weights are :func:`host.models.init_params` (NumPy,
seeded), every shuffle and negative comes from ``numpy.random.default_rng``
seeded by ``(seed, epoch)``, torch runs with ``use_deterministic_algorithms``
and a fixed thread count (``threads``; the result of float reductions may
depend on it, so it is part of the cache key). One thread by default: these
models are small, and on a shared 2-core machine two torch threads trained
an epoch of ``ml-small`` about 4x slower than one (114 s against 31 s,
measured with other jobs running). The same
seed, data and config give bit-identical weights.

Cache
-----
:func:`trained_params` keeps trained weights in ``$RECACCEL_MODEL_DIR`` or
``~/.cache/recaccel/models`` as ``<name>-seed<seed>-<key>.{npz,json}`` plus
``.train.json`` (losses, training config, data digest); ``key`` is the
SHA-256 of the model config, the training config, the seed, the data digest
(:func:`data_digest`: SHA-256 of the split's arrays) and
:data:`TRAIN_VERSION`. Files are written to a temporary folder and moved into
place, the model's JSON last; a cached file that fails to load is retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .models import (ML_DENSE_FEATURES, StageModelConfig, StageModelParams, init_params,
                     interaction_pairs, load_params, save_params, stage_preset)
from .movielens import LeaveLastOut, user_dense

__all__ = ["TORCH_REQUIREMENT", "TRAIN_VERSION", "MODEL_DIR_ENV", "TorchUnavailable",
           "require_torch", "TrainConfig", "TrainResult", "train_stage_model",
           "to_params", "torch_scores", "validation_split", "data_digest",
           "model_cache_dir", "cache_stem", "trained_params"]

TORCH_REQUIREMENT = "torch==2.13.0"
#: Bump when training changes what it produces (invalidates the cache).
TRAIN_VERSION = 1
MODEL_DIR_ENV = "RECACCEL_MODEL_DIR"

_ML_TABLES = (("user_id", "user"), ("user_history", "user"), ("item_id", "item"))


class TorchUnavailable(ImportError):
    """PyTorch is not installed; the message says how to get it."""


def require_torch():
    """The ``torch`` module, or :class:`TorchUnavailable` naming the install."""
    try:
        import torch
    except ImportError as e:
        raise TorchUnavailable(
            f"training the stage models needs PyTorch (CPU), an optional extra: "
            f"pip install {TORCH_REQUIREMENT}  (or pip install 'recaccel[torch]'); "
            f"importing torch failed: {e}") from None
    return torch


# -- configuration -----------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """How to train (module docstring)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    negatives: int = 4
    weight_decay: float = 0.0
    history: int = 32
    init_table_scale: float = 0.05
    threads: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size", "negatives", "history", "threads"):
            v = getattr(self, name)
            lo = 0 if name in ("history",) else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}: must be an integer >= {lo}, not {v!r}")
        for name in ("lr", "weight_decay", "init_table_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) \
                    or v < 0 or (name != "weight_decay" and v == 0):
                raise ValueError(f"{name}: must be a finite number "
                                 f"{'>= 0' if name == 'weight_decay' else '> 0'}, not {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Trained weights and the mean training loss of each epoch
    (``losses[0]`` is the loss of the initial weights, before any step)."""

    params: StageModelParams
    losses: list = field(default_factory=list)


def _check_layout(config: StageModelConfig) -> None:
    have = tuple((t.name, t.side) for t in config.tables)
    if have != _ML_TABLES or config.dense_features != ML_DENSE_FEATURES:
        raise ValueError(f"{config.name}: training knows the MovieLens layout "
                         f"({ML_DENSE_FEATURES} dense features, tables "
                         f"{[n for n, _ in _ML_TABLES]}), not {config.dense_features} dense "
                         f"features and tables {[n for n, _ in have]}")


def _check_split(config: StageModelConfig, split: LeaveLastOut) -> None:
    rows = {t.name: t.rows for t in config.tables}
    if rows["user_id"] < split.n_users or rows["user_history"] < split.n_items \
            or rows["item_id"] < split.n_items:
        raise ValueError(f"{config.name}: tables of {rows} rows cannot hold "
                         f"{split.n_users} users and {split.n_items} items")


# -- the torch module ----------------------------------------------------------------

def _module(torch, params: StageModelParams):
    """A torch module holding (copies of) ``params``."""
    nn = torch.nn
    F = torch.nn.functional
    cfg = params.config

    def tensor(a, transpose=False):
        a = np.array(a, dtype=np.float32)          # a writable copy
        return nn.Parameter(torch.from_numpy(np.ascontiguousarray(a.T if transpose else a)))

    class StageNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.bottom = nn.ModuleList()
            self.top = nn.ModuleList()
            for prefix, dims, mods in (("bottom", cfg.bottom_dims, self.bottom),
                                       ("top", cfg.top_dims, self.top)):
                for l in range(len(dims) - 1):
                    lin = nn.Linear(dims[l], dims[l + 1])
                    lin.weight = tensor(params.arrays[f"{prefix}.{l}.weight"], transpose=True)
                    lin.bias = tensor(params.arrays[f"{prefix}.{l}.bias"])
                    mods.append(lin)
            self.tables = nn.ParameterDict({t.name: tensor(params.table(t.name))
                                            for t in cfg.tables})
            li, lj = interaction_pairs(cfg.n_features)
            self.register_buffer("li", torch.from_numpy(li.astype(np.int64)), persistent=False)
            self.register_buffer("lj", torch.from_numpy(lj.astype(np.int64)), persistent=False)

        def user(self, dense, bags):
            """``dense`` (B, dense); ``bags`` one ``(ids, offsets)`` per user
            table -> (B, U, d)."""
            feats = []
            if cfg.has_bottom:
                x = dense
                for lin in self.bottom:
                    x = F.relu(lin(x))
                feats.append(x)
            for t, (ids, offsets) in zip(cfg.user_tables, bags):
                feats.append(F.embedding_bag(ids, self.tables[t.name], offsets, mode="sum"))
            return torch.stack(feats, dim=1)

        def forward(self, dense, bags, items):
            """``items`` (B, C, item tables) -> logits (B, C)."""
            tu = self.user(dense, bags)
            b, c = items.shape[:2]
            ti = torch.stack([F.embedding(items[..., a], self.tables[t.name])
                              for a, t in enumerate(cfg.item_tables)], dim=2)
            t = torch.cat([tu[:, None].expand(b, c, *tu.shape[1:]), ti], dim=2)   # (B,C,F,d)
            if cfg.interaction == "dot":
                z = torch.matmul(t, t.transpose(-1, -2))[..., self.li, self.lj]
                x = torch.cat(([t[..., 0, :]] if cfg.has_bottom else []) + [z], dim=-1)
            else:
                x = t.reshape(b, c, -1)
            for l, lin in enumerate(self.top):
                x = lin(x)
                if l < len(self.top) - 1:
                    x = F.relu(x)
            return x[..., 0]

    return StageNet()


def to_params(module) -> StageModelParams:
    """The torch module's weights as :class:`StageModelParams` (``y = x @ W + b``)."""
    cfg = module.config
    arrays = {}
    for prefix, mods in (("bottom", module.bottom), ("top", module.top)):
        for l, lin in enumerate(mods):
            arrays[f"{prefix}.{l}.weight"] = lin.weight.detach().numpy().T.copy()
            arrays[f"{prefix}.{l}.bias"] = lin.bias.detach().numpy().copy()
    for t in cfg.tables:
        arrays[f"table.{t.name}"] = module.tables[t.name].detach().numpy().copy()
    return StageModelParams(cfg, arrays)


def torch_scores(params: StageModelParams, query) -> np.ndarray:
    """Scores of one :class:`host.models.Query` by the torch module built from
    ``params`` (float32): the cross-check of the export."""
    torch = require_torch()
    query.check(params.config)
    m = _module(torch, params)
    bags = [(torch.from_numpy(np.array(ids, np.int64)), torch.zeros(1, dtype=torch.int64))
            for ids in query.user_ids]
    with torch.no_grad():
        s = m(torch.from_numpy(np.array(query.dense, np.float32))[None], bags,
              torch.from_numpy(np.array(query.item_ids, np.int64))[None])
    return s[0].numpy().astype(np.float64)


# -- data ------------------------------------------------------------------------------

def validation_split(split: LeaveLastOut) -> LeaveLastOut:
    """``split`` with each user's last *training* rating held out instead:
    for choosing training settings without looking at the test items."""
    n = split.train_item.size
    last = split.train_offsets[1:] - 1
    if np.any(np.diff(split.train_offsets) < 2):
        raise ValueError("validation_split: every user needs 2 training ratings")
    keep = np.ones(n, bool)
    keep[last] = False
    offsets = split.train_offsets - np.arange(split.n_users + 1)
    return LeaveLastOut(split.n_users, split.n_items, split.train_user[keep],
                        split.train_item[keep], split.train_rating[keep],
                        split.train_time[keep], offsets, split.train_item[last],
                        split.train_rating[last], split.train_time[last])


def data_digest(split: LeaveLastOut) -> str:
    """SHA-256 of the split (sizes and every array), hex."""
    h = hashlib.sha256(f"{split.n_users} {split.n_items}".encode())
    for a in (split.train_user, split.train_item, split.train_rating, split.train_time,
              split.train_offsets, split.test_item, split.test_rating, split.test_time):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()


def _history_bags(split: LeaveLastOut, g: np.ndarray, history: int):
    """The ``history`` training items before each global training index ``g``
    (same user, oldest first): flat ids and offsets."""
    users = split.train_user[g]
    start = np.maximum(split.train_offsets[users], g - history)
    lens = g - start
    offsets = np.zeros(g.size, np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    idx = np.arange(int(lens.sum())) - np.repeat(offsets, lens) + np.repeat(start, lens)
    return split.train_item[idx], offsets


def _negatives(rng, seen: np.ndarray, users: np.ndarray, n: int) -> np.ndarray:
    """``n`` items per user drawn uniformly from those the user has not rated
    in training (rejection sampling)."""
    n_items = seen.shape[1]
    neg = rng.integers(0, n_items, size=(users.size, n))
    for _ in range(100):
        bad = seen[users[:, None], neg]
        if not bad.any():
            return neg
        neg[bad] = rng.integers(0, n_items, size=int(bad.sum()))
    raise ValueError("negatives: a user has rated (nearly) every item")


# -- training ------------------------------------------------------------------------------

def train_stage_model(config: StageModelConfig | str, split: LeaveLastOut, seed: int = 0,
                      train: TrainConfig | None = None,
                      progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train one stage model on ``split`` (module docstring). Deterministic:
    the same arguments give bit-identical weights."""
    torch = require_torch()
    cfg = stage_preset(config) if isinstance(config, str) else config
    tc = train or TrainConfig()
    _check_layout(cfg)
    _check_split(cfg, split)
    n = split.train_item.size
    seen = np.zeros((split.n_users, cfg.tables[2].rows), bool)
    seen[split.train_user, split.train_item] = True
    dense_all = user_dense(split).astype(np.float32)

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(tc.threads)
    torch.use_deterministic_algorithms(True)
    try:
        m = _module(torch, init_params(cfg, seed, table_scale=tc.init_table_scale))
        opt = torch.optim.Adam(m.parameters(), lr=tc.lr)
        labels = torch.zeros(1 + tc.negatives)
        labels[0] = 1.0

        def batch(g, rng):
            users = split.train_user[g]
            hist, hoff = _history_bags(split, g, tc.history)
            items = np.concatenate([split.train_item[g][:, None],
                                    _negatives(rng, seen, users, tc.negatives)], axis=1)
            bags = [(torch.from_numpy(users.copy()), torch.arange(g.size)),
                    (torch.from_numpy(hist.copy()), torch.from_numpy(hoff))]
            return (torch.from_numpy(dense_all[users]), bags,
                    torch.from_numpy(items[..., None].copy()), users, items)

        def loss_of(dense, bags, items):
            logits = m(dense, bags, items)
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.expand_as(logits))

        def l2(users, items, hist_ids):
            if not tc.weight_decay:
                return 0.0
            tabs = m.tables
            reg = (tabs["user_id"][users].pow(2).sum()
                   + tabs["item_id"][items.reshape(-1)].pow(2).sum()
                   + tabs["user_history"][hist_ids].pow(2).sum())
            return tc.weight_decay * reg / users.size

        losses = []
        # the initial loss, on one fixed pass (no updates)
        rng0 = np.random.default_rng([seed, 1 << 20])
        with torch.no_grad():
            tot = 0.0
            for s in range(0, n, 4096):
                g = np.arange(s, min(n, s + 4096))
                d, b, it, _, _ = batch(g, rng0)
                tot += float(loss_of(d, b, it)) * g.size
        losses.append(tot / n)
        for epoch in range(tc.epochs):
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(n)
            tot = 0.0
            for s in range(0, n, tc.batch_size):
                g = order[s:s + tc.batch_size]
                d, b, it, users, items = batch(g, rng)
                loss = loss_of(d, b, it)
                opt.zero_grad()
                (loss + l2(torch.from_numpy(users), torch.from_numpy(items), b[1][0])).backward()
                opt.step()
                tot += float(loss.detach()) * g.size
            losses.append(tot / n)
            if progress:
                progress(f"{cfg.name}: epoch {epoch + 1}/{tc.epochs}, loss {losses[-1]:.4f}")
        return TrainResult(to_params(m), losses)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


# -- the cache -------------------------------------------------------------------------------

def model_cache_dir() -> Path:
    """``$RECACCEL_MODEL_DIR``, or ``~/.cache/recaccel/models``."""
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "recaccel" / "models"


def cache_stem(config: StageModelConfig, split_digest: str, seed: int,
               train: TrainConfig) -> str:
    """``<name>-seed<seed>-<key>`` (module docstring)."""
    key = hashlib.sha256(json.dumps(
        {"version": TRAIN_VERSION, "config": config.to_dict(), "train": train.to_dict(),
         "seed": int(seed), "data": split_digest}, sort_keys=True).encode()).hexdigest()
    return f"{config.name}-seed{int(seed)}-{key[:16]}"


def trained_params(config: StageModelConfig | str, split: LeaveLastOut, seed: int = 0,
                   train: TrainConfig | None = None, cache: bool = True,
                   cache_dir: Path | str | None = None,
                   progress: Callable[[str], None] | None = None) -> StageModelParams:
    """Trained weights of ``config`` on ``split``: from the cache when there,
    else trained (needs torch) and, with ``cache``, stored (module docstring)."""
    cfg = stage_preset(config) if isinstance(config, str) else config
    tc = train or TrainConfig()
    digest = data_digest(split)
    folder = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    stem = cache_stem(cfg, digest, seed, tc)
    path = folder / f"{stem}.json"
    if cache and path.exists():
        try:
            params = load_params(path)
        except ValueError as e:
            if progress:
                progress(f"{cfg.name}: cached weights unusable ({e}); retraining")
        else:
            if params.config == cfg:
                if progress:
                    progress(f"{cfg.name}: cached weights {path}")
                return params
    require_torch()                 # (before saying it trains)
    if progress:
        progress(f"{cfg.name}: training ({tc.epochs} epochs, seed {seed})")
    res = train_stage_model(cfg, split, seed, tc, progress)
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=folder))
        try:
            jpath, npath = save_params(res.params, tmp / stem)
            info = {"model": stem, "seed": int(seed), "train": tc.to_dict(),
                    "data_sha256": digest, "losses": res.losses,
                    "version": TRAIN_VERSION}
            (tmp / f"{stem}.train.json").write_text(json.dumps(info, indent=1) + "\n")
            for f in (npath, tmp / f"{stem}.train.json", jpath):     # the JSON last
                os.replace(f, folder / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if progress:
            progress(f"{cfg.name}: saved {path}")
    return res.params
