"""The camera pose every camera driver exposes as ``T_base_cam``, from a calibration file."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class CameraPose:
    """Mixin: ``T_base_cam`` from ``calibration`` (a path to an edge-calib TOML file, or None).

    No file: identity, with a warning (points then stay in the camera frame). A wrist-camera file:
    ``T_base_cam`` depends on the arm pose, so it raises and points to ``T_ee_cam``.
    """

    name = "camera"

    def _load_pose(self, calibration: str | None) -> None:
        self.calibration = None
        if calibration is None:
            log.warning("%s: no calibration file: T_base_cam = identity (run 'edge-calib handeye')", self.name)
            self._T = np.eye(4)
            return
        from ..calib.calib_file import CameraCalibration

        self.calibration = CameraCalibration.load(calibration)
        self._T = self.calibration.T.copy()

    @property
    def T_base_cam(self) -> np.ndarray:
        if self.calibration is not None and self.calibration.mount == "wrist":
            raise ValueError(f"{self.name}: wrist-mounted camera: T_base_cam = T_base_ee(arm state) @ T_ee_cam "
                             f"(camera.calibration.T_ee_cam); there is no fixed T_base_cam")
        return self._T.copy()

    @property
    def is_calibrated(self) -> bool:
        return self.calibration is not None
