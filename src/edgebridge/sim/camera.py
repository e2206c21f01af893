"""The simulated RGB-D camera, behind the same ``Camera`` interface as a RealSense.

Renders with PyBullet's CPU renderer (``ER_TINY_RENDERER``) and returns metric float32 depth (0 = no
measurement), uint8 RGB and pinhole :class:`~edgebridge.contracts.Intrinsics`. ``T_base_cam`` is the
pose of the optical frame (x right, y down, z forward) in the robot base frame, as a hand-eye
calibration would report it. A seeded stereo depth-noise model (:class:`DepthNoiseConfig`) corrupts the
depth the way a stereo sensor does: Gaussian noise growing with depth, dropout holes, flying pixels at
depth edges and a constant bias.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..config import check
from ..contracts import Intrinsics, RGBD, now_ns
from ..interfaces import DeviceBase
from .world import SimWorld

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthNoiseConfig:
    """Stereo depth noise. ``sigma = sigma_a + sigma_b * z**2`` (m); ``dropout_prob`` per pixel;
    ``holes`` blobs of up to ``hole_radius_px``; ``flying_prob`` of the pixels on a depth edge (jump >
    ``edge_jump_m``) take a depth between the two sides; ``depth_bias_m`` is added to every depth."""

    sigma_a: float = 0.0
    sigma_b: float = 0.0
    dropout_prob: float = 0.0
    holes: int = 0
    hole_radius_px: int = 6
    flying_prob: float = 0.0
    edge_jump_m: float = 0.03
    depth_bias_m: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sigma_a", "sigma_b", "hole_radius_px", "edge_jump_m"):
            check(getattr(self, name) >= 0, f"depth_noise.{name}", f"must be >= 0, got {getattr(self, name)}")
        for name in ("dropout_prob", "flying_prob"):
            v = getattr(self, name)
            check(0 <= v <= 1, f"depth_noise.{name}", f"must lie in [0, 1], got {v}")
        check(self.holes >= 0, "depth_noise.holes", f"must be >= 0, got {self.holes}")
        check(abs(self.depth_bias_m) < 1.0, "depth_noise.depth_bias_m", f"must lie in (-1, 1) m, got {self.depth_bias_m}")

    @property
    def is_clean(self) -> bool:
        return self == DepthNoiseConfig()

    @classmethod
    def stereo(cls, depth_bias_m: float = 0.0) -> "DepthNoiseConfig":
        """A D435-like stereo sensor at ~1 m (sigma ~3 mm at 1 m, 1 % dropout, a few holes)."""
        return cls(sigma_a=0.001, sigma_b=0.002, dropout_prob=0.01, holes=3, flying_prob=0.3,
                   depth_bias_m=depth_bias_m)

    @classmethod
    def condition(cls, bias_cm: float) -> "DepthNoiseConfig":
        """The benchmark's depth-noise conditions: 0 -> clean; else stereo noise + a ``bias_cm`` bias."""
        return cls() if bias_cm == 0 else cls.stereo(depth_bias_m=bias_cm / 100.0)


@dataclass(frozen=True)
class LightConfig:
    """PyBullet light of the tiny renderer; ``None`` leaves PyBullet's default (the default render is
    unchanged byte for byte). ``direction`` points from the scene towards the light (base frame)."""

    direction: tuple[float, float, float] | None = None
    color: tuple[float, float, float] | None = None
    ambient: float | None = None
    diffuse: float | None = None
    specular: float | None = None
    shadow: bool | None = None

    def __post_init__(self) -> None:
        for name in ("ambient", "diffuse", "specular"):
            v = getattr(self, name)
            check(v is None or 0 <= v <= 2, f"camera.light.{name}", f"must lie in [0, 2] or be None, got {v}")
        check(self.color is None or (len(self.color) == 3 and all(0 <= c <= 1 for c in self.color)),
              "camera.light.color", f"must be 3 values in [0, 1] or None, got {self.color}")
        check(self.direction is None or (len(self.direction) == 3 and float(np.linalg.norm(self.direction)) > 1e-6),
              "camera.light.direction", f"must be a non-zero 3-vector or None, got {self.direction}")

    @classmethod
    def random(cls, rng: np.random.Generator) -> "LightConfig":
        """A light from above at a random azimuth and elevation 35-85 deg, a slightly tinted colour (0.85-1
        per channel), ambient 0.45-0.75, diffuse 0.2-0.5, specular 0-0.15, shadows half the time."""
        az, el = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(35.0, 85.0))
        direction = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        return cls(direction=direction, color=tuple(float(c) for c in rng.uniform(0.85, 1.0, 3)),
                   ambient=float(rng.uniform(0.45, 0.75)), diffuse=float(rng.uniform(0.2, 0.5)),
                   specular=float(rng.uniform(0.0, 0.15)), shadow=bool(rng.random() < 0.5))

    def render_kwargs(self) -> dict:
        """Keyword arguments of ``getCameraImage`` for the fields that are set."""
        out: dict = {}
        if self.direction is not None:
            out["lightDirection"] = [float(x) for x in self.direction]
        if self.color is not None:
            out["lightColor"] = [float(x) for x in self.color]
        for key, v in (("lightAmbientCoeff", self.ambient), ("lightDiffuseCoeff", self.diffuse),
                       ("lightSpecularCoeff", self.specular)):
            if v is not None:
                out[key] = float(v)
        if self.shadow is not None:
            out["shadow"] = int(bool(self.shadow))
        return out


