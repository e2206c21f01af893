"""Demonstration loading for APPF training (format: docs/demos_format.md). numpy only.

Every expert step of every episode becomes one training sample, featurised with the same functions the
runtime uses (:mod:`edgebridge.runtime.expert.features`). The target is the demonstrated chunk as a
correction of the recorded (noisy) guidance sampled at the chunk's times (``output = guidance_residual``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.expert.features import FeatureSpec, Normalizer, raw_features, residual_targets

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


def read_meta(demo_dir: Path) -> dict:
    path = Path(demo_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DemoError(f"{path}: not found; write demonstrations with `edge-sim demos --out {demo_dir}`") from e
    except json.JSONDecodeError as e:
        raise DemoError(f"{path}: not valid JSON ({e})") from e


def spec_from_meta(meta: dict, guidance_steps: int = 16) -> FeatureSpec:
    """Feature sizes from a data set's meta.json (N points, H, action dt)."""
    try:
        return FeatureSpec(n_points=int(meta.get("n_points", 512)), guidance_steps=guidance_steps,
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
               only_success: bool = True, max_episodes: int | None = None) -> DemoSet:
    """Read one or more demonstration directories into a :class:`DemoSet`."""
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    feats: dict[str, list] = {"cloud": [], "proprio": [], "guidance": [], "action": [], "episode": []}
    metas, n_ep, n_skipped = [], 0, 0
    for d in dirs:
        meta = read_meta(d)
        metas.append({k: (len(v) if k == "episodes" and isinstance(v, list) else v) for k, v in meta.items()})
        spec = spec or spec_from_meta(meta)
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
