"""RealSenseCamera through librealsense itself: a software device (z16 depth + rgb8 colour) read via
``rs.syncer``, recorded with ``rs.recorder`` and played back by the driver through the playback
device's sensors. Playback is frame-exact, so the tests expect exact frames in order (no timing tolerance);
the only clocks checked are loose upper bounds that tell "returned" from "hung or waited out a timeout"."""

import time

import numpy as np
import pytest

from edgebridge.calib.calib_file import CameraCalibration
from edgebridge.config import ConfigError
from edgebridge.errors import DeviceFaultError, DeviceNotConnectedError
from edgebridge.interfaces import Camera

try:
    import pyrealsense2 as rs
except ImportError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"pyrealsense2 cannot be imported here ({e}); install edgebridge[realsense] and libusb-1.0-0",
                allow_module_level=True)

from edgebridge.drivers.realsense import (RealSenseCamera, RealSenseConfig, capture_stamp_ns,  # noqa: E402
                                          frames_to_rgbd, intrinsics_from_rs)

W, H, N_FRAMES = 64, 48, 20
UNITS = 0.001


def _rs_intr(model=None, coeffs=(0, 0, 0, 0, 0), fx=50.0):
    i = rs.intrinsics()
    i.width, i.height, i.fx, i.fy, i.ppx, i.ppy = W, H, fx, fx + 1, 31.5, 23.5
    i.model = rs.distortion.none if model is None else model
    i.coeffs = list(coeffs)
    return i


def _frames(k):
    depth = (np.arange(W * H, dtype=np.uint16).reshape(H, W) + 400 + 10 * k).astype(np.uint16)
    depth[0, 0] = 0  # no measurement
    rgb = np.random.default_rng(k).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return depth, rgb


class SoftwareCamera:
    """A librealsense software device with a depth and a colour sensor feeding a syncer."""

    def __init__(self, record_to=None):
        self.dev = rs.software_device()
        self.ds, self.cs = self.dev.add_sensor("Depth"), self.dev.add_sensor("Color")
        self.dp = self.ds.add_video_stream(self._stream(rs.stream.depth, 0, 2, rs.format.z16))
        self.cp = self.cs.add_video_stream(self._stream(rs.stream.color, 1, 3, rs.format.rgb8))
        self.ds.add_read_only_option(rs.option.depth_units, UNITS)
        ex = rs.extrinsics()
        ex.rotation, ex.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        self.dp.register_extrinsics_to(self.cp, ex)
        self.rec = rs.recorder(str(record_to), self.dev) if record_to else None
        self.sync = rs.syncer(16)
        self.ds.open(self.dp)
        self.cs.open(self.cp)
        self.ds.start(self.sync)
        self.cs.start(self.sync)

    @staticmethod
    def _stream(kind, uid, bpp, fmt):
        v = rs.video_stream()
        v.type, v.index, v.uid, v.width, v.height, v.fps, v.bpp, v.fmt = kind, 0, uid, W, H, 30, bpp, fmt
        v.intrinsics = _rs_intr()
        return v

    def push(self, k, timestamp_ms=None, domain=None):
        depth, rgb = _frames(k)
        for sensor, prof, pix, bpp in ((self.ds, self.dp, depth, 2), (self.cs, self.cp, rgb, 3)):
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = pix, W * bpp, bpp
            f.timestamp = k * 33.3 if timestamp_ms is None else timestamp_ms
            f.domain = rs.timestamp_domain.hardware_clock if domain is None else domain
            f.frame_number, f.profile = k, prof.as_video_stream_profile()
            if bpp == 2:
                f.depth_units = UNITS
            sensor.on_video_frame(f)

    def close(self):
        for s in (self.ds, self.cs):
            s.stop()
            s.close()
        self.rec = None


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rs") / "session.db3"
    cam = SoftwareCamera(record_to=path)
    for k in range(N_FRAMES):
        cam.push(k)
        cam.sync.wait_for_frames(1000)
    cam.close()
    del cam
    import gc

    gc.collect()  # the recorder finishes the file when it is destroyed
    return path


