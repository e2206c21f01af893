"""The fused depth -> dense box-grid voxel path: every backend bit-identical to the numpy twin, the
twin consistent with the unfused kernels, the box grid equal to the world grid when they coincide, the
automatic voxel size, FPS ties, and the hash fallback."""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.contracts import RGBD, Intrinsics
from edgebridge.kernels import WorkspaceBox, available_backends, depth_to_cloud, downsample
from edgebridge.kernels import _backend, _ref
from edgebridge.kernels.cloud import MAX_DENSE_CELLS, auto_voxel_size

FAST = [b for b in ("cpu", "cuda") if b in available_backends()]
COEFFS = [0.1, -0.05, 0.01, -0.02, 0.03]
BOX = WorkspaceBox(center=[0.45, 0.0, 0.2], half_extents=[0.3, 0.35, 0.2], quat=[0, 0, np.sin(0.2), np.cos(0.2)])


@pytest.fixture(autouse=True)
def small_cuda_launch(monkeypatch):
    monkeypatch.setattr(_backend.CUDA_CONFIG, "threads_per_block", 32)
    monkeypatch.setattr(_backend.CUDA_CONFIG, "max_blocks", 3)
    monkeypatch.setattr(_backend.CUDA_CONFIG, "fps_threads", 8)


def _T():
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]
    T[:3, 3] = [0.5, 0.0, 1.0]
    return T


def _frame(h=30, w=40, model="none", seed=0):
    """A smooth surface (so voxels collect several pixels) with holes, NaN, Inf and out-of-range depth."""
    rng = np.random.default_rng(seed)
    intr = Intrinsics(w, h, 30.0, 31.0, w / 2 - 0.5, h / 2 + 0.3, model=model,
                      coeffs=COEFFS if model != "none" else np.zeros(5))
    v, u = np.mgrid[0:h, 0:w]
    depth = (0.85 + 0.1 * np.sin(u / 7.0) * np.cos(v / 5.0) + rng.normal(0, 0.002, (h, w))).astype(np.float32)
    depth[rng.uniform(size=(h, w)) < 0.05] = 0.0
    depth[0, :3] = np.nan
    depth[1, :2] = np.inf
    depth[2, 0] = 5.0
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return intr, depth, rgb


def _args(intr, depth, rgb, stride, voxel):
    return depth, intr.as_array(), _T(), BOX.as_array(), 0.05, 3.0, stride, rgb, voxel


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("model", ["none", "brown_conrady", "inverse_brown_conrady"])
@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("with_rgb", [True, False])
def test_cloud_voxel_bit_identical_to_reference(backend, model, stride, with_rgb):
    intr, depth, rgb = _frame(model=model, seed=stride)
    a = _args(intr, depth, rgb if with_rgb else None, stride, 0.02)
    ref, rc = _ref.cloud_voxel(*a)
    got, gc = _backend.module(backend).cloud_voxel(*a)
    n_pix = depth[::stride, ::stride].size
    assert ref.dtype == np.float32 and 3 < ref.shape[0] < n_pix / 2  # voxels really merge pixels
    np.testing.assert_array_equal(got, ref)
    if with_rgb:
        assert rc.dtype == np.uint8 and rc.shape == ref.shape
        np.testing.assert_array_equal(gc, rc)
    else:
        assert rc is None and gc is None


