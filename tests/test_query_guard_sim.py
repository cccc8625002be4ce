# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the query guard (hw/query_guard.py): random query
frames, well formed and broken (cut short, a part missing, repeated or out
of order, wrong delimiters, stage 2's parts while stage 1 runs alone, an
error from the router), with random stalls on every stream. Checked three
ways: every stage's output is well formed (each frame one query with the
configured counts), well-formed frames pass unchanged and ``OK``, and
everything matches a model of the rules beat for beat."""

import random

import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.command import Status
from hw.config import Config
from hw.loader import qtag_layout
from hw.query_guard import QueryGuard
from hw.top import stage_engines
from tests.amaranth_streams import run_bounded, stream_get, stream_put

TWO = Config.preset("tiny").replace(name="tiny-2stage", stage={"stages": 2,
                                                                "max_candidates": 64})


def _layouts(guard):
    return {n: guard.signature.members[f"i_{n}"].signature.members["payload"].shape
            for n in guard.parts}


def _good_frame(r, parts, layouts, n_pooled, dense_chunks):
    """The beats of a well-formed query, in wire order."""
    out = []
    for name in parts:
        s = int(name.startswith("s2_"))
        kind = name[3:] if s else name
        if kind == "q":
            out.append((name, {"k": r.randrange(1, 9)}))
        elif kind == "dense":
            lanes = layouts[name]["data"].shape.length
            out += [(name, {"data": [r.randrange(-128, 128) for _ in range(lanes)],
                            "last": c == dense_chunks[s] - 1}) for c in range(dense_chunks[s])]
        elif kind == "ubags":
            for b in range(n_pooled[s]):
                n = r.randrange(1, 4)
                t = r.randrange(8)
                out += [(name, {"lookup": {"table": t, "id": r.randrange(1 << 10),
                                           "last": i == n - 1, "empty": 0},
                                "item": 0, "group_last": b == n_pooled[s] - 1})
                        for i in range(n)]
        else:
            n = r.randrange(1, 7)
            out += [(name, {"pos": r.randrange(64), "ids": [r.randrange(1 << 10)],
                            "left": n - 1 - c}) for c in range(n)]
    return out


def _break(r, beats, parts, how):
    """``beats`` broken the way ``how`` says."""
    beats = list(beats)
    names = [n for n, _ in beats]
    if how == "cut" and beats:
        return beats[:r.randrange(len(beats))]
    if how == "drop_part":
        p = r.choice(parts)
        return [b for b in beats if b[0] != p]
    if how == "repeat_q":
        b = ("q", {"k": 3})
        return beats[:names.index("q") + 1] + [b] + beats[names.index("q") + 1:]
    if how == "swap" and len(set(names)) >= 2:
        # a part's beats moved to the end (out of order)
        p = r.choice(sorted(set(names))[:-1] if len(set(names)) > 1 else names)
        return [b for b in beats if b[0] != p] + [b for b in beats if b[0] == p]
    if how == "delimiter" and beats:
        i = r.randrange(len(beats))
        name, b = beats[i]
        b = {**b}
        kind = name[3:] if name.startswith("s2_") else name
        if kind == "dense":
            b["last"] = not b["last"]
        elif kind == "ubags":
            b["group_last"] = not b["group_last"]
        elif kind == "cand":
            b["left"] = r.choice([b["left"] + 1, max(b["left"] - 1, 0), 200])
        else:
            b["k"] = 5
        beats[i] = (name, b)
        return beats
    if how == "many" and "cand" in names:
        # the first candidate says there are more than a query may have
        i = names.index("cand")
        beats[i] = ("cand", {**beats[i][1], "left": 200})
        return beats
    if how == "extra" and beats:
        name, b = r.choice(beats)
        i = max(k for k, (n, _) in enumerate(beats) if n == name)
        return beats[:i + 1] + [(name, b)] + beats[i + 1:]
    return beats


def _model(guard, frames, n_pooled, dense_chunks, one, limits, lanes):
    """The guard's output, by its rules (module documentation)."""
    parts = guard.parts
    two = len(parts) > 4
    end_at = 4 if two and one else len(parts)
    lim = (limits[1] if one else limits[0]) - 1
    out = {p: [] for p in parts}
    tags = []
    for beats, (tag, status) in frames:
        st = {"q": [0, 0], "dense": [0, 0], "ubags": [0, 0], "open": [0, 0], "table": [0, 0],
              "left": None, "fin": False}
        bad = False

        def split(p):
            name = parts[p]
            return (name[3:], 1) if name.startswith("s2_") else (name, 0)

        def complete(p):
            kind, s = split(p)
            if kind == "q":
                return st["q"][s] == 1
            if kind == "dense":
                return st["dense"][s] == dense_chunks[s]
            if kind == "ubags":
                return st["ubags"][s] == n_pooled[s]
            return st["fin"]

        def emit(p, b):
            kind, s = split(p)
            if kind == "q":
                st["q"][s] = 1
                return b
            if kind == "dense":
                b = {**b, "last": st["dense"][s] == dense_chunks[s] - 1}
                st["dense"][s] += 1
                return b
            if kind == "ubags":
                b = {**b, "item": 0, "group_last": st["ubags"][s] == n_pooled[s] - 1}
                st["open"][s] = not b["lookup"]["last"]
                st["table"][s] = b["lookup"]["table"]
                st["ubags"][s] += b["lookup"]["last"]
                return b
            want = st["left"] if st["left"] is not None else min(b["left"], lim)
            st["left"], st["fin"] = want - 1, want == 0
            return {**b, "left": want}

        def stand_in(p):
            kind, s = split(p)
            if kind == "q":
                return emit(p, {"k": 1})
            if kind == "dense":
                return emit(p, {"data": [0] * lanes, "last": 0})
            if kind == "ubags":
                t = st["table"][s] if st["open"][s] else 0
                return emit(p, {"lookup": {"table": t, "id": 0, "last": 1, "empty": 1},
                                "item": 0, "group_last": 0})
            if st["left"] is None:
                st["left"] = 0
            return emit(p, {"pos": 0, "ids": [0], "left": 0})

        cur = 0

        def fill(to):
            nonlocal cur, bad
            while cur < to:
                if complete(cur):
                    cur += 1
                else:
                    out[parts[cur]].append(stand_in(cur))
                    bad = True

        for name, b in beats:
            j = parts.index(name)
            if (two and one and j >= 4) or j < cur or (j == cur and complete(cur)):
                bad = True
                continue
            fill(j)
            e = emit(j, b)
            bad |= e != b
            out[name].append(e)
        fill(end_at)
        tags.append({"tag": tag, "status": status if status != Status.OK
                     else Status.BAD_PAYLOAD if bad else Status.OK})
    return out, tags


