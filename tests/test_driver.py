"""The driver over the golden transport: answers equal the golden pipeline's,
no query lost or duplicated far above saturation, the modelled queue's
timing exactly, every bad frame answered with its status while the next
query is still served, percentiles against numpy, the JSON report. A
synthetic model (init_params + synthetic_queries): no torch, no data set."""

import json

import numpy as np
import pytest

from benchmarks.e2e import synthetic_setup
from hw.config import Config
from host import protocol as P
from host.driver import (Accelerator, DeviceError, GoldenTransport, percentile,
                         poisson_arrivals)
from host.models import Query
from host.pipeline import run_pipeline
from host.protocol import Frame, Opcode, Status
from tests.test_protocol import MALFORMED


@pytest.fixture(scope="module")
def setup():
    params, model, queries = synthetic_setup(n_queries=24, n_candidates=96, keep=(32, 8),
                                             max_rows=300, user_bag=4)
    return params, model, queries


def loaded(model, preset="tiny"):
    acc = Accelerator(GoldenTransport(preset))
    acc.load(model, chunk_rows=128)     # several chunks per table
    return acc


def same(answer, want):
    return (answer.ok and np.array_equal(answer.positions, want.positions)
            and np.array_equal(answer.scores, want.scores))


def test_answers_are_the_golden_pipelines(setup):
    _, model, queries = setup
    acc = loaded(model)
    assert acc.ping() == P.VERSION
    report = acc.run(queries, rate_qps=None, progress=False, check=False)
    assert len(report.answers) == len(queries)
    for a, q in zip(report.answers, queries):
        want = run_pipeline(model.spec, model.stages, q)
        assert same(a, want)
        assert np.array_equal(a.candidates, q.candidates[want.positions])
        assert a.positions.size == model.spec.keep[-1]
    # The float reference differs from the int8 pipeline somewhere, and the
    # quality figures say how much (they are not all 1).
    q = report.quality
    assert 0 < q["recall10_vs_float"] <= 1 and 0 < q["ndcg10_vs_float"] <= 1


def test_far_above_saturation_nothing_lost_or_duplicated(setup):
    _, model, queries = setup
    acc = loaded(model)
    many = list(queries) * 3
    report = acc.run(many, rate_qps=1e12, seed=3, progress=True)
    assert [a.index for a in report.answers] == list(range(len(many)))
    assert len({a.tag for a in report.answers[:len(queries)]}) == len(queries)
    assert report.errors == 0 and report.answers_wrong == 0
    assert report.answers_checked == len(many)
    assert report.counters["queries"] == len(many) and not acc.unexpected
    # Saturated: the device never idles from the first arrival to the last answer.
    busy = report.counters["busy_cycles"]
    assert report.answers[-1].done == report.answers[0].arrival + busy
    lat = report.latency_cycles
    assert lat[-1] > 10 * lat[0]


