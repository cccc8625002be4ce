"""Access traces (host/traces.py) and the run-time MovieLens loader
(host/datasets.py): validation, Zipf statistics against theory, the lookup
stream's rows, and MovieLens-100K's published figures (skipped, saying why,
when the data cannot be had)."""

import base64

import numpy as np
import pytest

from host import datasets
from host.datasets import (MOVIELENS_100K, DatasetUnavailable, movielens_100k,
                           parse_movielens_inter)
from host.table_compiler import TableSpec, build_lookup_stream, compile_tables
from host.traces import (Trace, movielens_trace, trace_from_lookup_stream, uniform_trace,
                         zipf_probabilities, zipf_top_share, zipf_trace)
from hw.config import EmbeddingConfig


# -- Trace ------------------------------------------------------------------------

def test_trace_basics():
    tr = Trace([0, 1, 0, 1], [3, 0, 3, 1], ("a", "b"), (4, 2), unit=[0, 1, 0, 0])
    assert len(tr) == 4 and tr.tables == {"a": 4, "b": 2}
    assert tr.keys().tolist() == [3, 1 << 32, 3, (1 << 32) + 1]
    assert {k: v.tolist() for k, v in tr.counts().items()} == {"a": [0, 0, 0, 2], "b": [1, 1]}
    assert tr[1:3].row.tolist() == [0, 3] and tr[1:3].unit.tolist() == [1, 0]
    units = tr.split_units()
    assert units[0].row.tolist() == [3, 3, 1] and units[1].table.tolist() == [1]


def test_trace_errors():
    with pytest.raises(ValueError, match="access 1 reads row 2 of table 'b', which has 2 rows"):
        Trace([0, 1], [3, 2], ("a", "b"), (4, 2))
    with pytest.raises(ValueError, match="access 0 names table 2; there are 2 tables"):
        Trace([2], [0], ("a", "b"), (4, 2))
    with pytest.raises(ValueError, match="1 tables for 2 rows"):
        Trace([0], [0, 1], ("a",), (4,))
    with pytest.raises(ValueError, match="names repeat"):
        Trace([], [], ("a", "a"), (1, 1))
    with pytest.raises(ValueError, match="integers"):
        Trace([0.5], [0], ("a",), (4,))
    with pytest.raises(ValueError, match="no units"):
        Trace([0], [0], ("a",), (4,)).split_units()


# -- synthetic traces -------------------------------------------------------------

def harmonic(n, alpha):
    return sum(k ** -alpha for k in range(1, n + 1))


def test_zipf_theory():
    p = zipf_probabilities(100, 1.0)
    assert p.sum() == pytest.approx(1.0) and np.all(np.diff(p) < 0)
    # H(100) = 5.187377517639621
    assert p[0] == pytest.approx(1 / 5.187377517639621)
    assert zipf_top_share(1000, 0.8, 10) == pytest.approx(harmonic(10, 0.8) / harmonic(1000, 0.8))
    assert zipf_top_share(50, 1.0, 50) == pytest.approx(1.0)
    assert np.allclose(zipf_probabilities(7, 0.0), 1 / 7)


