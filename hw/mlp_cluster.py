"""The MLP cluster: the reconfigurable array with the engines that drive it.

Engine ``e`` drives sub-array port ``e`` and has its own command and response
streams (``cmd_<e>``, ``resp_<e>``). The array's split is a register that
engine 0 sets with ``SET_SPLIT`` once no other engine is busy, so that two
stage engines can run side by side on a split array; while it waits, the
other engines take no command (the split lock, :class:`hw.mlp_engine.MLPEngine`).

Each engine's responses pass through two :class:`Skid` buffers in a row (valid,
payload and ready from flip-flops; place and route can put one beside the
engine's control and one beside the cluster's outputs, which may be far
apart), and its commands through its own two-register buffer, so that
nothing outside the cluster waits combinationally on an engine, nor an
engine on anything outside: commands take a cycle longer and answers two,
and an answer may come after commands taken later (its ``tag`` says whose
it is).
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from .config import ArrayConfig
from .mlp_engine import MLPEngine
from .mlp_isa import command_layout, response_layout
from .primitives import Replica, Skid
from .systolic import SystolicArray

__all__ = ["MLPCluster"]


class MLPCluster(wiring.Component):
    """``config.engines`` MLP engines on one :class:`SystolicArray`.

    Attributes
    ----------
    cmd_<e> : In(stream.Signature(command_layout(config, e)))
    resp_<e> : Out(stream.Signature(response_layout(config, e)))
    split : Out(range(len(config.modes)))
        The current mode (an index into ``config.modes``); 0 after reset.
    busy : Out(config.engines)
        Bit ``e``: engine ``e`` is busy (:attr:`hw.mlp_engine.MLPEngine.busy`).
    pending : Out(config.engines)
        Bit ``e``: engine ``e`` is busy, or a command or an answer of its
        waits in the cluster.
    """

    def __init__(self, config: ArrayConfig):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        self._config = config
        members = {"split": Out(range(len(config.modes))), "busy": Out(config.engines),
                   "pending": Out(config.engines)}
        for e in range(config.engines):
            members[f"cmd_{e}"] = In(stream.Signature(command_layout(config, e)))
            members[f"resp_{e}"] = Out(stream.Signature(response_layout(config, e)))
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.array = array = SystolicArray(cfg)
        m.d.comb += array.split.eq(self.split)
        engines = []
        for e in range(cfg.engines):
            m.submodules[f"engine{e}"] = eng = MLPEngine(cfg, engine=e)
            engines.append(eng)
            m.submodules[f"resp_near{e}"] = near = Skid(response_layout(cfg, e))
            m.submodules[f"resp_skid{e}"] = rskid = Skid(response_layout(cfg, e))
            connect(m, flipped(getattr(self, f"cmd_{e}")), eng.cmd)
            connect(m, eng.resp, near.i)
            connect(m, near.o, rskid.i)
            connect(m, rskid.o, flipped(getattr(self, f"resp_{e}")))
            connect(m, eng.array, array.port(e))
            m.d.comb += [eng.split.eq(self.split), self.busy[e].eq(eng.busy),
                         # (a Skid that holds anything has ``o.valid`` high)
                         self.pending[e].eq(eng.busy | eng.queued
                                            | near.o.valid | rskid.o.valid)]
        # the split lock (MLPEngine): registered both ways
        lock = Signal()
        m.d.sync += [lock.eq(engines[0].split_wait),
                     engines[0].peers_busy.eq(Cat(eng.busy for eng in engines[1:]).any())]
        for e, eng in enumerate(engines[1:], 1):
            # (a copy beside each engine: engine 0 and the others are far apart)
            m.submodules[f"hold{e}"] = hold = Replica(1, target=cfg.dsp)
            m.d.comb += [hold.i.eq(lock), eng.hold.eq(hold.o)]
        with m.If(engines[0].split_req):
            m.d.sync += self.split.eq(engines[0].split_value)
        # Sub-array ports with no engine are left idle (inputs zero).
        return m

