"""Self-test of sim.runner and sim.streams on a tiny Amaranth stream design.

The design is built once per session into the shared build cache (see
``sim.runner.default_build_root``); all cocotb tests of ``sim.tb_selftest`` run in
one simulator launch.
"""

from __future__ import annotations

import random

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from sim import runner as sim_runner
from sim.streams import PayloadCodec, random_pauses
from sim.tb_selftest import SAMPLE

TOPLEVEL = "negating_queue"
TEST_MODULE = "sim.tb_selftest"
TB_CONFIG = {"items": 300, "seed": 20251122}


class NegatingQueue(wiring.Component):
    """Negates the ``value`` of each sample (16-bit wrap) on its way through a queue.

    Parameters
    ----------
    depth : int
        Entries in the queue between ``i`` and ``o``.
    """

    def __init__(self, *, depth: int = 2) -> None:
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"Queue depth must be a positive integer, not {depth!r}")
        self._depth = depth
        super().__init__({
            "i": In(stream.Signature(SAMPLE)),
            "o": Out(stream.Signature(SAMPLE)),
        })

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = SyncFIFO(width=SAMPLE.size, depth=self._depth)
        negated = Signal(SAMPLE)
        m.d.comb += [
            negated.value.eq(-self.i.payload.value),
            negated.last.eq(self.i.payload.last),
            queue.w_data.eq(negated),
            queue.w_en.eq(self.i.valid),
            self.i.ready.eq(queue.w_rdy),
            self.o.payload.eq(queue.r_data),
            self.o.valid.eq(queue.r_rdy),
            queue.r_en.eq(self.o.ready),
        ]
        return m


@pytest.fixture(scope="session")
def verilog_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rtl") / f"{TOPLEVEL}.v"
    path.write_text(verilog.convert(NegatingQueue(depth=2), name=TOPLEVEL))
    return path


@pytest.fixture(scope="session")
def design(verilog_file):
    return sim_runner.build([verilog_file], TOPLEVEL, sim_runner.default_build_root())


def run_selftest(design, tmp_path, **kwargs):
    env = sim_runner.write_tb_config(tmp_path / "tb_config.json", TB_CONFIG)
    return sim_runner.run(design, test_module=TEST_MODULE, toplevel=TOPLEVEL, extra_env=env,
                          results_xml=tmp_path / "results.xml", **kwargs)


def test_stream_models_match_golden_model(design, tmp_path):
    results = run_selftest(design, tmp_path, seed=1)
    ran = sorted(result.name for result in results if result.ran)
    assert ran == sorted([
        "test_full_throughput",
        "test_negation_with_random_flow/idle=0.0/backpressure=0.0",
        "test_negation_with_random_flow/idle=0.3/backpressure=0.7",
        "test_negation_with_random_flow/idle=0.5/backpressure=0.0",
        "test_negation_with_random_flow/idle=0.0/backpressure=0.5",
        "test_source_sleeps_when_empty",
    ])
    assert all(result.passed for result in results if result.ran)
    assert [result.name for result in results if not result.ran] == ["test_deliberate_failure"]


def test_filter_matching_nothing_raises(design, tmp_path):
    with pytest.raises(sim_runner.NoTestsRan):
        run_selftest(design, tmp_path, test_filter=r"no_such_test$")


def test_failures_raise_with_their_messages(design, tmp_path):
    with pytest.raises(sim_runner.SimulationFailed, match="deliberate failure for the runner self-test") as info:
        run_selftest(design, tmp_path, test_filter=r"\.test_deliberate_failure$")
    assert [(result.name, result.status) for result in info.value.results] == [
        ("test_deliberate_failure", "failed")]


def test_same_sources_hit_the_build_cache(design, verilog_file, tmp_path):
    copy = tmp_path / "elsewhere.v"  # the key is the contents, not the path
    copy.write_text(verilog_file.read_text())
    again = sim_runner.build([copy], TOPLEVEL, sim_runner.default_build_root())
    assert again.cache_hit
    assert again.build_dir == design.build_dir


def test_payload_codec_round_trips_layouts():
    codec = PayloadCodec(SAMPLE, SAMPLE.size)
    bits = codec.encode({"value": -2, "last": 1})
    assert bits == SAMPLE.const({"value": -2, "last": 1}).as_bits() == (1 << 16) | 0xFFFE
    sample = codec.decode(bits)
    assert isinstance(sample, data.Const)
    assert (sample.value, sample.last) == (-2, 1)
    assert codec.encode(sample) == bits
    plain = PayloadCodec(signed(8), 8)
    assert plain.decode(plain.encode(-128)) == -128
    with pytest.raises(ValueError):
        PayloadCodec(SAMPLE, 16)


def test_random_pauses_reproduce_from_seed():
    first = random_pauses(random.Random(7), 0.4)
    second = random_pauses(random.Random(7), 0.4)
    assert [next(first) for _ in range(100)] == [next(second) for _ in range(100)]
    with pytest.raises(ValueError):
        next(random_pauses(random.Random(7), 1.0))
