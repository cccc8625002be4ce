"""The config: presets, validation that names the field, TOML/JSON/C output."""

import json
import tomllib

import pytest

from hw.config import ArrayConfig, Config, PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name, tmp_path):
    cfg = Config.preset(name)
    assert cfg.name == name
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert Config.from_toml(path) == cfg
    d = json.loads(cfg.to_json())
    assert d["array"]["dim"] == cfg.array.dim
    assert d["derived"]["sub_arrays"] == max(r * c for r, c in cfg.array.modes)
    assert f"#define RECACCEL_ARRAY_DIM {cfg.array.dim}" in cfg.to_c_header()


def test_modes():
    """Square splits, then row splits; a port is as wide as its widest mode."""
    a = Config.preset("default").array
    assert a.modes == ((1, 1), (2, 2), (2, 1))
    assert [a.mode_sides(m) for m in a.modes] == [(16, 16), (8, 8), (8, 16)]
    assert (a.mode(2), a.mode_index((2, 1)), a.stages_mode) == ((2, 2), 2, (2, 1))
    assert [a.engine_lanes(e) for e in range(a.engines)] == [16, 16]
    assert a.sub_arrays == 4
    b = ArrayConfig(dim=16, block=4, splits=(1,), row_splits=(2, 4), engines=4)
    assert b.modes == ((1, 1), (2, 1), (4, 1)) and b.sub_arrays == 4
    assert [b.engine_lanes(e) for e in range(4)] == [16] * 4
    assert b.stages_mode == (2, 1)
    with pytest.raises(ValueError, match="split: 2 is not one of the array's modes"):
        b.mode(2)
    with pytest.raises(ValueError, match="array.engines"):
        ArrayConfig(dim=16, block=4, splits=(1,), row_splits=(2,), engines=3)


def test_toml_with_preset_base(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "tiny"\nname = "mine"\n[array]\ndim = 8\nblock = 4\n')
    cfg = Config.from_toml(path)
    assert (cfg.name, cfg.array.dim, cfg.array.max_rows) == ("mine", 8, 64)


@pytest.mark.parametrize("changes, field", [
    ({"dim": 0}, "array.dim"),
    ({"dim": -4}, "array.dim"),
    ({"dim": 6, "block": 4}, "array.block"),
    ({"block": 0}, "array.block"),
    ({"splits": (1, 3)}, "array.splits"),
    ({"splits": (2,)}, "array.splits"),
    ({"splits": (1, 8)}, "array.splits"),     # 16/8 = 2 is not a multiple of block 4
    ({"splits": (1, 2, 2)}, "array.splits"),
    ({"row_splits": (1,)}, "array.row_splits"),
    ({"row_splits": (3,)}, "array.row_splits"),
    ({"row_splits": (8,)}, "array.row_splits"),     # 16/8 = 2 rows, not a multiple of 4
    ({"row_splits": (2, 2)}, "array.row_splits"),
    ({"engines": 5}, "array.engines"),        # 2x2 = 4 sub-arrays at most
    ({"engines": 0}, "array.engines"),
    ({"acc_rows": 0}, "array.acc_rows"),
    ({"max_rows": 0}, "array.max_rows"),
    ({"weight_words": 3}, "array.weight_words"),
    ({"max_layers": 0}, "array.max_layers"),
    ({"dsp": "xilinx"}, "array.dsp"),
    ({"dim": 1.5}, "array.dim"),
    ({"colour": 3}, "array.colour"),
])
def test_invalid_array_fields_are_named(changes, field):
    with pytest.raises(ValueError, match=rf"^{field}: .*"):
        Config.preset("default").replace(array=changes)


def test_invalid_top_level_fields():
    with pytest.raises(ValueError, match="^clock_mhz: .*0"):
        Config(clock_mhz=0)
    with pytest.raises(ValueError, match="^preset: unknown preset 'huge'"):
        Config.preset("huge")
    with pytest.raises(ValueError, match="^name: "):
        Config(name="")
    with pytest.raises(ValueError, match="^stage.fetch_depth: .*2"):
        Config.preset("default").replace(stage={"fetch_depth": 2})


def test_bad_toml_is_reported(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[array]\ndim = 'big'\n")
    with pytest.raises(ValueError, match="array.dim: must be an integer, not 'big'"):
        Config.from_toml(path)


def test_derived_values():
    a = ArrayConfig(dim=16, block=4, splits=(1, 2, 4), engines=16)
    assert [a.engine_lanes(e) for e in (0, 1, 3, 4, 15)] == [16, 8, 8, 4, 4]
    assert a.psum_bits == 16 + 4 + 1
    assert a.act_words(0) == a.max_rows * a.max_dim // 16