@pytest.mark.parametrize("alpha", [0.8, 1.0, 1.2])
def test_zipf_top_one_percent_share(alpha):
    rows, n = 100_000, 200_000
    tr = zipf_trace(rows, n, alpha=alpha, seed=1)
    counts = tr.counts()["t0"]
    top = np.sort(counts)[::-1][:rows // 100].sum() / n
    theory = zipf_top_share(rows, alpha, rows // 100)
    # the empirical top 1% is picked from the sample, so it may exceed theory a little
    assert theory - 0.01 < top < theory + 0.02
    # alpha = 1: H(1000) / H(100000) = 0.619
    if alpha == 1.0:
        assert theory == pytest.approx(harmonic(1000, 1.0) / harmonic(100_000, 1.0))
        assert theory == pytest.approx(0.619, abs=0.001)


def test_zipf_hot_rows_are_scattered_and_seeded():
    tr = zipf_trace([10_000, 10_000], 50_000, alpha=1.0, seed=4, names=("x", "y"))
    assert tr.names == ("x", "y") and tr.table[:4].tolist() == [0, 1, 0, 1]
    c = tr.counts()
    hot_x = np.argsort(c["x"])[::-1][:100]
    hot_y = np.argsort(c["y"])[::-1][:100]
    assert hot_x.max() > 1000 and np.median(hot_x) > 1000      # not rows 0 .. 99
    assert len(set(hot_x[:10]) & set(hot_y[:10])) < 3          # each table its own order
    again = zipf_trace([10_000, 10_000], 50_000, alpha=1.0, seed=4)
    assert np.array_equal(again.row, tr.row)
    assert not np.array_equal(zipf_trace([10_000, 10_000], 50_000, seed=5).row, tr.row)


def test_uniform_trace():
    tr = uniform_trace([10, 1000], 20_000, seed=2)
    c = tr.counts()
    assert c["t0"].min() > 1800 and c["t0"].max() < 2200
    assert tr.row[tr.table == 1].max() >= 990
    with pytest.raises(ValueError, match="positive integers"):
        uniform_trace([0], 10)
    with pytest.raises(ValueError, match="non-negative"):
        zipf_trace(10, -1)


# -- the lookup stream ------------------------------------------------------------

def test_trace_from_lookup_stream():
    rng = np.random.default_rng(0)
    cfg = EmbeddingConfig(channels=2, data_bits=64, addr_bits=20, id_bits=3, outstanding=8,
                          onchip_banks=1, onchip_words=64, max_tables=4, max_dim=16, max_bag=3)
    specs = [TableSpec("tiny", rng.standard_normal((5, 4)).astype(np.float32)),
             TableSpec("big", rng.standard_normal((2000, 16)).astype(np.float32)),
             TableSpec("mid", rng.standard_normal((300, 16)).astype(np.float32))]
    c = compile_tables(specs, cfg)
    amap = c.address_map
    idx = {t.name: t.index for t in amap.tables}
    assert amap.tables[idx["tiny"]].kind == "onchip"
    bags = {"tiny": [[0], [1, 2], [3]],
            "big": [[7, 8], [1999, 2000], [5, 6, 7, 8]],         # BAD_ID, then BAD_BAG
            "mid": [[1], [], [299, 0]]}
    stream = build_lookup_stream(amap, bags)
    tr = trace_from_lookup_stream(stream, amap, cfg.max_bag)
    want = []                                  # item by item, tables in table order
    for item in range(3):
        for t in amap.tables:
            if t.name == "big" and item == 0:
                want += [(t.index, 7), (t.index, 8)]
            if t.name == "mid":
                want += [(t.index, r) for r in bags["mid"][item]]
    assert list(zip(tr.table.tolist(), tr.row.tolist())) == want
    assert tr.unit.tolist() == [amap.stream_unit(t) for t, _ in want]
    assert tr.names == tuple(t.name for t in amap.tables)
    every = trace_from_lookup_stream(stream, amap, cfg.max_bag, channels_only=False)
    assert (every.table == idx["tiny"]).sum() == 4


# -- MovieLens-100K ---------------------------------------------------------------

def test_movielens_source_is_pinned():
    # the digest is the wheel RECORD's entry for the file
    assert base64.urlsafe_b64encode(bytes.fromhex(MOVIELENS_100K.sha256)).rstrip(b"=") == \
        b"Ttt04qgReMK6n_OBSV91T5lsSuo1GxJyyja0PaCTXv8"
    assert (MOVIELENS_100K.package, MOVIELENS_100K.version) == ("recbole", "1.2.1")


def test_parse_inter():
    r = parse_movielens_inter(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                              b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert r.user.tolist() == [196, 186] and r.item.tolist() == [242, 302]
    assert r.timestamp.tolist() == [881250949, 891717742] and len(r) == 2
    with pytest.raises(ValueError, match="unexpected header"):
        parse_movielens_inter(b"a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="fours"):
        parse_movielens_inter(b"user_id\n1 2 3\n")


def test_offline_without_data_says_why(tmp_path, monkeypatch):
    import importlib.metadata
    try:
        importlib.metadata.distribution("recbole")
        pytest.skip("recbole is installed here: the loader reads it, offline or not")
    except importlib.metadata.PackageNotFoundError:
        pass
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(datasets.OFFLINE_ENV, "1")
    with pytest.raises(DatasetUnavailable, match="not cached .* downloading is off"):
        movielens_100k()


@pytest.fixture(scope="module")
def ratings():
    try:
        return movielens_100k()
    except DatasetUnavailable as e:
        pytest.skip(f"MovieLens-100K unavailable: {e}")


def test_movielens_known_figures(ratings, tmp_path, monkeypatch):
    # from the data set's README: 100,000 ratings (1-5) by 943 users of 1682 movies
    assert (len(ratings), ratings.n_users, ratings.n_items) == (100_000, 943, 1682)
    assert ratings.rating.min() == 1 and ratings.rating.max() == 5
    assert ratings.user.min() == 1 and ratings.item.min() == 1
    # u.data's first line, and the most rated movie (50, Star Wars: 583 ratings)
    assert (ratings.user[0], ratings.item[0], ratings.timestamp[0]) == (196, 242, 881250949)
    assert np.bincount(ratings.item).argmax() == 50 and np.bincount(ratings.item).max() == 583
    # the cached copy serves offline
    cached = datasets.dataset_cache_dir() / MOVIELENS_100K.cache_name
    assert cached.is_file()
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / MOVIELENS_100K.cache_name).write_bytes(cached.read_bytes())
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(datasets.OFFLINE_ENV, "1")
    assert np.array_equal(movielens_100k().timestamp, ratings.timestamp)


def test_movielens_trace(ratings):
    tr = movielens_trace(ratings)
    assert len(tr) == 200_000 and tr.tables == {"item": 1682, "user": 943}
    assert tr.table[:4].tolist() == [0, 1, 0, 1]
    order = np.argsort(ratings.timestamp, kind="stable")
    assert np.all(np.diff(ratings.timestamp[order]) >= 0)
    assert tr.row[0] == ratings.item[order[0]] - 1 and tr.row[1] == ratings.user[order[0]] - 1
    c = tr.counts()
    assert c["item"][49] == 583 and c["user"].sum() == 100_000