@dataclass(frozen=True)
class SimCameraConfig:
    """Camera resolution, vertical field of view, clip planes, pose (eye, target, up) and noise."""

    width: int = 320
    height: int = 240
    vfov_deg: float = 50.0
    near: float = 0.05
    far: float = 3.0
    eye: tuple[float, float, float] = (1.0, 0.0, 1.0)
    target: tuple[float, float, float] = (0.45, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    noise: DepthNoiseConfig = field(default_factory=DepthNoiseConfig)
    seed: int = 0
    segmentation: bool = True
    fps: float = 15.0  # real time only: read() waits for the next frame time, as a streaming camera does
    light: LightConfig = field(default_factory=LightConfig)  # default: PyBullet's light, render unchanged

    def __post_init__(self) -> None:
        check(16 <= self.width <= 4096 and 16 <= self.height <= 4096, "camera.width/height",
              f"must lie in [16, 4096], got {self.width}x{self.height}")
        check(5 <= self.vfov_deg <= 150, "camera.vfov_deg", f"must lie in [5, 150], got {self.vfov_deg}")
        check(0 < self.near < self.far, "camera.near/far", f"need 0 < near < far, got {self.near}, {self.far}")
        check(0 < self.fps <= 120, "camera.fps", f"must lie in (0, 120], got {self.fps}")
        f = np.subtract(self.target, self.eye)
        check(np.linalg.norm(f) > 1e-6, "camera.target", "must differ from camera.eye")
        check(np.linalg.norm(np.cross(f, self.up)) > 1e-6, "camera.up", "must not be parallel to the viewing direction")


def look_at(eye, target, up) -> np.ndarray:
    """T_base_cam (4x4) of an optical frame at ``eye`` looking at ``target`` (x right, y down, z forward)."""
    eye = np.asarray(eye, dtype=np.float64)
    f = np.asarray(target, dtype=np.float64) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, dtype=np.float64))
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = r, d, f, eye
    return T


class SimCamera(DeviceBase):
    """A rendered RGB-D camera in a :class:`SimWorld`; implements :class:`~edgebridge.interfaces.Camera`."""

    name = "sim camera"

    def __init__(self, world: SimWorld, config: SimCameraConfig | None = None) -> None:
        super().__init__()
        self.world = world
        self.config = config or SimCameraConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self.last_segmentation: np.ndarray | None = None
        self._next_frame_ns: int | None = None
        self.frames_rendered = 0  # the frame number (RGBD.seq) of the last frame read
        self._set_matrices()

    def _set_matrices(self) -> None:
        c = self.config
        p = self.world.p
        self._view = p.computeViewMatrix(list(c.eye), list(c.target), list(c.up))
        self._proj = p.computeProjectionMatrixFOV(c.vfov_deg, c.width / c.height, c.near, c.far)
        fy = (c.height / 2.0) / math.tan(math.radians(c.vfov_deg) / 2.0)
        # The tiny renderer samples pixel (u, v) at window coordinates (u, H - 1 - v), not at pixel centres:
        # the principal point is (W/2, H/2 - 1) (measured: sphere centroids against their projection).
        self.intrinsics = Intrinsics(width=c.width, height=c.height, fx=fy, fy=fy,
                                     cx=c.width / 2.0, cy=c.height / 2.0 - 1.0)
        self.T_base_cam = look_at(c.eye, c.target, c.up)

    def set_pose(self, eye, target, up=None) -> None:
        """Move the camera (the reported ``T_base_cam`` follows, as after a re-calibration)."""
        self.config = replace(self.config, eye=tuple(float(x) for x in eye), target=tuple(float(x) for x in target),
                              up=self.config.up if up is None else tuple(float(x) for x in up))
        self._set_matrices()

    def set_resolution(self, width: int, height: int) -> None:
        """Render ``width`` x ``height`` frames from now on (same pose and vertical field of view; the
        intrinsics scale), as a RealSense colour stream is opened at another size. A calibration capture
        uses a larger one so that a board's markers span several pixels per bit."""
        self.config = replace(self.config, width=int(width), height=int(height))
        self._set_matrices()

    def set_light(self, light: LightConfig) -> None:
        """Change the renderer's light (``LightConfig()`` restores PyBullet's default)."""
        self.config = replace(self.config, light=light)

    def set_noise(self, noise: DepthNoiseConfig, seed: int | None = None) -> None:
        self.config = replace(self.config, noise=noise)
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ Camera interface
    def read(self) -> RGBD:
        """Render one frame (about 50 ms at 320x240 on a laptop core) and apply the noise model."""
        self._require_connected()
        clock = self.world.clock
        if clock.realtime:  # frames arrive at the camera's rate: wait for the next frame time
            period = int(1e9 / self.config.fps)
            now = clock.now_ns()
            due = self._next_frame_ns if self._next_frame_ns is not None else now
            if due > now:
                clock.sleep_until(due)
            self._next_frame_ns = max(due, now - period) + period
        self.world.sync()
        rgb, depth, seg = self.render()
        self.last_segmentation = seg
        if not self.config.noise.is_clean:
            depth = apply_depth_noise(depth, self.config.noise, self._rng, self.config.far)
        stamp = int(self.world.clock.now_ns()) if not self.world.clock.realtime else now_ns()
        self.frames_rendered += 1
        return RGBD(rgb=rgb, depth=depth, intrinsics=self.intrinsics, stamp_ns=stamp, seq=self.frames_rendered)

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Noise-free (rgb uint8 (H, W, 3), metric depth float32 (H, W), segmentation body ids or None)."""
        c = self.config
        p = self.world.p
        flags = 0 if c.segmentation else p.ER_NO_SEGMENTATION_MASK
        self.world.update_attachments()  # visuals carried by a link (a calibration board) follow it
        _, _, rgba, zbuf, seg = p.getCameraImage(c.width, c.height, self._view, self._proj,
                                                 renderer=p.ER_TINY_RENDERER, flags=flags,
                                                 **c.light.render_kwargs())
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(c.height, c.width, 4)[:, :, :3].copy()
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(c.height, c.width)
        depth = (c.far * c.near / (c.far - (c.far - c.near) * zbuf)).astype(np.float32)
        depth[zbuf >= 1.0 - 1e-7] = 0.0  # nothing hit before the far plane: no measurement
        segm = np.asarray(seg, dtype=np.int32).reshape(c.height, c.width) if c.segmentation else None
        return rgb, depth, segm

    def project(self, points_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base-frame points (N, 3) -> pixel coordinates (N, 2) float (u, v) and camera-frame depth (N,)."""
        pts = np.atleast_2d(np.asarray(points_base, dtype=np.float64))
        T_cam_base = np.linalg.inv(self.T_base_cam)
        pc = pts @ T_cam_base[:3, :3].T + T_cam_base[:3, 3]
        z = pc[:, 2]
        k = self.intrinsics
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k.fx * pc[:, 0] / z + k.cx, k.fy * pc[:, 1] / z + k.cy], axis=1)
        return uv, z