def test_intrinsics_and_distortion_mapping():
    i = intrinsics_from_rs(rs, _rs_intr(rs.distortion.brown_conrady, (0.1, -0.05, 0.001, 0.002, 0.01)))
    assert (i.width, i.height, i.fx, i.fy, i.cx, i.cy) == (W, H, 50.0, 51.0, 31.5, 23.5)
    assert i.model == "brown_conrady" and np.allclose(i.coeffs, [0.1, -0.05, 0.001, 0.002, 0.01])
    assert intrinsics_from_rs(rs, _rs_intr(rs.distortion.inverse_brown_conrady, (0.2, 0, 0, 0, 0))).model \
        == "inverse_brown_conrady"
    # RealSense colour streams often report a model with all-zero coefficients: that is no distortion.
    assert intrinsics_from_rs(rs, _rs_intr(rs.distortion.inverse_brown_conrady)).model == "none"
    with pytest.raises(DeviceFaultError, match="distortion model"):
        intrinsics_from_rs(rs, _rs_intr(rs.distortion.kannala_brandt4, (0.1, 0, 0, 0, 0)))


def test_frame_conversion_through_syncer():
    cam = SoftwareCamera()
    try:
        for k in range(3):
            cam.push(k)
            fs = cam.sync.wait_for_frames(1000)
        out = frames_to_rgbd(rs, fs.get_depth_frame(), fs.get_color_frame(), fs.get_depth_frame().get_units())
        k = int(fs.get_depth_frame().get_frame_number())
        assert int(fs.get_color_frame().get_frame_number()) == k
        depth, rgb = _frames(k)
        assert out.depth.dtype == np.float32 and out.depth[0, 0] == 0.0
        np.testing.assert_allclose(out.depth, depth.astype(np.float32) * np.float32(UNITS), rtol=1e-6)
        assert np.array_equal(out.rgb, rgb)
        assert (out.intrinsics.fx, out.intrinsics.cx) == (50.0, 31.5)
    finally:
        cam.close()


def test_playback_exact_frames(recording, tmp_path):
    cal = CameraCalibration(T=np.diag([1.0, -1.0, -1.0, 1.0]), camera="software")
    cal.save(tmp_path / "calib.toml")
    cam = RealSenseCamera(RealSenseConfig(playback=str(recording), align="none", timeout_ms=3000,
                                          calibration=str(tmp_path / "calib.toml")))
    assert isinstance(cam, Camera)
    assert np.array_equal(cam.T_base_cam, cal.T)
    with pytest.raises(DeviceNotConnectedError):
        cam.read()
    with cam:
        assert cam.depth_scale == pytest.approx(UNITS)
        for k in range(3):
            f = cam.read()
            depth, rgb = _frames(k)
            np.testing.assert_allclose(f.depth, depth * np.float32(UNITS), rtol=1e-6)
            assert np.array_equal(f.rgb, rgb)
            assert cam.last_device_timestamp_ms == pytest.approx(k * 33.3)
        assert cam.frames_read == 3


def test_playback_delivers_every_frame_to_a_slow_consumer(recording):
    # Non-real-time playback waits for the consumer: a pause longer than the whole recording (20 frames
    # at 30 fps) before the first read, and between reads, loses nothing.
    with RealSenseCamera(RealSenseConfig(playback=str(recording), align="none", timeout_ms=3000)) as cam:
        time.sleep(1.0)
        for k in range(N_FRAMES):
            f = cam.read()
            depth, rgb = _frames(k)
            assert np.array_equal(f.rgb, rgb), f"frame {k}: colour differs"
            np.testing.assert_allclose(f.depth, depth * np.float32(UNITS), rtol=1e-6, err_msg=f"frame {k}")
            if k % 5 == 0:
                time.sleep(0.05)


