"""Camera frames as MP4 video (PyAV), the way LeRobotDataset v3 stores them.

One :class:`VideoWriter` per camera and video file: frames of consecutive episodes go into the same
stream one after another, frame ``i`` of the file at ``i / fps`` seconds, so an episode is the time span
``[from_timestamp, to_timestamp)`` of its file (what ``meta/episodes`` records). The encoder settings
are LeRobot's defaults (``libsvtav1``, ``yuv420p``, GOP 2, CRF 30, preset 12); ``h264`` and ``hevc`` are
accepted like in LeRobot. :func:`read_frames` decodes a time span back to (T, H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VIDEO_CODECS = ("libsvtav1", "h264", "hevc")  # LeRobot's VALID_VIDEO_CODECS
DEFAULT_VCODEC = "libsvtav1"


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("camera frames as video need PyAV: pip install 'edgebridge[dataset]'") from e
    return av


def fps_fraction(fps: float) -> Fraction:
    f = Fraction(fps).limit_denominator(1001)
    if f <= 0:
        raise ValueError(f"video fps: expected > 0, got {fps!r}")
    return f


class VideoWriter:
    """Encode RGB frames (H, W, 3) uint8 into ``path`` at ``fps``; ``frames`` counts what was added.
    ``close()`` flushes the encoder and writes the MP4 index (safe to call twice)."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, *, vcodec: str = DEFAULT_VCODEC,
                 pix_fmt: str = "yuv420p", g: int | None = 2, crf: int | None = 30, preset: int | None = None) -> None:
        if vcodec not in VIDEO_CODECS:
            raise ValueError(f"video codec {vcodec!r}: expected one of {list(VIDEO_CODECS)}")
        av = _av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = int(width), int(height)
        self.rate = fps_fraction(fps)
        options = {}
        if g is not None:
            options["g"] = str(g)
        if crf is not None:
            options["crf"] = str(crf)
        if vcodec == "libsvtav1":
            options["preset"] = str(preset if preset is not None else 12)
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder to stderr otherwise
        self._container = av.open(str(self.path), "w")
        try:
            self._stream = self._container.add_stream(vcodec, rate=self.rate, options=options)
            self._stream.pix_fmt = pix_fmt
            self._stream.width, self._stream.height = self.width, self.height
        except Exception:
            self._container.close()
            raise
        self.frames = 0
        self.bytes = 0  # encoded so far (the encoder holds back a few frames while it looks ahead)

    def add(self, rgb: np.ndarray) -> None:
        if self._container is None:
            raise ValueError(f"{self.path}: video already closed")
        rgb = np.asarray(rgb)
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {rgb.shape} {rgb.dtype}, expected ({self.height}, {self.width}, 3) "
                             f"uint8 like the first frame")
        frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames  # in the codec's time base, 1 / fps
        for packet in self._stream.encode(frame):
            self.bytes += packet.size
            self._container.mux(packet)
        self.frames += 1

    @property
    def seconds(self) -> float:
        return float(self.frames / self.rate)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


def video_info(path: str | Path) -> dict:
    """The ``info`` block LeRobot keeps per video feature in ``meta/info.json``."""
    av = _av()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False, "video.fps": int(s.base_rate),
                "video.channels": 3, "has_audio": len(c.streams.audio) > 0}
    return info


def read_frames(path: str | Path, from_s: float, to_s: float, fps: float) -> np.ndarray:
    """Decode the frames whose time lies in ``[from_s, to_s)`` (half a frame of slack): (T, H, W, 3) uint8."""
    av = _av()
    half = 0.5 / float(fps)
    out = []
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            if from_s > half:
                c.seek(int(max(0.0, from_s - half) / s.time_base), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                t = float(frame.pts * s.time_base)
                if t < from_s - half:
                    continue
                if t >= to_s - half:
                    break
                out.append(frame.to_ndarray(format="rgb24"))
    except (OSError, av.FFmpegError) as e:
        raise OSError(f"{path}: cannot decode video ({e})") from e
    if not out:
        raise OSError(f"{path}: no frames in [{from_s:.3f}, {to_s:.3f}) s")
    return np.stack(out)
