"""Intel RealSense RGB-D camera through librealsense (``pyrealsense2``, extra ``realsense``).

Live from a device (by serial number, or the first one found) or played back from a recording
(``.bag`` / ``.db3``). Each ``read()`` waits for one frameset, runs the optional depth filters
(decimation, spatial, temporal, hole filling; in that order, before alignment as librealsense
recommends), aligns the streams (``align = "color"``: depth resampled into the colour image, the
default; ``"depth"``: colour into the depth image; ``"none"``: streams already share one image) and
returns an ``RGBD`` with depth in metres (float32; 0 = no measurement) and the intrinsics of the
image both now share, librealsense's distortion model included.

Live cameras stream through ``rs.pipeline``. Recordings are read through the playback device's own
sensors (``_RecordingReader``), frame-exact by default (``playback_real_time = False``): the player
waits for each frame to be taken, no frame is read before both sensors run, and ``read()`` returns
every recorded frameset once, in order, however slowly it is called. Past the end it raises
``DeviceFaultError`` after ``timeout_ms`` (or starts over with ``playback_repeat``).

Connecting to a live camera first asks librealsense which devices are attached (about 0.1 s), so a
missing camera, or a serial that is not attached, fails at once naming the fix (``rs.pipeline.start``
alone waits 15 s for a device to appear).

Frame stamps (``RGBD.stamp_ns``, monotonic ns) and numbers (``RGBD.seq``): a live frame's stamp is its
capture time when librealsense gives it on the host's clock. ``global_time`` (the D400 default: the
camera's hardware clock mapped onto host time) and ``system_time`` (the host's time when the frame
arrived from USB) are milliseconds since the Unix epoch; they are moved onto the monotonic clock by the
offset between ``time.time_ns()`` and ``time.monotonic_ns()`` at the read, and never later than the
read. ``hardware_clock`` (the camera's own clock, counting from its power-up) cannot be compared with
the host's, so those frames are stamped with the time they were read. In every domain ``seq`` is the
colour frame's number, so a driver that hands back one old frame again is seen by the watchdog even
when its stamp looks new. Played-back frames are stamped when read (their recorded stamps are old);
their ``seq`` is the recorded frame number.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import check
from ..contracts import RGBD, Intrinsics, now_ns
from ..errors import DeviceFaultError, require
from ..interfaces import DeviceBase
from .camera_pose import CameraPose

log = logging.getLogger(__name__)


def _rs():
    return require("pyrealsense2", "realsense", "the RealSense camera driver")


@dataclass(frozen=True)
class RealSenseConfig:
    """A RealSense camera (``[camera]`` table of the robot setup, with ``kind = "realsense"`` upstream).

    ``serial``: device serial number (None: the first device). ``playback``: a ``.bag``/``.db3``
    recording to play instead of a device. ``depth_units``: metres per depth count to set on the
    sensor (None: leave the device default, usually 0.001). ``decimation``: 1 (off) to 8.
    ``calibration``: edge-calib TOML file giving ``T_base_cam``. ``playback_real_time``: play at the
    recorded rate, dropping frames the consumer misses (False: every frame, at the consumer's pace).
    ``playback_repeat``: start over at the end. ``timeout_ms``: longest wait for a frameset in ``read()``.
    """

    serial: str | None = None
    playback: str | None = None
    width: int = 640
    height: int = 480
    fps: int = 30
    align: Literal["color", "depth", "none"] = "color"
    depth_units: float | None = None
    decimation: int = 1
    spatial: bool = False
    temporal: bool = False
    hole_filling: bool = False
    timeout_ms: int = 1000
    calibration: str | None = None
    playback_real_time: bool = False
    playback_repeat: bool = False

    def __post_init__(self) -> None:
        check(self.width > 0 and self.height > 0, "width/height", f"must be > 0, got {self.width}x{self.height}")
        check(self.fps in (5, 6, 15, 30, 60, 90), "fps", f"expected one of 5, 6, 15, 30, 60, 90, got {self.fps}")
        check(self.align in ("color", "depth", "none"), "align", f"expected color, depth or none, got {self.align!r}")
        check(self.depth_units is None or 1e-6 <= self.depth_units <= 0.01, "depth_units",
              f"must be in [1e-6, 0.01] metres per count or unset, got {self.depth_units}")
        check(1 <= self.decimation <= 8, "decimation", f"must be in [1, 8] (1 = off), got {self.decimation}")
        check(not (self.decimation > 1 and self.align == "none"), "decimation",
              "decimation changes the depth resolution: use align = 'color' or 'depth' with it")
        check(100 <= self.timeout_ms <= 60000, "timeout_ms", f"must be in [100, 60000], got {self.timeout_ms}")
        check(self.playback is None or Path(self.playback).is_file(), "playback", f"file not found: {self.playback}")
        check(self.calibration is None or Path(self.calibration).is_file(), "calibration",
              f"file not found: {self.calibration}")
        check(not (self.serial and self.playback), "serial/playback", "set one of them, not both")


def distortion_model(rs: Any, model: Any, coeffs) -> str:
    """librealsense distortion enum -> the contract's model name."""
    if not np.any(np.asarray(coeffs, dtype=np.float64)):
        return "none"
    names = {rs.distortion.none: "none", rs.distortion.brown_conrady: "brown_conrady",
             rs.distortion.inverse_brown_conrady: "inverse_brown_conrady"}
    if model in names:
        return names[model]
    raise DeviceFaultError(f"RealSense stream uses distortion model {model} with non-zero coefficients, which "
                           f"edgebridge does not model; use a stream with brown_conrady / inverse_brown_conrady")


def intrinsics_from_rs(rs: Any, i: Any) -> Intrinsics:
    """``rs.intrinsics`` -> ``contracts.Intrinsics`` (ppx/ppy -> cx/cy, 5 coefficients)."""
    coeffs = np.asarray(list(i.coeffs)[:5], dtype=np.float64)
    return Intrinsics(width=int(i.width), height=int(i.height), fx=float(i.fx), fy=float(i.fy),
                      cx=float(i.ppx), cy=float(i.ppy), model=distortion_model(rs, i.model, coeffs), coeffs=coeffs)


def capture_stamp_ns(rs: Any, frame: Any, read_mono_ns: int, read_wall_ns: int) -> int:
    """The monotonic capture stamp of a librealsense ``frame`` read at ``read_mono_ns`` (monotonic) /
    ``read_wall_ns`` (``time.time_ns()``): see the module docstring for the timestamp domains."""
    domain = frame.get_frame_timestamp_domain()
    if domain not in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
        return int(read_mono_ns)  # hardware_clock: not comparable with the host's clocks
    age_ns = read_wall_ns - int(round(float(frame.get_timestamp()) * 1e6))
    return int(read_mono_ns - max(0, min(age_ns, read_mono_ns)))


def frames_to_rgbd(rs: Any, depth_frame: Any, color_frame: Any, depth_scale: float, intrinsics_of: str = "color",
                   stamp_ns: int | None = None, seq: int | None = None) -> RGBD:
    """Aligned librealsense depth + colour frames -> ``RGBD`` (depth float32 metres)."""
    depth = np.asanyarray(depth_frame.get_data())
    color = np.asanyarray(color_frame.get_data())
    fmt = color_frame.profile.format()
    if fmt == rs.format.bgr8:
        color = color[..., ::-1]
    elif fmt == rs.format.rgba8:
        color = color[..., :3]
    elif fmt == rs.format.bgra8:
        color = color[..., 2::-1]
    elif fmt != rs.format.rgb8:
        raise DeviceFaultError(f"RealSense colour format {fmt} is not supported; configure rgb8 or bgr8")
    if depth.shape != color.shape[:2]:
        raise DeviceFaultError(f"RealSense depth {depth.shape} and colour {color.shape[:2]} differ in size; "
                               f"set align = 'color' or 'depth'")
    src = color_frame if intrinsics_of == "color" else depth_frame
    intr = intrinsics_from_rs(rs, src.profile.as_video_stream_profile().intrinsics)
    depth_m = depth.astype(np.float32) * np.float32(depth_scale)
    return RGBD(rgb=np.ascontiguousarray(color, dtype=np.uint8), depth=depth_m, intrinsics=intr,
                stamp_ns=now_ns() if stamp_ns is None else stamp_ns, seq=seq)


class _RecordingReader:
    """Frame-exact reader of a librealsense recording through its playback sensors.

    ``pipeline.start`` on a recording starts the playback sensors one after another, and the player
    reads the file as soon as the first one runs (in real-time mode until ``set_real_time(False)``,
    which can only come after ``start``): frames of a stream whose sensor is not started yet are
    discarded, so under CPU load the first framesets lost a stream or were paired with the wrong
    frame. (``playback.pause()`` before ``start`` avoids that but its ``resume()`` can stall for the
    player's 10 s flush timeout.) Here the timing mode is set before any sensor starts, and every
    frame callback waits until both sensors run; in non-real-time mode the player waits for each
    callback, so a bounded queue per stream gives back-pressure and no frame is ever dropped.
    Depth and colour frames are paired by timestamp and joined into a frameset for the filters and
    ``rs.align``.
    """

    def __init__(self, rs: Any, path: str, real_time: bool, name: str) -> None:
        self.rs, self.name, self.real_time = rs, name, real_time
        self._ctx = rs.context()
        self.device = self._ctx.load_device(path)
        self.player = self.device.as_playback()
        self.player.set_real_time(real_time)
        self._sensors = list(self.device.query_sensors())
        self._profiles = []  # (sensor index, profile) for the depth and colour streams
        for kind in (rs.stream.depth, rs.stream.color):
            found = [(i, p) for i, sn in enumerate(self._sensors) for p in sn.get_stream_profiles()
                     if p.stream_type() == kind]
            if not found:
                raise DeviceFaultError(f"{name}: the recording has no {kind} stream; record both depth and colour")
            self._profiles.append(found[0])
        self._queues = {rs.stream.depth: queue.Queue(maxsize=2), rs.stream.color: queue.Queue(maxsize=2)}
        self._all_started = threading.Event()
        self._closing = threading.Event()
        self._composed: dict = {}
        self._composer = rs.processing_block(self._compose)
        self._out = rs.frame_queue(1)
        self._composer.start(self._out)
        half = [500.0 / max(1, p.fps()) for _, p in self._profiles]
        self.pair_tolerance_ms = max(half)
        self._streaming: list = []
        self._received = False

    def start(self) -> None:
        self._all_started.clear()
        self._received = False
        used = sorted({i for i, _ in self._profiles})  # depth and colour may share one sensor
        sensors = [self._sensors[i] for i in used]
        for i, sensor in zip(used, sensors):
            sensor.open([p for j, p in self._profiles if j == i])
        for sensor in sensors:
            sensor.start(self._on_frame)
            self._streaming.append(sensor)
        self._all_started.set()

    def stop(self) -> None:
        self._closing.set()
        self._all_started.set()  # release callbacks still waiting
        for q in self._queues.values():
            _drain(q)
        for sensor in self._streaming:
            for action in (sensor.stop, sensor.close):
                try:
                    action()
                except RuntimeError as e:  # already stopped by the player at the end of the file
                    log.debug("%s: %s: %s", self.name, action.__name__, e)
        self._streaming = []
        for q in self._queues.values():
            _drain(q)
        self._closing.clear()

    def restart(self) -> None:
        self.stop()
        self.start()

    def exhausted(self) -> bool:
        """The player reached the end of the file and every frame it gave has been taken."""
        return (self._received and all(q.empty() for q in self._queues.values())
                and self.player.current_status() == self.rs.playback_status.stopped)

    def _on_frame(self, frame: Any) -> None:
        """Sensor callback (librealsense thread): hand the frame over, waiting while the queue is full."""
        self._all_started.wait()
        q = self._queues.get(frame.profile.stream_type())
        if q is None:
            return
        while not self._closing.is_set():
            try:
                q.put(frame, timeout=0.05)
                self._received = True
                return
            except queue.Full:
                if self.real_time:  # real-time playback keeps the newest frames, like a live camera
                    _drain(q, keep=q.maxsize - 1)

    def _compose(self, depth: Any, source: Any) -> None:
        source.frame_ready(source.allocate_composite_frame([depth, self._composed.pop("color")]))

    def next_frameset(self, timeout_s: float) -> Any | None:
        """The next depth + colour pair as a frameset; None after ``timeout_s`` or once ``exhausted()``."""
        rs = self.rs
        deadline = time.monotonic() + timeout_s
        depth = self._get(rs.stream.depth, deadline)
        color = self._get(rs.stream.color, deadline)
        while depth is not None and color is not None:
            dt = depth.get_timestamp() - color.get_timestamp()
            if abs(dt) <= self.pair_tolerance_ms:
                break
            log.debug("%s: unpaired %s frame at %.3f ms dropped", self.name, "colour" if dt > 0 else "depth",
                      min(depth.get_timestamp(), color.get_timestamp()))
            if dt > 0:
                color = self._get(rs.stream.color, deadline)
            else:
                depth = self._get(rs.stream.depth, deadline)
        if depth is None or color is None:
            return None
        self._composed["color"] = color
        self._composer.invoke(depth)
        return self._out.wait_for_frame(1000).as_frameset()

    def _get(self, stream: Any, deadline: float) -> Any | None:
        q = self._queues[stream]
        while True:
            left = deadline - time.monotonic()
            try:
                return q.get(timeout=min(0.05, max(0.0, left)))
            except queue.Empty:
                if left <= 0 or self.exhausted():
                    return None




def _drain(q: queue.Queue, keep: int = 0) -> None:
    while q.qsize() > keep:
        try:
            q.get_nowait()
        except queue.Empty:
            return


class RealSenseCamera(CameraPose, DeviceBase):
    """RealSense RGB-D camera implementing ``Camera`` (see module docstring)."""

    def __init__(self, config: RealSenseConfig) -> None:
        DeviceBase.__init__(self)
        self.config = config
        src = f"recording {config.playback}" if config.playback else f"serial {config.serial or '(first found)'}"
        self.name = f"RealSense camera ({src})"
        self._load_pose(config.calibration)
        self._pipe = None
        self._rec: _RecordingReader | None = None
        self._align = None
        self._filters: list = []
        self._depth_scale = 0.001
        self.frames_read = 0
        self.last_device_timestamp_ms: float | None = None

    def connect(self) -> None:
        if self._connected:
            return
        rs = _rs()
        c = self.config
        if c.playback:
            self._connect_recording(rs)
        else:
            self._connect_live(rs)
        self._filters = []
        if c.decimation > 1:
            f = rs.decimation_filter()
            f.set_option(rs.option.filter_magnitude, c.decimation)
            self._filters.append(f)
        if c.spatial:
            self._filters.append(rs.spatial_filter())
        if c.temporal:
            self._filters.append(rs.temporal_filter())
        if c.hole_filling:
            self._filters.append(rs.hole_filling_filter())
        self._align = {"color": rs.align(rs.stream.color), "depth": rs.align(rs.stream.depth)}.get(c.align)
        self._connected = True
        log.info("%s streaming; depth scale %.6g m/count", self.name, self._depth_scale)

    def _connect_live(self, rs: Any) -> None:
        c = self.config
        try:
            found = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        except RuntimeError as e:
            raise DeviceFaultError(f"{self.name}: cannot list RealSense devices ({e}); check that libusb and "
                                   f"the udev rules of librealsense are installed") from e
        if not found:
            raise DeviceFaultError(f"{self.name}: no RealSense camera is attached; plug it into a USB-3 port "
                                   f"(rs-enumerate-devices lists it), or set camera.options.playback to a recording")
        if c.serial and c.serial not in found:
            raise DeviceFaultError(f"{self.name}: no camera with serial {c.serial} is attached (found {found}); "
                                   f"fix camera.options.serial")
        pipe, cfg = rs.pipeline(), rs.config()
        if c.serial:
            cfg.enable_device(c.serial)
        cfg.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, c.fps)
        cfg.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        try:
            profile = pipe.start(cfg)
        except RuntimeError as e:
            raise DeviceFaultError(
                f"{self.name}: cannot start streaming ({e}); check the USB-3 cable and port, that the serial "
                f"is right (rs-enumerate-devices), and that {c.width}x{c.height}@{c.fps} is a supported mode") from e
        try:
            sensor = profile.get_device().first_depth_sensor()
            if c.depth_units is not None:
                sensor.set_option(rs.option.depth_units, c.depth_units)
            self._depth_scale = float(sensor.get_depth_scale())
        except RuntimeError as e:
            pipe.stop()
            raise DeviceFaultError(f"{self.name}: cannot configure the depth sensor ({e})") from e
        self._pipe = pipe

    def _connect_recording(self, rs: Any) -> None:
        c = self.config
        rec = None
        try:
            rec = _RecordingReader(rs, c.playback, c.playback_real_time, self.name)
            self._depth_scale = float(rec.device.first_depth_sensor().get_depth_scale())
            rec.start()
        except RuntimeError as e:
            if rec is not None:
                rec.stop()
            raise DeviceFaultError(f"{self.name}: cannot play the recording ({e}); check that it was written by "
                                   f"librealsense (rs.recorder, RealSense Viewer) and is complete") from e
        self._rec = rec

    def disconnect(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.stop()
            except RuntimeError as e:
                log.warning("%s: error while stopping: %s", self.name, e)
            self._pipe = None
        if self._rec is not None:
            self._rec.stop()
            self._rec = None
        self._connected = False

    @property
    def depth_scale(self) -> float:
        return self._depth_scale

    def read(self) -> RGBD:
        """Wait for the next frameset (``timeout_ms``) and return it as an aligned ``RGBD``."""
        self._require_connected()
        rs = _rs()
        frames, stamp = self._next_frameset()
        wall = time.time_ns()
        try:
            for f in self._filters:  # post-processing blocks act on the depth frame of a frameset
                frames = f.process(frames).as_frameset()
            if self._align is not None:
                frames = self._align.process(frames)
            depth, color = frames.get_depth_frame(), frames.get_color_frame()
        except RuntimeError as e:
            raise DeviceFaultError(f"{self.name}: filtering / alignment failed ({e})") from e
        self.last_device_timestamp_ms = float(color.get_timestamp())
        self.frames_read += 1
        if self._rec is None:  # live: the capture time where the frame's timestamp domain gives it
            stamp = capture_stamp_ns(rs, color, stamp, wall)
        return frames_to_rgbd(rs, depth, color, self._depth_scale,
                              intrinsics_of="depth" if self.config.align == "depth" else "color", stamp_ns=stamp,
                              seq=int(color.get_frame_number()))

    def _next_frameset(self) -> tuple[Any, int]:
        """One frameset holding both depth and colour, and the host time it was read (monotonic)."""
        ms = self.config.timeout_ms
        if self._rec is not None:
            frames = self._rec.next_frameset(ms / 1000.0)
            if frames is None and self.config.playback_repeat and self._rec.exhausted():
                log.info("%s: end of the recording, starting over", self.name)
                self._rec.restart()
                frames = self._rec.next_frameset(ms / 1000.0)
            if frames is None:
                if self._rec.exhausted():
                    raise DeviceFaultError(f"{self.name}: the recording ended after {self.frames_read} framesets "
                                           f"(set playback_repeat = true to loop it)")
                raise DeviceFaultError(f"{self.name}: no frames within {ms} ms while the recording is still playing; "
                                       f"raise timeout_ms, or check that it holds paired depth and colour frames")
            return frames, now_ns()
        for _ in range(8):  # a live frameset may lack a stream right after start; try a few
            ok, frames = self._pipe.try_wait_for_frames(ms)
            if not ok:
                raise DeviceFaultError(f"{self.name}: no frames within {ms} ms; check the USB-3 cable and bandwidth, "
                                       f"and that no other process holds the camera")
            if frames.get_depth_frame() and frames.get_color_frame():
                return frames, now_ns()
        raise DeviceFaultError(f"{self.name}: 8 framesets in a row lack the depth or colour stream; "
                               f"check that both streams are enabled")
