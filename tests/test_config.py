"""TOML configuration: errors name the file and the dotted key."""

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest

from edgebridge.config import ConfigError, check, check_finite_fields, from_dict, load_config, loads_config


@dataclass(frozen=True)
class LoopCfg:
    rate_hz: float = 100.0
    mode: Literal["thread", "process"] = "thread"

    def __post_init__(self):
        check(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")


@dataclass(frozen=True)
class RobotCfg:
    name: str
    loop: LoopCfg = field(default_factory=LoopCfg)
    joints: tuple[float, ...] = ()


def write(tmp_path, text):
    p = tmp_path / "robot.toml"
    p.write_text(text)
    return p


def test_loads_nested(tmp_path):
    cfg = load_config(write(tmp_path, 'name = "panda"\njoints = [1, 2.5]\n[loop]\nrate_hz = 500\n'), RobotCfg)
    assert cfg.loop.rate_hz == 500.0 and cfg.joints == (1.0, 2.5) and cfg.loop.mode == "thread"


@pytest.mark.parametrize("text, msg", [
    ('name = "a"\n[loop]\nrate_hz = -5\n', r"robot.toml: loop.rate_hz: must be > 0, got -5.0"),
    ('name = "a"\n[loop]\nrate = 5\n', r"loop.rate: unknown key"),
    ('name = "a"\n[loop]\nrate_hz = "fast"\n', r"loop.rate_hz: expected a number"),
    ('name = "a"\n[loop]\nmode = "fiber"\n', r"loop.mode: expected one of"),
    ('[loop]\nrate_hz = 5\n', r"name: required key is missing"),
    ('name = \n', r"not valid TOML"),
])
def test_errors_name_the_key(tmp_path, text, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(write(tmp_path, text), RobotCfg)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", RobotCfg)


@dataclass(frozen=True)
class OptsCfg:
    name: str = "x"
    options: dict = field(default_factory=dict)
    scale: float = 1.0
    count: int = 1
    flag: bool = False
    points: tuple[tuple[float, ...], ...] = ()


@pytest.mark.parametrize("text, msg", [
    ("scale = inf", r"^<string>: scale = inf: must be a finite number$"),
    ("scale = -inf", r"scale = -inf: must be a finite number"),
    ("scale = nan", r"scale = nan: must be a finite number"),
    ("points = [[1.0, nan]]", r"points\[0\]\[1\] = nan: must be a finite number"),
    ("options = {a = {b = [1.0, inf]}}", r"options.a.b\[1\] = inf: must be a finite number"),
    ("options = 7", r"options: expected a table, got int 7"),
    ("scale = {a = 1}", r"scale: expected a number, got dict"),
    ("scale = true", r"scale: expected a number, got bool True"),
    ("count = 1.0", r"count: expected an integer, got float 1.0"),
    ("count = false", r"count: expected an integer, got bool False"),
    ("flag = 1", r"flag: expected true or false, got 1"),
    ("flagg = true", r"flagg: unknown key; did you mean 'flag'\? known keys: count, flag, name, options, points, scale"),
    ("zzz = 1", r"zzz: unknown key; known keys: count"),
])
def test_loads_config_refuses_with_one_line(text, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        loads_config(text, OptsCfg)
    assert "\n" not in str(e.value)


def test_from_dict_refuses_what_toml_cannot_hold():
    with pytest.raises(ConfigError, match=r"scale = 10{30}.*: must be a finite number"):
        from_dict(OptsCfg, {"scale": 10 ** 400})  # float() would raise OverflowError
    with pytest.raises(ConfigError, match="1: unknown key"):
        from_dict(OptsCfg, {1: 2, "name": "a"})


def test_not_utf8_file(tmp_path):
    p = tmp_path / "robot.toml"
    p.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"robot.toml: not UTF-8 text \(byte 0xe9 at offset 11\); save the file"):
        load_config(p, RobotCfg)


def test_check_finite_fields_covers_configs_built_in_code():
    @dataclass(frozen=True)
    class C:
        limits: tuple[float, ...] = (1.0,)
        table: dict = field(default_factory=dict)

        def __post_init__(self):
            check_finite_fields(self)

    C((1.0, 2.0), {"a": 1.0})
    with pytest.raises(ConfigError, match=r"limits\[1\] = inf"):
        C((1.0, math.inf))
    with pytest.raises(ConfigError, match=r"table.a = nan"):
        C(table={"a": math.nan})