def jitter_rgb(rgb: np.ndarray, rng: np.random.Generator, brightness: float = 0.15, contrast: float = 0.15,
               channel_gain: float = 0.08, noise_sigma: float = 2.0) -> np.ndarray:
    """Image-level colour jitter of an (H, W, 3) uint8 image: contrast about the mean and brightness by up
    to ``contrast`` / ``brightness`` (relative), a per-channel gain of up to ``channel_gain``, Gaussian
    pixel noise of ``noise_sigma``; clipped to uint8."""
    x = rgb.astype(np.float32)
    mean = float(x.mean())
    x = (x - mean) * (1.0 + rng.uniform(-contrast, contrast)) + mean
    x = x * (1.0 + rng.uniform(-brightness, brightness))
    x = x * (1.0 + rng.uniform(-channel_gain, channel_gain, 3)).astype(np.float32)
    x = x + rng.normal(0.0, noise_sigma, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def apply_depth_noise(depth: np.ndarray, noise: DepthNoiseConfig, rng: np.random.Generator,
                      far: float = 10.0) -> np.ndarray:
    """Corrupt a clean metric depth image (0 = no measurement) with ``noise``; returns a new float32 array."""
    z = depth.astype(np.float64)
    valid = z > 0
    h, w = z.shape
    out = z.copy()
    if noise.flying_prob > 0:
        # depth edges: a 4-neighbour jumps by more than edge_jump_m; such pixels may read in between
        pad = np.pad(np.where(valid, z, far), 1, mode="edge")
        neigh = np.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
        far_side = neigh.max(axis=0)
        edge = valid & (far_side - z > noise.edge_jump_m)
        fly = edge & (rng.random(z.shape) < noise.flying_prob)
        t = rng.random(z.shape)
        out = np.where(fly, z + t * (np.minimum(far_side, far) - z), out)
    if noise.sigma_a > 0 or noise.sigma_b > 0:
        sigma = noise.sigma_a + noise.sigma_b * out * out
        out = out + rng.standard_normal(z.shape) * sigma
    out = out + noise.depth_bias_m
    drop = rng.random(z.shape) < noise.dropout_prob if noise.dropout_prob > 0 else np.zeros(z.shape, bool)
    if noise.holes > 0 and noise.hole_radius_px > 0:
        vv, uu = np.mgrid[0:h, 0:w]
        for _ in range(noise.holes):
            cu, cv = rng.integers(0, w), rng.integers(0, h)
            ru, rv = rng.integers(1, noise.hole_radius_px + 1, size=2)
            drop |= ((uu - cu) / ru) ** 2 + ((vv - cv) / rv) ** 2 <= 1.0
    out[drop | ~valid | (out <= 0)] = 0.0
    return out.astype(np.float32)