def _check_well_formed(guard, out, n_frames, n_pooled, dense_chunks, one, limits):
    """Each stage got ``n_frames`` whole queries, whatever came in."""
    two = len(guard.parts) > 4
    for name in guard.parts:
        s = int(name.startswith("s2_"))
        kind = name[3:] if s else name
        got = out[name]
        if s and one:
            assert got == [], name
            continue
        if kind == "q":
            assert len(got) == n_frames, name
        elif kind == "dense":
            assert len(got) == n_frames * dense_chunks[s], name
            assert [b["last"] for b in got] == \
                [c == dense_chunks[s] - 1 for c in range(dense_chunks[s])] * n_frames, name
        elif kind == "ubags":
            ends = [b for b in got if b["lookup"]["last"]]
            assert len(ends) == n_frames * n_pooled[s], name
            bag = 0
            for b in got:
                assert b["group_last"] == (bag % n_pooled[s] == n_pooled[s] - 1), name
                bag += b["lookup"]["last"]
        else:
            lim = limits[1] if one else limits[0]
            lefts = [b["left"] for b in got]
            queries, prev = 0, 0
            for v in lefts:
                if prev == 0:
                    assert v < lim, lefts
                    queries += 1
                else:
                    assert v == prev - 1, lefts
                prev = v
            assert prev == 0 and queries == n_frames, lefts
    assert two or not one


