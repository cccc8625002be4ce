"""Stage models: config formulas (pair order, shapes, MACs), the weight files,
the float forward pass (split against DLRM's per-candidate form, and against
torch's own layers), and the quantized golden pass (its pieces against
host.numerics / host.embedding, and its scores against the float model)."""

import json

import numpy as np
import pytest

from host.models import (PRESETS, Query, StageModel, StageModelConfig, StageModelParams,
                         TableSpec, _int8_layer, init_params, interaction_pairs,
                         load_params, quantize_layer, quantize_stage_model,
                         requantize_wide, save_params, stage_preset)
from host.movielens import synthetic_queries
from host.numerics import QuantLayer, int8_layer, requantize
from host.quantize import calibrate_mlp


def small(name, max_rows=200):
    return stage_preset(name, max_rows=max_rows)


# -- formulas --------------------------------------------------------------------

def test_pair_order_is_dlrm_row_major_lower_triangle():
    li, lj = interaction_pairs(4)
    assert list(zip(li.tolist(), lj.tolist())) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1),
                                                   (3, 2)]


def test_recpipe_preset_shapes():
    # PAPERS.md: 13 dense, 26 tables, concat; dims 4/16/32.
    for name, dim, bottom, top_in, top in (("rm-small", 4, (13, 64, 4), 4 + 26 * 4, (64, 1)),
                                           ("rm-med", 16, (13, 64, 16), 16 + 26 * 16, (64, 1)),
                                           ("rm-large", 32, (13, 512, 256, 128, 64, 32),
                                            32 + 26 * 32, (96, 1))):
        cfg = PRESETS[name]
        assert cfg.embedding_dim == dim and cfg.bottom_dims == bottom
        assert cfg.top_dims == (top_in, *top)
        assert len(cfg.user_tables) == len(cfg.item_tables) == 13
        assert sorted(t.rows for t in cfg.tables)[-1] == 10131227
    shapes = PRESETS["rm-small"].array_shapes()
    assert shapes["bottom.0.weight"] == (13, 64) and shapes["top.1.weight"] == (64, 1)
    assert shapes["table.c25"] == (10131227, 4)


def test_macs_known_answers():
    # rm-small: bottom 13*64 + 64*4 = 1088; the top input is the bottom output
    # and 13 user rows of 4 (56 user rows) then 13 item rows of 4 (52).
    m = PRESETS["rm-small"].macs()
    assert m.per_query == 1088 + 56 * 64
    assert m.per_candidate == 52 * 64 + 64
    assert PRESETS["rm-small"].macs_unsplit_per_candidate() == 1088 + 108 * 64 + 64
    assert m.total(4096) == 4672 + 4096 * 3392
    # rm-large unsplit: 13*512 + 512*256 + 256*128 + 128*64 + 64*32 + 864*96 + 96.
    assert PRESETS["rm-large"].macs_unsplit_per_candidate() == 180736 + 83040
    # ml-small (dot): features [bottom, user_id, user_history, item_id], dim 8;
    # user pairs (1,0),(2,0),(2,1); item pairs (3,0),(3,1),(3,2).
    m = PRESETS["ml-small"].macs()
    assert m.per_query == (3 * 16 + 16 * 8) + 3 * 8 + (8 + 3) * 16
    assert m.per_candidate == 3 * 8 + 3 * 16 + 16 * 1
    cfg = PRESETS["ml-large"]          # concat, dim 64: 192 user rows, 64 item rows
    assert cfg.macs().per_candidate == 64 * 256 + 256 * 64 + 64
    for c in PRESETS.values():         # the split moves work, never adds any
        m = c.macs()
        assert m.per_query + m.per_candidate == c.macs_unsplit_per_candidate()


