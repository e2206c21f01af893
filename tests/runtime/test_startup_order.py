"""Start-up order on a real setup (``devices._real_devices``): everything that can fail without hardware
first (configuration, calibration, planner and expert load), then the camera, then the arm, last and
unpowered; the control loop powers the arm (``Arm.enable``) once it is ready. Fake drivers are registered
in ``ARM_DRIVERS`` / ``CAMERA_DRIVERS``; one test runs the real RealSense driver with no camera attached."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.errors import DeviceFaultError
from edgebridge.interfaces import DeviceBase
from edgebridge.runtime import devices as devmod
from edgebridge.runtime.config import load_robot_config, with_overrides
from edgebridge.runtime.devices import RunChoices, build_devices

from runtime_fakes import LIMITS, FakeClock, PointKinematics, RecordingArm, loop_cfg

EVENTS: list[str] = []
FAIL: set[str] = set()  # which fake step raises: "camera.connect", "arm.connect"


@dataclasses.dataclass(frozen=True)
class FakeCameraConfig:
    name: str = "cam0"


@dataclasses.dataclass(frozen=True)
class FakeArmConfig:
    port: str = "/dev/ttyFAKE"
    calibration: str = ""


class FakeCamera(DeviceBase):
    def __init__(self, config: FakeCameraConfig) -> None:
        super().__init__()
        self.name = f"fake camera {config.name}"
        self.T_base_cam = np.eye(4)
        EVENTS.append("camera.init")

    def connect(self) -> None:
        EVENTS.append("camera.connect")
        if "camera.connect" in FAIL:
            raise OSError(19, "No such device")
        super().connect()

    def disconnect(self) -> None:
        EVENTS.append("camera.disconnect")
        super().disconnect()


class FakeArm(DeviceBase):
    def __init__(self, config: FakeArmConfig) -> None:
        super().__init__()
        self.name = f"fake arm on {config.port}"
        self.torque = False
        EVENTS.append("arm.init")

    def connect(self) -> None:
        EVENTS.append("arm.connect")
        if "arm.connect" in FAIL:
            raise TimeoutError("no answer from servo 1")
        super().connect()

    def enable(self) -> None:
        EVENTS.append("arm.enable")
        self.torque = True

    def disconnect(self) -> None:
        EVENTS.append("arm.disconnect")
        super().disconnect()


@pytest.fixture()
def real_setup(monkeypatch):
    EVENTS.clear()
    FAIL.clear()
    monkeypatch.setitem(devmod.ARM_DRIVERS, "fake_arm", (__name__, "FakeArm", "FakeArmConfig"))
    monkeypatch.setitem(devmod.CAMERA_DRIVERS, "fake_camera", (__name__, "FakeCamera", "FakeCameraConfig"))
    make_planner, make_expert = devmod.make_planner, devmod.make_expert

    def planner(*a, **kw):
        p = make_planner(*a, **kw)
        EVENTS.append("planner.load")
        return p

    def expert(*a, **kw):
        if "expert.load" in FAIL:
            raise ConfigError("expert.model: file not found: missing.onnx")
        e = make_expert(*a, **kw)
        EVENTS.append("expert.load")
        return e

    monkeypatch.setattr(devmod, "make_planner", planner)
    monkeypatch.setattr(devmod, "make_expert", expert)
    cfg = load_robot_config("so101_serial")
    cfg = with_overrides(cfg, arm={"driver": "fake_arm", "options": {}},
                         camera={"driver": "fake_camera", "options": {}},
                         planner={"backend": "remote", "options": {"text_only": True}}, expert={"backend": "ik"})
    return cfg


def test_planner_and_expert_load_then_camera_then_the_arm_unpowered(real_setup):
    dev, _ = build_devices(real_setup, RunChoices(task="put the cube in the tray"))
    try:
        assert EVENTS == ["camera.init", "planner.load", "expert.load", "camera.connect", "arm.init", "arm.connect"]
        assert dev.arm.is_connected and not dev.arm.torque  # connected, not powered
    finally:
        dev.close()
    assert EVENTS[-2:] == ["arm.disconnect", "camera.disconnect"]


def test_a_failing_camera_never_opens_the_arm(real_setup):
    FAIL.add("camera.connect")
    t0 = time.monotonic()
    with pytest.raises(DeviceFaultError, match="camera fake camera cam0: could not connect: OSError"):
        build_devices(real_setup, RunChoices())
    assert time.monotonic() - t0 < 3.0
    assert "arm.init" not in EVENTS and "arm.connect" not in EVENTS


def test_a_failing_arm_closes_the_camera_again(real_setup):
    FAIL.add("arm.connect")
    with pytest.raises(DeviceFaultError, match="arm fake arm on /dev/ttyFAKE: could not connect: TimeoutError"):
        build_devices(real_setup, RunChoices())
    assert EVENTS[-1] == "camera.disconnect"


def test_a_failing_expert_load_opens_no_device(real_setup):
    FAIL.add("expert.load")
    with pytest.raises(ConfigError, match="missing.onnx"):
        build_devices(real_setup, RunChoices())
    assert "camera.connect" not in EVENTS and "arm.init" not in EVENTS


def test_a_bad_arm_option_fails_before_any_device(real_setup):
    cfg = with_overrides(real_setup, arm={"options": {"baud": 9600}})
    with pytest.raises(ConfigError, match="baud"):
        build_devices(cfg, RunChoices())
    assert EVENTS == []


def test_a_missing_realsense_fails_within_3_s_naming_the_fix_and_the_arm_stays_closed(real_setup):
    rs = pytest.importorskip("pyrealsense2")
    if len(rs.context().query_devices()):  # pragma: no cover - a camera is plugged in here
        pytest.skip("a RealSense camera is attached to this machine")
    cfg = with_overrides(real_setup, camera={"driver": "realsense", "options": {}})
    t0 = time.monotonic()
    with pytest.raises(DeviceFaultError, match="no RealSense camera is attached") as err:
        build_devices(cfg, RunChoices())
    elapsed = time.monotonic() - t0
    print(f"missing RealSense: build_devices failed in {elapsed:.2f} s")
    assert elapsed < 3.0 and "USB-3" in str(err.value)
    assert "arm.init" not in EVENTS


def test_the_nominal_calibration_is_warned_about_once(real_setup, tmp_path, caplog):
    from edgebridge.drivers.serial_arm import SO101_DEFAULT_CALIBRATION

    cfg = with_overrides(real_setup, arm={"options": {"calibration": str(SO101_DEFAULT_CALIBRATION)}})
    with caplog.at_level(logging.WARNING, logger="edgebridge.runtime.devices"):
        build_devices(cfg, RunChoices()).__getitem__(0).close()
    nominal = [r for r in caplog.records if "nominal calibration" in r.getMessage()]
    assert len(nominal) == 1 and "\n" not in nominal[0].getMessage()
    own = tmp_path / "so101_follower_a.toml"
    own.write_text(SO101_DEFAULT_CALIBRATION.read_text().replace('"so101_default"', '"so101_follower_a"'))
    assert devmod.nominal_calibration(FakeArmConfig(calibration=str(own))) is None
    assert devmod.nominal_calibration(FakeArmConfig()) is None  # an arm that calibrates itself


def test_the_loop_powers_the_arm_only_when_it_is_ready():
    from edgebridge.runtime.loop import ControlLoop

    order = []

    class PoweredArm(RecordingArm):
        def enable(self):
            order.append("enable")

        def state(self):
            order.append("state")
            return super().state()

    arm = PoweredArm()
    loop = ControlLoop(arm, LIMITS, loop_cfg(), PointKinematics(), clock=FakeClock())
    assert order == []  # building the loop does not power the arm
    loop.prepare()
    assert order == ["enable", "state"]
    order.clear()
    ControlLoop(arm, LIMITS, loop_cfg(), PointKinematics(), clock=FakeClock(), dry_run=True).prepare()
    assert order == ["state"]  # a dry run leaves the arm as it found it