def test_playback_aligned_and_filtered(recording):
    with RealSenseCamera(RealSenseConfig(playback=str(recording), align="color", timeout_ms=3000)) as cam:
        f = cam.read()
        k = None
        valid = f.depth > 0
        assert valid.mean() > 0.8  # alignment resamples depth into the colour image
        # Interior depth values come from the same image (shifted at most one pixel by resampling).
        for kk in range(N_FRAMES):
            d = _frames(kk)[0] * np.float32(UNITS)
            v, u = 20, 30
            if np.min(np.abs(d[v - 1:v + 2, u - 1:u + 2] - f.depth[v, u])) < 1e-6:
                k = kk
        assert k is not None
    with RealSenseCamera(RealSenseConfig(playback=str(recording), align="depth", decimation=2, spatial=True, timeout_ms=3000)) as cam:
        f = cam.read()
        assert f.depth.shape == (H // 2, W // 2) and f.rgb.shape == (H // 2, W // 2, 3)
        assert f.intrinsics.width == W // 2 and f.intrinsics.fx == pytest.approx(25.0)


def test_end_of_recording_is_a_fault(recording):
    with RealSenseCamera(RealSenseConfig(playback=str(recording), align="none", timeout_ms=20000)) as cam:
        t0 = time.monotonic()
        with pytest.raises(DeviceFaultError, match="the recording ended after 20 framesets"):
            for _ in range(N_FRAMES + 2):
                cam.read()
        assert cam.frames_read == N_FRAMES
        assert time.monotonic() - t0 < 15  # the end is known: it does not wait out the 20 s timeout


def test_playback_repeat_starts_over(recording):
    with RealSenseCamera(RealSenseConfig(playback=str(recording), align="none", playback_repeat=True,
                                         timeout_ms=3000)) as cam:
        for k in list(range(N_FRAMES)) + [0, 1, 2]:
            f = cam.read()
            assert np.array_equal(f.rgb, _frames(k)[1]), f"frame {k}"
            assert cam.last_device_timestamp_ms == pytest.approx(k * 33.3)


def test_disconnect_while_the_player_waits(recording):
    # The player blocks on full queues in non-real-time mode; disconnecting must not hang.
    for n_reads in (0, 1, 5):
        cam = RealSenseCamera(RealSenseConfig(playback=str(recording), align="none", timeout_ms=3000))
        cam.connect()
        for _ in range(n_reads):
            cam.read()
        time.sleep(0.1)
        t0 = time.monotonic()
        cam.disconnect()
        assert time.monotonic() - t0 < 8 and not cam.is_connected  # librealsense gives up a stuck flush at 10 s


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="fps"):
        RealSenseConfig(fps=31)
    with pytest.raises(ConfigError, match="decimation"):
        RealSenseConfig(decimation=2, align="none")
    with pytest.raises(ConfigError, match="playback"):
        RealSenseConfig(playback=str(tmp_path / "missing.bag"))
    with pytest.raises(ConfigError, match="depth_units"):
        RealSenseConfig(depth_units=1.0)


def test_no_camera_attached_fails_fast_naming_the_fix():
    """The real librealsense path with no camera: it fails at once, not after pipeline.start's 15 s."""
    if len(rs.context().query_devices()):  # pragma: no cover - a camera is plugged in here
        pytest.skip("a RealSense camera is attached to this machine")
    for cfg, what in ((RealSenseConfig(), "no RealSense camera is attached"),
                      (RealSenseConfig(serial="123456789"), "no RealSense camera is attached")):
        cam = RealSenseCamera(cfg)
        t0 = time.monotonic()
        with pytest.raises(DeviceFaultError, match=what) as err:
            cam.connect()
        elapsed = time.monotonic() - t0
        print(f"no camera: connect failed in {elapsed:.3f} s")
        assert elapsed < 3.0 and "USB-3" in str(err.value) and "\n" not in str(err.value)
        assert not cam.is_connected


@pytest.mark.parametrize("domain", ["global_time", "system_time", "hardware_clock"])
def test_capture_stamp_follows_the_frames_timestamp_domain(domain):
    """Host-clock domains (epoch ms) give the capture time on the monotonic clock; the camera's own
    clock cannot be compared, so the read time stands in; the frame number is the sequence number."""
    cam = SoftwareCamera()
    try:
        age_ms = 250.0
        cam.push(5, timestamp_ms=time.time() * 1e3 - age_ms, domain=getattr(rs.timestamp_domain, domain))
        fs = cam.sync.wait_for_frames(1000)
        mono, wall = time.monotonic_ns(), time.time_ns()
        color = fs.get_color_frame() or cam.sync.wait_for_frames(1000).get_color_frame()  # the syncer may split them
        assert color.get_frame_timestamp_domain() == getattr(rs.timestamp_domain, domain)
        stamp = capture_stamp_ns(rs, color, mono, wall)
        if domain == "hardware_clock":
            assert stamp == mono
        else:
            assert abs((mono - stamp) / 1e6 - age_ms) < 50, (mono - stamp) / 1e6
        # a stamp in the future (clock skew) is never later than the read
        cam.push(6, timestamp_ms=time.time() * 1e3 + 5000, domain=getattr(rs.timestamp_domain, domain))
        future = cam.sync.wait_for_frames(1000)
        future = future.get_color_frame() or cam.sync.wait_for_frames(1000).get_color_frame()
        assert capture_stamp_ns(rs, future, time.monotonic_ns(), time.time_ns()) <= time.monotonic_ns()
        assert int(color.get_frame_number()) == 5
    finally:
        cam.close()


def test_playback_frames_carry_their_frame_number(recording):
    with RealSenseCamera(RealSenseConfig(playback=str(recording), align="none", timeout_ms=3000)) as cam:
        seqs = [cam.read().seq for _ in range(4)]
    assert seqs == [0, 1, 2, 3]
