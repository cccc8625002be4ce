"""The device format's static-cache pinning (host.device_format): the rows
picked, the LOAD_CACHE frame, and the refusals; through the hardware in
tests/test_top_cocotb.py. The stage programs' refusals: stage counts,
sub-batches, a bottom MLP the bottom MLP unit cannot run."""

import numpy as np
import pytest
from amaranth.hdl import Shape

from host.device_format import DeviceFormat
from host.driver import CompiledModel
from host.movielens import synthetic_queries
from host.pipeline import PipelineSpec
from host.protocol import Opcode
from hw.config import Config
from hw.loader import record_header
from hw.mlp_isa import Opcode as EOp
from sim.tb_top import cached_tiny, tiny_stage


@pytest.fixture(scope="module")
def setup():
    model = tiny_stage(3, rows=40)
    queries = synthetic_queries(model.config, 6, 20, user_bag=3, seed=5)
    return CompiledModel(PipelineSpec("one", ("s",), (3,)), {"s": model}), queries


def test_pin_hot_rows_picks_the_most_frequent_rows_per_channel(setup):
    compiled, queries = setup
    cfg = cached_tiny()
    fmt = DeviceFormat(cfg)
    pinned = fmt.pin_hot_rows(compiled, queries)
    table, rows = pinned.pinned["s"]
    mcfg = compiled.stages["s"].config
    amap = fmt.tables(compiled.stages["s"]).address_map
    counts = {t.name: np.zeros(t.rows, np.int64) for t in mcfg.tables}
    for q in queries:
        for t, ids in zip(mcfg.user_tables, q.user_ids):
            np.add.at(counts[t.name], ids, 1)
        np.add.at(counts[mcfg.item_tables[0].name], q.item_ids[:, 0], 1)
    for c in range(cfg.embedding.channels):
        names = {t.name for t in amap.tables if t.kind == "channel" and t.unit == c}
        mine = [(mcfg.tables[t].name, r) for t, r in zip(table.tolist(), rows.tolist())
                if mcfg.tables[t].name in names]
        assert 0 < len(mine) <= cfg.embedding.static_rows
        got = sorted(counts[n][r] for n, r in mine)
        # a pinned row is looked up at least as often as any row left out of
        # its set (ways permitting: here the sets are never the limit for the
        # most frequent row)
        left = [counts[n][r] for n in names for r in range(counts[n].size)
                if (n, r) not in mine]
        assert max(got) >= max(left) and min(got) > 0
    frames, _ = fmt.compile(pinned)
    assert [op for op, _ in frames] == [Opcode.LOAD_TABLES, Opcode.LOAD_WEIGHTS,
                                        Opcode.LOAD_CACHE, Opcode.CONFIGURE_STAGES]
    # without pinned rows, no LOAD_CACHE
    assert Opcode.LOAD_CACHE not in [op for op, _ in fmt.compile(compiled)[0]]


def test_pinning_needs_a_static_cache(setup):
    compiled, queries = setup
    fmt = DeviceFormat(Config.preset("tiny"))
    with pytest.raises(ValueError, match="no static cache"):
        fmt.pin_hot_rows(compiled, queries)
    pinned = DeviceFormat(cached_tiny()).pin_hot_rows(compiled, queries)
    with pytest.raises(ValueError, match="no static cache"):
        fmt.compile(pinned)


def test_bad_pinned_rows_are_refused(setup):
    compiled, _ = setup
    fmt = DeviceFormat(cached_tiny())
    import dataclasses
    twice = dataclasses.replace(compiled, pinned={"s": (np.array([2, 2]), np.array([1, 1]))})
    with pytest.raises(ValueError, match="twice"):
        fmt.compile(twice)
    past = dataclasses.replace(compiled, pinned={"s": (np.array([2]), np.array([40]))})
    with pytest.raises(ValueError):
        fmt.compile(past)


