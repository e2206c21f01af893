"""Point-cloud kernels: every backend against the numpy reference, edge cases, librealsense parity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebridge.contracts import RGBD, Intrinsics, PointCloud
from edgebridge.kernels import (WorkspaceBox, available_backends, crop_box, deproject, depth_to_cloud, downsample,
                                transform_points)
from edgebridge.kernels import _backend, _ref

FAST = [b for b in ("cpu", "cuda") if b in available_backends()]
COEFFS = [0.1, -0.05, 0.01, -0.02, 0.03]


@pytest.fixture(autouse=True)
def small_cuda_launch(monkeypatch):
    """Tiny launch shapes so multi-block, grid-stride and multi-thread FPS paths run on small inputs."""
    monkeypatch.setattr(_backend.CUDA_CONFIG, "threads_per_block", 32)
    monkeypatch.setattr(_backend.CUDA_CONFIG, "max_blocks", 3)
    monkeypatch.setattr(_backend.CUDA_CONFIG, "fps_threads", 8)


def _frame(h=24, w=32, model="none", seed=0, holes=True):
    rng = np.random.default_rng(seed)
    intr = Intrinsics(w, h, 25.0, 26.0, w / 2 - 0.5, h / 2 + 0.3, model=model,
                      coeffs=COEFFS if model != "none" else np.zeros(5))
    depth = (0.8 + 0.3 * rng.uniform(-1, 1, (h, w))).astype(np.float32)
    if holes:
        depth[rng.uniform(size=(h, w)) < 0.1] = 0.0
        depth[0, :3] = np.nan
        depth[1, :2] = np.inf
        depth[2, 0] = 5.0  # beyond depth_max
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return intr, depth, rgb


def _T():
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]
    T[:3, 3] = [0.5, 0.0, 1.0]
    return T


BOX = WorkspaceBox(center=[0.45, 0.0, 0.25], half_extents=[0.3, 0.35, 0.15], quat=[0, 0, np.sin(0.2), np.cos(0.2)])


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("model", ["none", "brown_conrady", "inverse_brown_conrady"])
@pytest.mark.parametrize("stride", [1, 3])
def test_deproject_matches_reference(backend, model, stride):
    intr, depth, rgb = _frame(model=model)
    ref, rc = deproject(depth, intr, rgb=rgb, stride=stride, backend="numpy")
    got, gc = deproject(depth, intr, rgb=rgb, stride=stride, backend=backend)
    assert ref.dtype == np.float32 and ref.shape[1] == 3 and 0 < ref.shape[0] < depth[::stride, ::stride].size
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(gc, rc)


def test_deproject_skips_invalid_and_out_of_range():
    intr, depth, _ = _frame()
    xyz, col = deproject(depth, intr, depth_min=0.6, depth_max=1.0, backend="numpy")
    assert col is None
    assert np.all(np.isfinite(xyz))
    assert xyz[:, 2].min() >= 0.6 and xyz[:, 2].max() <= 1.0
    d = depth[np.isfinite(depth)]
    assert xyz.shape[0] == np.count_nonzero((d >= 0.6) & (d <= 1.0))


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_all_invalid_depth_gives_empty(backend):
    intr, depth, rgb = _frame()
    depth[:] = np.nan
    depth[::2] = 0.0
    xyz, col = deproject(depth, intr, rgb=rgb, backend=backend)
    assert xyz.shape == (0, 3) and col.shape == (0, 3)
    cloud = depth_to_cloud(RGBD(rgb, np.where(np.isfinite(depth), depth, 0).astype(np.float32), intr), _T(),
                           BOX, 16, backend=backend)
    assert isinstance(cloud, PointCloud) and len(cloud) == 0 and cloud.n_valid == 0


@pytest.mark.parametrize("model", ["none", "brown_conrady", "inverse_brown_conrady"])
def test_reference_matches_librealsense(model):
    rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (extra 'realsense') or libusb missing")
    intr, depth, _ = _frame(h=12, w=16, model=model, holes=False)
    ri = rs.intrinsics()
    ri.width, ri.height, ri.fx, ri.fy, ri.ppx, ri.ppy = intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy
    ri.model = {"none": rs.distortion.none, "brown_conrady": rs.distortion.brown_conrady,
                "inverse_brown_conrady": rs.distortion.inverse_brown_conrady}[model]
    ri.coeffs = list(intr.coeffs)
    xyz, _ = deproject(depth, intr, depth_max=10.0, backend="numpy")
    want = np.array([rs.rs2_deproject_pixel_to_point(ri, [float(u), float(v)], float(depth[v, u]))
                     for v in range(intr.height) for u in range(intr.width)])
    np.testing.assert_allclose(xyz, want, rtol=0, atol=2e-6)  # librealsense computes in float32


@pytest.mark.parametrize("backend", FAST)
def test_transform_and_crop_match_reference(backend):
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-1, 1, (700, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (700, 3), dtype=np.uint8)
    np.testing.assert_array_equal(transform_points(xyz, _T(), backend=backend), transform_points(xyz, _T(), "numpy"))
    np.testing.assert_array_equal(crop_box(xyz, BOX, backend=backend)[0], crop_box(xyz, BOX, backend="numpy")[0])
    assert crop_box(xyz, BOX, backend=backend)[1] is None
    ref = crop_box(xyz, BOX, rgb, backend="numpy")
    got = crop_box(xyz, BOX, rgb, backend=backend)
    assert 0 < ref[0].shape[0] < 700
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_crop_semantics_oriented_box():
    box = WorkspaceBox(center=[1.0, 0, 0], half_extents=[0.5, 0.1, 0.1], quat=[0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    pts = np.array([[1.0, 0.4, 0.0], [1.4, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.6, 0.0]], np.float32)
    inside, _ = crop_box(pts, box, backend="numpy")  # box long axis is base y after the 90 deg yaw
    np.testing.assert_array_equal(inside, pts[[0, 2]])
    np.testing.assert_array_equal(box.contains(pts), [True, False, True, False])


def test_transform_roundtrip():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    back = transform_points(transform_points(xyz, _T(), "numpy"), np.linalg.inv(_T()), "numpy")
    np.testing.assert_allclose(back, xyz, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_in=st.integers(1, 150), n=st.integers(1, 40), start=st.integers(0, 10**6), seed=st.integers(0, 2**31))
def test_fps_picks_identical_indices(backend, n_in, n, start, seed):
    xyz = np.random.default_rng(seed).uniform(-1, 1, (n_in, 3)).astype(np.float32)
    ref, kr = downsample(xyz, n, "fps", start_index=start % n_in, backend="numpy")
    got, kg = downsample(xyz, n, "fps", start_index=start % n_in, backend=backend)
    assert kr == kg == min(n, n_in)
    np.testing.assert_array_equal(got, ref)
    assert np.array_equal(ref[0], xyz[start % n_in])


def test_fps_is_farthest_point():
    xyz = np.array([[0, 0, 0], [0.1, 0, 0], [1, 0, 0], [0.5, 0, 0]], np.float32)
    out, k = downsample(xyz, 3, "fps", start_index=0, backend="numpy")
    np.testing.assert_array_equal(out, xyz[[0, 2, 3]])
    assert k == 3


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
@pytest.mark.parametrize("method", ["fps", "voxel", "random"])
def test_downsample_pads_and_handles_empty(backend, method):
    xyz = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]], np.float32)
    rgb = np.arange(9, dtype=np.uint8).reshape(3, 3)
    out, k, col = downsample(xyz, 8, method, rgb=rgb, voxel_size=0.1, backend=backend)
    assert out.shape == (8, 3) and col.shape == (8, 3) and k == 3
    assert {tuple(p) for p in out[:3]} == {tuple(p) for p in xyz}
    np.testing.assert_array_equal(out[3:6], out[:3])  # padding repeats the real points cyclically
    empty, k0 = downsample(np.zeros((0, 3), np.float32), 8, method, backend=backend)
    assert empty.shape == (0, 3) and k0 == 0


@pytest.mark.parametrize("backend", FAST)
def test_voxel_matches_reference(backend):
    rng = np.random.default_rng(3)
    xyz = rng.uniform(0, 0.2, (2000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (2000, 3), dtype=np.uint8)
    ref, kr, rc = downsample(xyz, 5000, "voxel", voxel_size=0.05, rgb=rgb, backend="numpy")
    got, kg, gc = downsample(xyz, 5000, "voxel", voxel_size=0.05, rgb=rgb, backend=backend)
    assert kr == kg == 64  # 4 x 4 x 4 voxels, all occupied
    np.testing.assert_array_equal(downsample(xyz, 100, "voxel", voxel_size=0.05, backend=backend)[0],
                                  downsample(xyz, 100, "voxel", voxel_size=0.05, backend="numpy")[0])
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(gc, rc)
    keys = np.floor(ref[:kr] / 0.05)
    assert len({tuple(k) for k in keys}) == 64  # one centroid per voxel, inside its voxel


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("method", ["fps", "voxel", "random"])
def test_depth_to_cloud_matches_reference(backend, method):
    intr, depth, rgb = _frame(h=30, w=40, model="inverse_brown_conrady", seed=4)
    rgbd = RGBD(rgb, np.where(np.isfinite(depth), depth, 0).astype(np.float32), intr, stamp_ns=123)
    ref = depth_to_cloud(rgbd, _T(), BOX, 96, method=method, voxel_size=0.02, seed=5, backend="numpy")
    got = depth_to_cloud(rgbd, _T(), BOX, 96, method=method, voxel_size=0.02, seed=5, backend=backend)
    assert ref.stamp_ns == 123 and ref.frame == "base" and len(ref) == 96 and 0 < ref.n_valid <= 96
    np.testing.assert_array_equal(got.xyz, ref.xyz)
    np.testing.assert_array_equal(got.rgb, ref.rgb)
    assert got.n_valid == ref.n_valid
    assert BOX.contains(ref.xyz[: ref.n_valid]).all() or method != "random"


def test_validation_errors_name_the_argument():
    intr, depth, _ = _frame()
    with pytest.raises(ValueError, match="depth: expected shape"):
        deproject(depth[:, :-1], intr)
    with pytest.raises(ValueError, match="stride"):
        deproject(depth, intr, stride=0)
    with pytest.raises(ValueError, match="depth_min"):
        deproject(depth, intr, depth_min=2.0, depth_max=1.0)
    with pytest.raises(ValueError, match="xyz: 1 point"):
        transform_points(np.array([[np.nan, 0, 0]], np.float32), np.eye(4))
    with pytest.raises(ValueError, match="T_a_b"):
        transform_points(np.zeros((1, 3), np.float32), np.ones((4, 4)))
    with pytest.raises(ValueError, match="half_extents"):
        WorkspaceBox([0, 0, 0], [0.1, 0, 0.1])
    with pytest.raises(ValueError, match="method"):
        downsample(np.zeros((2, 3)), 4, method="grid")
    with pytest.raises(ValueError, match="start_index"):
        downsample(np.zeros((2, 3)), 4, start_index=5)
    with pytest.raises(ValueError, match="backend"):
        crop_box(np.zeros((2, 3)), BOX, backend="tpu")


def test_auto_backend_is_cpu_unless_asked_for_cuda(monkeypatch):
    monkeypatch.delenv("EDGEBRIDGE_KERNELS", raising=False)
    assert _backend.resolve("auto") == "cpu"
    monkeypatch.setenv("EDGEBRIDGE_KERNELS", "tpu")
    with pytest.raises(ValueError, match="EDGEBRIDGE_KERNELS: expected 'cpu' or 'cuda'"):
        _backend.resolve("auto")
    monkeypatch.setenv("EDGEBRIDGE_KERNELS", "cuda")
    if _backend.cuda_usable():
        assert _backend.resolve("auto") == "cuda"
    else:
        with pytest.raises(ValueError, match="unset it to use the CPU kernels"):
            _backend.resolve("auto")


def test_reference_fps_tie_breaks_to_lowest_index():
    xyz = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0]], np.float32)
    np.testing.assert_array_equal(_ref.fps(xyz, 3, 0), [0, 1, 2])
