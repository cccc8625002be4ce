"""Training the stage models (host.train, optional torch extra): the loss
falls, a seed fixes the weights bit for bit, the weights round-trip through
npz + JSON and score as the torch module does, a trained model beats random
on held-out items, the cache is keyed and reused. Small models on a toy data
set with a known structure (seconds); one check on MovieLens-100K, skipped
when the data cannot be had. Without torch the training tests skip, and the
error message is checked."""

import sys

import numpy as np
import pytest

from host.datasets import DatasetUnavailable, Ratings
from host.metrics import hit_at_k
from host.models import (PRESETS, StageModel, StageModelConfig, TableSpec, init_params,
                         load_params, save_params)
from host.movielens import leave_last_out, load_movielens, movielens_queries
from host import train as T

N_USERS, N_ITEMS, CLUSTERS, PER_USER = 60, 120, 4, 16


def toy_split(seed=0):
    """Users in 4 taste clusters; item ``i`` is in cluster ``i % 4``; each user
    rates 16 items, 85% from their cluster, in random time order."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS):
        own = np.flatnonzero(np.arange(N_ITEMS) % CLUSTERS == u % CLUSTERS)
        n_own = int(round(PER_USER * 0.85))
        other = np.setdiff1d(np.arange(N_ITEMS), own)
        chosen = np.concatenate([rng.choice(own, n_own, replace=False),
                                 rng.choice(other, PER_USER - n_own, replace=False)])
        users += [u] * PER_USER
        items += rng.permutation(chosen).tolist()
    n = len(users)
    return leave_last_out(Ratings(np.array(users) + 1, np.array(items) + 1,
                                  np.full(n, 4), np.arange(n)))


def tiny_config(interaction="dot", name="tiny"):
    tables = (TableSpec("user_id", N_USERS, "user"), TableSpec("user_history", N_ITEMS, "user"),
              TableSpec("item_id", N_ITEMS, "item"))
    top = (8, 1) if interaction == "dot" else (16, 8, 1)
    return StageModelConfig(name, 3, (8, 4), tables, 4, interaction, top)


FAST = T.TrainConfig(epochs=8, batch_size=64, lr=1e-2, history=8)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="training needs the torch extra "
                                               "(pip install torch==2.13.0)")


@pytest.fixture(scope="module")
def split():
    return toy_split()


@pytest.fixture(scope="module")
def trained(torch, split):
    return T.train_stage_model(tiny_config(), split, seed=3, train=FAST)


def hr10(params, split, users=None, seed=0):
    qs, pos = movielens_queries(split, users=users, history=FAST.history, seed=seed)
    m = StageModel(params)
    hits = []
    for q, p in zip(qs, pos):
        order = np.lexsort((q.positions, -m.scores(q)))
        hits.append(hit_at_k(q.candidates[order], p, 10))
    return float(np.mean(hits)), float(np.mean([10 / q.n_candidates for q in qs]))


def test_missing_torch_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)       # import torch -> ImportError
    with pytest.raises(T.TorchUnavailable, match=r"pip install torch==2\.13\.0"):
        T.require_torch()
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
        T.train_stage_model(tiny_config(), toy_split())


def test_loss_decreases(trained):
    losses = trained.losses
    assert len(losses) == FAST.epochs + 1
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(b < a for a, b in zip(losses[1:], losses[2:])), losses


def test_deterministic_under_a_seed(torch, split, trained):
    again = T.train_stage_model(tiny_config(), split, seed=3, train=FAST)
    other = T.train_stage_model(tiny_config(), split, seed=4, train=FAST)
    for name, a in trained.params.arrays.items():
        assert np.array_equal(a, again.params.arrays[name]), name
    assert again.losses == trained.losses
    assert not np.array_equal(trained.params.arrays["table.item_id"],
                              other.params.arrays["table.item_id"])


@pytest.mark.parametrize("interaction", ["dot", "concat"])
def test_weights_round_trip_and_score_as_torch(torch, split, tmp_path, interaction):
    res = T.train_stage_model(tiny_config(interaction), split, seed=1,
                              train=T.TrainConfig(epochs=1, batch_size=64, history=8))
    save_params(res.params, tmp_path / "m")
    back = load_params(tmp_path / "m.json")
    assert back.config == res.params.config
    for name, a in res.params.arrays.items():
        assert np.array_equal(back.arrays[name], a), name
    qs, _ = movielens_queries(split, users=[0, 7, 33], history=FAST.history)
    for q in qs:
        ours = StageModel(back).scores(q)
        np.testing.assert_allclose(ours, T.torch_scores(back, q), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours, StageModel(back).scores_unsplit(q), rtol=1e-9,
                                   atol=1e-9)


def test_trained_beats_random_on_held_out_items(trained, split):
    hr, chance = hr10(trained.params, split)
    untrained, _ = hr10(init_params(tiny_config(), seed=3,
                                    table_scale=FAST.init_table_scale), split)
    # chance ~0.1 (10 of ~105 candidates); 60 users: its s.d. is ~0.04.
    assert chance < 0.11
    assert hr > 0.3 and hr > untrained + 0.15, (hr, untrained, chance)


def test_history_bags_are_the_items_before():
    s = toy_split()
    g = np.array([s.train_offsets[2], s.train_offsets[2] + 3, s.train_offsets[3] - 1])
    ids, off = T._history_bags(s, g, 8)
    items = s.train_items(2)
    assert off.tolist() == [0, 0, 3]
    assert ids[:3].tolist() == items[:3].tolist()
    assert ids[3:].tolist() == items[items.size - 9:items.size - 1].tolist()


def test_negatives_avoid_training_items():
    s = toy_split()
    seen = np.zeros((s.n_users, s.n_items), bool)
    seen[s.train_user, s.train_item] = True
    users = np.repeat(np.arange(s.n_users), 10)
    neg = T._negatives(np.random.default_rng(0), seen, users, 20)
    assert neg.shape == (users.size, 20) and not seen[users[:, None], neg].any()


def test_validation_split_holds_out_the_last_training_rating():
    s = toy_split()
    v = T.validation_split(s)
    assert v.train_item.size == s.train_item.size - s.n_users
    for u in (0, 17, N_USERS - 1):
        assert v.test_item[u] == s.train_items(u)[-1]
        assert v.train_items(u).tolist() == s.train_items(u)[:-1].tolist()
    assert T.data_digest(v) != T.data_digest(s)


def test_layout_errors_name_the_tables():
    with pytest.raises(ValueError, match=r"MovieLens layout.*\['c0'"):
        T._check_layout(PRESETS["rm-small"])
    T._check_layout(PRESETS["ml-large"])
    wide = leave_last_out(Ratings(np.repeat(np.arange(1, N_USERS + 2), 2),
                                  np.tile([1, 2], N_USERS + 1), np.full(2 * N_USERS + 2, 4),
                                  np.arange(2 * N_USERS + 2)))
    with pytest.raises(ValueError, match="cannot hold 61 users"):
        T._check_split(tiny_config(), wide)
    with pytest.raises(ValueError, match="epochs"):
        T.TrainConfig(epochs=0)


def test_cache_reuses_and_keys(torch, split, tmp_path, monkeypatch):
    cfg, tc = tiny_config(), T.TrainConfig(epochs=1, batch_size=64, history=8)
    first = T.trained_params(cfg, split, seed=5, train=tc, cache_dir=tmp_path)
    stem = T.cache_stem(cfg, T.data_digest(split), 5, tc)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{stem}{e}" for e in (".json", ".npz", ".train.json"))
    calls = []
    real = T.train_stage_model
    monkeypatch.setattr(T, "train_stage_model",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    again = T.trained_params(cfg, split, seed=5, train=tc, cache_dir=tmp_path)
    assert calls == []                                   # from the cache
    for name, a in first.arrays.items():
        assert np.array_equal(again.arrays[name], a)
    # another seed, other data or another training config: another key
    assert T.cache_stem(cfg, T.data_digest(split), 6, tc) != stem
    assert T.cache_stem(cfg, T.data_digest(T.validation_split(split)), 5, tc) != stem
    assert T.cache_stem(cfg, T.data_digest(split), 5, T.TrainConfig(epochs=2)) != stem
    # a damaged cached file is retrained, not trusted
    npz = tmp_path / f"{stem}.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    fixed = T.trained_params(cfg, split, seed=5, train=tc, cache_dir=tmp_path)
    assert len(calls) == 1
    for name, a in first.arrays.items():
        assert np.array_equal(fixed.arrays[name], a)


def test_movielens_model_beats_random(torch):
    """One epoch of a small model on MovieLens-100K: held-out positives among
    99 unseen items, HR@10 well above chance (0.1)."""
    try:
        split = load_movielens()
    except DatasetUnavailable as e:
        pytest.skip(f"MovieLens-100K unavailable: {e}")
    cfg = StageModelConfig("ml-tiny", 3, (8, 4), PRESETS["ml-small"].tables, 4, "dot", (8, 1))
    res = T.train_stage_model(cfg, split, seed=0,
                              train=T.TrainConfig(epochs=1, batch_size=1024, lr=1e-2))
    users = np.arange(0, split.n_users, 3)               # 315 users: chance s.d. ~0.017
    qs, pos = movielens_queries(split, users=users, negatives=99)
    m = StageModel(res.params)
    hits = [hit_at_k(q.candidates[np.lexsort((q.positions, -m.scores(q)))], p, 10)
            for q, p in zip(qs, pos)]
    assert np.mean(hits) > 0.2, np.mean(hits)