def test_modelled_service_time_and_fifo_queue(setup):
    """Each query's service is the roofline, computed here from the config by
    hand, and the queue is first come first served:
    done_i = max(arrival_i, done_(i-1)) + service_i."""
    _, model, queries = setup
    cfg = Config.preset("tiny")
    acc = loaded(model)
    clock = cfg.clock_mhz
    t0 = acc.transport.now()
    report = acc.run(queries, rate_qps=2e5, seed=5, progress=False, quality=False)
    assert np.array_equal([a.arrival - t0 for a in report.answers],
                          poisson_arrivals(len(queries), 2e5, clock, 5))
    prev = None
    emb = cfg.embedding
    for a, q in zip(report.answers, queries):
        res = run_pipeline(model.spec, model.stages, q)
        n, nbytes = q.n_candidates, 0
        for s, name in enumerate(model.spec.stages):
            m = model.stages[name]
            row = -(-(8 + m.config.embedding_dim) // emb.bus_bytes) * emb.bus_bytes  # int8
            nbytes += (sum(b.size for b in q.user_ids) + n) * row
            n = res.survivors[s].size
        service = max(-(-res.macs // cfg.array.dim ** 2),
                      -(-nbytes // (emb.channels * emb.bus_bytes)))
        start = a.arrival if prev is None else max(a.arrival, prev)
        assert a.done == start + service
        prev = a.done
    s = report.summary()
    assert s["p50_us"] == pytest.approx(s["p50_cycles"] / clock)


def test_poisson_arrivals():
    a = poisson_arrivals(20000, 1e6, 200.0, seed=1)
    assert np.all(np.diff(a) >= 0) and a.dtype == np.int64
    # Mean gap: 200 cycles at 1e6 queries/s and 200 MHz (5 standard errors).
    assert abs(np.diff(a).mean() - 200) < 5 * 200 / np.sqrt(a.size)
    assert np.array_equal(a, poisson_arrivals(20000, 1e6, 200.0, seed=1))
    assert not poisson_arrivals(5, None, 200.0).any()
    with pytest.raises(ValueError):
        poisson_arrivals(5, 0, 200.0)


def test_percentile_against_numpy():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        x = rng.integers(0, 20, size=n) if rng.random() < 0.5 else rng.exponential(5, n)
        for q in (0, 1, 50, 95, 99, 99.9, 100, float(rng.uniform(0, 100))):
            assert percentile(x, q) == pytest.approx(np.percentile(x, q), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


# -- bad input: an error answer, and the next query is served ------------------------------

def serves_next(acc, model, query):
    acc.submit(query)
    (a,) = acc.wait_all()
    assert same(a, run_pipeline(model.spec, model.stages, query))


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_frames_then_served(setup, kind):
    _, model, queries = setup
    acc = loaded(model)
    data, status, echoes = MALFORMED[kind]
    ans = acc.send_raw(data)
    assert ans.status == status
    assert ans.tag == (7 if echoes else 0)
    assert ans.opcode == (Opcode.PING if status == Status.MALFORMED_FRAME and echoes
                          else Opcode.NONE)
    assert P.error_text(ans)
    serves_next(acc, model, queries[0])
    assert acc.counters()["errors"] == 1


def query_words(q):
    return P.encode_query(q.dense, q.user_ids, q.item_ids)


def test_bad_commands_get_their_status_then_served(setup):
    _, model, queries = setup
    acc = loaded(model)
    q = queries[1]
    rows = model.stages[model.spec.stages[0]].config.tables
    item_rows = [t.rows for t in rows if t.side == "item"][0]
    user_rows = rows[0].rows
    bad_item = Query(q.dense, q.user_ids, np.full_like(q.item_ids, item_rows))
    bad_user = Query(q.dense, (np.array([user_rows]),) + q.user_ids[1:], q.item_ids)
    words = query_words(q)
    cases = [
        (Opcode.SUBMIT_QUERY, query_words(bad_item), Status.BAD_ID),
        (Opcode.SUBMIT_QUERY, query_words(bad_user), Status.BAD_ID),
        (Opcode.SUBMIT_QUERY, words[:-1], Status.BAD_PAYLOAD),
        (Opcode.SUBMIT_QUERY, P.encode_query(q.dense[:-1], q.user_ids, q.item_ids),
         Status.BAD_PAYLOAD),
        (Opcode.SUBMIT_QUERY, P.encode_query(q.dense, q.user_ids, q.item_ids[:0]),
         Status.BAD_PAYLOAD),
        (Opcode.PING, [1], Status.BAD_PAYLOAD),
        (Opcode.CONFIGURE_STAGES, P.encode_stages([(5, 3)]), Status.NOT_LOADED),
        (Opcode.CONFIGURE_STAGES, P.encode_stages([(99, 3)]), Status.BAD_ID),
        (Opcode.CONFIGURE_STAGES, P.encode_stages([(0, 0)]), Status.BAD_CONFIG),
        (Opcode.CONFIGURE_STAGES, P.encode_stages([]), Status.BAD_CONFIG),
        (Opcode.LOAD_CACHE, P.encode_cache(0, [0], [user_rows]), Status.BAD_ID),
        (Opcode.LOAD_CACHE, P.encode_cache(0, [9], [0]), Status.BAD_ID),
        (Opcode.LOAD_CACHE, P.encode_cache(0, [0, 0], [1, 1]), Status.BAD_PAYLOAD),
        (Opcode.LOAD_CACHE, P.encode_cache(0, [0, 1], [1, 1]), Status.OK),
        (Opcode.LOAD_TABLES, P.encode_table_chunk(P.TableChunk(
            0, 0, user_rows, np.zeros((1, 8), np.uint8), [0], [0])), Status.BAD_ID),
        (Opcode.LOAD_TABLES, P.encode_table_chunk(P.TableChunk(
            0, 7, 0, np.zeros((1, 8), np.uint8), [0], [0])), Status.BAD_ID),
        (Opcode.LOAD_TABLES, P.encode_table_chunk(P.TableChunk(
            0, 0, 0, np.zeros((1, 3), np.uint8), [0], [0])), Status.BAD_PAYLOAD),
        (Opcode.LOAD_TABLES, P.encode_table_chunk(P.TableChunk(
            6, 0, 0, np.zeros((1, 8), np.uint8), [0], [0])), Status.NOT_LOADED),
    ]
    for opcode, payload, status in cases:
        if opcode == Opcode.SUBMIT_QUERY:
            tag = acc._tag()
            acc._pending[tag] = (0, acc.transport.now(), np.arange(q.n_candidates))
            acc.transport.send(P.encode_frame(Frame(opcode, tag, 0, payload)))
            (a,) = acc.wait_all()
            got, msg = a.status, a.message
        else:
            f = acc.command(opcode, payload, check=False)
            got, msg = f.status, P.error_text(f)
        assert got == status, (opcode, status, msg)
        assert (msg != "") == (status != Status.OK)
        serves_next(acc, model, q)
    with pytest.raises(DeviceError, match="BAD_CONFIG"):
        acc.command(Opcode.CONFIGURE_STAGES, P.encode_stages([]))


def test_query_before_weights_then_served(setup):
    _, model, queries = setup
    acc = Accelerator(GoldenTransport("tiny"))
    acc.submit(queries[0])
    (a,) = acc.wait_all()
    assert a.status == Status.NOT_LOADED and "no stages" in a.message
    # Weights but not every table row: the stages cannot be configured.
    name = model.spec.stages[0]
    acc.command(Opcode.LOAD_WEIGHTS, P.encode_weights(0, model.stages[name]))
    f = acc.command(Opcode.CONFIGURE_STAGES, P.encode_stages([(0, 4)]), check=False)
    assert f.status == Status.NOT_LOADED
    acc.load(model)
    serves_next(acc, model, queries[0])
    # Reloading a slot drops the stage configuration that uses it.
    acc.command(Opcode.LOAD_WEIGHTS, P.encode_weights(0, model.stages[name]))
    acc.submit(queries[1])
    (a,) = acc.wait_all()
    assert a.status == Status.NOT_LOADED


def test_device_bug_is_an_error_answer(setup, monkeypatch):
    _, model, queries = setup
    acc = loaded(model)
    dev = acc.transport.device
    real = dev._query
    monkeypatch.setattr(dev, "_query", lambda q: 1 // 0)
    acc.submit(queries[0])
    (a,) = acc.wait_all()
    assert a.status == Status.DEVICE_ERROR and "ZeroDivisionError" in a.message
    monkeypatch.setattr(dev, "_query", real)
    serves_next(acc, model, queries[0])


def test_submit_refuses_reordered_positions(setup):
    _, model, queries = setup
    acc = loaded(model)
    with pytest.raises(ValueError, match="positions"):
        acc.submit(queries[0].subset(np.arange(10)[::-1]))


def test_report_json(setup, tmp_path):
    _, model, queries = setup
    acc = loaded(model, "default")
    positives = np.array([q.candidates[3] for q in queries])
    report = acc.run(queries[:6], rate_qps=1e5, progress=False, positives=positives)
    plots = report.write_plots(tmp_path)
    d = json.loads(report.write_json(tmp_path / "r" / "report.json").read_text())
    assert d["queries"] == 6 and d["answers_ok"] == 6 and d["errors"] == 0
    assert d["answers_checked"] == 6 and d["answers_wrong"] == 0
    assert d["latency_source"].startswith("modelled")
    assert d["clock_mhz"] == 200.0 and d["offered_qps"] == 1e5
    assert d["latency_us"] == pytest.approx([c / 200.0 for c in d["latency_cycles"]])
    assert d["p99_cycles"] == pytest.approx(np.percentile(d["latency_cycles"], 99))
    # (each answered a latency after its arrival; they arrive in order)
    arrival = np.array(d["done_cycles"]) - np.array(d["latency_cycles"])
    assert arrival[0] >= 0 and np.all(np.diff(arrival) >= 0)
    assert {"ndcg10", "hr10", "ndcg10_float", "hr10_float"} <= set(d["quality"])
    assert plots == [str(tmp_path / "latency_cdf.png")] and (tmp_path / "latency_cdf.png").exists()
