"""The pointing data set writer: layout, answers, geometry, splits, determinism, phrasings, light."""

import json

import numpy as np
import pytest

from edgebridge.runtime.planner.format import parse_plan
from edgebridge.sim.camera import LightConfig, SimCamera, SimCameraConfig
from edgebridge.sim.pointing import render_pointing_scene, write_pointing_dataset
from edgebridge.sim.tasks import TASKS, get_task, resolve_steps, setup_scene
from edgebridge.sim.world import SimWorld

TASKS_USED = "put_cup_in_tray,stack_red_on_blue,clear_table"
ARGS = dict(seed_base=500, val_frac=0.2, test_frac=0.2, heldout_frac=0.5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pointing") / "ds"
    info = write_pointing_dataset(out, TASKS_USED, 6, **ARGS)
    return out, info


def _rows(out, split):
    return [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]


def test_imagefolder_layout_and_answers(dataset):
    out, info = dataset
    assert (out / "info.json").exists()
    assert {s: info["splits"][s]["count"] for s in ("train", "val", "test")} == {"train": 4, "val": 1, "test": 1}
    n = 0
    for split in ("train", "val", "test"):
        rows = _rows(out, split)
        assert len(rows) == info["splits"][split]["count"]
        for r in rows:
            n += 1
            png = (out / split / r["file_name"]).read_bytes()
            assert png.startswith(b"\x89PNG") and r["split"] == split
            assert (r["width"], r["height"]) == (320, 240)
            plan = parse_plan(r["plan"], r["instruction"], 320, 240)
            assert [[a.u, a.v] for a in plan.anchors] == r["anchors_px"]
            assert [a.gripper for a in plan.anchors] == r["gripper"]
            assert len(r["anchors_xyz"]) == len(r["anchors_px"]) == len(r["anchor_objects"])
            for name in r["anchor_objects"]:
                assert name in r["objects"]
            # the 3-D anchor projects back onto its pixel
            T = np.linalg.inv(np.array(r["T_base_cam"]))
            k = r["intrinsics"]
            for (u, v), p in zip(r["anchors_px"], r["anchors_xyz"]):
                pc = T[:3, :3] @ np.array(p) + T[:3, 3]
                assert abs(k["fx"] * pc[0] / pc[2] + k["cx"] - u) < 1.0
                assert abs(k["fy"] * pc[1] / pc[2] + k["cy"] - v) < 1.0
    assert n == 6
    assert {r["task"] for s in ("train", "val", "test") for r in _rows(out, s)} == set(TASKS_USED.split(","))
    try:
        from PIL import Image
    except ImportError:
        return
    r = _rows(out, "train")[0]
    assert Image.open(out / "train" / r["file_name"]).size == (320, 240)


def test_splits_use_disjoint_contiguous_seeds(dataset):
    out, info = dataset
    seeds = {s: [r["seed"] for r in _rows(out, s)] for s in ("train", "val", "test")}
    assert seeds["train"] == list(range(500, 504)) and seeds["val"] == [504] and seeds["test"] == [505]
    for s in seeds:
        assert info["splits"][s]["seeds"] == [min(seeds[s]), max(seeds[s]) + 1]


def test_heldout_phrasings_only_where_flagged(dataset):
    out, _ = dataset
    for split in ("train", "val", "test"):
        for r in _rows(out, split):
            spec = TASKS[r["task"]]
            if r["phrasing_heldout"]:
                assert split != "train" and r["instruction"] in spec.heldout_phrasings
            else:
                assert r["instruction"] in spec.phrasings


def test_deterministic(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    write_pointing_dataset(again, TASKS_USED, 6, **ARGS)
    for split in ("train", "val", "test"):
        assert (again / split / "metadata.jsonl").read_bytes() == (out / split / "metadata.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match="already holds"):
        write_pointing_dataset(again, TASKS_USED, 6, **ARGS)


def test_resume_continues_an_interrupted_run_exactly(dataset, tmp_path):
    import shutil

    out, _ = dataset
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    lines = (cut / "train" / "metadata.jsonl").read_text().splitlines(keepends=True)
    (cut / "train" / "metadata.jsonl").write_text("".join(lines[:2]) + lines[2][:40])  # killed mid-line
    (cut / "val" / "metadata.jsonl").unlink()
    info = json.loads((cut / "info.json").read_text())
    (cut / "info.json").write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(FileExistsError, match="--resume"):
        write_pointing_dataset(cut, TASKS_USED, 6, **ARGS)
    with pytest.raises(ValueError, match="other arguments"):
        write_pointing_dataset(cut, TASKS_USED, 7, **ARGS, resume=True)
    info = write_pointing_dataset(cut, TASKS_USED, 6, **ARGS, resume=True)
    assert info["complete"] and info["resumed_after"] == 2
    for split in ("train", "val", "test"):
        assert (cut / split / "metadata.jsonl").read_bytes() == (out / split / "metadata.jsonl").read_bytes()


def test_scene_anchors_on_their_masks_and_objects_visible():
    s = render_pointing_scene("put_cube_then_cup_in_tray", 7, heldout=True)
    assert s.instruction in TASKS["put_cube_then_cup_in_tray"].heldout_phrasings and s.phrasing_heldout
    assert s.rgb.shape == (240, 320, 3) and s.rgb.dtype == np.uint8 and s.depth.dtype == np.float32
    for (u, v), name in zip(s.anchors_px, s.anchor_objects):
        assert s.segmentation[v, u] == s.bodies[name]
    for step in TASKS["put_cube_then_cup_in_tray"].steps:
        for name in (step.obj, step.target):
            assert np.count_nonzero(s.segmentation == s.bodies[name]) >= 30
    again = render_pointing_scene("put_cube_then_cup_in_tray", 7, heldout=True)
    assert again.plan_json == s.plan_json and np.array_equal(again.rgb, s.rgb)
    # distractors never take a colour the instruction names
    assert "red_cube" in s.objects and not any(n.startswith("red") and n != "red_cube" for n in s.objects)


def test_heldout_phrasings_resolve_in_their_scenes():
    for spec in TASKS.values():
        assert 2 <= len(spec.heldout_phrasings) <= 3 and not set(spec.heldout_phrasings) & set(spec.phrasings)
        w = SimWorld()
        try:
            setup_scene(w, spec, seed=0)
            for phrase in spec.heldout_phrasings:
                assert get_task(phrase) is spec
                assert resolve_steps(w, phrase) == spec.steps
        finally:
            w.close()


def test_default_light_leaves_the_render_unchanged():
    w = SimWorld()
    try:
        setup_scene(w, get_task("put_cup_in_tray"), seed=1)
        plain = SimCamera(w).render()
        cam = SimCamera(w, SimCameraConfig(light=LightConfig()))
        default = cam.render()
        for a, b in zip(plain, default):
            assert np.array_equal(a, b)
        cam.set_light(LightConfig(direction=(0.3, -0.5, 1.0), ambient=0.4, diffuse=0.5, shadow=True))
        lit = cam.render()
        assert not np.array_equal(lit[0], plain[0])
        assert np.array_equal(lit[2], plain[2])  # geometry is the same
    finally:
        w.close()


def test_load_with_hugging_face_datasets(dataset):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (optional)")
    out, _ = dataset
    ds = datasets.load_dataset("imagefolder", data_dir=str(out))
    assert ds["train"].num_rows == 4 and "plan" in ds["train"].column_names
