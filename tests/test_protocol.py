"""The wire format (host/protocol.py): frames and header bits, every
malformed-frame kind and its status, payload records, and the command
payloads round-tripped, the stage weights down to bit-identical scores."""

import numpy as np
import pytest

from host import protocol as P
from host.models import init_params, stage_preset
from host.movielens import synthetic_queries
from host.pipeline import build_scorers
from host.protocol import Frame, Opcode, ProtocolError, Status

COMMANDS = [op for op in Opcode if op != Opcode.NONE]


def raw(words) -> bytes:
    return np.asarray(words, "<u8").tobytes()


# -- frames -----------------------------------------------------------------------------

def test_header_bits_and_byte_order():
    h = P.encode_header(Opcode.SUBMIT_QUERY, 0x1234, 0, 3)
    assert h == 0xA5_000003_1234_00_06
    data = P.encode_frame(Frame(Opcode.SUBMIT_QUERY, 0x1234, 0, [1, 2, 3]))
    assert len(data) == 32
    assert data[0] == 6 and data[2:4] == b"\x34\x12" and data[4] == 3 and data[7] == 0xA5
    assert data[8:16] == (1).to_bytes(8, "little")
    assert P.decode_header(h) == (6, 0x1234, 0, 3, 0xA5)


def test_random_frames_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 40))
        payload = rng.integers(0, 1 << 64, size=n, dtype=np.uint64)
        tag = int(rng.integers(0, 1 << 16))
        cmd = Frame(COMMANDS[int(rng.integers(len(COMMANDS)))], tag, 0, payload)
        got = P.decode_frame(P.encode_frame(cmd))
        assert got == cmd and isinstance(got.opcode, Opcode)
        assert np.array_equal(got.payload, payload)
        ans = Frame(rng.choice(list(Opcode)), tag, rng.choice(list(Status)), payload)
        assert P.decode_frame(P.encode_frame(ans), response=True) == ans


def test_frame_fields_are_checked():
    for kw in ({"opcode": 256}, {"tag": 1 << 16}, {"status": -1}, {"opcode": True}):
        args = {"opcode": 1, "tag": 0, "status": 0, **kw}
        with pytest.raises(ValueError):
            Frame(**args)
    with pytest.raises(ValueError, match="payload"):
        Frame(1, 0, 0, [-1])
    with pytest.raises(ValueError, match="payload"):
        Frame(1, 0, 0, np.array([-3], np.int64))
    with pytest.raises(TypeError):
        P.decode_frame("not bytes")


def _good(tag=7, payload=(1, 2)):
    return P.encode_frame(Frame(Opcode.PING, tag, 0, list(payload)))


#: Every malformed-frame kind of the module docstring: bytes, status, whether
#: the answer echoes the header's tag.
MALFORMED = {
    "empty": (b"", Status.MALFORMED_FRAME, False),
    "short header": (b"\x01\x00\x07", Status.MALFORMED_FRAME, False),
    "bad magic": (raw([P.encode_header(1, 7, 0, 0) ^ (1 << 60)]), Status.MALFORMED_FRAME, False),
    "partial word": (_good() + b"\x00\x01\x02", Status.MALFORMED_FRAME, True),
    "truncated": (_good()[:-8], Status.MALFORMED_FRAME, True),
    "too long": (_good() + bytes(8), Status.MALFORMED_FRAME, True),
    "status set": (raw([P.encode_header(1, 7, 3, 0)]), Status.MALFORMED_FRAME, True),
    "opcode 0": (raw([P.encode_header(0, 7, 0, 0)]), Status.UNKNOWN_COMMAND, True),
    "opcode 99": (raw([P.encode_header(99, 7, 0, 0)]), Status.UNKNOWN_COMMAND, True),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_frames_raise_the_documented_status(kind):
    data, status, echoes = MALFORMED[kind]
    with pytest.raises(ProtocolError) as e:
        P.decode_frame(data)
    assert e.value.status == status
    assert e.value.tag == (7 if echoes else 0)


def test_response_with_unknown_status_is_refused():
    with pytest.raises(ProtocolError, match="status"):
        P.decode_frame(raw([P.encode_header(1, 0, 99, 0)]), response=True)


# -- records ----------------------------------------------------------------------------

def test_records_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        u = rng.integers(0, 1 << 32, size=int(rng.integers(0, 9)))
        f = rng.standard_normal(int(rng.integers(0, 5)))
        text = "".join(rng.choice(list("abcé✓ "), size=int(rng.integers(0, 20))))
        tensors = []
        for dt in P.DTYPES.values():
            shape = tuple(int(s) for s in rng.integers(0, 4, size=int(rng.integers(0, 4))))
            a = (rng.standard_normal(shape) * 100).astype(dt) if dt.kind == "f" else \
                rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, size=shape, dtype=dt,
                             endpoint=True)
            tensors.append(a)
        w = P.PayloadWriter().word(5, 1 << 63).u32(u).f64(f).text(text)
        for a in tensors:
            w.tensor(a)
        r = P.PayloadReader(w.words(), "test")
        assert (r.word(), r.word()) == (5, 1 << 63)
        assert np.array_equal(r.u32(u.size), u)
        assert np.array_equal(r.f64(f.size), f)
        assert r.text() == text
        for a in tensors:
            b = r.tensor()
            assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
        r.end()