def _run(guard, frames, n_pooled, dense_chunks, one, seed, counts):
    """The guard's outputs: ``counts[part]`` beats of each (then none more)."""
    r = random.Random(seed)
    layouts = _layouts(guard)
    got = {n: [] for n in guard.parts}
    tags = []
    want_tags = len(frames)
    done = []

    async def conf(ctx):
        for s in range(len(n_pooled)):
            ctx.set(guard.n_pooled[s], n_pooled[s])
            ctx.set(guard.dense_chunks[s], dense_chunks[s])
        ctx.set(guard.one, one)

    async def source(ctx):
        await ctx.tick()
        for beats, (tag, status) in frames:
            for name, b in beats:
                await stream_put(ctx, getattr(guard, f"i_{name}"), b, rng=r, idle=0.3)
            await stream_put(ctx, guard.i_qtag, {"tag": tag, "status": status}, rng=r,
                             idle=0.3)
        done.append("source")

    def sink(name):
        async def process(ctx):
            for _ in range(counts[name]):
                b = await stream_get(ctx, getattr(guard, f"o_{name}"), rng=r, stall=0.4)
                got[name].append(_as_dict(layouts[name], b))
            done.append(name)
        return process

    async def tag_sink(ctx):
        while len(tags) < want_tags:
            t = await stream_get(ctx, guard.o_qtag, rng=r, stall=0.4)
            tags.append({"tag": t.tag, "status": Status(t.status)})
        await ctx.tick().repeat(50)         # nothing more comes
        extra = [n for n in guard.parts if ctx.get(getattr(guard, f"o_{n}").valid)]
        assert not extra, extra
        done.append("tags")

    sim = Simulator(guard)
    sim.add_clock(1e-8)
    sim.add_testbench(conf)
    sim.add_testbench(source)
    for name in guard.parts:
        sim.add_testbench(sink(name))
    sim.add_testbench(tag_sink)
    run_bounded(sim, 1e-8 * 200_000)
    assert sorted(done) == sorted(["source", "tags", *guard.parts]), done
    return got, tags


def _as_dict(layout, v):
    """A payload as plain values (as the model writes them)."""
    if isinstance(layout, data.StructLayout):
        return {k: _as_dict(f.shape, v[k]) for k, f in layout}
    if isinstance(layout, data.ArrayLayout):
        return [_as_dict(layout.elem_shape, v[i]) for i in range(layout.length)]
    return int(v)


def _normal(out):
    """Booleans as ints, as the hardware gives them."""
    if isinstance(out, dict):
        return {k: _normal(v) for k, v in out.items()}
    if isinstance(out, list):
        return [_normal(v) for v in out]
    return int(out)


@pytest.mark.parametrize("two, one, n_pooled, dense_chunks, seed", [
    (False, 0, (2,), (2,), 0),
    (False, 0, (0,), (0,), 1),          # no user bags, no bottom MLP
    (True, 0, (1, 3), (1, 2), 2),
    (True, 1, (3, 1), (2, 1), 3),       # stage 1 alone: stage 2's parts are dropped
])
def test_every_frame_is_one_whole_query(two, one, n_pooled, dense_chunks, seed):
    cfg = TWO if two else Config.preset("tiny")
    limits = (64, 256) if two else (256, 256)
    guard = QueryGuard(stage_engines(cfg, layouts_only=True), limit=limits)
    layouts = _layouts(guard)
    r = random.Random(seed)
    frames, good = [], []
    for n in range(40):
        beats = _good_frame(r, guard.parts, layouts, n_pooled, dense_chunks)
        if one:
            beats = [b for b in beats if not b[0].startswith("s2_")]
        how = r.choice(["good", "good", "cut", "drop_part", "repeat_q", "swap", "delimiter",
                        "many", "extra", "router", "empty"] + (["s2"] if one else []))
        status = Status.OK
        if how == "router":
            status = r.choice([Status.MALFORMED_FRAME, Status.BAD_PAYLOAD])
        elif how == "empty":
            beats = []
        elif how == "s2":
            beats = beats + [("s2_q", {"k": 2})]
        else:
            beats = _break(r, beats, guard.parts, how)
        frames.append((beats, (n, status)))
        good.append(how == "good")
    lanes = layouts["dense"]["data"].shape.length
    want, want_tags = _model(guard, frames, n_pooled, dense_chunks, one, limits, lanes)
    got, tags = _run(guard, frames, n_pooled, dense_chunks, one, seed,
                     {n: len(v) for n, v in want.items()})
    _check_well_formed(guard, got, len(frames), n_pooled, dense_chunks, one, limits)
    # well-formed frames: unchanged, OK (the model says so too)
    for (beats, _), ok, t in zip(frames, good, tags):
        if ok:
            assert t["status"] == Status.OK, t
    assert [t["status"] for t in want_tags if t["tag"] in
            [n for n, ok in enumerate(good) if ok]] == [Status.OK] * sum(good)
    assert any(t["status"] == Status.BAD_PAYLOAD for t in tags)
    assert tags == want_tags
    assert got == _normal(want)


def test_rejects_bad_arguments():
    stages = stage_engines(Config.preset("tiny"), layouts_only=True)
    with pytest.raises(ValueError, match="limit"):
        QueryGuard(stages, limit=0)
    with pytest.raises(ValueError, match="stages"):
        QueryGuard([], limit=4)
    assert QueryGuard(stages, limit=4).parts == ["q", "dense", "ubags", "cand"]
    assert qtag_layout().size == 24
