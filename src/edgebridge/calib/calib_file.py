"""Camera calibration files: extrinsics (hand-eye result), intrinsics and provenance, in TOML.

::

    format = "edgebridge-calib/1"
    mount = "fixed"                    # "fixed": camera beside the arm -> T_base_cam
                                       # "wrist": camera on the gripper -> T_ee_cam
    camera = "realsense:123456789"

    [extrinsics]
    T_base_cam = [[...4 rows of 4...]] # or T_ee_cam for mount = "wrist"

    [intrinsics]                       # optional: the colour stream the board was seen with
    width = 640  height = 480  fx = ...  fy = ...  cx = ...  cy = ...
    model = "brown_conrady"  coeffs = [k1, k2, p1, p2, k3]

    [provenance]
    date = "2026-11-25T10:00:00+00:00"
    method = "park"  samples = 20
    residual_rot_deg = 0.08  residual_trans_m = 0.0011   # RMS over the samples
    reprojection_rms_px = 0.3                            # board corners through the solution (refined)
    tool = "edge-calib handeye"  notes = ""

``T_a_b`` maps points in frame b to frame a. Every load validates the transform
(``contracts.check_transform``) and names the file and key of any problem.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import ConfigError, check
from ..contracts import Intrinsics, check_transform
from . import toml_io

FORMAT = "edgebridge-calib/1"
MOUNTS = ("fixed", "wrist")


@dataclass(frozen=True)
class Provenance:
    date: str = ""
    method: str = ""
    samples: int = 0
    residual_rot_deg: float | None = None
    residual_trans_m: float | None = None
    reprojection_rms_px: float | None = None  # board corners through the solution (refined solves)
    tool: str = ""
    notes: str = ""


@dataclass(frozen=True)
class CameraCalibration:
    """A camera's pose relative to the robot (``T``) plus optional intrinsics and provenance."""

    T: np.ndarray
    mount: Literal["fixed", "wrist"] = "fixed"
    camera: str = ""
    intrinsics: Intrinsics | None = None
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        check(self.mount in MOUNTS, "mount", f"expected one of {MOUNTS}, got {self.mount!r}")
        key = "extrinsics." + self.transform_key
        try:
            T = check_transform(key, self.T)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        T.flags.writeable = False
        object.__setattr__(self, "T", T)

    @property
    def transform_key(self) -> str:
        return "T_base_cam" if self.mount == "fixed" else "T_ee_cam"

    @property
    def T_base_cam(self) -> np.ndarray:
        if self.mount != "fixed":
            raise ValueError("this calibration is for a wrist camera: its pose in the base frame is "
                             "T_base_ee(arm state) @ T_ee_cam")
        return self.T.copy()

    @property
    def T_ee_cam(self) -> np.ndarray:
        if self.mount != "wrist":
            raise ValueError("this calibration is for a fixed camera: use T_base_cam")
        return self.T.copy()

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d: dict = {"format": FORMAT, "mount": self.mount, "camera": self.camera,
                   "extrinsics": {self.transform_key: self.T.tolist()}}
        if self.intrinsics is not None:
            i = self.intrinsics
            d["intrinsics"] = {"width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "cx": i.cx,
                               "cy": i.cy, "model": i.model, "coeffs": i.coeffs.tolist()}
        p = self.provenance
        d["provenance"] = {k: v for k, v in vars(p).items() if v is not None}
        return d

    def save(self, path: str | Path) -> Path:
        return toml_io.write(path, self.to_dict(), header="edgebridge camera calibration (edge-calib show FILE)")

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibration") -> "CameraCalibration":
        def err(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: {key}: {why}")

        known = {"format", "mount", "camera", "extrinsics", "intrinsics", "provenance"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise err(unknown[0], f"unknown key (known keys: {', '.join(sorted(known))})")
        if d.get("format") != FORMAT:
            raise err("format", f"expected {FORMAT!r}, got {d.get('format')!r}")
        mount = d.get("mount", "fixed")
        if mount not in MOUNTS:
            raise err("mount", f"expected one of {MOUNTS}, got {mount!r}")
        key = "T_base_cam" if mount == "fixed" else "T_ee_cam"
        ext = d.get("extrinsics", {})
        if key not in ext:
            raise err(f"extrinsics.{key}", f"required for mount = {mount!r}")
        try:
            T = check_transform(f"extrinsics.{key}", np.asarray(ext[key], dtype=np.float64))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {e}") from e
        intr = None
        if "intrinsics" in d:
            try:
                di = dict(d["intrinsics"])
                intr = Intrinsics(**{**di, "coeffs": np.asarray(di.get("coeffs", np.zeros(5)), dtype=np.float64)})
            except (ValueError, TypeError) as e:
                raise err("intrinsics", str(e)) from e
        try:
            prov = Provenance(**d.get("provenance", {}))
        except TypeError as e:
            raise err("provenance", str(e)) from e
        return cls(T=T, mount=mount, camera=str(d.get("camera", "")), intrinsics=intr, provenance=prov)

    @classmethod
    def load(cls, path: str | Path) -> "CameraCalibration":
        path = Path(path)
        try:
            data = toml_io.read(path)
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: calibration file not found; run 'edge-calib handeye' "
                              f"(docs/calibration.md)") from e
        except ValueError as e:
            raise ConfigError(str(e)) from e
        return cls.from_dict(data, source=path.name)


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class CalibrationConfig:
    """``[calibration]`` table of the robot setup: which file holds the camera calibration.

    ``max_residual_trans_m``: refuse a file whose recorded RMS translation residual is larger.
    """

    file: str
    max_residual_trans_m: float | None = None

    def __post_init__(self) -> None:
        check(bool(self.file), "file", "must name a calibration TOML file")
        check(self.max_residual_trans_m is None or self.max_residual_trans_m > 0, "max_residual_trans_m",
              f"must be > 0 or unset, got {self.max_residual_trans_m}")

    def load(self) -> CameraCalibration:
        cal = CameraCalibration.load(self.file)
        r = cal.provenance.residual_trans_m
        if self.max_residual_trans_m is not None and r is not None and r > self.max_residual_trans_m:
            raise ConfigError(f"{self.file}: recorded residual {r * 1e3:.2f} mm exceeds max_residual_trans_m "
                              f"{self.max_residual_trans_m * 1e3:.2f} mm; recalibrate with more varied poses")
        return cal
