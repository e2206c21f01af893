"""Intel RealSense RGB-D camera through librealsense (``pyrealsense2``, extra ``realsense``).

Live from a device (by serial number, or the first one found) or played back from a recording
(``.bag`` / ``.db3``). Each ``read()`` waits for one frameset, runs the optional depth filters
(decimation, spatial, temporal, hole filling; in that order, before alignment as librealsense
recommends), aligns the streams (``align = "color"``: depth resampled into the colour image, the
default; ``"depth"``: colour into the depth image; ``"none"``: streams already share one image) and
returns an ``RGBD`` with depth in metres (float32; 0 = no measurement) and the intrinsics of the
image both now share, librealsense's distortion model included.
"""

from __future__ import annotations

import logging
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
    ``calibration``: edge-calib TOML file giving ``T_base_cam``.
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


def frames_to_rgbd(rs: Any, depth_frame: Any, color_frame: Any, depth_scale: float, intrinsics_of: str = "color",
                   stamp_ns: int | None = None) -> RGBD:
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
                stamp_ns=now_ns() if stamp_ns is None else stamp_ns)


class RealSenseCamera(CameraPose, DeviceBase):
    """RealSense RGB-D camera implementing ``Camera`` (see module docstring)."""

    def __init__(self, config: RealSenseConfig) -> None:
        DeviceBase.__init__(self)
        self.config = config
        src = f"recording {config.playback}" if config.playback else f"serial {config.serial or '(first found)'}"
        self.name = f"RealSense camera ({src})"
        self._load_pose(config.calibration)
        self._pipe = None
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
        pipe, cfg = rs.pipeline(), rs.config()
        if c.playback:
            cfg.enable_device_from_file(c.playback, repeat_playback=c.playback_repeat)
        else:
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
            dev = profile.get_device()
            if c.playback:
                dev.as_playback().set_real_time(c.playback_real_time)
            sensor = dev.first_depth_sensor()
            if c.depth_units is not None and not c.playback:
                sensor.set_option(rs.option.depth_units, c.depth_units)
            self._depth_scale = float(sensor.get_depth_scale())
        except RuntimeError as e:
            pipe.stop()
            raise DeviceFaultError(f"{self.name}: cannot configure the depth sensor ({e})") from e
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
        self._pipe = pipe
        self._connected = True
        log.info("%s streaming; depth scale %.6g m/count", self.name, self._depth_scale)

    def disconnect(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.stop()
            except RuntimeError as e:
                log.warning("%s: error while stopping: %s", self.name, e)
            self._pipe = None
        self._connected = False

    @property
    def depth_scale(self) -> float:
        return self._depth_scale

    def read(self) -> RGBD:
        """Wait for the next frameset (``timeout_ms``) and return it as an aligned ``RGBD``."""
        self._require_connected()
        rs = _rs()
        for _ in range(8):  # a frameset may lack a stream right after start; try a few
            try:
                frames = self._pipe.wait_for_frames(self.config.timeout_ms)
            except RuntimeError as e:
                raise DeviceFaultError(f"{self.name}: no frames within {self.config.timeout_ms} ms ({e}); "
                                       f"check the cable / USB bandwidth, or the recording ended") from e
            stamp = now_ns()
            depth, color = frames.get_depth_frame(), frames.get_color_frame()
            if depth and color:
                break
        else:
            raise DeviceFaultError(f"{self.name}: framesets keep missing the depth or colour stream")
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
        return frames_to_rgbd(rs, depth, color, self._depth_scale,
                              intrinsics_of="depth" if self.config.align == "depth" else "color", stamp_ns=stamp)

