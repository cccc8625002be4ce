"""cocotb tests of the accelerator's top level (:mod:`hw.top`) in Verilator,
driven by the host driver (:class:`host.driver.Accelerator`) over the
simulation transport in the device format (:class:`host.device_format.DeviceFormat`):
a quantized one-stage "dot" model loaded (its tables into the AXI memory
models, which answer with random latency), queries streamed, and every
answer compared with the golden pipeline (:func:`host.pipeline.run_pipeline`),
bit for bit; random stalls on the command and answer streams.

:func:`build_top` (plain Python) builds the cached Verilator model.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np

from host import protocol as P
from host.device_format import DeviceFormat, RecordWriter
from host.driver import Accelerator, CompiledModel, DeviceError, answer_right
from host.models import StageModelConfig, TableSpec, init_params, quantize_stage_model
from host.movielens import synthetic_queries
from host.pipeline import PipelineSpec, run_pipeline
from hw.config import Config
from hw.mlp_isa import Opcode as EOp
from sim import runner
from sim.axi_mem import AxiReadMemory
from sim.build import design_verilog
from sim.runner import read_tb_config
from sim.streams import random_pauses, reset, start_clock
from sim.transport import SimTransport

__all__ = ["TOPLEVEL", "build_top", "tiny_stage", "cached_tiny", "two_stage_tiny", "run_job"]

TOPLEVEL = "recaccel_top"


def _records(fmt: DeviceFormat, words) -> list:
    """A payload's records: ``(port name, words)``, header first."""
    from amaranth.hdl import Shape
    names = [n for n, _ in fmt.ports]
    nw = [-(-Shape.cast(layout).width // 64) for _, layout in fmt.ports]
    words, out, i = [int(w) for w in words], [], 0
    while i < len(words):
        port, count = words[i] & 0xFF, words[i] >> 8
        n = 1 + count * nw[port]
        out.append((names[port], words[i:i + n]))
        i += n
    return out


def broken_queries(fmt: DeviceFormat, query) -> list:
    """``(what, opcode, payload words)`` of frames a host should never send: a
    query's records cut short, missing, out of order, repeated, or beside a
    load's, and a load with a query's record. Each is answered
    ``BAD_PAYLOAD`` (the queries as such, so that those after them are
    right)."""
    recs = _records(fmt, fmt.query(query))
    flat = [w for _, r in recs for w in r]
    names = [n for n, _ in recs]
    cand = names.index("cand")
    q = P.Opcode.SUBMIT_QUERY
    return [
        ("cut short", q, flat[:-1]),
        ("no candidates", q, [w for n, r in recs if n != "cand" for w in r]),
        ("candidates first", q, recs[cand][1] + [w for n, r in recs if n != "cand"
                                                 for w in r]),
        ("twice", q, flat + flat),
        ("a weight in it", q, flat + [int(w) for w in RecordWriter(fmt.ports).add(
            "engine", fmt.programs[0].engine_cmds[:1]).words()]),
        # (a load of weights or tables would also unload the model)
        ("a load with a query's record", P.Opcode.CONFIGURE_STAGES, recs[0][1]),
        ("no records", q, []),
    ]


def build_top(cfg: Config | None = None, *, waves: bool = False):
    """The Verilator build of the top level (``tiny`` by default):
    ``(runner, toplevel)``."""
    from hw.top import Accelerator
    cfg = cfg or Config.preset("tiny")
    src = design_verilog(cfg, Accelerator, TOPLEVEL, "top")
    build_dir = runner.default_build_root() / "builds" / f"{TOPLEVEL}-{cfg.name}"
    return runner.build([src], TOPLEVEL, build_dir, waves=waves), TOPLEVEL


def tiny_stage(seed: int, *, dense: int = 3, users: int = 2, rows: int = 40,
               top: tuple = (8, 1)):
    """A quantized MovieLens-like "dot" stage that fits the tiny top level."""
    cfg = Config.preset("tiny")
    tables = tuple([TableSpec(f"u{t}", rows, "user") for t in range(users)]
                   + [TableSpec("item", rows, "item")])
    dim = cfg.stage.dim
    mcfg = StageModelConfig("tiny-dot", dense, (8, dim) if dense else (), tables, dim, "dot",
                            top)
    params = init_params(mcfg, seed=seed, table_scale=0.5)
    calib = synthetic_queries(mcfg, 16, 8, user_bag=3, seed=seed + 100)
    return quantize_stage_model(params, calib, emb_bits=8, score_bits=cfg.topk.score_bits,
                                max_bag=cfg.embedding.max_bag)


async def _device(dut, cfg: Config, fmt: DeviceFormat, *, latency, seed: int,
                  idle: float = 0.0, memory_bytes: int = 1 << 16) -> SimTransport:
    """Clock and reset ``dut``, give each AXI port a memory model of
    ``memory_bytes`` answering with random ``latency`` (cycles, a range),
    and return the simulation transport, with random stalls of rate
    ``idle`` on the command and answer streams."""
    start_clock(dut, 10)
    await reset(dut, dut.clk, 3)
    memories = [np.zeros(memory_bytes, np.uint8) for _ in range(cfg.embedding.channels)]
    for c, mem in enumerate(memories):
        AxiReadMemory(dut, f"m{c}", dut.clk, memory=mem, reset=dut.rst,
                      latency=tuple(latency), seed=seed + c)
    r = random.Random(seed)
    idle_a, idle_b = (random_pauses(random.Random(r.random()), idle) if idle else None
                      for _ in range(2))
    return SimTransport(dut, dut.clk, clock_mhz=cfg.clock_mhz, reset=dut.rst, idle=idle_a,
                        backpressure=idle_b, payload_format=fmt, memories=memories)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_queries_through_the_top_level(dut):
    """A query before anything is loaded; the load; queries in flight together
    (more than the device can take at once), each answer against the golden
    pipeline; a query with an id past its table (``BAD_ID``) and a bad frame,
    each followed by queries that must still be right."""
    from cocotb.task import bridge
    tb = read_tb_config()
    cfg = Config.preset("tiny")
    model = tiny_stage(tb["seed"])
    keep = tb["keep"]
    spec = PipelineSpec("one stage", ("s",), (keep,))
    compiled = CompiledModel(spec, {"s": model})
    queries = synthetic_queries(model.config, tb["queries"], tb["candidates"], user_bag=3,
                                seed=tb["seed"] + 7)
    fmt = DeviceFormat(cfg, sb_rows=tb["sb_rows"])
    transport = await _device(dut, cfg, fmt, latency=tb["latency"], seed=tb["seed"],
                              idle=tb["idle"])
    bad = model.config.tables[0].rows          # an id past the first user table

    def host():
        acc = Accelerator(transport, timeout_cycles=400_000)
        out = {}
        try:
            acc.command(P.Opcode.SUBMIT_QUERY, fmt_query_before_load(fmt, model, queries[0]))
            out["early"] = "answered"
        except DeviceError as e:
            out["early"] = e.status
        acc.load(compiled)
        for q in queries:
            acc.submit(q)
        out["answers"] = acc.wait_all()
        broken = type(queries[0])(queries[0].dense, (np.array([bad]),) + queries[0].user_ids[1:],
                                  queries[0].item_ids)
        acc.submit(broken)
        acc.submit(queries[1])
        out["after_bad"] = acc.wait_all()
        out["malformed"] = acc.send_raw(bytes(16)).status
        acc.submit(queries[2])
        out["after_malformed"] = acc.wait_all()
        out["version"] = acc.ping()
        out["counters"] = acc.counters()
        out["cycles"] = transport.now()
        out["broken"] = [(what, acc.command(op, words, check=False).status)
                         for what, op, words in broken_queries(fmt, queries[3])]
        acc.submit(queries[4])
        out["after_broken"] = acc.wait_all()
        # a load whose engine commands are a RUN, a write past the weights and
        # a split that does not exist (answered in the cycle after it is
        # taken): taken, but no query runs until weights are loaded again
        frames, _ = fmt.compile(compiled)
        target = fmt.programs[0].target
        bad_cmds = RecordWriter(fmt.ports).add("engine", [
            target.pack(EOp.RUN, run={"layers": 1, "rows": 2}),
            target.pack(EOp.WRITE_WEIGHTS, weights={"addr": cfg.array.weight_words}),
            target.pack(EOp.SET_SPLIT, split={"index": len(cfg.array.modes)})]).words()
        for op, words in frames:
            if op == P.Opcode.LOAD_WEIGHTS:
                words = np.concatenate([words, bad_cmds])
            out.setdefault("bad_load", []).append(acc.command(op, words, check=False).status)
        out["after_bad_load"] = acc.command(P.Opcode.SUBMIT_QUERY, fmt.query(queries[5]),
                                            check=False).status
        acc.load(compiled)
        acc.submit(queries[5])
        out["reloaded"] = acc.wait_all()
        # a configuration the stage cannot run (no item table): refused, and
        # no query runs until a good one is written
        conf = [words for op, words in frames if op == P.Opcode.CONFIGURE_STAGES][0]
        bad_conf = RecordWriter(fmt.ports).add("conf", [{**fmt.programs[0].conf,
                                                         "n_items": 0}]).words()
        out["bad_conf"] = [acc.command(P.Opcode.CONFIGURE_STAGES, bad_conf, check=False).status,
                           acc.command(P.Opcode.SUBMIT_QUERY, fmt.query(queries[0]),
                                       check=False).status,
                           acc.command(P.Opcode.CONFIGURE_STAGES, conf, check=False).status]
        acc.submit(queries[0])
        out["good_conf"] = acc.wait_all()
        # a configuration (other sub-batches) while queries run: it waits for
        # them, and they finish on the configuration they began on
        for i, q in enumerate(queries[:3]):
            acc.submit(q, index=i)
        fmt.sb_rows = fmt.sb_rows + 1
        conf = [words for op, words in fmt.compile(compiled)[0]
                if op == P.Opcode.CONFIGURE_STAGES][0]
        out["conf_among"] = acc.command(P.Opcode.CONFIGURE_STAGES, conf, check=False).status
        acc.submit(queries[3], index=3)
        out["load_among"] = acc.wait_all()
        return out

    out = await bridge(host)()
    transport.stop()
    golden = {i: run_pipeline(spec, {"s": model}, q) for i, q in enumerate(queries)}
    assert out["early"] == P.Status.NOT_LOADED
    answers = sorted(out["answers"], key=lambda a: a.index)
    assert [a.index for a in answers] == list(range(len(queries)))
    for a in answers:
        assert a.status == P.Status.OK, a.message
        g = golden[a.index]
        assert a.positions.tolist() == g.positions.tolist(), a.index
        assert a.scores.tolist() == g.scores.tolist(), a.index
    first, second = sorted(out["after_bad"], key=lambda a: a.index)
    assert first.status == P.Status.BAD_ID and "bad id" in first.message
    assert second.status == P.Status.OK
    assert second.positions.tolist() == golden[1].positions.tolist()
    assert out["malformed"] == P.Status.MALFORMED_FRAME
    (last,) = out["after_malformed"]
    assert last.status == P.Status.OK
    assert last.positions.tolist() == golden[2].positions.tolist()
    assert out["version"] == P.VERSION
    wrong = [(what, st) for what, st in out["broken"] if st != P.Status.BAD_PAYLOAD]
    assert not wrong and len(out["broken"]) == 7, wrong
    (last,) = out["after_broken"]
    assert last.status == P.Status.OK
    assert last.positions.tolist() == golden[4].positions.tolist()
    assert last.scores.tolist() == golden[4].scores.tolist()
    assert out["bad_load"] == [P.Status.OK] * len(out["bad_load"]), out["bad_load"]
    assert out["after_bad_load"] == P.Status.NOT_LOADED, out["after_bad_load"]
    (last,) = out["reloaded"]
    assert last.status == P.Status.OK
    assert last.positions.tolist() == golden[5].positions.tolist()
    assert out["bad_conf"] == [P.Status.BAD_CONFIG, P.Status.NOT_LOADED, P.Status.OK], \
        out["bad_conf"]
    (last,) = out["good_conf"]
    assert last.status == P.Status.OK
    assert last.positions.tolist() == golden[0].positions.tolist()
    assert out["conf_among"] == P.Status.OK
    among = sorted(out["load_among"], key=lambda a: a.index)
    assert [a.index for a in among] == [0, 1, 2, 3]
    for a in among:
        assert a.status == P.Status.OK, a.message
        assert a.positions.tolist() == golden[a.index].positions.tolist(), a.index
        assert a.scores.tolist() == golden[a.index].scores.tolist(), a.index
    c = out["counters"]
    n = len(queries) + 3                    # the good ones, the broken one, two after
    assert c["queries"] == n and c["macs"] == 0
    assert c["candidates"] == sum(q.n_candidates for q in queries + queries[:3]), c
    assert c["errors"] == 3, c              # NOT_LOADED, BAD_ID, MALFORMED_FRAME
    assert c["frames"] >= n + 5 and c["lookup_bytes"] > 0 and c["busy_cycles"] > 0, c
    assert not cfg.embedding.cached and c["cache_hits"] == c["cache_misses"] == 0, c
    # the stage's phases split its busy cycles; no second stage
    phases = [c[f"s1_{n}_cycles"] for n in ("bottom", "user", "items")]
    assert min(phases) > 0 and sum(phases) == c["busy_cycles"], c
    assert 0 < c["s1_engine_cycles"] < out["cycles"], c
    assert all(c[f"s2_{n}_cycles"] == 0 for n in ("bottom", "user", "items", "engine")), c
    dut._log.info(f"{len(queries)} queries of {tb['candidates']} candidates: "
                  f"{out['cycles']} cycles in all")


#: The ``tiny`` top level with static and dynamic caches (``cached_tiny``).
CACHED_TINY = {"embedding": {"static_rows": 8, "static_ways": 2, "cache_sets": 4,
                             "cache_ways": 2}}


def cached_tiny() -> Config:
    return Config.preset("tiny").replace(name="tiny-cached", **CACHED_TINY)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def test_static_cache_through_the_top_level(dut):
    """On :func:`cached_tiny`: a model loaded with the rows its queries look
    up most pinned in the static caches (``LOAD_CACHE``), queries streamed
    with random stalls and memory latency, every answer against the golden
    pipeline; the caches' counters: every row looked up counted once, as a
    hit or a miss, and every lookup of a pinned row a hit."""
    from cocotb.task import bridge
    tb = read_tb_config()
    cfg = cached_tiny()
    model = tiny_stage(tb["seed"], rows=tb["rows"])
    spec = PipelineSpec("one stage", ("s",), (3,))
    queries = synthetic_queries(model.config, tb["queries"], tb["candidates"], user_bag=3,
                                seed=tb["seed"] + 7)
    fmt = DeviceFormat(cfg, sb_rows=tb["sb_rows"])
    compiled = fmt.pin_hot_rows(CompiledModel(spec, {"s": model}), queries)
    transport = await _device(dut, cfg, fmt, latency=tb["latency"], seed=tb["seed"],
                              idle=tb["idle"])

    def host():
        acc = Accelerator(transport, timeout_cycles=400_000)
        acc.load(compiled)
        before = acc.counters()
        for q in queries:
            acc.submit(q)
        answers = acc.wait_all()
        after = acc.counters()
        return answers, {k: after[k] - before[k] for k in after}

    answers, c = await bridge(host)()
    transport.stop()
    for a in answers:
        assert a.status == P.Status.OK, a.message
        g = run_pipeline(spec, {"s": model}, queries[a.index])
        assert a.positions.tolist() == g.positions.tolist(), a.index
        assert a.scores.tolist() == g.scores.tolist(), a.index
    assert sorted(a.index for a in answers) == list(range(len(queries)))
    cfgm = model.config
    pinned = set(zip(*(x.tolist() for x in compiled.pinned["s"])))
    index = {t.name: i for i, t in enumerate(cfgm.tables)}
    # (rows of tables in on-chip banks never pass the caches)
    channel = {t.name for t in fmt.tables(model).address_map.tables if t.kind == "channel"}
    looked = pinned_looked = 0
    for q in queries:
        keys = [(index[t.name], int(i)) for t, ids in zip(cfgm.user_tables, q.user_ids)
                if t.name in channel for i in ids]
        keys += [(index[t.name], int(i)) for k, t in enumerate(cfgm.item_tables)
                 if t.name in channel for i in q.item_ids[:, k]]
        looked += len(keys)
        pinned_looked += sum(k in pinned for k in keys)
    assert len(channel) == 2 and pinned, (channel, pinned)   # one table in the bank
    assert c["cache_hits"] + c["cache_misses"] == looked, (c, looked)
    assert c["cache_hits"] >= pinned_looked > 0, (c, pinned_looked)
    dut._log.info(f"{looked} rows looked up, {pinned_looked} of them pinned; "
                  f"{c['cache_hits']} hits")


def two_stage_tiny() -> Config:
    """The ``tiny`` top level with two stages (stage 2 on engine 1)."""
    return Config.preset("tiny").replace(name="tiny-2stage",
                                         stage={"stages": 2, "max_candidates": 64})


@cocotb.test(timeout_time=300, timeout_unit="ms")
async def test_two_stages_through_the_top_level(dut):
    """On :func:`two_stage_tiny`: a two-stage pipeline (a small model keeps
    ``keep1``, a wider one re-ranks them and keeps ``keep2``) loaded, queries
    in flight together with random stalls and memory latency, every answer
    against the golden pipeline; a candidate id past its table (``BAD_ID``),
    a stage-1 ``k`` of 0 (no survivors: ``BAD_PAYLOAD``, stage 2 skips the
    query), each followed by queries that must still be right; queries in
    equal answers out; then the wider model alone (one stage, stage 2
    bypassed, on the whole array), and both stages again."""
    from cocotb.task import bridge
    tb = read_tb_config()
    cfg = two_stage_tiny()
    small = tiny_stage(tb["seed"])
    big = tiny_stage(tb["seed"] + 1, top=(16, 8, 1))
    spec = PipelineSpec("two stages", ("small", "big"), tuple(tb["keep"]))
    models = {"small": small, "big": big}
    compiled = CompiledModel(spec, models)
    alone_spec = PipelineSpec("big alone", ("big",), (spec.keep[1],))
    alone = CompiledModel(alone_spec, {"big": big})
    queries = synthetic_queries(small.config, tb["queries"], tb["candidates"], user_bag=3,
                                seed=tb["seed"] + 7)
    fmt = DeviceFormat(cfg, sb_rows=tb["sb_rows"])
    transport = await _device(dut, cfg, fmt, latency=tb["latency"], seed=tb["seed"],
                              idle=tb["idle"])
    bad = small.config.item_tables[0].rows

    def host():
        acc = Accelerator(transport, timeout_cycles=400_000)
        out = {}
        acc.load(compiled)
        for q in queries:
            acc.submit(q)
        out["answers"] = acc.wait_all()
        ids = queries[0].item_ids.copy()
        ids[-1, 0] = bad
        acc.submit(type(queries[0])(queries[0].dense, queries[0].user_ids, ids))
        acc.submit(queries[1])
        out["after_bad"] = acc.wait_all()
        keep = fmt.keep
        fmt.keep = (0,) + keep[1:]              # stage 1 keeps none: its list fails
        payload = fmt.query(queries[2])
        fmt.keep = keep
        try:
            acc.command(P.Opcode.SUBMIT_QUERY, payload)
            out["k0"] = "answered"
        except DeviceError as e:
            out["k0"] = e.status
        acc.submit(queries[3])
        out["after_k0"] = acc.wait_all()
        out["counters"] = acc.counters()
        out["broken"] = [(what, acc.command(op, words, check=False).status)
                         for what, op, words in broken_queries(fmt, queries[4])]
        acc.submit(queries[5])
        out["after_broken"] = acc.wait_all()
        # the big model alone (stage 2 bypassed, the whole array), then both again
        acc.load(alone)
        for i, q in enumerate(queries[:3]):
            acc.submit(q, index=i)
        out["alone"] = acc.wait_all()
        acc.load(compiled)
        acc.submit(queries[4], index=4)
        out["again"] = acc.wait_all()
        return out

    out = await bridge(host)()
    transport.stop()

    def right(a, q, spec=spec):
        g = run_pipeline(spec, models, q)
        assert a.status == P.Status.OK, a.message
        assert a.positions.tolist() == g.positions.tolist(), a.index
        assert a.scores.tolist() == g.scores.tolist(), a.index

    answers = sorted(out["answers"], key=lambda a: a.index)
    assert [a.index for a in answers] == list(range(len(queries)))
    for a in answers:
        right(a, queries[a.index])
    # stage 2 re-ranked: some answer is not what stage 1 alone would keep
    alone = PipelineSpec("stage 1 alone", ("small",), (spec.keep[1],))
    assert any(a.positions.tolist() != run_pipeline(alone, models, queries[a.index])
               .positions.tolist() for a in answers)
    first, second = sorted(out["after_bad"], key=lambda a: a.index)
    assert first.status == P.Status.BAD_ID, first.status
    right(second, queries[1])
    assert out["k0"] == P.Status.BAD_PAYLOAD, out["k0"]
    (last,) = out["after_k0"]
    right(last, queries[3])
    wrong = [(what, st) for what, st in out["broken"] if st != P.Status.BAD_PAYLOAD]
    assert not wrong and len(out["broken"]) == 7, wrong
    (last,) = out["after_broken"]
    right(last, queries[5])
    for a in out["alone"]:
        right(a, queries[a.index], alone_spec)
    assert len(out["alone"]) == 3
    (again,) = out["again"]
    right(again, queries[4])
    c = out["counters"]
    assert c["queries"] == len(queries) + 4, c
    assert c["candidates"] == sum(q.n_candidates for q in queries + queries[:4]), c
    # (stage 2 looks up its user bags and the survivors too)
    assert c["lookup_bytes"] > 0 and c["busy_cycles"] > 0, c
    # each stage's phases: within the device's busy cycles, which both cover
    busy = [sum(c[f"s{s}_{n}_cycles"] for n in ("bottom", "user", "items")) for s in (1, 2)]
    assert 0 < max(busy) <= c["busy_cycles"] <= sum(busy), c
    assert all(c[f"s{s}_{n}_cycles"] > 0 for s in (1, 2)
               for n in ("bottom", "user", "items", "engine")), c
    dut._log.info(f"{len(queries)} queries of {tb['candidates']} candidates through two "
                  f"stages, keep {tuple(tb['keep'])}")


def fmt_query_before_load(fmt: DeviceFormat, model, query) -> np.ndarray:
    """A device-format query for ``model`` without loading it (compiled on the
    host only), to send before the device has anything."""
    spec = PipelineSpec("one stage", ("s",), (1,))
    fmt.compile(CompiledModel(spec, {"s": model}))
    return fmt.query(query)


def run_job(config: Config, model: CompiledModel, queries, *, sb_rows: int, latency,
            rates=(None,), fractions=(), sequential: bool = False, positives=None,
            quality: bool = True, seed: int = 0, memory_bytes: int = 1 << 20,
            timeout_cycles: int = 2_000_000, log_file=None) -> list[dict]:
    """Build the top level of ``config`` (cached) and run :func:`run_queries`
    on it in one simulation: ``model`` loaded, ``queries`` streamed once per
    offered rate of ``rates`` (queries/s; ``None``: all at once), then once
    per fraction of ``fractions`` of the first run's throughput, or (with
    ``sequential``) one at a time. Returns one report per run (the driver's
    :meth:`~host.driver.RunReport.to_dict` with ``run_cycles`` and
    ``counters_delta``, the device's counters over the run). ``log_file``:
    where the simulator's output goes (default: stdout)."""
    import pickle
    import tempfile
    sim_runner, top = build_top(config)
    job = {"config": config, "model": model, "queries": list(queries), "sb_rows": sb_rows,
           "latency": list(latency), "sequential": sequential, "rates": list(rates),
           "fractions": list(fractions), "positives": positives, "quality": quality,
           "seed": seed, "memory_bytes": memory_bytes, "timeout_cycles": timeout_cycles}
    with tempfile.NamedTemporaryFile(suffix=".pkl") as f:
        pickle.dump(job, f)
        f.flush()
        return runner.run_report(sim_runner, test_module="sim.tb_top", toplevel=top,
                                 test="run_queries", tb={"job": f.name}, log_file=log_file)


@cocotb.test(timeout_time=3000, timeout_unit="sec")
async def run_queries(dut):
    """The driver over the top level: the job ``tb["job"]`` (a pickle, written
    by :func:`run_job`) loaded and streamed, every answer checked against the
    golden pipeline; the reports' JSON to ``tb["report"]``."""
    import json
    import pickle
    from cocotb.task import bridge
    tb = read_tb_config()
    with open(tb["job"], "rb") as f:
        job = pickle.load(f)
    cfg, compiled, queries = job["config"], job["model"], job["queries"]
    # (one query at a time: stage 2 in one sub-batch too)
    fmt = DeviceFormat(cfg, sb_rows=job["sb_rows"],
                       s2_sb_rows=job["sb_rows"] if job["sequential"] else None)
    transport = await _device(dut, cfg, fmt,
                              latency=job["latency"], seed=job["seed"],
                              memory_bytes=job["memory_bytes"])

    def one(acc, rate):
        before, start = acc.counters(), transport.now()
        if job["sequential"]:
            # one query at a time: each waits for the one before to be answered
            answers = []
            for i, q in enumerate(queries):
                acc.submit(q, index=i)
                answers += acc.wait_all()
            wrong = sum(not answer_right(compiled, queries[a.index], a) for a in answers)
            out = {"answers_checked": len(answers), "answers_wrong": int(wrong),
                   "latency_cycles": [int(a.latency) for a in answers]}
        else:
            out = acc.run(queries, rate_qps=rate, seed=job["seed"] + len(runs),
                          progress=False, positives=job["positives"],
                          quality=job["quality"]).to_dict()
        out["run_cycles"] = int(transport.now() - start)
        after = acc.counters()
        out["counters_delta"] = {k: after[k] - before[k] for k in after}
        return out

    runs = []

    def host():
        acc = Accelerator(transport, timeout_cycles=job["timeout_cycles"])
        acc.load(compiled)
        for rate in job["rates"]:
            runs.append(one(acc, rate))
        for f in job["fractions"]:
            runs.append(one(acc, f * runs[0]["throughput_qps"]))

    await bridge(host)()
    transport.stop()
    with open(tb["report"], "w") as f:
        json.dump(runs, f)