def test_reader_refuses_overruns_and_leftovers():
    words = P.PayloadWriter().word(1).text("hello").words()
    r = P.PayloadReader(words[:-1], "x")
    r.word()
    with pytest.raises(ProtocolError, match="BAD_PAYLOAD"):
        r.text()
    r = P.PayloadReader(np.append(words, 0).astype(np.uint64), "x")
    r.word()
    r.text()
    with pytest.raises(ProtocolError, match="left over"):
        r.end()
    # A tensor whose shape claims more than the payload holds: refused, not allocated.
    huge = np.array([1 | 2 << 8, 1 << 40, 1 << 40], np.uint64)
    with pytest.raises(ProtocolError, match="needs"):
        P.PayloadReader(huge, "x").tensor()
    with pytest.raises(ProtocolError, match="dtype code"):
        P.PayloadReader(np.array([77], np.uint64), "x").tensor()
    with pytest.raises(ProtocolError, match="UTF-8"):
        P.PayloadReader(np.array([2, 0xFFFF], np.uint64), "x").text()
    with pytest.raises(ValueError):
        P.PayloadWriter().u32([-1])


# -- command payloads -------------------------------------------------------------------

def test_query_payload_round_trip_and_layout():
    dense = [0.5, -1.25]
    bags = [[3, 4, 5], [], [1 << 31]]
    items = np.array([[1, 2], [3, 4], [5, 6]])
    words = P.encode_query(dense, bags, items)
    assert words[:4].tolist() == [2, 3, 3, 2]
    assert words[4:6].view("<f8").tolist() == dense
    assert words[6] == 3 | 0 << 32 and words[7] == 1       # lengths 3, 0 | 1
    q = P.decode_query(words)
    assert q.dense.tolist() == dense
    assert [b.tolist() for b in q.user_bags] == bags
    assert q.item_ids.tolist() == items.tolist()
    with pytest.raises(ProtocolError, match="BAD_PAYLOAD"):
        P.decode_query(words[:-1])
    with pytest.raises(ProtocolError, match="left over"):
        P.decode_query(np.append(words, 0).astype(np.uint64))
    nan = words.copy()
    nan[4] = np.array([np.nan]).view(np.uint64)[0]
    with pytest.raises(ProtocolError, match="finite"):
        P.decode_query(nan)
    with pytest.raises(ValueError):
        P.encode_query(dense, [[-1]], items)
    with pytest.raises(ValueError):
        P.encode_query([np.inf], [], items)


def test_result_counters_stages_cache_round_trip():
    pos, scores = np.array([5, 0, 9]), np.array([-(1 << 40), 3, -1])
    p, s = P.decode_result(P.encode_result(pos, scores))
    assert p.tolist() == pos.tolist() and s.tolist() == scores.tolist()
    c = {n: i * 1000 + 1 for i, n in enumerate(P.COUNTERS)}
    assert P.decode_counters(P.encode_counters(c)) == c
    assert P.decode_stages(P.encode_stages([(0, 64), (1, 10)])) == [(0, 64), (1, 10)]
    slot, t, r = P.decode_cache(P.encode_cache(2, [0, 1], [5, 7]))
    assert (slot, t.tolist(), r.tolist()) == (2, [0, 1], [5, 7])


@pytest.fixture(scope="module")
def stages():
    cfg = stage_preset("ml-med", max_rows=300)
    params = {"m": init_params(cfg, seed=3, table_scale=0.5)}
    calib = synthetic_queries(cfg, 32, 16, user_bag=4, seed=1)
    queries = synthetic_queries(cfg, 4, 64, user_bag=4, seed=2)
    sc = build_scorers(params, calib, ("int8", "int4"))
    return sc["int8"]["m"], sc["int4"]["m"], queries


def _over_the_wire(model, chunk_rows):
    from host.embedding import FixedPointTable
    w = P.decode_weights(P.decode_frame(P.encode_frame(
        Frame(Opcode.LOAD_WEIGHTS, 1, 0, P.encode_weights(2, model)))).payload)
    assert w.slot == 2
    chunks = [P.decode_table_chunk(P.encode_table_chunk(c))
              for c in P.table_chunks(2, model, chunk_rows)]
    tables = []
    for t in range(len(model.fixed)):
        cs = sorted((c for c in chunks if c.table == t), key=lambda c: c.first_row)
        tables.append(FixedPointTable(np.concatenate([c.codes for c in cs]),
                                      np.concatenate([c.scale_q for c in cs]),
                                      np.concatenate([c.bias_q for c in cs]),
                                      model.emb_bits, model.frac_bits))
    return w, P.build_stage(w, tables)


def test_stage_weights_round_trip_bit_exact(stages):
    for model in stages[:2]:
        _, back = _over_the_wire(model, chunk_rows=70)
        assert back.config == model.config and back.score == model.score
        for q in stages[2]:
            assert np.array_equal(back.scores(q), model.scores(q))


def test_bad_weights_are_bad_payload(stages):
    model = stages[0]
    words = P.encode_weights(0, model)
    bad_format = words.copy()
    bad_format[1] = 9
    with pytest.raises(ProtocolError, match="format 9"):
        P.decode_weights(bad_format)
    w, _ = _over_the_wire(model, 1000)
    missing = P.StageWeights(0, w.meta, {k: v for k, v in w.tensors.items()
                                         if k != "top.0.mult"})
    with pytest.raises(ProtocolError, match="top.0.mult"):
        P.build_stage(missing, model.fixed)
    wrong = dict(w.tensors)
    wrong["top.1.weight"] = wrong["top.1.weight"][:-1]
    with pytest.raises(ProtocolError, match="BAD_PAYLOAD"):
        P.build_stage(P.StageWeights(0, w.meta, wrong), model.fixed)
    with pytest.raises(ProtocolError, match="unexpected"):
        P.build_stage(P.StageWeights(0, w.meta, {**w.tensors, "x": np.zeros(1)}), model.fixed)