def test_stage_counts_and_shapes_are_checked():
    """A two-stage pipeline needs a two-stage top level; three stages never
    fit; the two stages must take the same queries (dense features, user
    bags, item ids)."""
    from sim.tb_top import tiny_stage, two_stage_tiny
    a, b = tiny_stage(1), tiny_stage(2, top=(16, 8, 1))
    two = CompiledModel(PipelineSpec("two", ("a", "b"), (6, 3)), {"a": a, "b": b})
    with pytest.raises(ValueError, match="runs 1 stage"):
        DeviceFormat(Config.preset("tiny")).compile(two)
    fmt = DeviceFormat(two_stage_tiny())
    frames, _ = fmt.compile(two)
    assert [op for op, _ in frames][-1] == Opcode.CONFIGURE_STAGES
    # stage 2's sub-batches: half of stage 1's keep, unless given
    assert [p.conf["sb_rows"] for p in fmt.programs] == [64, 3]
    fixed = DeviceFormat(two_stage_tiny(), s2_sb_rows=5)
    fixed.compile(two)
    assert [p.conf["sb_rows"] for p in fixed.programs] == [64, 5]
    with pytest.raises(ValueError, match="sb_rows: must be in 1 .. 64, not 0"):
        DeviceFormat(two_stage_tiny(), s2_sb_rows=0).compile(two)
    three = CompiledModel(PipelineSpec("three", ("a", "b", "a"), (6, 3, 1)), {"a": a, "b": b})
    with pytest.raises(ValueError, match="1 or 2 stages"):
        fmt.compile(three)
    for other in (tiny_stage(3, users=1), tiny_stage(3, dense=2)):
        mixed = CompiledModel(PipelineSpec("mixed", ("a", "c"), (6, 3)), {"a": a, "c": other})
        with pytest.raises(ValueError, match="same dense features, user bags and item ids"):
            fmt.compile(mixed)


def test_sub_batches_must_fit_half_the_activation_buffer():
    """A sub-batch runs in half of the engine's activation buffers (the other
    half takes the next one): a larger one is refused before anything runs."""
    from sim.tb_top import tiny_stage
    cfg = Config.preset("tiny")
    model = CompiledModel(PipelineSpec("one", ("s",), (3,)), {"s": tiny_stage(3, top=(16, 8, 1))})
    half = cfg.array.act_words(0) // 2
    DeviceFormat(cfg, sb_rows=cfg.array.max_rows).compile(model)   # 64 rows x 4 chunks fit
    small = Config.from_dict({**cfg.to_dict(), "array": {**cfg.to_dict()["array"],
                                                         "max_dim": 16}})
    assert small.array.act_words(0) // 2 < half
    with pytest.raises(ValueError, match="do not fit half of the engine's activation buffer"):
        DeviceFormat(small, sb_rows=small.array.max_rows).compile(model)


