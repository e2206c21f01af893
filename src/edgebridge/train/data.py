"""Demonstration loading for APPF training. numpy only (no torch, no ``datasets``).

A demonstration directory is a LeRobotDataset v3.0 (``docs/datasets.md``: what ``edge-sim demos`` and
``edge-run --record`` write, or any LeRobot data set that has the features below), or the former
``episode_*.npz`` + ``meta.json`` format (``docs/demos_format.md``), which is still read but no longer written.

Every expert step of every episode becomes one training sample, featurised with the same functions the
runtime uses (:mod:`edgebridge.runtime.expert.features`). The target is the demonstrated chunk as a
correction of the recorded (noisy) guidance sampled at the chunk's times (``output = guidance_residual``).
From a LeRobot data set the chunk at a step is the next H frames' ``action`` (the last one held), and the
guidance comes from each frame's ``observation.guidance`` window and ``observation.goal``; the expert needs
``observation.state`` and ``action`` as end-effector poses (``x y z qx qy qz qw gripper``),
``observation.cloud`` + ``observation.cloud_n_valid``, ``observation.guidance`` and ``observation.goal``.
A data set without the guidance (a plain teleoperated recording) can be given a ``hindsight`` function
that builds the window and goal from an episode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.expert.features import (IK_MIN_Z, FeatureSpec, Normalizer, pose_features, raw_features,
                                       relative_features, residual_features, residual_targets)

log = logging.getLogger(__name__)

EPISODE_KEYS = ("t", "cloud", "cloud_n_valid", "ee_pose", "gripper", "guidance_t", "guidance", "action")


class DemoError(ValueError):
    """A demonstration directory or episode file is missing or malformed."""


@dataclass
class DemoSet:
    """Raw (un-normalised) features of all samples, float32, plus the episode of each sample."""

    cloud: np.ndarray  # (S, M, 3): as recorded (M = the data set's n_points; the trainer fits them to the network's N)
    proprio: np.ndarray  # (S, 10)
    guidance: np.ndarray  # (S, G+1, 10)
    action: np.ndarray  # (S, H, 10): correction of the guidance's IK chunk
    episode: np.ndarray  # (S,) int
    meta: dict

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def subset(self, mask: np.ndarray) -> "DemoSet":
        return DemoSet(self.cloud[mask], self.proprio[mask], self.guidance[mask], self.action[mask],
                       self.episode[mask], self.meta)

    def fit_normalizer(self) -> Normalizer:
        return Normalizer.fit({"cloud": self.cloud[:, ::8], "proprio": self.proprio,
                               "guidance": self.guidance, "action": self.action})

    def split(self, val_fraction: float, seed: int) -> tuple["DemoSet", "DemoSet"]:
        """Split by episode (no step of a validation episode is trained on)."""
        eps = np.unique(self.episode)
        rng = np.random.default_rng(seed)
        n_val = int(round(len(eps) * val_fraction)) if len(eps) > 1 else 0
        val_eps = rng.choice(eps, size=n_val, replace=False) if n_val else np.array([], dtype=eps.dtype)
        is_val = np.isin(self.episode, val_eps)
        return self.subset(~is_val), self.subset(is_val)


def is_lerobot(demo_dir: Path) -> bool:
    return (Path(demo_dir) / "meta" / "info.json").exists()


def read_meta(demo_dir: Path) -> dict:
    """The demonstration set's description: ``n_points``, ``horizon``, ``action_dt``, ``cloud_roi`` ...
    (from ``meta/info.json`` + ``meta/edgebridge.json`` of a LeRobot data set, or the npz set's meta.json)."""
    if is_lerobot(demo_dir):
        return lerobot_meta(Path(demo_dir))
    path = Path(demo_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DemoError(f"{path}: not found, nor meta/info.json (a LeRobot data set); write demonstrations with "
                        f"`edge-sim demos --out {demo_dir}`") from e
    except json.JSONDecodeError as e:
        raise DemoError(f"{path}: not valid JSON ({e})") from e


def spec_from_meta(meta: dict, guidance_steps: int = 16) -> FeatureSpec:
    """Feature sizes from a data set's meta.json (N points, H, action dt)."""
    try:
        return FeatureSpec(n_points=int(meta.get("n_points") or 512), guidance_steps=guidance_steps,
                           horizon=int(meta.get("horizon", meta.get("H", 16))),
                           action_dt=float(meta.get("action_dt", 0.1)))
    except (TypeError, ValueError) as e:
        raise DemoError(f"meta.json: cannot read n_points/horizon/action_dt ({e})") from e


def _load_episode(path: Path, spec: FeatureSpec, n_cloud: int) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in EPISODE_KEYS if k not in z.files]
            if missing:
                raise DemoError(f"{path}: missing keys {missing} (format: docs/demos_format.md)")
            ep = {k: z[k] for k in EPISODE_KEYS}
    except (OSError, ValueError) as e:
        if isinstance(e, DemoError):
            raise
        raise DemoError(f"{path}: cannot read episode ({e})") from e
    t = ep["t"].shape[0]
    shapes = {"cloud": (t, n_cloud, 3), "ee_pose": (t, 7), "gripper": (t,),
              "action": (t, spec.horizon, 8)}
    for k, want in shapes.items():
        if ep[k].shape != want:
            raise DemoError(f"{path}: {k} has shape {ep[k].shape}, expected {want}")
    if ep["guidance"].ndim != 2 or ep["guidance"].shape[1] != 8 or ep["guidance"].shape[0] != ep["guidance_t"].shape[0]:
        raise DemoError(f"{path}: guidance {ep['guidance'].shape} / guidance_t {ep['guidance_t'].shape} "
                        "must be (G, 8) / (G,)")
    for k in ("cloud", "ee_pose", "action", "guidance"):
        if not np.all(np.isfinite(ep[k])):
            raise DemoError(f"{path}: {k} holds non-finite values")
    return ep


def _pad_by_repetition(cloud: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Make padded rows repeat real points (they should already; enforce it)."""
    out = cloud.copy()
    n = cloud.shape[1]
    for i, nv in enumerate(n_valid):
        nv = int(nv)
        if 0 < nv < n:
            out[i, nv:] = cloud[i, np.arange(n - nv) % nv]
    return out


def load_demos(dirs: list[Path] | Path, spec: FeatureSpec | None = None, *,
               only_success: bool = True, max_episodes: int | None = None, hindsight=None) -> DemoSet:
    """Read one or more demonstration directories (LeRobot data sets or npz sets) into a :class:`DemoSet`.
    ``hindsight(episode) -> (window (T, K, 8), goal (T, 8))`` builds the guidance of LeRobot episodes that
    have none (``episode``: the frames as :meth:`LeRobotReader.episode` returns them)."""
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    feats: dict[str, list] = {"cloud": [], "proprio": [], "guidance": [], "action": [], "episode": []}
    metas, n_ep, n_skipped = [], 0, 0
    for d in dirs:
        meta = read_meta(d)
        metas.append({k: (len(v) if k == "episodes" and isinstance(v, list) else v) for k, v in meta.items()})
        spec = spec or spec_from_meta(meta)
        if is_lerobot(d):
            left = None if max_episodes is None else max_episodes - n_ep
            for f in lerobot_samples(d, spec, meta, only_success=only_success, max_episodes=left, hindsight=hindsight):
                if f is None:
                    n_skipped += 1
                    continue
                for k in ("cloud", "proprio", "guidance", "action"):
                    feats[k].append(f[k])
                feats["episode"].append(np.full(len(f["action"]), n_ep, dtype=np.int64))
                n_ep += 1
            continue
        files = sorted(d.glob("episode_*.npz"))
        if not files:
            raise DemoError(f"{d}: no episode_*.npz files")
        for f in files:
            if max_episodes is not None and n_ep >= max_episodes:
                break
            ep = _load_episode(f, spec, int(meta.get("n_points", spec.n_points)))
            with np.load(f, allow_pickle=False) as z:
                ok = bool(z["success"]) if "success" in z.files else True
            if only_success and not ok:
                n_skipped += 1
                continue
            valid = ep["cloud_n_valid"] > 0
            if not np.all(valid):
                log.warning("%s: %d step(s) with an empty cloud skipped", f, int(np.sum(~valid)))
            raw = raw_features(spec, _pad_by_repetition(ep["cloud"][valid], ep["cloud_n_valid"][valid]),
                               ep["ee_pose"][valid], ep["gripper"][valid], ep["guidance_t"], ep["guidance"],
                               ep["t"][valid])
            feats["cloud"].append(raw["cloud"].astype(np.float32))
            feats["proprio"].append(raw["proprio"].astype(np.float32))
            feats["guidance"].append(raw["guidance"].astype(np.float32))
            # target: the demonstrated chunk as a correction of the noisy guidance's IK chunk at the same times
            feats["action"].append(residual_targets(spec, ep["guidance_t"], ep["guidance"], ep["t"][valid],
                                                    ep["action"][valid]).astype(np.float32))
            feats["episode"].append(np.full(int(np.sum(valid)), n_ep, dtype=np.int64))
            n_ep += 1
    if n_ep == 0:
        raise DemoError(f"{[str(d) for d in dirs]}: no usable episodes ({n_skipped} unsuccessful skipped)")
    log.info("loaded %d episodes (%d unsuccessful skipped) from %s", n_ep, n_skipped, [str(d) for d in dirs])
    rois = {json.dumps([m.get("cloud_roi"), m.get("cloud_roi_margin_m", 0.0)], sort_keys=True) for m in metas}
    if len(rois) > 1:
        raise DemoError(f"{[str(d) for d in dirs]}: the directories crop their clouds differently (cloud_roi "
                        f"{sorted(rois)}); record them with the same DemoConfig.cloud_roi")
    meta = {"dirs": [str(d) for d in dirs], "episodes": n_ep, "skipped_unsuccessful": n_skipped,
            "sources": metas, "spec": spec.__dict__, "cloud_roi": metas[0].get("cloud_roi"),
            "cloud_roi_margin_m": float(metas[0].get("cloud_roi_margin_m") or 0.0)}
    return DemoSet(*(np.concatenate(feats[k]) for k in ("cloud", "proprio", "guidance", "action", "episode")),
                   meta=meta)


# --------------------------------------------------------------------------- LeRobot data sets


def lerobot_meta(d: Path) -> dict:
    """A LeRobot data set's description in the terms of the npz meta.json (``n_points``, ``horizon``,
    ``action_dt``, ``cloud_roi`` ...): its features and ``meta/edgebridge.json`` when edgebridge wrote it."""
    from ..datasets.edge_features import CLOUD, GUIDANCE, read_edge_meta
    from ..datasets.layout import DatasetError
    from ..datasets.lerobot_v3 import LeRobotReader

    try:
        ds = LeRobotReader(d)
        edge = read_edge_meta(d) or {}
    except (DatasetError, OSError) as e:
        raise DemoError(str(e)) from e
    fps = float(ds.fps)
    k = ds.features[GUIDANCE]["shape"][0] if GUIDANCE in ds.features else None
    return {**{key: v for key, v in edge.items() if key not in ("format",)}, "format": "lerobot-v3",
            "fps": fps, "robot_type": ds.robot_type, "tasks": edge.get("tasks", ds.tasks),
            "n_points": ds.features[CLOUD]["shape"][0] if CLOUD in ds.features else None,
            "horizon": int(edge.get("horizon", k - 1 if k else 16)), "guidance_steps": k,
            "action_dt": float(edge.get("action_dt", 1.0 / fps)),
            "cloud_roi": edge.get("cloud_roi"), "cloud_roi_margin_m": float(edge.get("cloud_roi_margin_m") or 0.0),
            "episodes": edge.get("episodes", len(ds))}


def _require(d: Path, ds, spec: FeatureSpec, meta: dict, hindsight) -> None:
    """What the expert trains on is in the data set, or one DemoError that lists what is missing."""
    from ..datasets.edge_features import ACTION, CLOUD, CLOUD_N, GOAL, GUIDANCE, POSE_NAMES, STATE

    f = ds.features
    problems = [f"no {k}" for k in (CLOUD, CLOUD_N) if k not in f]
    if hindsight is None:
        problems += [f"no {k}" for k in (GUIDANCE, GOAL) if k not in f]
    for key in (STATE, ACTION):
        if key not in f:
            problems.append(f"no {key}")
        elif tuple(f[key]["shape"]) != (8,) or (f[key].get("names") not in (None, POSE_NAMES)):
            problems.append(f"{key} is {f[key].get('names') or f[key]['shape']}, not the end-effector pose + gripper "
                            f"{POSE_NAMES}")
    if GUIDANCE in f and f[GUIDANCE]["shape"][0] < max(spec.guidance_steps + 1, spec.horizon):
        problems.append(f"{GUIDANCE} has {f[GUIDANCE]['shape'][0]} steps; the expert needs "
                        f"{max(spec.guidance_steps + 1, spec.horizon)}")
    if abs(meta["action_dt"] * meta["fps"] - 1.0) > 1e-6:
        problems.append(f"the chunk step ({meta['action_dt']} s) is not the frame period (1/{meta['fps']:g} s), so "
                        "the next frames' actions are not a chunk")
    if problems:
        raise DemoError(f"{d}: cannot train the expert on this LeRobot data set: {'; '.join(problems)}. Record with "
                        "`edge-sim demos` or `edge-run --record`, or add these features (docs/datasets.md)")


def lerobot_samples(d: Path, spec: FeatureSpec, meta: dict, *, only_success: bool = True,
                    max_episodes: int | None = None, hindsight=None):
    """Raw features of each episode of a LeRobot data set, as in :func:`load_demos` (None for an episode
    left out because it failed)."""
    from ..datasets.edge_features import ACTION, CLOUD, CLOUD_N, GOAL, GUIDANCE, STATE
    from ..datasets.layout import DatasetError
    from ..datasets.lerobot_v3 import LeRobotReader

    ds = LeRobotReader(d)
    _require(d, ds, spec, meta, hindsight)
    ok = {int(e["episode_index"]): bool(e.get("success", True)) for e in meta["episodes"]} \
        if isinstance(meta.get("episodes"), list) else {}
    n = 0
    for i in range(len(ds)):
        if max_episodes is not None and n >= max_episodes:
            return
        if only_success and not ok.get(i, True):
            yield None
            continue
        keys = [STATE, ACTION, CLOUD, CLOUD_N] + ([GUIDANCE, GOAL] if GUIDANCE in ds.features else [])
        try:
            ep = ds.episode(i, keys)
        except (DatasetError, OSError) as e:
            raise DemoError(f"{d}: episode {i}: {e}") from e
        if hindsight is not None and GUIDANCE not in ep:
            ep[GUIDANCE], ep[GOAL] = hindsight(ep)
        for k in (STATE, ACTION, CLOUD, GUIDANCE, GOAL):
            if not np.all(np.isfinite(ep[k])):
                raise DemoError(f"{d}: episode {i}: {k} holds non-finite values")
        yield window_samples(spec, ep[STATE], ep[ACTION], ep[CLOUD], ep[CLOUD_N], ep[GUIDANCE], ep[GOAL],
                             where=f"{d}: episode {i}")
        n += 1


def window_samples(spec: FeatureSpec, state, action, cloud, n_valid, window, goal, where: str = "") -> dict:
    """Raw features and residual targets from per-frame data: state (T, 8), action (T, 8) (the chunk at a
    step is the next H actions, the last held), cloud (T, N, 3) + n_valid (T,), the guidance window
    (T, K, 8) at ``now + k * action_dt`` and goal (T, 8). Equal to :func:`raw_features` and
    :func:`residual_targets` on the whole guidance (tests/lerobot_format/test_lerobot_demos.py)."""
    state, action = np.asarray(state, np.float64), np.asarray(action, np.float64)
    window, goal = np.asarray(window, np.float64), np.asarray(goal, np.float64)
    t, g, h = len(state), spec.guidance_steps, spec.horizon
    valid = np.asarray(n_valid) > 0
    if not np.all(valid):
        log.warning("%s: %d step(s) with an empty cloud skipped", where, int(np.sum(~valid)))
    pos, quat, grip = state[:, :3], state[:, 3:7], state[:, 7]
    tokens = np.concatenate([window[:, 1:g + 1], goal[:, None]], axis=1)
    chunk = action[np.minimum(np.arange(t)[:, None] + np.arange(h)[None, :], t - 1)]
    base = window[:, :h].copy()
    base[..., 7] = np.clip(base[..., 7], 0.0, 1.0)
    base[..., 2] = np.maximum(base[..., 2], IK_MIN_Z)
    clouds = _pad_by_repetition(np.asarray(cloud, np.float32), np.asarray(n_valid))
    out = {"cloud": clouds - goal[:, None, :3], "proprio": pose_features(pos, quat, grip),
           "guidance": relative_features(pos, quat, tokens[..., :3], tokens[..., 3:7], tokens[..., 7]),
           "action": residual_features(base, chunk)}
    return {k: v[valid].astype(np.float32) for k, v in out.items()}
