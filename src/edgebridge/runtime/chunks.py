"""Action-chunk interpolation and blending at the control rate.

A chunk holds H end-effector targets, step k meant for ``start_ns + k * dt``. ``start_ns`` is the
observation time the expert saw, so a chunk that arrives late is sampled at *now* and its stale prefix
is skipped by construction (the inference delay is accounted for, not replayed).

Between steps: linear position, slerp orientation, linear gripper. Past the last step the chunk holds
its last pose. When a new chunk arrives while another is active, the output cross-fades from the old
to the new over ``blend_s`` starting at the arrival time, so the output is continuous at the boundary.
A final rate limiter bounds the change per tick by the configured linear/angular/gripper speeds, so no
step is ever larger than ``speed * period`` whatever the chunks say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..contracts import ActionChunk, Pose
from ..rotations import quat_angle, slerp


@dataclass(frozen=True)
class Target:
    """One interpolated end-effector target: position (3,), quaternion (4,), gripper."""

    position: np.ndarray
    quat: np.ndarray
    gripper: float

    def pose(self) -> Pose:
        return Pose(self.position, self.quat)


class ChunkTrack:
    """An immutable, time-indexed view of one chunk (or of a constant hold pose)."""

    __slots__ = ("pos", "quat", "grip", "t0_ns", "dt_ns", "n", "end_ns", "arrived_ns")

    def __init__(self, pos: np.ndarray, quat: np.ndarray, grip: np.ndarray, t0_ns: int, dt_ns: int,
                 arrived_ns: int) -> None:
        self.pos = np.ascontiguousarray(pos, dtype=np.float64)
        q = np.array(quat, dtype=np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for k in range(1, len(q)):  # sign continuity: consecutive quaternions in the same hemisphere
            if q[k] @ q[k - 1] < 0:
                q[k] = -q[k]
        self.quat = q
        self.grip = np.asarray(grip, dtype=np.float64)
        self.t0_ns = int(t0_ns)
        self.dt_ns = max(int(dt_ns), 1)
        self.n = len(self.pos)
        self.end_ns = self.t0_ns + (self.n - 1) * self.dt_ns
        self.arrived_ns = int(arrived_ns)

    @classmethod
    def from_chunk(cls, chunk: ActionChunk, arrived_ns: int) -> "ChunkTrack":
        p = chunk.poses.astype(np.float64)
        return cls(p[:, :3], p[:, 3:7], p[:, 7], chunk.start_ns, int(round(chunk.dt * 1e9)), arrived_ns)

    @classmethod
    def hold(cls, target: Target, now_ns: int) -> "ChunkTrack":
        return cls(target.position[None], target.quat[None], np.array([target.gripper]), now_ns, 1, now_ns)

    def sample(self, t_ns: int) -> tuple[np.ndarray, np.ndarray, float]:
        if self.n == 1 or t_ns <= self.t0_ns:
            return self.pos[0], self.quat[0], float(self.grip[0])
        if t_ns >= self.end_ns:
            return self.pos[-1], self.quat[-1], float(self.grip[-1])
        s = (t_ns - self.t0_ns) / self.dt_ns
        i = int(s)
        a = s - i
        p = self.pos[i] + a * (self.pos[i + 1] - self.pos[i])
        q = slerp(self.quat[i], self.quat[i + 1], a)
        g = float(self.grip[i] + a * (self.grip[i + 1] - self.grip[i]))
        return p, q, g


class ChunkBlender:
    """Turns a stream of chunks into one continuous, rate-limited target per control tick.

    ``reset(target, now)`` starts from a hold at ``target`` (normally the arm's measured pose);
    ``push(chunk, now)`` fades a new chunk in; ``sample(now, period_s)`` returns the target for this tick.
    Not thread-safe: owned by the control loop, fed from its inbox.
    """

    def __init__(self, blend_s: float = 0.1, max_speed: float = 0.5, max_angular_speed: float = 2.0,
                 max_gripper_speed: float = 4.0, max_tracks: int = 4) -> None:
        if blend_s < 0 or max_speed <= 0 or max_angular_speed <= 0 or max_gripper_speed <= 0:
            raise ValueError(f"ChunkBlender: need blend_s >= 0 and positive speeds, got blend_s={blend_s}, "
                             f"max_speed={max_speed}, max_angular_speed={max_angular_speed}, "
                             f"max_gripper_speed={max_gripper_speed}")
        self.blend_ns = int(round(blend_s * 1e9))
        self.max_speed = float(max_speed)
        self.max_angular_speed = float(max_angular_speed)
        self.max_gripper_speed = float(max_gripper_speed)
        self.max_tracks = int(max_tracks)
        self._tracks: list[ChunkTrack] = []
        self._last: Target | None = None
        self.chunks_received = 0
        self.last_chunk_ns: int | None = None

    @property
    def active(self) -> bool:
        return bool(self._tracks)

    @property
    def last(self) -> Target | None:
        return self._last

    def reset(self, target: Target, now_ns: int) -> None:
        """Forget all chunks and hold ``target`` (e.g. the measured pose after a stop or at start)."""
        self._tracks = [ChunkTrack.hold(target, now_ns)]
        self._last = target

    def push(self, chunk: ActionChunk, now_ns: int) -> None:
        track = ChunkTrack.from_chunk(chunk, now_ns)
        self._tracks.append(track)
        if len(self._tracks) > self.max_tracks:
            self._tracks = self._tracks[-self.max_tracks:]
        self.chunks_received += 1
        self.last_chunk_ns = now_ns

    def _blend(self, now_ns: int) -> tuple[np.ndarray, np.ndarray, float]:
        tracks = self._tracks
        p, q, g = tracks[0].sample(now_ns)
        first_full = 0
        for k in range(1, len(tracks)):
            tr = tracks[k]
            a = 1.0 if self.blend_ns == 0 else (now_ns - tr.arrived_ns) / self.blend_ns
            p2, q2, g2 = tr.sample(now_ns)
            if a >= 1.0:
                p, q, g = p2, q2, g2
                first_full = k
            elif a > 0.0:
                p = p + a * (p2 - p)
                q = slerp(q, q2, a)
                g = g + a * (g2 - g)
        if first_full:
            del tracks[:first_full]  # fully faded in: older tracks no longer contribute
        return p, q, g

    def sample(self, now_ns: int, period_s: float) -> Target:
        """The target for the tick at ``now_ns``; the change from the previous target is bounded by the
        rate limits times ``period_s``."""
        if not self._tracks:
            raise RuntimeError("ChunkBlender.sample: no target yet; call reset(measured_target, now) first")
        p, q, g = self._blend(now_ns)
        last = self._last
        if last is not None:
            step = p - last.position
            dist = math.sqrt(float(step @ step))
            lim = self.max_speed * period_s
            if dist > lim:
                p = last.position + step * (lim / dist)
            ang = quat_angle(last.quat, q)
            alim = self.max_angular_speed * period_s
            if ang > alim:
                q = slerp(last.quat, q, alim / ang)
            glim = self.max_gripper_speed * period_s
            g = last.gripper + min(max(g - last.gripper, -glim), glim)
        out = Target(np.array(p, dtype=np.float64), np.asarray(q, dtype=np.float64), float(min(max(g, 0.0), 1.0)))
        self._last = out
        return out