def test_a_candidate_is_one_word_on_default():
    """A query's candidates come one command-stream word each on the default
    preset (one item table, 16-bit positions): the stream is not what bounds
    the candidate phase (README, End to end)."""
    from hw.top import ports
    words = {n: -(-Shape.cast(l).width // 64) for n, l in ports(Config.preset("default"))}
    assert words["cand"] == 1


def test_two_stages_run_in_the_row_split():
    """The load of a two-stage model sets the mode the stages share: the row
    split in two when the array has one (each stage gets every column)."""
    from sim.tb_top import two_stage_tiny
    cfg = two_stage_tiny()
    assert cfg.array.stages_mode == (2, 1)
    a, b = tiny_stage(3, top=(16, 8, 1)), tiny_stage(4, top=(16, 8, 1))
    fmt = DeviceFormat(cfg)
    frames, _ = fmt.compile(CompiledModel(PipelineSpec("two", ("a", "b"), (6, 3)),
                                          {"a": a, "b": b}))
    assert [p.target.split for p in fmt.programs] == [(2, 1), (2, 1)]
    assert [(p.target.k_side, p.target.side, p.conf["log_side"]) for p in fmt.programs] \
        == [(2, 4, 2)] * 2
    # the SET_SPLIT (the first of engine 0's commands) names the row split
    t = fmt.programs[0].target
    set_split = t.pack(EOp.SET_SPLIT, split={"index": cfg.array.mode_index((2, 1))})
    assert cfg.array.mode_index((2, 1)) == 2
    payload = dict(frames)[Opcode.LOAD_WEIGHTS]
    engine_port = [n for n, _ in fmt.ports].index("engine")
    assert payload[0] == record_header(engine_port, len(fmt.programs[0].engine_cmds) + 1)
    assert payload[1] == set_split & (1 << 64) - 1


def test_a_bottom_mlp_the_unit_cannot_run_is_refused():
    """The bottom MLP runs on the stage's bottom MLP unit (hw.wide.RowMLP):
    one deeper than ``stage.bottom_layers``, wider than ``stage.max_bottom``
    or with a layer without ReLU is refused before anything is sent, and a
    unit narrower than the bottom output cannot be configured."""
    import copy
    import dataclasses
    from sim.tb_top import tiny_stage
    cfg = Config.preset("tiny")
    stage = tiny_stage(3)                               # bottom MLP 3-8-4
    model = CompiledModel(PipelineSpec("one", ("s",), (3,)), {"s": stage})
    DeviceFormat(cfg).compile(model)
    for change in ({"bottom_layers": 1}, {"max_bottom": 7}):
        with pytest.raises(ValueError, match="bottom MLP of 2 layers up to 8 wide"):
            DeviceFormat(cfg.replace(stage=change)).compile(model)
    linear = copy.deepcopy(stage)
    linear.bottom.layers[-1] = dataclasses.replace(linear.bottom.layers[-1],
                                                     relu=False)
    with pytest.raises(ValueError, match="ReLU on every layer"):
        DeviceFormat(cfg).compile(CompiledModel(model.spec, {"s": linear}))
    with pytest.raises(ValueError, match="^stage.max_bottom: 3 is less than stage.dim 4"):
        cfg.replace(stage={"max_bottom": 3})


def test_the_first_layer_has_a_second_parameter_region():
    """With a user pass, the first top layer's parameters are loaded twice:
    at ``p0_base`` (0) and at ``p0_alt``, past every layer's entries, word
    for word the same; the stage writes each query's biases into one region
    and then the other (hw.stage). Where the parameter memory has no room
    for the second, ``p0_alt`` is ``p0_base``."""
    from sim.tb_top import tiny_stage
    cfg = Config.preset("tiny")
    stage = tiny_stage(3)
    assert stage.user_layer is not None
    model = CompiledModel(PipelineSpec("one", ("s",), (3,)), {"s": stage})

    def params(param_words):
        fmt = DeviceFormat(cfg.replace(array={"param_words": param_words}))
        fmt.compile(model)
        prog = fmt.programs[0]
        t = prog.target
        words = [t.cmd_layout.from_bits(c).args.param for c in prog.engine_cmds
                 if t.cmd_layout.from_bits(c).op == EOp.WRITE_PARAM]
        return prog.conf, {(p.addr, p.lane): (p.bias, p.mult, p.shift) for p in words}, t.side

    conf, words, side = params(cfg.array.param_words)
    n_p = sum(-(-layer.out_dim // side) for layer in stage.layers[:-1])
    n_p0 = -(-stage.layers[0].out_dim // side)
    assert conf["p0_base"] == 0 and conf["p0_alt"] == n_p
    assert len(words) == (n_p + n_p0) * side
    for (addr, lane), w in words.items():
        if addr < n_p0:
            assert words[addr + n_p, lane] == w
    conf, words, _ = params(n_p + n_p0 - 1)
    assert conf["p0_alt"] == conf["p0_base"] == 0 and len(words) == n_p * side
