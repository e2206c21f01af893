"""What every action-expert backend shares: config, metadata, featurisation, output checks, decoding.

A backend subclasses :class:`ExpertBackend` and implements ``_infer(feeds) -> action`` for one batch of
normalised network inputs; ``act`` does the rest (features, seeded initial noise, timing, checks,
decoding into an absolute :class:`ActionChunk`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...contracts import ActionChunk, ArmState, Guidance, PointCloud
from ...errors import ExpertError
from .features import (OUTPUT_RELATIVE, OUTPUT_RESIDUAL, POSE_DIM, CloudROI, CorrectionLimit, FeatureSpec, Normalizer,
                       apply_residual, base_chunk, decode_action, goal_position, normalize_inputs, raw_features,
                       resample_cloud)

log = logging.getLogger(__name__)

INPUT_NAMES = ("cloud", "proprio", "guidance", "noise")
REQUIRED_META = ("n_points", "guidance_steps", "horizon", "ddim_steps", "action_dt", "normalization")


@dataclass(frozen=True)
class ExpertBackendConfig:
    """Runtime settings of an action-expert backend.

    ``model``: the .onnx file (OnnxExpert) or .engine file (TensorRTExpert). ``metadata``: the JSON
    written by ``edge-export expert`` (default: the model path with a ``.json`` suffix).
    ``providers``: "auto" (TensorRT EP > CUDA EP > CPU EP, whichever is available) or a list of ONNX
    Runtime provider names. ``seed``: seeds the initial diffusion noise, so a run is reproducible.
    ``max_offset_m``: a chunk whose targets lie farther than this from the current end effector is
    rejected as implausible. ``noise_scale`` scales the initial diffusion noise (default 0: deterministic DDIM
    from the mean, the same correction for the same observation)."""

    model: str
    metadata: str | None = None
    providers: str | tuple = "auto"
    threads: int = 2
    seed: int = 0
    max_offset_m: float = 1.0
    noise_scale: float = 0.0
    trt_fp16: bool = True
    trt_cache_dir: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise ValueError(f"ExpertBackendConfig.model: expected a file path, got {self.model!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"ExpertBackendConfig.threads: expected an int >= 1, got {self.threads!r}")
        if not (0 <= self.noise_scale <= 1):
            raise ValueError(f"ExpertBackendConfig.noise_scale: expected a value in [0, 1], got {self.noise_scale!r}")
        if not (self.max_offset_m > 0):
            raise ValueError(f"ExpertBackendConfig.max_offset_m: expected metres > 0, got {self.max_offset_m!r}")
        if self.providers != "auto" and not (isinstance(self.providers, (tuple, list)) and self.providers):
            raise ValueError(f"ExpertBackendConfig.providers: expected 'auto' or a non-empty list, got {self.providers!r}")

    @property
    def metadata_path(self) -> Path:
        return Path(self.metadata) if self.metadata else Path(self.model).with_suffix(".json")


def load_metadata(path: Path) -> dict:
    """Read and check the export metadata JSON."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ExpertError(f"{path}: expert metadata not found; it is written next to the ONNX by "
                          "`edge-export expert` (or pass ExpertBackendConfig.metadata)") from e
    except json.JSONDecodeError as e:
        raise ExpertError(f"{path}: expert metadata is not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ExpertError(f"{path}: expert metadata lacks {missing}; re-export with `edge-export expert`")
    return meta


class ExpertBackend:
    """Shared ``act`` for the ONNX Runtime and TensorRT backends (an :class:`ActionExpert`)."""

    name = "expert"

    def __init__(self, config: ExpertBackendConfig) -> None:
        self.config = config
        self.meta = load_metadata(config.metadata_path)
        try:
            self.spec = FeatureSpec(n_points=int(self.meta["n_points"]),
                                    guidance_steps=int(self.meta["guidance_steps"]),
                                    horizon=int(self.meta["horizon"]), action_dt=float(self.meta["action_dt"]))
        except (TypeError, ValueError) as e:
            raise ExpertError(f"{config.metadata_path}: bad sizes in expert metadata ({e})") from e
        self.norm = Normalizer.from_dict(self.meta["normalization"])
        self.k = int(self.meta["ddim_steps"])
        self.output = str(self.meta.get("output", OUTPUT_RELATIVE))
        if self.output not in (OUTPUT_RESIDUAL, OUTPUT_RELATIVE):
            raise ExpertError(f"{config.metadata_path}: unknown output encoding {self.output!r} (expected "
                              f"{OUTPUT_RESIDUAL!r} or {OUTPUT_RELATIVE!r}); re-export the model")
        lim = self.meta.get("correction_limit") or {}
        try:
            self.limit = CorrectionLimit(**lim)
        except (TypeError, ValueError) as e:
            raise ExpertError(f"{config.metadata_path}: bad correction_limit {lim!r} ({e})") from e
        self.roi = CloudROI.from_dict(self.meta.get("cloud_roi"))  # None: trained on whole-workspace clouds
        self._rng = np.random.default_rng(config.seed)
        self._closed = False
        self.last_timings_ms: dict = {}
        self.last_correction_m: float | None = None  # the network's largest position correction, before the bound
        self.last_trust: float = 1.0  # the weight CorrectionLimit.trust gave the last correction
        self.corrected_chunks = 0  # chunks decoded as a correction of the guidance
        self.distrusted_chunks = 0  # ... of which the correction was faded out (weight < 1)
        self.max_correction_m = 0.0

    @property
    def trained_tasks(self) -> tuple[str, ...] | None:
        """The sim task slugs the model's demonstrations came from (``data.tasks`` in the metadata), or
        None when the metadata does not say."""
        tasks = (self.meta.get("data") or {}).get("tasks")
        return tuple(str(t) for t in tasks) if isinstance(tasks, (list, tuple)) else None

    # ------------------------------------------------------------------ shapes

    def input_shapes(self, batch: int = 1) -> dict:
        s = self.spec
        return {"cloud": (batch, s.n_points, 3), "proprio": (batch, POSE_DIM),
                "guidance": (batch, s.guidance_tokens, POSE_DIM), "noise": (batch, s.horizon, POSE_DIM)}

    def check_feeds(self, feeds: dict) -> int:
        """Validate normalised network inputs (names, shapes, float32, finite); return the batch size."""
        missing = [n for n in INPUT_NAMES if n not in feeds]
        if missing:
            raise ExpertError(f"{self.name}: missing network inputs {missing} (expected {list(INPUT_NAMES)})")
        batch = np.asarray(feeds["noise"]).shape[0] if np.ndim(feeds["noise"]) else 0
        for n, want in self.input_shapes(batch).items():
            a = feeds[n]
            if not isinstance(a, np.ndarray) or a.shape != want or batch < 1:
                got = getattr(a, "shape", type(a).__name__)
                raise ExpertError(f"{self.name}: input {n!r} has shape {got}, expected {want} "
                                  "(B, ...) with the same batch B for every input")
            if a.dtype != np.float32:
                raise ExpertError(f"{self.name}: input {n!r} has dtype {a.dtype}, expected float32")
            if not np.all(np.isfinite(a)):
                raise ExpertError(f"{self.name}: input {n!r} holds non-finite values")
        return batch

    def run(self, feeds: dict) -> np.ndarray:
        """One network call on normalised inputs -> normalised action (B, H, 10), checked finite."""
        if self._closed:
            raise ExpertError(f"{self.name} is closed; create a new backend")
        batch = self.check_feeds(feeds)
        out = np.asarray(self._infer({n: np.ascontiguousarray(feeds[n]) for n in INPUT_NAMES}))
        want = (batch, self.spec.horizon, POSE_DIM)
        if out.shape != want:
            raise ExpertError(f"{self.name}: network output has shape {out.shape}, expected {want}; "
                              "the model does not match its metadata — re-export it")
        if not np.all(np.isfinite(out)):
            bad = int(np.count_nonzero(~np.isfinite(out)))
            raise ExpertError(f"{self.name}: network output holds {bad} non-finite value(s) (NaN/Inf); "
                              "chunk rejected — check the model file and its inputs")
        return out

    def correction_summary(self) -> str | None:
        """One line on the corrections so far (None before the first corrected chunk)."""
        if not self.corrected_chunks:
            return None
        line = (f"{self.corrected_chunks} chunks, largest correction asked {self.max_correction_m * 1e3:.0f} mm "
                f"(bound {self.limit.position_m * 1e3:.0f} mm)")
        if self.limit.distrust_from_m is not None:
            line += f", {self.distrusted_chunks} faded out (asked >= {self.limit.distrust_from_m * 1e3:.0f} mm)"
        return line

    def _note_distrust(self) -> None:
        self.distrusted_chunks += 1
        msg = ("%s: the network asks for a %.0f mm correction (bound %.0f mm, distrusted from %.0f mm); "
               "correction weighted %.2f — the chunk follows the guidance more closely")
        args = (self.name, self.last_correction_m * 1e3, self.limit.position_m * 1e3,
                self.limit.distrust_from_m * 1e3, self.last_trust)
        (log.warning if self.distrusted_chunks == 1 else log.debug)(msg, *args)

    def _infer(self, feeds: dict) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ act

    def cloud_box(self, state: ArmState, guidance: Guidance, workspace: tuple | None = None, now_s: float | None = None):
        """The crop box this model's cloud must come from — the region of interest around the guidance's
        goal it was trained on (``cloud_roi`` in the metadata) — or None (the whole workspace)."""
        if self.roi is None:
            return None
        if now_s is None:
            now_s = (state.stamp_ns - guidance.stamp_ns) * 1e-9
        return self.roi.box(goal_position(guidance, now_s), workspace)

    def features(self, cloud: PointCloud, state: ArmState, guidance: Guidance, now_s: float | None = None) -> dict:
        """Normalised network inputs (batch 1, without noise) for one observation.

        ``now_s`` is the time on the guidance's time base; by default
        ``(state.stamp_ns - guidance.stamp_ns) / 1e9``, i.e. ``guidance.t`` counts from ``guidance.stamp_ns``."""
        for obj, cls, what in ((cloud, PointCloud, "cloud"), (state, ArmState, "state"), (guidance, Guidance, "guidance")):
            if not isinstance(obj, cls):
                raise ExpertError(f"{self.name}.act: {what} must be a {cls.__name__}, got {type(obj).__name__}")
        if cloud.frame != "base":
            raise ExpertError(f"{self.name}.act: cloud is in frame {cloud.frame!r}; transform it to 'base' first")
        if now_s is None:
            now_s = (state.stamp_ns - guidance.stamp_ns) * 1e-9
        if not np.isfinite(now_s):
            raise ExpertError(f"{self.name}.act: now_s must be finite, got {now_s}")
        xyz = resample_cloud(cloud.xyz, cloud.n_valid, self.spec.n_points)
        ee = np.concatenate([state.ee_pose.position, state.ee_pose.quat])[None]
        g = np.concatenate([guidance.positions, guidance.quats, guidance.gripper[:, None]], axis=1)
        raw = raw_features(self.spec, xyz[None], ee, np.array([state.gripper]), guidance.t, g,
                           np.array([float(now_s)]))
        return normalize_inputs(self.norm, raw)

    def act(self, cloud: PointCloud, state: ArmState, guidance: Guidance, now_s: float | None = None) -> ActionChunk:
        """Refine ``guidance`` with the live cloud into an absolute chunk of H end-effector targets."""
        t0 = time.perf_counter()
        feeds = self.features(cloud, state, guidance, now_s)
        noise = self._rng.standard_normal((1, self.spec.horizon, POSE_DIM))
        feeds["noise"] = (self.config.noise_scale * noise).astype(np.float32)
        t1 = time.perf_counter()
        out = self.run(feeds)
        t2 = time.perf_counter()
        if now_s is None:
            now_s = (state.stamp_ns - guidance.stamp_ns) * 1e-9
        if self.output == OUTPUT_RESIDUAL:  # the IK chunk of the guidance, corrected (bounded)
            g = np.concatenate([guidance.positions, guidance.quats, guidance.gripper[:, None]], axis=1)
            base = base_chunk(self.spec, guidance.t, g, np.array([float(now_s)]))
            residual = self.norm.unnormalize("action", out)
            self.last_correction_m = float(self.limit.requested_m(residual)[0])
            self.corrected_chunks += 1
            self.max_correction_m = max(self.max_correction_m, self.last_correction_m)
            self.last_trust = float(self.limit.trust(residual)[0])
            if self.last_trust < 1.0:
                self._note_distrust()
            poses = apply_residual(base, residual, self.limit)[0]
        else:
            ee = np.concatenate([state.ee_pose.position, state.ee_pose.quat])[None]
            poses = decode_action(self.norm, ee, out)[0]
        offset = float(np.max(np.linalg.norm(poses[:, :3] - state.ee_pose.position, axis=1)))
        if offset > self.config.max_offset_m:
            raise ExpertError(f"{self.name}: chunk reaches {offset:.2f} m from the end effector "
                              f"(limit max_offset_m={self.config.max_offset_m}); rejected as implausible")
        t3 = time.perf_counter()
        self.last_timings_ms = {"features": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3,
                                "decode": (t3 - t2) * 1e3}
        # step k is for now + k * action_dt, as in the demonstrations and IKExpert (its chunk starts now)
        start_ns = max(0, guidance.stamp_ns + int(round(float(now_s) * 1e9)))
        return ActionChunk(poses=poses.astype(np.float32), start_ns=start_ns,
                           dt=self.spec.action_dt, inference_ms=(t3 - t0) * 1e3)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def untrained_task_note(expert, slug: str) -> str | None:
    """A warning when ``expert`` (any executor) names its demonstrations' tasks and ``slug`` is not one of
    them; None otherwise."""
    tasks = getattr(expert, "trained_tasks", None)
    if not tasks or slug in tasks:
        return None
    return (f"the action expert was trained on demonstrations of {', '.join(tasks)} only; task {slug} is outside "
            f"them and its success may fall below plain IK's (--expert ik; benchmarks/results/sim_expert.md)")
