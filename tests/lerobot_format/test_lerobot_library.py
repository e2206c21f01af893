"""The data sets edgebridge writes open in LeRobot's own library, and edgebridge reads what the library writes.

``lerobot-dataset`` cannot live in the project's environment (its OpenCV pin would shadow the ``calib`` extra's,
see tests/lerobot_format/lerobot_env/build.py), so these tests build a separate environment once (about 1.5 min
with a warm pip cache; reused afterwards) and run the scripts beside that file in it. No package index, or a
failed build: the tests are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow (extra 'dataset') not installed")
pytest.importorskip("av", reason="PyAV (extra 'dataset') not installed")

from edgebridge.datasets.edge_features import (ACTION, CLOUD, CLOUD_N, GOAL, GUIDANCE, PLAN,  # noqa: E402
                                               STATE, edge_features, edge_frame)
from edgebridge.datasets.lerobot_v3 import LeRobotReader, LeRobotWriter  # noqa: E402

pytestmark = pytest.mark.slow
ENV = Path(__file__).resolve().parent / "lerobot_env"
_spec = importlib.util.spec_from_file_location("lerobot_env_build", ENV / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

H, W = 48, 64


@pytest.fixture(scope="module")
def lerobot_python() -> Path:
    try:
        py, took = build.ensure()
    except build.BuildError as e:
        pytest.skip(f"cannot build the LeRobot check environment ({build.venv_dir()}): {e}")
    if took:
        print(f"LeRobot check environment built in {took:.0f} s")
    return py


def _run(py: Path, script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), str(ENV / script), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_library_opens_what_edgebridge_writes(lerobot_python, tmp_path):
    rng = np.random.default_rng(3)
    feats = edge_features(cameras={"front": (H, W)}, n_joints=7, n_points=64, guidance_steps=17)
    rows, rgbs = [], []
    with LeRobotWriter(tmp_path / "ds", 10, feats, "sim_panda") as w:
        for e, n in enumerate((6, 9, 5)):
            for i in range(n):
                rgb = np.zeros((H, W, 3), np.uint8)
                rgb[:, :] = (24 * len(rgbs)) % 256
                rgb[:16, :16] = (255, 0, 0)
                f = edge_frame(feats, state=rng.random(8), action=rng.random(8), joints=rng.random(7),
                               images={"front": rgb}, cloud=rng.random((50, 3)), n_valid=50,
                               guidance=rng.random((17, 8)), goal=rng.random(8), plan=f'{{"anchors": [{e}, {i}]}}')
                w.add_frame(f)
                rows.append((e, i, f))
                rgbs.append(rgb)
            w.save_episode(task=["put the cup in the tray", "stack the blocks"][e % 2])
    picks = [0, 5, 6, 10, 14, 19]  # first/last frames of episodes, and one inside
    samples = [{"index": k, "episode_index": rows[k][0], "frame_index": rows[k][1],
                "task": ["put the cup in the tray", "stack the blocks"][rows[k][0] % 2],
                "values": {**{key: np.asarray(rows[k][2][key]).tolist() for key in (STATE, ACTION, CLOUD, GUIDANCE, GOAL)},
                           CLOUD_N: int(rows[k][2][CLOUD_N]), PLAN: rows[k][2][PLAN]}} for k in picks]
    np.save(tmp_path / "rgb.npy", np.stack([rgbs[k] for k in picks]))
    expected = {"frames": 20, "episodes": 3, "fps": 10, "tasks": ["put the cup in the tray", "stack the blocks"],
                "features": {k: list(ft["shape"]) for k, ft in feats.items()}, "samples": samples,
                "camera": "observation.images.front", "rgb_npy": str(tmp_path / "rgb.npy"),
                "max_rgb_err": 0.03}  # neighbouring frames differ by 24/255 = 0.094
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    p = _run(lerobot_python, "check_dataset.py", tmp_path / "ds", tmp_path / "expected.json")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["len"] == 20 and out["episodes"] == 3 and len(out["rgb_err"]) == len(picks)


def test_edgebridge_reads_what_the_library_writes(lerobot_python, tmp_path):
    p = _run(lerobot_python, "make_dataset.py", tmp_path / "plain", tmp_path / "values.npz")
    assert p.returncode == 0, p.stderr[-3000:]
    want = np.load(tmp_path / "values.npz")
    ds = LeRobotReader(tmp_path / "plain")
    assert len(ds) == 2 and ds.tasks == ["pick 0", "pick 1"] and ds.robot_type == "so101_follower"
    for e, sl in ((0, slice(0, 5)), (1, slice(5, 12))):
        ep = ds.episode(e)
        np.testing.assert_array_equal(ep[STATE], want["state"][sl])
        np.testing.assert_array_equal(ep[ACTION], want["action"][sl])
        rgb = ds.frames(e, "observation.images.front").astype(float)
        err = np.abs(rgb - want["rgb"][sl]).mean(axis=(1, 2, 3))
        assert np.all(err < 6), err
