"""Replay RGB-D frames from a directory of ``.npz`` files, and record them (offline profiling).

Layout: ``DIR/frame_000000.npz``, ``frame_000001.npz``, ... each holding ``rgb`` (H, W, 3) uint8,
``depth`` (H, W) float32 metres, ``intrinsics`` (10,) float64 as ``Intrinsics.as_array()`` plus
``size`` (2,) int64 = (width, height), and ``stamp_ns`` () int64 (the original capture stamp).

Each ``read`` plays the next frame and numbers it (``RGBD.seq``: frames played since ``connect``, also
across a loop), so a replay never looks frozen to the watchdog; with ``restamp = False`` the recorded
stamps are kept, which the pipeline's watchdog sees as old frames (use that for offline profiling only).
"""

from __future__ import annotations

import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import check
from ..contracts import DISTORTION_MODELS, RGBD, Intrinsics, now_ns
from ..errors import DeviceFaultError
from ..interfaces import DeviceBase
from .camera_pose import CameraPose

log = logging.getLogger(__name__)
PATTERN = "frame_{:06d}.npz"


def _intrinsics(arr: np.ndarray, size: np.ndarray) -> Intrinsics:
    fx, fy, cx, cy, k1, k2, p1, p2, k3, model = np.asarray(arr, dtype=np.float64)
    return Intrinsics(int(size[0]), int(size[1]), fx, fy, cx, cy, DISTORTION_MODELS[int(model)],
                      np.array([k1, k2, p1, p2, k3]))


def save_frame(path: str | Path, frame: RGBD) -> Path:
    i = frame.intrinsics
    np.savez(path, rgb=frame.rgb, depth=frame.depth, intrinsics=i.as_array(),
             size=np.array([i.width, i.height], dtype=np.int64), stamp_ns=np.int64(frame.stamp_ns))
    return Path(path)


def load_frame(path: str | Path) -> RGBD:
    try:
        with np.load(path) as z:
            return RGBD(rgb=z["rgb"], depth=z["depth"], intrinsics=_intrinsics(z["intrinsics"], z["size"]),
                        stamp_ns=int(z["stamp_ns"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DeviceFaultError(f"replay frame {path}: unreadable or incomplete ({e})") from e


class RGBDRecorder:
    """Writes ``RGBD`` frames to ``directory`` in the replay layout (context manager)."""

    def __init__(self, directory: str | Path, overwrite: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.directory.glob("frame_*.npz"))
        if existing and not overwrite:
            raise FileExistsError(f"{self.directory} already holds {len(existing)} frames; "
                                  f"choose an empty directory or pass overwrite=True")
        for p in existing:
            p.unlink()
        self.count = 0

    def write(self, frame: RGBD) -> Path:
        p = save_frame(self.directory / PATTERN.format(self.count), frame)
        self.count += 1
        return p

    def close(self) -> None:
        log.info("recorded %d frames to %s", self.count, self.directory)

    def __enter__(self) -> "RGBDRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ReplayConfig:
    """``[camera]`` with ``kind = "replay"``: frames from ``directory``.

    ``loop``: start again after the last frame (else ``read`` raises ``DeviceFaultError``).
    ``realtime``: pace reads to the recorded stamps. ``restamp``: stamp frames with the read time
    (as a live camera would) instead of the recorded stamp.
    """

    directory: str
    loop: bool = False
    realtime: bool = False
    restamp: bool = True
    preload: bool = False
    calibration: str | None = None

    def __post_init__(self) -> None:
        check(Path(self.directory).is_dir(), "directory", f"not a directory: {self.directory}")
        check(self.calibration is None or Path(self.calibration).is_file(), "calibration",
              f"file not found: {self.calibration}")


class ReplayCamera(CameraPose, DeviceBase):
    """A ``Camera`` that plays back recorded frames (see module docstring)."""

    def __init__(self, config: ReplayConfig) -> None:
        DeviceBase.__init__(self)
        self.config = config
        self.name = f"replay camera ({config.directory})"
        self._load_pose(config.calibration)
        self._files: list[Path] = []
        self._cache: list[RGBD] | None = None
        self._index = 0
        self._played = 0
        self._t0: tuple[int, int] | None = None  # (first recorded stamp, wall stamp at first read)

    def __len__(self) -> int:
        return len(self._files)

    def connect(self) -> None:
        files = sorted(Path(self.config.directory).glob("frame_*.npz"))
        if not files:
            raise DeviceFaultError(f"{self.name}: no frame_*.npz files; record some with RGBDRecorder")
        self._files = files
        self._cache = [load_frame(p) for p in files] if self.config.preload else None
        self._index = 0
        self._played = 0
        self._t0 = None
        self._connected = True

    def disconnect(self) -> None:
        self._cache = None
        self._connected = False

    def read(self) -> RGBD:
        self._require_connected()
        if self._index >= len(self._files):
            if not self.config.loop:
                raise DeviceFaultError(f"{self.name}: end of recording after {len(self._files)} frames "
                                       f"(set loop = true to repeat)")
            self._index = 0
            self._t0 = None
        i = self._index
        self._index += 1
        frame = self._cache[i] if self._cache is not None else load_frame(self._files[i])
        if self.config.realtime:
            if self._t0 is None:
                self._t0 = (frame.stamp_ns, now_ns())
            due = self._t0[1] + (frame.stamp_ns - self._t0[0])
            wait = due - now_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
        self._played += 1
        stamp = now_ns() if self.config.restamp else frame.stamp_ns
        return RGBD(rgb=frame.rgb, depth=frame.depth, intrinsics=frame.intrinsics, stamp_ns=stamp, seq=self._played)
