"""The Rerun view and the LeRobot recorder observe the same episode calls; the view's ``.rrd`` reads back with
the entity paths and counts it logged, and the recorder's data set with the frames it saw."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgebridge.contracts import RGBD, ActionChunk, Anchor, ArmState, Intrinsics, Plan, PointCloud, Pose, Waypoints
from edgebridge.runtime.guidance import GuidanceConfig, approach_waypoints, fit_guidance

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
H, W = 48, 64


def run_episode_calls(obs, *, steps: int, t0_ns: int, profiler=None, seed: int = 0) -> None:
    """What the pipeline reports for one episode: a plan, its guidance, then ``steps`` expert steps 0.1 s apart."""
    intr = Intrinsics(width=W, height=H, fx=50.0, fy=50.0, cx=W / 2, cy=H / 2)
    rng = np.random.default_rng(seed)
    obs.begin_episode("put the cup in the tray", task="put_cup_in_tray", seed=seed)
    start = ArmState(np.zeros(7), Pose(np.array([0.3, 0.0, 0.4]), DOWN), 1.0, stamp_ns=t0_ns)
    frame = RGBD(np.full((H, W, 3), 90, np.uint8), np.ones((H, W), np.float32), intr, stamp_ns=t0_ns)
    plan = Plan("put the cup in the tray", (Anchor(20, 30, 0.0), Anchor(50, 12, 1.0)), stamp_ns=t0_ns)
    obs.on_plan(plan, frame)
    lifted = Waypoints(np.array([[0.45, 0.05, 0.05], [0.5, 0.3, 0.08]]), np.stack([DOWN, DOWN]), np.array([0.0, 1.0]))
    path, durations = approach_waypoints(lifted, start, config=GuidanceConfig())
    spline = fit_guidance(path, durations, GuidanceConfig())
    obs.on_guidance(lifted, start, path, spline, t0_ns)
    guidance = spline.sample(0.05, stamp_ns=t0_ns)
    for k in range(steps):
        now = t0_ns + int(k * 0.1e9)
        pos = np.array([0.3 + 0.01 * k, 0.0, 0.4 - 0.01 * k])
        state = ArmState(rng.normal(0, 0.1, 7), Pose(pos, DOWN), 1.0 if k < steps // 2 else 0.0, stamp_ns=now)
        rgb = np.full((H, W, 3), (20 * k) % 256, np.uint8)
        frame = RGBD(rgb, np.ones((H, W), np.float32), intr, stamp_ns=now)
        cloud = PointCloud(rng.random((32, 3)).astype(np.float32), stamp_ns=now, n_valid=30)
        t = (now - t0_ns) / 1e9
        rows = np.concatenate([guidance.positions, guidance.quats, guidance.gripper[:, None]], axis=1)
        from edgebridge.runtime.guidance import interpolate

        chunk_rows = interpolate(guidance.t, rows, t + 0.1 * np.arange(8))
        chunk_rows[:, 0] += 0.005  # the expert's correction: 5 mm along x
        chunk = ActionChunk(chunk_rows, start_ns=now, dt=0.1)
        if profiler is not None:
            profiler.record_span("expert", time.monotonic_ns(), 2_000_000)
        obs.on_frame(frame, cloud)
        obs.on_state(state)
        obs.on_chunk(chunk, guidance, state)
    obs.end_episode({"success": True, "reason": "done", "duration": steps * 0.1}, profiler)


def test_rerun_recording_reads_back_with_its_entities_and_counts(tmp_path):
    pytest.importorskip("rerun", reason="rerun-sdk (extra 'rerun') not installed")
    from edgebridge.runtime.profiling import Profiler
    from edgebridge.runtime.rerun_view import RerunView, read_recording, render_png

    rrd = tmp_path / "run.rrd"
    prof = Profiler()
    with RerunView.open(rrd, app_id="edgebridge-test") as view:
        run_episode_calls(view, steps=12, t0_ns=5 * 10**9, profiler=prof)
        run_episode_calls(view, steps=7, t0_ns=50 * 10**9, profiler=prof, seed=1)
    rec = read_recording(rrd)
    counts = {k: len(v) for k, v in rec.items()}
    per_step = ["/camera/image", "/world/cloud", "/world/chunk", "/world/correction", "/world/ee", "/world/ee_path",
                "/plots/gripper", "/plots/gripper_target", "/plots/correction_mm", "/profile/expert"]
    for entity in per_step:
        assert counts.get(entity) == 19, (entity, counts)
    for entity in ("/camera/image/anchors", "/plan", "/world/waypoints", "/world/spline"):
        assert counts.get(entity) == 2, (entity, counts)
    assert counts["/episode"] == 4  # begin + outcome, per episode
    # one timeline: the second episode follows the first, one second after its last step
    ee = [t for t, _ in rec["/world/ee"]]
    assert ee[:12] == pytest.approx(np.arange(12) * 0.1) and ee[12] == pytest.approx(1.1 + 1.0)
    anchors = rec["/camera/image/anchors"][0][1]
    assert anchors["Points2D:positions"] == [[20.0, 30.0], [50.0, 12.0]]
    assert anchors["Points2D:labels"] == ["0 close", "1 open"]
    vec = np.asarray(rec["/world/correction"][3][1]["Arrows3D:vectors"])
    np.testing.assert_allclose(vec, np.tile([0.005, 0, 0], (8, 1)), atol=1e-6)
    assert rec["/plots/correction_mm"][3][1]["Scalars:scalars"] == [pytest.approx(5.0, abs=1e-3)]
    assert len(rec["/world/ee_path"][11][1]["LineStrips3D:strips"][0]) == 12  # the path so far
    assert [s for _, s in rec["/profile/expert"]][0]["Scalars:scalars"] == [pytest.approx(2.0)]
    png = render_png(rrd, tmp_path / "still.png")
    assert png.stat().st_size > 10_000


def test_lerobot_recorder_writes_the_observed_steps(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow (extra 'dataset') not installed")
    pytest.importorskip("av", reason="PyAV (extra 'dataset') not installed")
    from edgebridge.datasets.lerobot_v3 import LeRobotReader
    from edgebridge.runtime.episode_record import EpisodeRecorder, Observers, RecordConfig

    rec = EpisodeRecorder(tmp_path / "ds", RecordConfig(fps=10, action_dt=0.1, guidance_steps=5, robot_type="sim_panda",
                                                        vcodec="h264"), meta={"T_base_cam": np.eye(4).tolist()})

    class Broken:
        def on_chunk(self, *a):
            raise RuntimeError("boom")

    obs = Observers([rec, None, Broken()])
    run_episode_calls(obs, steps=6, t0_ns=10**9)
    run_episode_calls(obs, steps=4, t0_ns=9 * 10**9)
    obs.close()
    ds = LeRobotReader(tmp_path / "ds")
    assert len(ds) == 2 and [e["length"] for e in ds.episodes] == [6, 4] and ds.tasks == ["put the cup in the tray"]
    ep = ds.episode(0)
    assert ep["observation.guidance"].shape == (6, 5, 8) and ep["observation.cloud"].shape == (6, 32, 3)
    assert ep["observation.cloud_n_valid"].tolist() == [30] * 6
    np.testing.assert_allclose(ep["observation.state"][:, 0], 0.3 + 0.01 * np.arange(6), atol=1e-6)
    # action: the chunk's first row = the guidance at now, corrected by 5 mm; the window's first row is the guidance at now
    np.testing.assert_allclose(ep["action"][:, 0] - ep["observation.guidance"][:, 0, 0], 0.005, atol=1e-6)
    plan = json.loads(ep["observation.plan"][0])
    assert [a["point_2d"] for a in plan["anchors"]] == [[20, 30], [50, 12]]
    rgb = ds.frames(1, "observation.images.front")
    assert rgb.shape == (4, H, W, 3) and abs(float(rgb[2].mean()) - 40) < 4
    edge = json.loads((tmp_path / "ds/meta/edgebridge.json").read_text())
    assert [(e["episode_index"], e["success"], e["frames"]) for e in edge["episodes"]] == [(0, True, 6), (1, True, 4)]
    assert edge["T_base_cam"] == np.eye(4).tolist() and edge["action_dt"] == 0.1