@pytest.mark.parametrize("kwargs, match", [
    (dict(interaction="cross"), "interaction"),
    (dict(top_mlp=(8, 2)), "top_mlp: must end in 1"),
    (dict(bottom_mlp=(8, 4)), "bottom MLP to end in embedding_dim"),
    (dict(tables=(TableSpec("i", 5, "item"), TableSpec("u", 5, "user"))),
     "user tables must come before"),
    (dict(tables=(TableSpec("u", 5, "user"),)), "at least one item table"),
    (dict(dense_features=0), "bottom_mlp"),
    (dict(pooling="mean"), "pooling"),
])
def test_config_errors_name_the_field(kwargs, match):
    base = dict(name="t", dense_features=3, bottom_mlp=(8, 6),
                tables=(TableSpec("u", 5, "user"), TableSpec("i", 7, "item")),
                embedding_dim=6, interaction="dot", top_mlp=(4, 1))
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        StageModelConfig(**base)


def test_config_dict_round_trip():
    for cfg in PRESETS.values():
        assert StageModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        StageModelConfig.from_dict({**PRESETS["ml-small"].to_dict(), "extra": 1})


# -- weight files -------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    p = init_params(small("ml-small"), seed=3)
    jpath, npath = save_params(p, tmp_path / "m")
    meta = json.loads(jpath.read_text())
    assert meta["format"] == "recaccel-stage-model" and meta["version"] == 1
    assert meta["arrays"]["top.0.weight"] == {"shape": [14, 16], "dtype": "float32"}
    q = load_params(tmp_path / "m.json")
    assert q.config == p.config
    assert all(np.array_equal(q.arrays[k], v) for k, v in p.arrays.items())
    with np.load(npath, allow_pickle=False) as f:   # readable without this package
        assert set(f.files) == set(p.config.array_shapes())


def test_bad_weight_files(tmp_path):
    p = init_params(small("ml-small"), seed=0)
    jpath, npath = save_params(p, tmp_path / "m")
    good = npath.read_bytes()
    arrays = dict(p.arrays)
    arrays["top.0.weight"] = np.zeros((13, 16), np.float32)
    np.savez(npath, **arrays)
    with pytest.raises(ValueError, match=r"'top.0.weight': expected shape \(14, 16\), "
                                         r"found \(13, 16\)"):
        load_params(jpath)
    del arrays["top.0.weight"]
    np.savez(npath, **arrays)
    with pytest.raises(ValueError, match="'top.0.weight' is missing"):
        load_params(jpath)
    npath.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_params(jpath)
    npath.write_bytes(good)
    meta = json.loads(jpath.read_text())
    jpath.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="SHA-256"):
        load_params(jpath)
    jpath.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_params(jpath)
    with pytest.raises(ValueError, match="expected shape"):
        StageModelParams(p.config, {**p.arrays, "table.item_id": np.zeros((3, 8))})


# -- float forward -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_split_forward_is_dlrm_forward(name):
    cfg = small(name)
    p = init_params(cfg, seed=1, table_scale=0.5)
    q = synthetic_queries(cfg, 1, 33, user_bag=3, seed=1)[0]
    m = StageModel(p)
    np.testing.assert_allclose(m.scores(q), m.scores_unsplit(q), rtol=0, atol=1e-12)


def test_query_is_checked():
    cfg = small("ml-small")
    m = StageModel(init_params(cfg))
    with pytest.raises(ValueError, match="id 200 of table 'item_id'"):
        m.scores(Query(np.zeros(3), ([0], [1, 2]), [[200]]))
    with pytest.raises(ValueError, match="dense"):
        m.scores(Query(np.zeros(2), ([0], [1, 2]), [[1]]))


# -- quantized pieces ---------------------------------------------------------------

def test_fast_int8_layer_is_numerics():
    rng = np.random.default_rng(0)
    for in_dim in (1, 7, 300, 2000):
        layer = QuantLayer(rng.integers(-127, 128, (in_dim, 9)).astype(np.int8),
                           rng.integers(-5000, 5000, 9), rng.integers(1, 1 << 16, 9),
                           rng.integers(8, 24, 9), bool(in_dim % 2))
        x = rng.integers(-128, 128, (17, in_dim)).astype(np.int8)
        assert np.array_equal(_int8_layer(x, layer), int8_layer(x, layer))
    acc = rng.integers(-(1 << 31), 1 << 31, (50, 4))
    b, mu, sh = rng.integers(-1000, 1000, 4), rng.integers(1, 1 << 16, 4), rng.integers(0, 40, 4)
    assert np.array_equal(requantize_wide(acc, b, mu, sh, 8), requantize(acc, b, mu, sh, False))


