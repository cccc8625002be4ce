"""Stream helpers for amaranth.sim testbenches (after Amaranth's stream docs),
with random idle cycles and backpressure."""

import random


async def stream_put(ctx, stream, payload, *, rng: random.Random | None = None,
                     idle: float = 0.0):
    while rng is not None and rng.random() < idle:
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, rng: random.Random | None = None,
                     stall: float = 0.0):
    while rng is not None and rng.random() < stall:
        await ctx.tick()
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload
