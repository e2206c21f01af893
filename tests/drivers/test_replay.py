"""ReplayCamera and RGBDRecorder: exact round trip, looping, pacing, errors."""

import time

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.contracts import RGBD, Intrinsics
from edgebridge.drivers.replay import ReplayCamera, ReplayConfig, RGBDRecorder
from edgebridge.errors import DeviceFaultError
from edgebridge.interfaces import Camera

INTR = Intrinsics(8, 6, 5.0, 5.5, 3.5, 2.5, "brown_conrady", np.array([0.1, -0.01, 0.001, 0.0, 0.002]))


def _frame(k, stamp):
    rng = np.random.default_rng(k)
    depth = rng.uniform(0.2, 2.0, (6, 8)).astype(np.float32)
    depth[0, 0] = 0.0
    return RGBD(rgb=rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), depth=depth, intrinsics=INTR, stamp_ns=stamp)


@pytest.fixture
def recorded(tmp_path):
    frames = [_frame(k, 1_000_000_000 + k * 20_000_000) for k in range(4)]
    with RGBDRecorder(tmp_path / "rec") as rec:
        for f in frames:
            rec.write(f)
    assert rec.count == 4
    return tmp_path / "rec", frames


@pytest.mark.parametrize("preload", [False, True])
def test_round_trip_exact(recorded, preload):
    d, frames = recorded
    cam = ReplayCamera(ReplayConfig(str(d), restamp=False, preload=preload))
    assert isinstance(cam, Camera) and np.array_equal(cam.T_base_cam, np.eye(4))
    with cam:
        for f in frames:
            g = cam.read()
            assert np.array_equal(g.rgb, f.rgb) and np.array_equal(g.depth, f.depth) and g.stamp_ns == f.stamp_ns
            assert np.array_equal(g.intrinsics.as_array(), INTR.as_array()) and g.intrinsics.width == 8
        with pytest.raises(DeviceFaultError, match="end of recording after 4 frames"):
            cam.read()


def test_loop_restamp_and_realtime(recorded):
    d, frames = recorded
    with ReplayCamera(ReplayConfig(str(d), loop=True, realtime=True)) as cam:
        t0 = time.monotonic()
        got = [cam.read() for _ in range(4)]
        elapsed = time.monotonic() - t0
        assert elapsed >= 0.055  # three 20 ms gaps
        assert all(b.stamp_ns > a.stamp_ns for a, b in zip(got, got[1:]))
        assert np.array_equal(cam.read().rgb, frames[0].rgb)  # looped


def test_errors(tmp_path, recorded):
    with pytest.raises(ConfigError, match="directory"):
        ReplayConfig(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeviceFaultError, match="no frame_"):
        ReplayCamera(ReplayConfig(str(tmp_path / "empty"))).connect()
    with pytest.raises(FileExistsError):
        RGBDRecorder(recorded[0])
    (recorded[0] / "frame_000000.npz").write_bytes(b"garbage")
    with ReplayCamera(ReplayConfig(str(recorded[0]))) as cam:
        with pytest.raises(DeviceFaultError, match="frame_000000.npz"):
            cam.read()