def test_quantize_layer_is_calibrate_mlp():
    rng = np.random.default_rng(1)
    w = [rng.standard_normal((5, 7)), rng.standard_normal((7, 3))]
    b = [rng.standard_normal(7), rng.standard_normal(3)]
    x = rng.standard_normal((40, 5))
    ref = calibrate_mlp(w, b, [True, False], x)
    h = np.maximum(x @ w[0] + b[0], 0)
    s = [np.abs(x).max() / 127, np.abs(h).max() / 127, np.abs(h @ w[1] + b[1]).max() / 127]
    for l, relu in enumerate((True, False)):
        got, _ = quantize_layer(w[l], b[l], relu, s[l], s[l + 1])
        for f in ("weight", "bias", "mult", "shift"):
            assert np.array_equal(getattr(got, f), getattr(ref.layers[l], f)), (l, f)


def test_pooled_features_within_their_bound():
    """Step 3: each int8 feature times its scale is the pooled float value
    within half a step plus the row-wise quantization error (half a row
    scale per element and row) plus the fixed-point error."""
    cfg = small("ml-med")
    p = init_params(cfg, seed=2, table_scale=0.5)
    qs = synthetic_queries(cfg, 6, 40, user_bag=4, seed=2)
    fm = StageModel(p)
    for bits in (8, 4):
        qm = quantize_stage_model(p, qs, emb_bits=bits)
        for q in qs:
            u, i = qm.int8_features(q)
            a = fm.activations(q)
            nb = int(cfg.has_bottom)
            feats = [(u[nb + k], a["user_pooled"][k], ids)
                     for k, ids in enumerate(q.user_ids)]
            feats += [(i[:, k], a["item_pooled"][k], q.item_ids[:, k][:, None])
                      for k in range(len(cfg.item_tables))]
            for t, (got, want, ids) in enumerate(feats):
                s = qm.emb_scale[t]
                rs = qm.tables[t].scale.astype(np.float64)[ids]
                bound = s / 2 + rs.sum(axis=-1)[..., None] / 2 + 1e-6
                assert np.all(np.abs(got * s - want) <= bound), (bits, t)


def test_score_format():
    """The score is the last accumulator plus bias; a narrower score is that
    shifted (rounded half up) and saturated, so the order never inverts."""
    cfg = small("rm-small")
    p = init_params(cfg, seed=4, table_scale=0.5)
    qs = synthetic_queries(cfg, 3, 300, seed=4)
    q32 = quantize_stage_model(p, qs[:2], score_bits=32)
    q16 = quantize_stage_model(p, qs[:2], score_bits=16)
    assert q32.score.shift == 0 and q16.score.shift > 0
    t = q32.accumulators(qs[2])
    assert np.array_equal(q32.scores(qs[2]), t)
    s = q16.scores(qs[2])
    assert s.min() >= -(1 << 15) and s.max() < 1 << 15
    want = np.clip((t + (1 << (q16.score.shift - 1))) >> q16.score.shift, -(1 << 15),
                   (1 << 15) - 1)
    assert np.array_equal(s, want)
    o = np.argsort(t, kind="stable")
    assert np.all(np.diff(s[o]) >= 0)
    # 256 int8 levels would tie candidates; the accumulator does not.
    assert np.unique(t).size > 0.9 * t.size


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_quantized_close_to_float(name):
    """Random weights (tables uniform in +-0.5; DLRM's +-sqrt(1/rows) makes
    candidates nearly equal), calibrated on queries that include the ones
    scored (so that no range is exceeded). Stated tolerance, per query:
    correlation with the float scores >= 0.98 (int8 embeddings) / 0.95
    (int4), and after removing the mean (a per-query offset does not change
    a ranking) every score within 10% / 25% of the float scores' spread."""
    cfg = small(name, max_rows=300)
    p = init_params(cfg, seed=5, table_scale=0.5)
    cal = synthetic_queries(cfg, 24, 12, alpha=0.8, user_bag=3, seed=5)
    test = synthetic_queries(cfg, 3, 64, alpha=0.8, user_bag=3, seed=6)
    fm = StageModel(p)
    for bits, min_corr, max_err in ((8, 0.98, 0.10), (4, 0.95, 0.25)):
        qm = quantize_stage_model(p, cal + test, emb_bits=bits)
        for q in test:
            f, s = fm.scores(q), qm.scores_float(q)
            assert np.corrcoef(f, s)[0, 1] >= min_corr, bits
            err = np.abs((s - s.mean()) - (f - f.mean()))
            assert err.max() <= max_err * np.ptp(f), bits


