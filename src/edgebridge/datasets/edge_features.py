"""edgebridge's features in a LeRobot data set: names, shapes, units and frames (docs/datasets.md), and the
data set's edgebridge record ``meta/edgebridge.json``.

Every pose is ``x y z qx qy qz qw gripper``: metres in the robot base frame, a unit quaternion (x, y, z, w),
the gripper in [0, 1] (0 closed, 1 open). One frame per expert step, ``fps = 1 / expert period``.

| key | dtype, shape | meaning |
| --- | --- | --- |
| ``observation.images.<camera>`` | video (H, W, 3) | the RGB frame the step used |
| ``observation.state`` | float32 (8,) | end-effector pose + gripper |
| ``observation.joints`` | float32 (J,) | joint positions, rad |
| ``action`` | float32 (8,) | the target pose + gripper for this step (the chunk's first row) |
| ``observation.cloud`` | float32 (N, 3) | the cropped base-frame cloud, padded by repeating real points |
| ``observation.cloud_n_valid`` | int64 (1,) | how many rows of the cloud are real |
| ``observation.guidance`` | float32 (K, 8) | the guidance at ``now + k * action_dt``, k < K (held at its ends) |
| ``observation.goal`` | float32 (8,) | the guidance pose at its next gripper event after ``now`` (else its last) |
| ``observation.plan`` | string | the plan in force, as the planner's JSON (empty before the first plan) |
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .layout import DatasetError, feature

POSE_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper"]
STATE = "observation.state"
JOINTS = "observation.joints"
ACTION = "action"
CLOUD = "observation.cloud"
CLOUD_N = "observation.cloud_n_valid"
GUIDANCE = "observation.guidance"
GOAL = "observation.goal"
PLAN = "observation.plan"
IMAGES = "observation.images."
EDGE_META = "meta/edgebridge.json"
EDGE_FORMAT = "edgebridge-lerobot/1"


def edge_features(*, cameras: dict[str, tuple[int, int]] | None = None, n_joints: int | None = None,
                  n_points: int | None = None, guidance_steps: int | None = None, plan: bool = True) -> dict:
    """The LeRobot features of an edgebridge recording. ``cameras``: {name: (height, width)};
    ``n_points``: cloud size (None: no cloud); ``guidance_steps``: K of the guidance window (None: no
    guidance or goal); ``n_joints``: None leaves the joints out."""
    f = {}
    for name, (h, w) in (cameras or {}).items():
        f[IMAGES + name] = feature("video", (h, w, 3), ["height", "width", "channels"])
    f[STATE] = feature("float32", (8,), POSE_NAMES)
    if n_joints:
        f[JOINTS] = feature("float32", (n_joints,), [f"joint_{i}" for i in range(n_joints)])
    f[ACTION] = feature("float32", (8,), POSE_NAMES)
    if n_points:
        f[CLOUD] = feature("float32", (n_points, 3), ["points", "xyz"])
        f[CLOUD_N] = feature("int64", (1,), None)
    if guidance_steps:
        f[GUIDANCE] = feature("float32", (guidance_steps, 8), ["steps", "pose"])
        f[GOAL] = feature("float32", (8,), POSE_NAMES)
    if plan:
        f[PLAN] = feature("string", (1,), None)
    return f


def pose_row(position, quat, gripper) -> np.ndarray:
    return np.concatenate([np.asarray(position, np.float64).reshape(3), np.asarray(quat, np.float64).reshape(4),
                           [float(gripper)]]).astype(np.float32)


def edge_frame(features: dict, *, state: np.ndarray, action: np.ndarray, images: dict | None = None,
               joints=None, cloud=None, n_valid: int | None = None, guidance=None, goal=None, plan: str = "") -> dict:
    """One frame for :class:`~edgebridge.datasets.lerobot_v3.LeRobotWriter` holding exactly the keys of
    ``features`` (made by :func:`edge_features`)."""
    frame = {STATE: np.asarray(state, np.float32), ACTION: np.asarray(action, np.float32)}
    for name, rgb in (images or {}).items():
        frame[IMAGES + name] = rgb
    if JOINTS in features:
        frame[JOINTS] = np.asarray(joints, np.float32)
    if CLOUD in features:
        n = features[CLOUD]["shape"][0]
        xyz = np.asarray(cloud, np.float32).reshape(-1, 3)
        nv = int(len(xyz) if n_valid is None else n_valid)
        frame[CLOUD] = pad_cloud(xyz, nv, n)
        frame[CLOUD_N] = np.int64(min(nv, n))
    if GUIDANCE in features:
        frame[GUIDANCE] = np.asarray(guidance, np.float32)
        frame[GOAL] = np.asarray(goal, np.float32)
    if PLAN in features:
        frame[PLAN] = plan
    return frame


def pad_cloud(xyz: np.ndarray, n_valid: int, n: int) -> np.ndarray:
    """(n, 3): the first ``n_valid`` points of ``xyz`` (at most ``n``), the rest repeating them in order
    (zeros when there is none)."""
    nv = min(int(n_valid), len(xyz), n)
    out = np.zeros((n, 3), np.float32)
    if nv > 0:
        out[:nv] = xyz[:nv]
        out[nv:] = xyz[np.arange(n - nv) % nv]
    return out


def write_edge_meta(root: str | Path, meta: dict) -> None:
    path = Path(root) / EDGE_META
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": EDGE_FORMAT, **meta}, indent=2) + "\n")


def read_edge_meta(root: str | Path) -> dict | None:
    """``meta/edgebridge.json`` of a data set, or None when the data set was recorded by another tool."""
    path = Path(root) / EDGE_META
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
