"""Fused crop + voxel of a cloud (``crop_voxel``): every backend bit-identical to the numpy twin (dense
grid and hash fallback), the crop exactly ``crop_box``'s, centroids the per-cell means, the grid the
world-aligned voxel grid when the box is, non-finite points dropped, empty inputs, validation."""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.kernels import WorkspaceBox, available_backends, crop_box, crop_voxel, downsample
from edgebridge.kernels import _backend, cloud

FAST = [b for b in ("cpu", "cuda") if b in available_backends()]
BOX = WorkspaceBox(center=[0.45, 0.0, 0.2], half_extents=[0.3, 0.35, 0.2], quat=[0.1, -0.2, 0.3, 0.927])


@pytest.fixture(autouse=True)
def small_cuda_launch(monkeypatch):
    monkeypatch.setattr(_backend.CUDA_CONFIG, "threads_per_block", 32)
    monkeypatch.setattr(_backend.CUDA_CONFIG, "max_blocks", 3)


def _cloud(n=2500, seed=0):
    """Points around the box (about half inside), in runs along a line like a depth scan, plus NaN/Inf."""
    rng = np.random.default_rng(seed)
    xyz = (BOX.center + rng.uniform(-0.5, 0.5, (n, 3)) * [1.0, 1.0, 0.6]).astype(np.float32)
    r = min(200, n // 4)
    xyz[n // 2:n // 2 + r] = (xyz[n // 2] + np.linspace(0, 0.1, r)[:, None] * [1, 0.3, 0]).astype(np.float32)
    xyz[3] = [np.nan, 0.4, 0.2]
    xyz[4] = [0.45, np.inf, 0.2]
    xyz[5] = [-np.inf, np.nan, np.inf]
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    return xyz, rgb


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("voxel", [0.03, 0.0071])
@pytest.mark.parametrize("with_rgb", [True, False])
@pytest.mark.parametrize("dense", [True, False])
def test_backends_bit_identical_to_reference(backend, voxel, with_rgb, dense, monkeypatch):
    xyz, rgb = _cloud()
    col = rgb if with_rgb else None
    want, wcol = crop_voxel(xyz, BOX, voxel, rgb=col, backend="numpy")
    if not dense:  # force the hash-table fallback
        monkeypatch.setattr(cloud, "MAX_DENSE_CELLS", 8)
    got, gcol = crop_voxel(xyz, BOX, voxel, rgb=col, backend=backend)
    assert want.shape[0] > 50 and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    if with_rgb:
        np.testing.assert_array_equal(gcol, wcol)
    else:
        assert gcol is None and wcol is None


def test_reference_is_crop_then_box_grid_means():
    """Independent check: crop_box's points, box-local cells by floor, per-cell mean, first-seen order."""
    xyz, rgb = _cloud(seed=3)
    v = 0.04
    got, gcol = crop_voxel(xyz, BOX, v, rgb=rgb, backend="numpy")
    finite = np.isfinite(xyz).all(axis=1)
    inside, icol = crop_box(xyz[finite], BOX, rgb=rgb[finite], backend="numpy")
    loc = (inside.astype(np.float64) - BOX.center) @ BOX.rotation
    dims = np.ceil(2 * BOX.half_extents / v - 1e-9).astype(int)
    idx = np.minimum(np.floor((loc + BOX.half_extents) / v).astype(int), dims - 1)
    keys = [tuple(k) for k in idx]
    order = list(dict.fromkeys(keys))
    assert got.shape == (len(order), 3)
    for j, key in enumerate(order):
        m = np.array([k == key for k in keys])
        np.testing.assert_allclose(got[j], inside[m].astype(np.float64).mean(axis=0), atol=2e-7)
        np.testing.assert_array_equal(gcol[j], np.floor(icol[m].mean(axis=0) + 0.5).astype(np.uint8))


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_axis_aligned_box_on_the_grid_equals_world_voxel_grid(backend):
    """With an axis-aligned box whose min corner sits on the world grid, the box grid is the world grid:
    same voxels, same order, same centroids as crop_box followed by downsample's voxel grid."""
    rng = np.random.default_rng(5)
    box = WorkspaceBox.from_bounds([-0.25, 0.0, 0.5], [0.25, 0.5, 0.75])
    xyz = rng.uniform([-0.4, -0.1, 0.4], [0.4, 0.6, 0.9], (3000, 3)).astype(np.float32)
    got, _ = crop_voxel(xyz, box, 0.05, backend=backend)
    inside, _ = crop_box(xyz, box, backend=backend)
    ref, k = downsample(inside, 10**6, "voxel", voxel_size=0.05, backend=backend)
    assert got.shape[0] == k > 100
    np.testing.assert_allclose(got, ref[:k], atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy"] + FAST)
def test_empty_and_all_outside(backend):
    out, col = crop_voxel(np.zeros((0, 3), np.float32), BOX, 0.01, rgb=np.zeros((0, 3), np.uint8), backend=backend)
    assert out.shape == (0, 3) and col.shape == (0, 3)
    far = np.full((10, 3), 50.0, np.float32)
    far[0] = np.nan
    out, col = crop_voxel(far, BOX, 0.01, backend=backend)
    assert out.shape == (0, 3) and out.dtype == np.float32 and col is None


def test_validation_errors_name_the_argument():
    xyz, _ = _cloud(50)
    with pytest.raises(ValueError, match="xyz"):
        crop_voxel(xyz[:, :2], BOX, 0.01)
    with pytest.raises(ValueError, match="voxel_size"):
        crop_voxel(xyz, BOX, 0.0)
    with pytest.raises(ValueError, match="voxel_size"):
        crop_voxel(xyz, BOX, float("nan"))
    with pytest.raises(ValueError, match="voxel_size.*int64"):
        crop_voxel(xyz, BOX, 1e-8)
    with pytest.raises(ValueError, match="box"):
        crop_voxel(xyz, (0, 0, 0), 0.01)
    with pytest.raises(ValueError, match="rgb"):
        crop_voxel(xyz, BOX, 0.01, rgb=np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="backend"):
        crop_voxel(xyz, BOX, 0.01, backend="gpu")
