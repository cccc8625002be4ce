"""Stream helpers for amaranth.sim testbenches (after Amaranth's stream docs),
with random idle cycles and backpressure."""

import gc
import random
import sys
import traceback

from amaranth.hdl import Value


#: Other bits for a payload while ``valid`` is low (its own generator, so
#: that the idle cycles a test's ``rng`` draws stay the same).
_NOISE = random.Random(0)


async def stream_put(ctx, stream, payload, *, rng: random.Random | None = None,
                     idle: float = 0.0):
    """Offer ``payload`` until it is taken, after random idle cycles (with
    ``rng``). While ``valid`` is low the payload is anything: with ``rng``,
    other bits in the idle cycles and after the item is taken."""
    bits = Value.cast(stream.payload)
    while rng is not None and rng.random() < idle:
        ctx.set(bits, _NOISE.getrandbits(len(bits)))
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)
    if rng is not None:
        ctx.set(bits, _NOISE.getrandbits(len(bits)))


async def stream_get(ctx, stream, *, rng: random.Random | None = None,
                     stall: float = 0.0):
    while rng is not None and rng.random() < stall:
        await ctx.tick()
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def run_bounded(sim, deadline):
    """``sim.run_until(deadline)``, then close the testbenches still waiting (a
    hang, or the others when one failed) with their errors muted: Amaranth
    0.5's triggers raise while a pending one closes, which would bury the
    test's own failure under unraisable errors. A testbench's exception is
    raised again, as an AssertionError with its traceback."""
    failure = None
    try:
        sim.run_until(deadline)
    except Exception:
        failure = traceback.format_exc()
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        del sim
        gc.collect()
    finally:
        sys.unraisablehook = hook
    if failure is not None:
        raise AssertionError(f"a testbench failed:\n{failure}")