def test_reference_twin_agrees_with_unfused_kernels():
    """Centroids of the fused path = box-local grid over deproject -> transform -> crop (float32 rounding
    of the unfused points is the only difference)."""
    intr, depth, rgb = _frame(h=48, w=64, seed=3)
    voxel = 0.03
    got, gc = _ref.cloud_voxel(*_args(intr, depth, rgb, 1, voxel))
    pts, col = _ref.cloud(depth, intr.as_array(), _T(), BOX.as_array(), 0.05, 3.0, 1, rgb)
    loc = (pts.astype(np.float64) - BOX.center) @ BOX.rotation  # base -> box frame
    dims = _ref.grid_dims(BOX.half_extents, voxel)
    idx = np.minimum(((loc + BOX.half_extents) / voxel).astype(np.int64), dims - 1)
    cell = (idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]
    _, first = np.unique(cell, return_index=True)
    order = cell[np.sort(first)]  # cells by first pixel
    want = np.array([pts[cell == c].astype(np.float64).mean(axis=0) for c in order])
    want_col = np.array([np.round(col[cell == c].mean(axis=0) + 1e-9) for c in order])
    assert got.shape == want.shape and got.shape[0] > 10
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.abs(gc.astype(int) - want_col).max() <= 1
    assert BOX.contains(got).all()


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_axis_aligned_box_on_the_grid_equals_world_voxel_grid(backend):
    """With an axis-aligned box whose min corner sits on the world grid, the box grid is the world grid:
    same voxels, same order (first pixel), same centroids as the unfused crop followed by downsample's
    world-anchored voxel grid (float32 rounding of the unfused points is the only difference)."""
    intr, depth, rgb = _frame(h=60, w=80, seed=5)
    box = WorkspaceBox.from_bounds([0.25, -0.25, 0.0], [0.75, 0.25, 0.3])  # corners on the 5 cm grid
    np.testing.assert_array_equal(_ref.grid_dims(box.half_extents, 0.05), [10, 10, 6])
    a = (depth, intr.as_array(), _T(), box.as_array(), 0.05, 3.0, 1, rgb)
    got, _ = _backend.module(backend).cloud_voxel(*a, 0.05)
    inside, _ = _ref.cloud(*a)
    ref, k = downsample(inside, inside.shape[0], "voxel", voxel_size=0.05, backend=backend)
    assert got.shape[0] == k > 20
    np.testing.assert_allclose(got, ref[:k], atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_empty_crop_and_invalid_depth(backend):
    intr, depth, rgb = _frame()
    far = WorkspaceBox([5.0, 5.0, 5.0], [0.1, 0.1, 0.1])
    c = depth_to_cloud(RGBD(rgb, np.nan_to_num(depth, nan=0, posinf=0), intr), _T(), far, 32, backend=backend)
    assert len(c) == 0 and c.n_valid == 0
    a = list(_args(intr, np.full_like(depth, np.nan), rgb, 1, 0.02))
    xyz, col = _backend.module(backend).cloud_voxel(*a)
    assert xyz.shape == (0, 3) and col.shape == (0, 3)


def test_auto_voxel_size():
    box = WorkspaceBox.from_bounds([0.2, -0.3, 0.0], [0.8, 0.3, 0.3])
    assert auto_voxel_size(box, 512) == pytest.approx(np.sqrt(0.36 / (4 * 512)))
    assert auto_voxel_size(box, 2048) < auto_voxel_size(box, 512)
    huge = WorkspaceBox([0, 0, 0], [50.0, 50.0, 50.0])
    v = auto_voxel_size(huge, 100000)
    assert np.prod(_ref.grid_dims(huge.half_extents, v).astype(float)) <= MAX_DENSE_CELLS


def _scene(h=60, w=80):
    intr = Intrinsics(w, h, 60.0, 60.0, w / 2 - 0.5, h / 2 - 0.5)
    depth = np.full((h, w), 0.88, np.float32)
    depth[20:35, 30:50] -= 0.1
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]
    T[:3, 3] = [0.5, 0.0, 0.9]
    return RGBD(rgb, depth, intr), T, WorkspaceBox.from_bounds([0.0, -0.5, 0.0], [1.0, 0.5, 0.3])


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.slow) if b == "cuda" else b for b in FAST])
@pytest.mark.parametrize("voxel_size", ["auto", 0.004, 1e-4])
def test_depth_to_cloud_voxel_sizes_match_reference(backend, voxel_size):
    # the CUDA simulator takes 10-15 s per frame-sized case: slow
    """'auto' and an explicit size use the dense grid; 0.1 mm over this box is beyond MAX_DENSE_CELLS and
    takes the crop + hash-grid path. Every backend gives the reference's points."""
    rgbd, T, box = _scene()
    ref = depth_to_cloud(rgbd, T, box, 64, voxel_size=voxel_size, backend="numpy")
    got = depth_to_cloud(rgbd, T, box, 64, voxel_size=voxel_size, backend=backend)
    assert ref.n_valid == 64 and box.contains(ref.xyz).all()
    np.testing.assert_array_equal(got.xyz, ref.xyz)
    np.testing.assert_array_equal(got.rgb, ref.rgb)


def test_depth_to_cloud_voxel_size_validation():
    rgbd, T, box = _scene()
    for bad in ("fine", -0.01, float("nan")):
        with pytest.raises(ValueError, match="voxel_size"):
            depth_to_cloud(rgbd, T, box, 16, voxel_size=bad)
    with pytest.raises(ValueError, match="voxel_size"):
        depth_to_cloud(rgbd, T, box, 16, method="voxel", voxel_size=0)


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_fps_ties_go_to_lowest_index(backend):
    """Duplicated points make exact distance ties at every step; once every distinct point is taken all
    distances are 0 and the lowest index (0) wins each further step."""
    base = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], np.float32)
    xyz = np.concatenate([base, base[::-1], base])
    out, k = downsample(xyz, 9, "fps", start_index=0, backend=backend)
    assert k == 9
    np.testing.assert_array_equal(_backend.module(backend).fps(xyz, 9, 0), [0, 1, 2, 3, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[:5], base)


def test_auto_voxel_keeps_fps_coverage():
    """FPS over the auto-sized voxel centroids covers the cropped cloud about as well as FPS over every
    cropped point (coverage radius: farthest cropped point from its nearest pick)."""
    rgbd, T, box = _scene(h=90, w=120)
    pts, _ = _ref.cloud(rgbd.depth, rgbd.intrinsics.as_array(), T, box.as_array(), 0.05, 3.0, 1, None)

    def radius(xyz):
        d2 = ((pts[:, None, :].astype(np.float64) - xyz[None, :, :]) ** 2).sum(axis=2)
        return float(np.sqrt(d2.min(axis=1).max()))

    auto = depth_to_cloud(rgbd, T, box, 48, backend="cpu")
    full = depth_to_cloud(rgbd, T, box, 48, voxel_size=0.0, backend="cpu")
    assert auto.n_valid == full.n_valid == 48
    assert radius(auto.xyz) <= 1.25 * radius(full.xyz)