# -- against torch --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ml-small", "ml-large", "rm-small"])
def test_float_model_against_torch_layers(name):
    """DLRM's own repository (facebookresearch/dlrm) is not pip-installable
    here, nor is torchrec; so the float model is checked against torch's own
    layers on identical weights: nn.Linear (+ReLU; the bottom MLP has ReLU
    on every layer as DLRM's create_mlp, the top MLP a linear last layer,
    DLRM's sigmoid left out), nn.EmbeddingBag(mode="sum"), and the dot
    interaction written as DLRM_Net.interact_features does it: T =
    cat([x] + ly).view(B, -1, d), Z = bmm(T, T^T), li, lj =
    tril_indices(ni, nj, offset=-1), R = cat([x, Z[:, li, lj]])."""
    torch = pytest.importorskip("torch", reason="torch is an optional extra: "
                                                "pip install torch==2.13.0")
    nn = torch.nn
    cfg = small(name)
    p = init_params(cfg, seed=7, table_scale=0.5)
    q = synthetic_queries(cfg, 1, 50, user_bag=5, seed=7)[0]

    def linear(w, b):
        lin = nn.Linear(*w.shape).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.astype(np.float64)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float64)))
        return lin

    def mlp(ws, bs, relu_last):
        mods = []
        for l, (w, b) in enumerate(zip(ws, bs)):
            mods.append(linear(w, b))
            if relu_last or l < len(ws) - 1:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    n = q.n_candidates
    with torch.no_grad():
        ly = []
        for t, ids in zip(cfg.user_tables, q.user_ids):
            bag = nn.EmbeddingBag.from_pretrained(
                torch.from_numpy(p.table(t.name).astype(np.float64)), mode="sum")
            ly.append(bag(torch.from_numpy(np.tile(ids, n)),
                          torch.arange(n) * ids.size))
        for a, t in enumerate(cfg.item_tables):
            bag = nn.EmbeddingBag.from_pretrained(
                torch.from_numpy(p.table(t.name).astype(np.float64)), mode="sum")
            ly.append(bag(torch.from_numpy(q.item_ids[:, a]), torch.arange(n)))
        x = mlp(*p.bottom, relu_last=True)(torch.from_numpy(np.tile(q.dense, (n, 1))))
        if cfg.interaction == "dot":
            d = x.shape[1]
            T = torch.cat([x] + ly, dim=1).view((n, -1, d))
            Z = torch.bmm(T, torch.transpose(T, 1, 2))
            _, ni, nj = Z.shape
            li, lj = torch.tril_indices(ni, nj, offset=-1)
            R = torch.cat([x, Z[:, li, lj]], dim=1)
        else:
            R = torch.cat([x] + ly, dim=1)
        want = mlp(*p.top, relu_last=False)(R)[:, 0].numpy()
    np.testing.assert_allclose(StageModel(p).scores(q), want, rtol=1e-12, atol=1e-12)
