"""LeRobotWriter -> files in the v3.0 layout -> LeRobotReader, on tiny episodes (no simulator, no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow (extra 'dataset') not installed")
pytest.importorskip("av", reason="PyAV (extra 'dataset') not installed")

import pyarrow.parquet as pq  # noqa: E402

from edgebridge.datasets.edge_features import (CLOUD, CLOUD_N, GOAL, GUIDANCE, PLAN, STATE,  # noqa: E402
                                               edge_features, edge_frame, pad_cloud)
from edgebridge.datasets.layout import DatasetError  # noqa: E402
from edgebridge.datasets.lerobot_v3 import LeRobotReader, LeRobotWriter  # noqa: E402

H, W, N, K = 32, 48, 16, 5


def frame_rgb(i: int) -> np.ndarray:
    """A frame that differs from its neighbours by 24 grey levels (so a decoded frame is not its neighbour)."""
    img = np.full((H, W, 3), (24 * i) % 256, np.uint8)
    img[:8, :8] = (255, 0, 0)
    return img


def write(root, lengths=(4, 6), vcodec="libsvtav1", **kw):
    rng = np.random.default_rng(0)
    feats = edge_features(cameras={"front": (H, W)}, n_joints=7, n_points=N, guidance_steps=K)
    written = []
    with LeRobotWriter(root, 10, feats, "sim_panda", vcodec=vcodec, **kw) as w:
        g = 0
        for e, n in enumerate(lengths):
            for i in range(n):
                f = edge_frame(feats, state=rng.random(8), action=rng.random(8), joints=rng.random(7),
                               images={"front": frame_rgb(g)}, cloud=rng.random((N - 3, 3)), n_valid=N - 3,
                               guidance=rng.random((K, 8)), goal=rng.random(8), plan=json.dumps({"e": e, "i": i}))
                w.add_frame(f)
                written.append(f)
                g += 1
            w.save_episode(task=f"task {e % 2}")
    return feats, written


def test_layout_info_and_metadata(tmp_path):
    feats, _ = write(tmp_path / "ds")
    root = tmp_path / "ds"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["robot_type"] == "sim_panda"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 10, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"][CLOUD] == {"dtype": "float32", "shape": [N, 3], "names": ["points", "xyz"]}
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"
    assert list(info["features"])[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/info.json",
        "meta/stats.json", "meta/tasks.parquet", "videos/observation.images.front/chunk-000/file-000.mp4"]
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"], e["length"]) for e in eps] == [(0, 4, 4), (4, 10, 6)]
    key = "videos/observation.images.front"
    assert [(e[f"{key}/from_timestamp"], e[f"{key}/to_timestamp"]) for e in eps] == [(0.0, 0.4), (0.4, 1.0)]
    assert eps[1]["stats/observation.cloud/mean"] and len(eps[1]["stats/observation.cloud/mean"]) == 3
    assert np.asarray(eps[1]["stats/observation.images.front/mean"]).shape == (3, 1, 1)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == ["task 0", "task 1"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert schema.field(CLOUD).metadata[b"ARROW:extension:name"].endswith(b"Array2DExtensionType")
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["index"]["count"] == [10] and stats["index"]["max"] == [9] and PLAN not in stats


@pytest.mark.parametrize("vcodec", ["libsvtav1", "h264"])
def test_round_trip_values_and_frames(tmp_path, vcodec):
    feats, written = write(tmp_path / "ds", vcodec=vcodec)
    ds = LeRobotReader(tmp_path / "ds")
    assert len(ds) == 2 and ds.tasks == ["task 0", "task 1"] and ds.video_keys == ["observation.images.front"]
    ep = ds.episode(1)
    rows = written[4:]
    for key in (STATE, "action", CLOUD, GUIDANCE, GOAL):
        np.testing.assert_array_equal(ep[key], np.stack([r[key] for r in rows]))
    assert ep[CLOUD_N].tolist() == [N - 3] * 6 and ep[PLAN][2] == json.dumps({"e": 1, "i": 2})
    assert ep["index"].tolist() == list(range(4, 10)) and ep["frame_index"].tolist() == list(range(6))
    np.testing.assert_allclose(ep["timestamp"], np.arange(6) / 10, atol=1e-7)
    assert list(ep["task"]) == ["task 1"] * 6
    for e, lo in ((0, 0), (1, 4)):
        rgb = ds.frames(e, "observation.images.front")
        want = np.stack([frame_rgb(g) for g in range(lo, lo + len(rgb))]).astype(float)
        err = np.abs(rgb.astype(float) - want).mean(axis=(1, 2, 3))
        assert len(rgb) == (4, 6)[e] and np.all(err < 6), err  # lossy, but each is its own frame (neighbours: 24)


def test_pad_cloud_repeats_real_points():
    xyz = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = pad_cloud(xyz, 3, 7)
    np.testing.assert_array_equal(out, xyz[[0, 1, 2, 0, 1, 2, 0]])
    assert np.all(pad_cloud(xyz, 0, 2) == 0)


def test_bad_frames_and_directories_are_refused(tmp_path):
    feats = edge_features(n_points=None, guidance_steps=None, plan=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        LeRobotWriter(tmp_path / "full", 10, feats)
    with pytest.raises(DatasetError, match="must not contain '/'"):
        LeRobotWriter(tmp_path / "a", 10, {"a/b": {"dtype": "float32", "shape": (1,)}})
    w = LeRobotWriter(tmp_path / "b", 10, feats)
    with pytest.raises(DatasetError, match=r"missing \['action'\]"):
        w.add_frame({STATE: np.zeros(8, np.float32)})
    with pytest.raises(DatasetError, match=r"shape \(7,\), expected \(8,\)"):
        w.add_frame({STATE: np.zeros(7), "action": np.zeros(8)})
    with pytest.raises(DatasetError, match="non-finite"):
        w.add_frame({STATE: np.full(8, np.nan), "action": np.zeros(8)})
    with pytest.raises(DatasetError, match="no frames"):
        w.save_episode(task="t")
    w.add_frame({STATE: np.zeros(8), "action": np.zeros(8)})
    with pytest.raises(DatasetError, match="without a task"):
        w.save_episode()
    w.finalize()
    with pytest.raises(DatasetError, match="not a LeRobot data set"):
        LeRobotReader(tmp_path / "a")


def test_dropped_episode_leaves_no_trace_in_the_data(tmp_path):
    feats = edge_features(cameras={"front": (H, W)}, plan=False)
    with LeRobotWriter(tmp_path / "ds", 5, feats, vcodec="h264") as w:
        for i in range(3):
            w.add_frame({STATE: np.zeros(8), "action": np.zeros(8), "observation.images.front": frame_rgb(i)})
        w.clear_episode()  # e.g. a failed episode
        for i in range(3, 5):
            w.add_frame({STATE: np.full(8, i), "action": np.zeros(8), "observation.images.front": frame_rgb(i)})
        w.save_episode(task="kept")
    ds = LeRobotReader(tmp_path / "ds")
    assert ds.episodes[0]["length"] == 2 and ds.episode(0)[STATE][:, 0].tolist() == [3, 4]
    assert ds.episodes[0]["videos/observation.images.front/from_timestamp"] == pytest.approx(0.6)
    rgb = ds.frames(0, "observation.images.front")
    assert np.abs(rgb[0].astype(float) - frame_rgb(3)).mean() < 6


def test_files_roll_over_at_their_size_limit(tmp_path):
    feats, _ = write(tmp_path / "ds", lengths=(12, 12, 12), vcodec="h264", data_files_size_in_mb=1e-6,
                     video_files_size_in_mb=1e-6)  # the encoder has written something after 12 frames
    ds = LeRobotReader(tmp_path / "ds")
    assert [e["data/file_index"] for e in ds.episodes] == [0, 1, 2]
    assert [e["videos/observation.images.front/file_index"] for e in ds.episodes] == [0, 1, 2]
    assert [e["videos/observation.images.front/from_timestamp"] for e in ds.episodes] == [0.0] * 3
    assert ds.episode(2)["index"].tolist() == list(range(24, 36))
    rgb = ds.frames(2, "observation.images.front")
    assert len(rgb) == 12 and np.abs(rgb[0].astype(float) - frame_rgb(24)).mean() < 6
