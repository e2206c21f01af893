"""TOML configuration: errors name the file and the dotted key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from edgebridge.config import ConfigError, check, load_config


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
