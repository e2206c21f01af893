"""Robot setup files that cannot be right are refused at load time: one ConfigError line naming the file
and the dotted key, never a traceback later (OverflowError, a disabled watchdog, a failed first plan)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgebridge.config import ConfigError, load_config
from edgebridge.contracts import check_transform
from edgebridge.runtime import cli
from edgebridge.runtime.config import (CONFIG_DIR, CameraConfig, LoopConfig, RobotConfig, load_robot_config,
                                       loads_robot_config, robot_config_from_dict, with_overrides)

SIM = (CONFIG_DIR / "sim_panda.toml").read_text()
POSE = "\n[camera]\ndriver = \"sim\"\nT_base_cam = {rows}\n"
LIMITS = '[limits]\njoint_lower = [0.0]\njoint_upper = [1.0]\njoint_velocity = [1.0]\njoint_acceleration = [1.0]\n'
MINIMAL = 'name = "t"\n' + LIMITS


def write(tmp_path, text: str | bytes):
    p = tmp_path / "robot.toml"
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def refused(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        load_robot_config(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg and msg.split(": ")[0].endswith("robot.toml"), msg
    return msg


def sim_with(old: str, new: str) -> str:
    assert old in SIM, old
    return SIM.replace(old, new, 1)


def test_shipped_setups_load():
    for path in sorted(CONFIG_DIR.glob("*.toml")):
        cfg = load_robot_config(path)
        assert cfg.name == path.stem


@pytest.mark.parametrize("old, new, msg", [
    ("rate_hz = 100.0", "rate_hz = inf", "loop.rate_hz = inf: must be a finite number"),
    ("rate_hz = 100.0", "rate_hz = nan", "loop.rate_hz = nan: must be a finite number"),
    ("chunk_timeout_s = 0.5", "chunk_timeout_s = inf", "loop.chunk_timeout_s = inf: must be a finite number"),
    ("chunk_timeout_s = 0.5", "chunk_timeout_s = 1e300", "loop.chunk_timeout_s: must be <= 60 s"),
    ("blend_s = 0.1", "blend_s = -inf", "loop.blend_s = -inf: must be a finite number"),
    ("task_timeout_s = 60.0", "task_timeout_s = inf", "task_timeout_s = inf: must be a finite number"),
    ("max_frame_age_s = 1.0", "max_frame_age_s = nan", "camera.max_frame_age_s = nan"),
    ("dt = 0.1", "dt = inf", "expert.dt = inf"),
    ("guidance_dt = 0.05", "guidance_dt = 0", "perception.guidance_dt: must be > 0"),
    ("joint_velocity = [2.175,", "joint_velocity = [inf,", "limits.joint_velocity[0] = inf"),
    ("joint_acceleration = [15.0,", "joint_acceleration = [-15.0,", "limits.joint_acceleration[0]: must be > 0"),
    ("workspace_max = [0.9,", "workspace_max = [nan,", "limits.workspace_max[0] = nan"),
    ("gripper_max = 1.0", "gripper_max = inf", "limits.gripper_max = inf"),
    ("voxel_m = \"auto\"", "voxel_m = inf", "perception.voxel_m = inf"),
    ('[arm]\ndriver = "sim"', '[arm]\ndriver = "sim"\noptions = {timeout_s = inf}', "arm.options.timeout_s = inf"),
    ("max_rejections = 50", "max_rejections = 0", "loop.max_rejections: must be >= 1, got 0"),
    ("n_points = 512", "n_points = -3", "perception.n_points: must be >= 1"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(tmp_path, old, new, msg):
    assert msg in refused(tmp_path, sim_with(old, new))


@pytest.mark.parametrize("old, new, msg", [
    ('[arm]\ndriver = "sim"', '[arm]\ndriver = "sim"\noptions = 7', "arm.options: expected a table, got int 7"),
    ("rate_hz = 100.0", "rate_hz = {hz = 100}", "loop.rate_hz: expected a number, got dict"),
    ("rate_hz = 100.0", "rate_hz = true", "loop.rate_hz: expected a number, got bool True"),
    ("depth_tare = true ", "depth_tare = 1 ", "camera.depth_tare: expected true or false, got 1"),
    ("max_attempts = 3 ", "max_attempts = true ", "planner.max_attempts: expected an integer, got bool True"),
    ("horizon = 16", "horizon = 16.0", "expert.horizon: expected an integer, got float 16.0"),
    ('gc = "freeze"', 'gc = ["freeze"]', "loop.gc: expected one of"),
    ("[perception]", "perception = 3\n[perception_]", "perception_: unknown key; did you mean 'perception'?"),
])
def test_wrong_types_are_refused(tmp_path, old, new, msg):
    assert msg in refused(tmp_path, sim_with(old, new))


def test_a_table_where_a_number_belongs_and_the_reverse(tmp_path):
    assert "robot.toml: loop: expected a table, got int 7" in refused(tmp_path, 'name = "t"\nloop = 7\n' + LIMITS)
    assert "robot.toml: task_timeout_s: expected a number, got dict" in refused(
        tmp_path, MINIMAL + "[task_timeout_s]\nx = 1\n")


def test_a_typo_names_the_nearest_key(tmp_path):
    msg = refused(tmp_path, sim_with("chunk_timeout_s = 0.5", "chunk_timout_s = 0.5"))
    assert "loop.chunk_timout_s: unknown key; did you mean 'chunk_timeout_s'?" in msg


def test_a_file_that_is_not_utf8(tmp_path):
    msg = refused(tmp_path, SIM.replace("Franka", "Fr\u00e4nka").encode("latin-1"))
    assert msg.startswith(f"{tmp_path / 'robot.toml'}: not UTF-8 text (byte 0xe4") and "save the file as UTF-8" in msg


def test_a_directory_is_not_a_setup(tmp_path):
    d = tmp_path / "dir.toml"
    d.mkdir()
    with pytest.raises(ConfigError, match="dir.toml: cannot read the config file"):
        load_config(d, RobotConfig)


ROT45 = "[[0.7071, -0.7071, 0, 0.5], [0.7071, 0.7071, 0, 0], [0, 0, 1, 0.8], [0, 0, 0, 1]]"


@pytest.mark.parametrize("rows, msg", [
    ("[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]", "camera.T_base_cam: expected a 4x4 matrix"),
    ("[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]", "camera.T_base_cam: expected a 4x4 matrix"),
    ("[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, nan, 0], [0, 0, 0, 1]]", "camera.T_base_cam[2][2] = nan"),
    ("[[1, 0, 0, inf], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]", "camera.T_base_cam[0][3] = inf"),
    ("[[1, 0, 0, 0], [0, 1.01, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]", "not orthonormal: |R^T R - I| = 0.02"),
    ("[[0.707, -0.707, 0, 0], [0.707, 0.707, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]", "not orthonormal"),
    ("[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]", "determinant -1.000"),
    ("[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.1, 1]]", "camera.T_base_cam[3]: the last row"),
    ("[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 800], [0, 0, 0, 1]]", "the camera sits 800 m from the base"),
    ('"eye"', "camera.T_base_cam: expected a list"),
])
def test_camera_pose_must_be_a_rigid_transform(tmp_path, rows, msg):
    assert msg in refused(tmp_path, MINIMAL + POSE.format(rows=rows))


def test_a_rotation_typed_to_four_decimals_loads_as_an_exact_rotation(tmp_path):
    cfg = load_robot_config(write(tmp_path, MINIMAL + POSE.format(rows=ROT45)))
    T = np.array(cfg.camera.T_base_cam)
    check_transform("T_base_cam", T)  # the runtime's own (stricter) check passes
    assert np.abs(T[:3, :3].T @ T[:3, :3] - np.eye(3)).max() < 1e-12
    assert np.allclose(T[:3, 3], [0.5, 0, 0.8]) and np.allclose(T[0, 0], math.sqrt(0.5))
    again = CameraConfig(T_base_cam=cfg.camera.T_base_cam)  # idempotent
    assert again.T_base_cam == cfg.camera.T_base_cam


def test_camera_pose_given_twice_or_in_the_wrong_place(tmp_path):
    identity = "[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]"
    twice = MINIMAL + POSE.format(rows=identity) + 'options = {calibration = "c.toml"}\n'
    assert "camera.T_base_cam: the camera pose is given twice" in refused(tmp_path, twice)
    dead = MINIMAL + '[camera]\ncalibration = "c.toml"\n'
    assert "set camera.options.calibration instead" in refused(tmp_path, dead)


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match="chunk_timeout_s = inf: must be a finite number"):
        LoopConfig(chunk_timeout_s=math.inf)
    cfg = load_robot_config("sim_panda")
    with pytest.raises(ConfigError, match=r"^loop\.rate_hz = inf: must be a finite number"):
        with_overrides(cfg, loop={"rate_hz": math.inf})  # edge-run --rate inf


def test_load_from_a_string_or_a_dict_without_a_file():
    import tomllib

    assert loads_robot_config(SIM).name == "sim_panda"
    assert robot_config_from_dict(tomllib.loads(SIM)).loop.rate_hz == 100.0
    with pytest.raises(ConfigError, match=r"^<string>: loop.rate_hz = inf"):
        loads_robot_config(sim_with("rate_hz = 100.0", "rate_hz = inf"))
    with pytest.raises(ConfigError, match=r"^setup: loop: expected a table"):
        robot_config_from_dict({**tomllib.loads(SIM), "loop": 7}, name="setup")


@pytest.mark.parametrize("text, msg", [
    (sim_with("rate_hz = 100.0", "rate_hz = inf"), "loop.rate_hz = inf: must be a finite number"),
    (SIM.encode("utf-16"), "not UTF-8 text"),
])
def test_edge_run_exits_2_with_one_line(tmp_path, capsys, text, msg):
    path = write(tmp_path, text)
    rc = cli.main(["--config", str(path), "--planner", "oracle", "--expert", "ik", "--episodes", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
