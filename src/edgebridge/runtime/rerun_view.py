"""``--rerun FILE.rrd`` / ``--rerun spawn``: a 3-D view of the run in Rerun (``rerun-sdk``), an episode
observer like ``runtime/episode_record.py`` (same calls, see its docstring).

Everything is logged on one timeline, ``time``: seconds of robot time since the run's first episode
began (episodes follow each other, one second apart). Entities (base frame, metres):

| entity | what | when |
| --- | --- | --- |
| ``camera/image`` | the camera frame (JPEG) | every expert step |
| ``camera/image/anchors`` | the plan's anchors on the image, labelled ``open`` / ``close`` | each accepted plan |
| ``plan`` | the plan as JSON | each accepted plan |
| ``world/cloud`` | the cropped cloud the expert saw | every expert step with a cloud |
| ``world/waypoints`` | the lifted waypoints (green: gripper open, red: closed) | each guidance |
| ``world/spline`` | the guidance B-spline | each guidance |
| ``world/chunk`` | the chunk the expert returned | every expert step |
| ``world/correction`` | arrows from the guidance at the chunk's times to the chunk | every expert step |
| ``world/ee`` / ``world/ee_path`` | the end effector and its path this episode | every expert step |
| ``plots/gripper``, ``plots/gripper_target`` | measured gripper, chunk's first target | every expert step |
| ``plots/correction_mm`` | the chunk's largest position correction | every expert step |
| ``profile/<stage>`` | each recorded stage span's duration (ms) at its start | at the episode's end |
| ``episode`` | the outcome | at the episode's end |

``python -m edgebridge.runtime.rerun_view FILE.rrd --png OUT.png`` draws a still of a recording with
matplotlib (the camera image with its anchors, and the 3-D scene), for places without a viewer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .guidance import interpolate_guidance

log = logging.getLogger(__name__)

OPEN, CLOSED = (40, 200, 80), (220, 50, 50)


def _rr():
    try:
        import rerun as rr
    except ImportError as e:
        raise ImportError("--rerun needs the Rerun SDK: pip install 'edgebridge[rerun]'") from e
    return rr


class RerunView:
    """Logs what the pipeline reports to a Rerun recording stream ``rec`` (see :meth:`open`).
    ``image_every``: log every n-th camera frame (1: all)."""

    def __init__(self, rec, image_every: int = 1) -> None:
        self.rr = _rr()
        self.rec = rec
        self.image_every = max(1, int(image_every))
        self._lock = threading.Lock()
        self._offset = 0.0  # run time at the current episode's start
        self._t0_ns: int | None = None  # robot time of the current episode's start
        self._last = 0.0
        self._path: list[np.ndarray] = []
        self._clock: list[tuple[int, float]] = []  # (wall monotonic ns, run time) pairs for the profile spans
        self._steps = 0
        self.episodes = 0

    @classmethod
    def open(cls, target: str | Path, app_id: str = "edgebridge", **kw) -> "RerunView":
        """``target``: a ``.rrd`` file to write, or ``"spawn"`` for a live viewer."""
        rr = _rr()
        rec = rr.RecordingStream(app_id)
        if str(target) == "spawn":
            rec.spawn()
        else:
            path = Path(target)
            if path.suffix != ".rrd":
                raise ValueError(f"--rerun {target}: expected a FILE.rrd or 'spawn'")
            path.parent.mkdir(parents=True, exist_ok=True)
            rec.save(str(path))
        return cls(rec, **kw)

    # ------------------------------------------------------------------ time
    def _time(self, stamp_ns: int | None) -> float:
        with self._lock:
            if stamp_ns is None:
                return self._last
            if self._t0_ns is None:
                self._t0_ns = int(stamp_ns)
            t = self._offset + (int(stamp_ns) - self._t0_ns) / 1e9
            self._last = max(self._last, t)
            return t

    def _at(self, t: float) -> None:
        self.rec.set_time("time", duration=float(t))

    # ------------------------------------------------------------------ observer calls
    def begin_episode(self, instruction: str, task: str = "", seed: int = 0) -> None:
        with self._lock:
            self._offset = self._last + (1.0 if self.episodes else 0.0)
            self._last = self._offset
            self._t0_ns, self._path, self._steps = None, [], 0
            self._clock = [(time.monotonic_ns(), self._offset)]
        self._at(self._offset)
        self.rec.log("episode", self.rr.TextLog(f"episode {self.episodes}: {instruction!r} (task {task}, seed {seed})"))
        self.episodes += 1

    def on_plan(self, plan, frame=None) -> None:
        from .planner.format import plan_to_json

        self._at(self._time(getattr(frame, "stamp_ns", None)))
        uv = np.array([[a.u, a.v] for a in plan.anchors], np.float32).reshape(-1, 2)
        grip = [a.gripper >= 0.5 for a in plan.anchors]
        self.rec.log("camera/image/anchors", self.rr.Points2D(
            uv, radii=4.0, colors=[OPEN if g else CLOSED for g in grip],
            labels=[f"{i} {'open' if g else 'close'}" for i, g in enumerate(grip)]))
        self.rec.log("plan", self.rr.TextDocument(plan_to_json(plan), media_type="text/plain"))

    def on_guidance(self, lifted, state, path, spline, stamp_ns: int) -> None:
        self._at(self._time(stamp_ns))
        grip = np.asarray(lifted.gripper) >= 0.5
        self.rec.log("world/waypoints", self.rr.Points3D(np.asarray(lifted.positions, np.float32), radii=0.008,
                                                         colors=[OPEN if g else CLOSED for g in grip]))
        dense = spline.sample(0.02, stamp_ns=stamp_ns)
        self.rec.log("world/spline", self.rr.LineStrips3D([np.asarray(dense.positions, np.float32)], radii=0.002,
                                                          colors=[(80, 140, 255)]))

    def on_frame(self, frame, cloud=None) -> None:
        self._at(self._time(frame.stamp_ns))
        if self._steps % self.image_every == 0:
            img = self.rr.Image(frame.rgb)
            try:
                img = img.compress(jpeg_quality=85)
            except Exception:  # Pillow missing: raw pixels
                pass
            self.rec.log("camera/image", img)
        if cloud is not None:
            n = int(cloud.n_valid if cloud.n_valid is not None else len(cloud))
            self.rec.log("world/cloud", self.rr.Points3D(np.asarray(cloud.xyz[:n], np.float32), radii=0.002,
                                                         colors=[(170, 170, 170)]))

    def on_state(self, state) -> None:
        t = self._time(state.stamp_ns)
        with self._lock:
            self._clock.append((time.monotonic_ns(), t))
            self._path.append(np.asarray(state.ee_pose.position, np.float32))
            path = np.stack(self._path)
        self._at(t)
        self.rec.log("world/ee", self.rr.Points3D(path[-1:], radii=0.012, colors=[OPEN if state.gripper >= 0.5 else CLOSED]))
        self.rec.log("world/ee_path", self.rr.LineStrips3D([path], radii=0.002, colors=[(255, 200, 0)]))
        self.rec.log("plots/gripper", self.rr.Scalars(float(state.gripper)))

    def on_chunk(self, chunk, guidance, state=None) -> None:
        t = self._time(state.stamp_ns if state is not None else chunk.start_ns)
        self._at(t)
        poses = np.asarray(chunk.poses, np.float64)
        now = (chunk.start_ns - guidance.stamp_ns) / 1e9
        base = interpolate_guidance(guidance, now + chunk.dt * np.arange(len(poses)))
        corr = poses[:, :3] - base[:, :3]
        self.rec.log("world/chunk", self.rr.LineStrips3D([poses[:, :3].astype(np.float32)], radii=0.003,
                                                         colors=[(255, 120, 0)]))
        self.rec.log("world/correction", self.rr.Arrows3D(origins=base[:, :3].astype(np.float32),
                                                          vectors=corr.astype(np.float32), colors=[(255, 0, 255)]))
        self.rec.log("plots/gripper_target", self.rr.Scalars(float(poses[0, 7])))
        self.rec.log("plots/correction_mm", self.rr.Scalars(float(np.linalg.norm(corr, axis=1).max() * 1e3)))
        self._steps += 1

    def end_episode(self, outcome=None, profiler=None) -> None:
        with self._lock:
            self._clock.append((time.monotonic_ns(), self._last))
        if profiler is not None:
            self._log_profile(profiler)
        self._at(self._last)
        if outcome is not None:
            d = outcome.to_dict() if hasattr(outcome, "to_dict") else dict(outcome)
            level = "INFO" if d.get("success") else "WARN"
            self.rec.log("episode", self.rr.TextLog(f"{'success' if d.get('success') else 'FAILED'}: "
                                                    f"{d.get('reason', '')}", level=level))

    def _log_profile(self, profiler) -> None:
        """Stage spans within this episode, placed on the timeline through the (wall, robot time) pairs."""
        with self._lock:
            clock = np.array(self._clock, dtype=np.float64).reshape(-1, 2)
        clock = clock[np.argsort(clock[:, 0], kind="stable")]
        if len(clock) < 2:
            return
        ev = profiler.events_array()
        rows = ev["rows"]
        rows = rows[(rows["start_ns"] >= clock[0, 0]) & (rows["start_ns"] <= clock[-1, 0])]
        for sid in np.unique(rows["stage"]):
            r = rows[rows["stage"] == sid]
            r = r[np.argsort(r["start_ns"])]
            times = np.interp(r["start_ns"].astype(np.float64), clock[:, 0], clock[:, 1])
            self.rec.send_columns(f"profile/{ev['stages'][int(sid)]}",
                                  indexes=[self.rr.TimeColumn("time", duration=times)],
                                  columns=self.rr.Scalars.columns(scalars=r["dur_ns"] / 1e6))

    def close(self) -> None:
        self.rec.flush()
        self.rec.disconnect()

    def __enter__(self) -> "RerunView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reading a recording back


def read_recording(path: str | Path) -> dict:
    """{entity path: list of (time s, {component: value})} of a ``.rrd`` (rows without ``time`` skipped)."""
    from rerun.chunk import RrdReader

    out: dict[str, list] = {}
    for chunk in RrdReader(Path(path)).store().stream():
        rb = chunk.to_record_batch()
        if "time" not in rb.schema.names:
            continue
        cols = [n for n in rb.schema.names if ":" in n]
        times = rb.column("time").cast("int64").to_numpy(zero_copy_only=False) / 1e9  # a duration in ns
        data = {n: rb.column(n).to_pylist() for n in cols}
        for i, sec in enumerate(times):
            out.setdefault(chunk.entity_path, []).append((float(sec), {n: data[n][i] for n in cols}))
    for rows in out.values():
        rows.sort(key=lambda r: r[0])
    return out


def render_png(rrd: str | Path, out: str | Path, at: float | None = None) -> Path:
    """A still of a recording at time ``at`` (default: the last camera frame): the camera image with the
    plan's anchors, and the 3-D scene (cloud, waypoints, spline, chunk, corrections, end-effector path),
    drawn with matplotlib from the logged data."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rec = read_recording(rrd)

    def last(entity: str, comp: str):
        rows = [r for r in rec.get(entity, []) if at is None or r[0] <= at]
        rows = [r for r in rows if r[1].get(comp) is not None]
        return rows[-1][1][comp] if rows else None

    fig = plt.figure(figsize=(12, 5.2), dpi=110)
    ax_img = fig.add_subplot(1, 2, 1)
    blob = last("/camera/image", "EncodedImage:blob")
    if blob is not None:
        ax_img.imshow(Image.open(io.BytesIO(bytes(np.asarray(blob[0], np.uint8)))))
    uv = last("/camera/image/anchors", "Points2D:positions")
    labels = last("/camera/image/anchors", "Points2D:labels") or []
    if uv:
        uv = np.asarray(uv)
        for (u, v), lab in zip(uv, labels):
            c = np.array(OPEN if "open" in lab else CLOSED) / 255
            ax_img.scatter([u], [v], s=80, facecolors="none", edgecolors=[c], linewidths=2)
            ax_img.annotate(lab, (u, v), xytext=(6, -6), textcoords="offset points", color=c, fontsize=9)
    ax_img.set_title("camera/image + camera/image/anchors")
    ax_img.axis("off")
    ax = fig.add_subplot(1, 2, 2, projection="3d")
    pts = last("/world/cloud", "Points3D:positions")
    if pts:
        p = np.asarray(pts)
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c="0.6", label="world/cloud")
    for entity, comp, kw in (("/world/spline", "LineStrips3D:strips", {"color": "#5080ff", "label": "world/spline"}),
                             ("/world/ee_path", "LineStrips3D:strips", {"color": "#ffb000", "label": "world/ee_path"}),
                             ("/world/chunk", "LineStrips3D:strips", {"color": "#ff7000", "lw": 2.5,
                                                                      "label": "world/chunk"})):
        strips = last(entity, comp)
        if strips:
            s = np.asarray(strips[0])
            ax.plot(s[:, 0], s[:, 1], s[:, 2], **kw)
    wp = last("/world/waypoints", "Points3D:positions")
    if wp:
        w = np.asarray(wp)
        ax.scatter(w[:, 0], w[:, 1], w[:, 2], s=40, c="#d03030", depthshade=False, label="world/waypoints")
    o, v = last("/world/correction", "Arrows3D:origins"), last("/world/correction", "Arrows3D:vectors")
    if o and v:
        o, v = np.asarray(o), np.asarray(v)
        ax.quiver(o[:, 0], o[:, 1], o[:, 2], v[:, 0], v[:, 1], v[:, 2], color="m", label="world/correction")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_zlabel("z (m)")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title("world (base frame)")
    fig.suptitle(f"{Path(rrd).name}: matplotlib still of the logged Rerun data (not the Rerun viewer)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebridge.runtime.rerun_view",
                                 description="draw a still of a Rerun recording written by --rerun")
    ap.add_argument("rrd", type=Path)
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--at", type=float, default=None, help="time (s) on the recording's timeline")
    args = ap.parse_args(argv)
    try:
        print(render_png(args.rrd, args.png, args.at))
    except (OSError, ValueError) as e:
        print(f"rerun_view: {args.rrd}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
