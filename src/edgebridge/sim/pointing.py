"""Pointing data: simulated scenes with the oracle's plan as the answer, for training a VLM planner.

Each scene is one task's scene (``sim/tasks.py``) with wider randomisation than the episodes: every
movable object is moved by up to ``object_offset_m`` in x and y (cups and cubes at a random yaw), the
tray by up to ``tray_offset_m`` (the obstacle block of ``clear_table_obstacle`` moves with it), all
kept in the reachable table region and ``min_gap_m`` apart edge to edge; 0-2 distractor cubes of
colours the instruction does not name; the camera jittered by up to ``camera_jitter_m``; a random
light; and a seeded image jitter (brightness, contrast, per-channel gain, pixel noise) on the saved
RGB only. The answer is the clean oracle plan (``plan_to_json``), whose anchors are surface pixels of
the segmentation. A scene whose anchors or named objects are hidden, or whose objects leave the view,
is redrawn with the next sub-seed.

:func:`write_pointing_dataset` writes a Hugging Face ``imagefolder`` data set (``train/``, ``val/``,
``test/`` with PNGs and ``metadata.jsonl``, plus ``info.json``), split by contiguous seed ranges.
:func:`render_pointing_scene` renders one scene from (task, seed, heldout) deterministically.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import check
from ..contracts import RGBD, Intrinsics, Pose
from ..errors import PlanError
from ..runtime.planner.format import MAX_ANCHORS, plan_to_json
from ..runtime.planner.prompt import png_bytes
from . import oracle as _oracle
from .arm import SimArm
from .camera import LightConfig, SimCamera, SimCameraConfig, jitter_rgb
from .oracle import OraclePlanner
from .tasks import TASKS, TaskSpec, get_task, jitter_camera, setup_scene
from .world import SimWorld

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DISTRACTOR_COLORS = ("green", "yellow", "orange", "purple", "white")


@dataclass(frozen=True)
class PointingConfig:
    """Randomisation of the pointing scenes (lengths in metres)."""

    object_offset_m: float = 0.08
    tray_offset_m: float = 0.06
    region_x: tuple[float, float] = (0.30, 0.70)
    region_y: tuple[float, float] = (-0.40, 0.45)
    min_gap_m: float = 0.04
    max_distractors: int = 2
    # "clear the table" means every object: a distractor would have to go into the tray as well
    no_distractor_tasks: tuple[str, ...] = ("clear_table", "clear_table_obstacle")
    camera_jitter_m: float = 0.05
    min_visible_px: int = 30
    brightness: float = 0.15
    contrast: float = 0.15
    channel_gain: float = 0.08
    pixel_noise: float = 2.0
    settle_s: float = 0.3
    max_redraws: int = 30
    place_tries: int = 60

    def __post_init__(self) -> None:
        check(0 <= self.object_offset_m <= 0.3, "pointing.object_offset_m", f"must lie in [0, 0.3], got {self.object_offset_m}")
        check(self.region_x[0] < self.region_x[1] and self.region_y[0] < self.region_y[1], "pointing.region_x/y",
              f"need lo < hi, got {self.region_x}, {self.region_y}")
        check(self.min_gap_m >= 0, "pointing.min_gap_m", f"must be >= 0, got {self.min_gap_m}")
        check(0 <= self.max_distractors <= len(DISTRACTOR_COLORS), "pointing.max_distractors",
              f"must lie in [0, {len(DISTRACTOR_COLORS)}], got {self.max_distractors}")
        check(self.max_redraws >= 0, "pointing.max_redraws", f"must be >= 0, got {self.max_redraws}")


@dataclass(frozen=True, eq=False)
class PointingScene:
    """One rendered scene: the (jittered) image, clean depth, camera, the answer and the true geometry."""

    task: str
    seed: int
    instruction: str
    phrasing_heldout: bool
    rgb: np.ndarray  # (H, W, 3) uint8, light- and image-jittered
    depth: np.ndarray  # (H, W) float32 metres, clean
    intrinsics: Intrinsics
    T_base_cam: np.ndarray  # (4, 4)
    plan_json: str
    anchors_px: tuple[tuple[int, int], ...]
    gripper: tuple[float, ...]
    yaw_deg: int
    anchors_xyz: tuple[tuple[float, float, float], ...]
    objects: dict[str, tuple[float, float, float]]
    anchor_objects: tuple[str, ...] = ()
    segmentation: np.ndarray | None = None  # (H, W) int32 body ids of the clean render
    bodies: dict[str, int] = field(default_factory=dict)
    redraws: int = 0


class _Redraw(Exception):
    """The drawn scene is unusable (occlusion, out of view, no room); draw the next sub-seed."""


_KIN = None  # one kinematics model per process (pinocchio load), shared by the scenes' arms


def _arm(world: SimWorld) -> SimArm:
    global _KIN
    if _KIN is None:
        from ..drivers.kinematics import Kinematics

        _KIN = Kinematics()
    return SimArm(world, kinematics=_KIN)


def _radius(world: SimWorld, name: str) -> float:
    ext = world.object(name).size
    return 0.5 * math.hypot(ext[0], ext[1])


def _gap(world: SimWorld, xy: np.ndarray, r: float, other: str) -> float:
    """Edge-to-edge distance of a disc (``xy``, ``r``) to ``other`` (a disc, or its box if fixed)."""
    obj = world.object(other)
    if obj.fixed:
        lo, hi = world.aabb(other)
        d = np.maximum(np.abs(xy - (lo[:2] + hi[:2]) / 2) - (hi[:2] - lo[:2]) / 2, 0.0)
        return float(np.linalg.norm(d)) - r
    return float(np.linalg.norm(xy - world.pose(other).position[:2])) - r - _radius(world, other)


def _place_ok(world: SimWorld, cfg: PointingConfig, xy: np.ndarray, r: float, placed: list[str]) -> bool:
    (x0, x1), (y0, y1) = cfg.region_x, cfg.region_y
    if not (x0 <= xy[0] <= x1 and y0 <= xy[1] <= y1):
        return False
    if any(_gap(world, xy, r, o) < cfg.min_gap_m for o in placed):
        return False
    if "block" in world.objects and "tray" in world.objects:  # stay on the far side of the obstacle
        b, t = world.pose("block").position[1], world.pose("tray").position[1]
        if np.sign(xy[1] - b) == np.sign(t - b):
            return False
    return True


def randomize_scene(world: SimWorld, spec: TaskSpec, rng: np.random.Generator, cfg: PointingConfig) -> list[str]:
    """Move the built scene's objects, add distractors; returns the distractors' names."""
    p = world.p
    fixed = [n for n, o in world.objects.items() if o.fixed]
    if "tray" in world.objects:  # the tray, and the obstacle with it (it stays between objects and tray)
        d = np.append(rng.uniform(-cfg.tray_offset_m, cfg.tray_offset_m, 2), 0.0)
        centre = world.pose("tray").position + d
        if not (cfg.region_x[0] <= centre[0] <= cfg.region_x[1] and cfg.region_y[0] <= centre[1] <= cfg.region_y[1]):
            d[:] = 0.0
        for n in fixed:
            pose = world.pose(n)
            p.resetBasePositionAndOrientation(world.object(n).body, (pose.position + d).tolist(), pose.quat.tolist())
    placed = list(fixed)
    for name, obj in list(world.objects.items()):
        if obj.fixed:
            continue
        pose = world.pose(name)
        r = _radius(world, name)
        for _ in range(cfg.place_tries):
            xy = pose.position[:2] + rng.uniform(-cfg.object_offset_m, cfg.object_offset_m, 2)
            if _place_ok(world, cfg, xy, r, placed):
                break
        else:
            raise _Redraw(f"no room for {name}")
        half = rng.uniform(-math.pi, math.pi) / 2  # a random yaw
        world.set_pose(name, Pose(np.array([xy[0], xy[1], pose.position[2]]), np.array([0, 0, math.sin(half), math.cos(half)])))
        placed.append(name)
    distractors: list[str] = []
    if spec.slug in cfg.no_distractor_tasks:
        return distractors
    named = " ".join((*spec.phrasings, *spec.heldout_phrasings)).lower()
    avoid = {o.color for s in spec.steps for o in (world.object(s.obj), world.object(s.target))}
    avoid |= {c for c in DISTRACTOR_COLORS if c in named or f"{c}_cube" in world.objects}
    pool = [c for c in DISTRACTOR_COLORS if c not in avoid]
    n = int(rng.integers(0, cfg.max_distractors + 1))
    for color in rng.permutation(pool)[:n]:
        color = str(color)
        for _ in range(cfg.place_tries):
            xy = np.array([rng.uniform(*cfg.region_x), rng.uniform(*cfg.region_y)])
            if _place_ok(world, cfg, xy, 0.5 * math.hypot(0.05, 0.05), placed):
                name = f"{color}_cube"
                world.add_object(name, "cube", xy, yaw=float(rng.uniform(-math.pi, math.pi)), color=color,
                                 aliases=(f"{color} cube", f"{color} block"))
                placed.append(name)
                distractors.append(name)
                break
    return distractors


def choose_instruction(spec: TaskSpec, seed: int, heldout: bool) -> str:
    pool = spec.heldout_phrasings if heldout else spec.phrasings
    if not pool:
        raise ValueError(f"task {spec.slug} has no held-out phrasings; add heldout_phrasings to its TaskSpec "
                         f"or render it with heldout=False")
    return pool[int(np.random.default_rng([seed, 7]).integers(len(pool)))]


def _attempt(spec: TaskSpec, seed: int, attempt: int, instruction: str, heldout: bool,
             cfg: PointingConfig) -> PointingScene:
    build_seed = int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])
    world = SimWorld()
    try:
        setup_scene(world, spec, build_seed)
        rng = np.random.default_rng([seed, attempt, 1])
        randomize_scene(world, spec, rng, cfg)
        _arm(world)
        world.settle(cfg.settle_s)
        for n in world.objects:
            if not world.on_table(n):
                raise _Redraw(f"{n} fell off the table")
        camera = SimCamera(world, SimCameraConfig(seed=build_seed, light=LightConfig.random(rng)))
        jitter_camera(camera, rng, cfg.camera_jitter_m)
        rgb, depth, seg = camera.render()
        k = camera.intrinsics
        for n in world.objects:  # every object (its bounding box centre) in view
            lo, hi = world.aabb(n)
            uv, z = camera.project(((lo + hi) / 2)[None])
            if not (z[0] > 0 and 3 <= uv[0, 0] <= k.width - 4 and 3 <= uv[0, 1] <= k.height - 4):
                raise _Redraw(f"{n} out of view")
        for s in spec.steps:
            for n in (s.obj, s.target):
                if int(np.count_nonzero(seg == world.object(n).body)) < cfg.min_visible_px:
                    raise _Redraw(f"{n} hidden")
        planner = OraclePlanner(world, camera)
        try:
            plan = planner.plan(RGBD(rgb=rgb, depth=depth, intrinsics=k, stamp_ns=0), instruction)
            points = planner.anchor_points(instruction, depth, seg)
        except PlanError as e:
            raise _Redraw(str(e)) from e
        if [(a.u, a.v) for a in plan.anchors] != [(u, v) for _, _, u, v, _ in points]:
            raise PlanError(f"pointing: the oracle's plan and anchor_points disagree for {spec.slug} seed {seed}")
        for name, _, u, v, _ in points:
            if seg[v, u] != world.object(name).body:
                raise _Redraw(f"anchor on {name} at ({u}, {v}) is occluded")
        if len(plan.anchors) > MAX_ANCHORS:
            raise PlanError(f"pointing: the plan of {spec.slug} seed {seed} has {len(plan.anchors)} anchors, more "
                            f"than the plan format allows ({MAX_ANCHORS}); leave the task out or raise MAX_ANCHORS")
        plan_json = plan_to_json(plan)
        ans = json.loads(plan_json)
        objects = {n: tuple(round(float(x), 5) for x in world.pose(n).position) for n in sorted(world.objects)}
        return PointingScene(
            task=spec.slug, seed=seed, instruction=instruction, phrasing_heldout=heldout,
            rgb=jitter_rgb(rgb, np.random.default_rng([seed, attempt, 2]), cfg.brightness, cfg.contrast,
                           cfg.channel_gain, cfg.pixel_noise), depth=depth, intrinsics=k,
            T_base_cam=camera.T_base_cam.copy(), plan_json=plan_json,
            anchors_px=tuple((int(a["point_2d"][0]), int(a["point_2d"][1])) for a in ans["anchors"]),
            gripper=tuple(float(a.gripper) for a in plan.anchors), yaw_deg=int(ans["yaw"]),
            anchors_xyz=tuple(tuple(round(float(x), 5) for x in pt) for *_, pt in points), objects=objects,
            anchor_objects=tuple(n for n, *_ in points), segmentation=seg,
            bodies={n: o.body for n, o in world.objects.items()}, redraws=attempt)
    finally:
        world.close()


def render_pointing_scene(task_slug: str, seed: int, *, heldout: bool = False,
                          config: PointingConfig | None = None) -> PointingScene:
    """Render the pointing scene of ``task_slug`` with ``seed`` (deterministic given the arguments);
    ``heldout`` draws the instruction from the task's held-out phrasings."""
    cfg = config or PointingConfig()
    spec = get_task(task_slug)
    _oracle._WARNED = True  # privileged plans are the point here: no warning per worker
    instruction = choose_instruction(spec, seed, heldout)
    reasons = []
    for attempt in range(cfg.max_redraws + 1):
        try:
            return _attempt(spec, seed, attempt, instruction, heldout, cfg)
        except _Redraw as e:
            reasons.append(str(e))
            log.debug("pointing %s seed %d attempt %d redrawn: %s", spec.slug, seed, attempt, e)
    raise PlanError(f"pointing: no usable scene for {spec.slug} seed {seed} in {cfg.max_redraws + 1} draws "
                    f"({'; '.join(reasons[-3:])}); raise PointingConfig.max_redraws or loosen the randomisation")


def metadata_row(scene: PointingScene, file_name: str, split: str) -> dict:
    k = scene.intrinsics
    return {"file_name": file_name, "task": scene.task, "seed": scene.seed, "split": split,
            "instruction": scene.instruction, "phrasing_heldout": scene.phrasing_heldout, "plan": scene.plan_json,
            "anchors_px": [list(a) for a in scene.anchors_px], "gripper": list(scene.gripper), "yaw_deg": scene.yaw_deg,
            "anchors_xyz": [list(a) for a in scene.anchors_xyz], "anchor_objects": list(scene.anchor_objects),
            "objects": {n: list(p) for n, p in scene.objects.items()}, "width": k.width, "height": k.height,
            "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy},
            "T_base_cam": [[round(float(x), 6) for x in row] for row in scene.T_base_cam], "redraws": scene.redraws}


def _render_item(item: tuple) -> tuple[dict, bytes]:
    i, task, seed, split, heldout, cfg = item
    scene = render_pointing_scene(task, seed, heldout=heldout, config=cfg)
    return metadata_row(scene, f"{i:06d}.png", split), png_bytes(scene.rgb)


def max_plan_anchors(slug: str) -> int:
    """Most anchors the oracle's plan of the task can have: per step the object, the destination and a
    via anchor on every obstacle (``block``) of the scene."""
    spec = get_task(slug)
    world = SimWorld()
    try:
        spec.build(world, np.random.default_rng(0))
        blocks = sum(o.kind == "block" for o in world.objects.values())
    finally:
        world.close()
    return len(spec.steps) * (2 + blocks)


def resolve_tasks(tasks) -> tuple[list[str], dict[str, str]]:
    """``"all"``, a comma list or a sequence of task slugs (or phrasings) -> (slugs, skipped tasks with
    the reason). ``all`` leaves out tasks whose plans can exceed the plan format's ``MAX_ANCHORS``; naming
    such a task is an error."""
    every = isinstance(tasks, str) and tasks.strip() == "all"
    if isinstance(tasks, str):
        tasks = list(TASKS) if every else [t.strip() for t in tasks.split(",") if t.strip()]
    slugs = list(dict.fromkeys(get_task(t).slug for t in tasks))
    if not slugs:
        raise ValueError(f"no tasks given; pass 'all' or a comma list of: {', '.join(TASKS)}")
    skipped = {}
    for slug in slugs:
        n = max_plan_anchors(slug)
        if n > MAX_ANCHORS:
            why = (f"its plans have up to {n} anchors, more than the plan format allows (MAX_ANCHORS = "
                   f"{MAX_ANCHORS} in edgebridge.runtime.planner.format)")
            if not every:
                raise ValueError(f"task {slug}: {why}; leave it out of the tasks or raise MAX_ANCHORS")
            log.warning("pointing: leaving out %s: %s", slug, why)
            skipped[slug] = why
    return [s for s in slugs if s not in skipped], skipped


def split_counts(scenes: int, val_frac: float, test_frac: float) -> dict[str, int]:
    def n(frac: float) -> int:
        k = int(round(scenes * frac))
        return 1 if frac > 0 and k == 0 and scenes >= 3 else k

    n_val, n_test = n(val_frac), n(test_frac)
    return {"train": scenes - n_val - n_test, "val": n_val, "test": n_test}


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every complete PNG


def _done_prefix(out: Path, items: list[tuple]) -> list[dict]:
    """Rows an interrupted run finished: the longest prefix of ``items`` with a complete metadata line
    and a complete PNG. The metadata files are cut back to it."""
    rows: list[dict] = []
    for split in SPLITS:
        path = out / split / "metadata.jsonl"
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            k = len(rows)
            try:
                row = json.loads(line)
            except ValueError:
                break
            png = out / split / str(row.get("file_name"))
            if k >= len(items) or items[k][2:4] != (row.get("seed"), split) or not png.is_file() \
                    or png.read_bytes()[-12:] != _IEND:
                break
            keep.append(line + "\n")
            rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(keep), encoding="utf-8")
        if len(rows) < sum(it[3] in SPLITS[:SPLITS.index(split) + 1] for it in items):  # split unfinished
            for later in SPLITS[SPLITS.index(split) + 1:]:
                (out / later / "metadata.jsonl").unlink(missing_ok=True)
            break
    return rows


def write_pointing_dataset(out_dir, tasks, scenes: int, *, seed_base: int = 100000, val_frac: float = 0.05,
                           test_frac: float = 0.05, heldout_frac: float = 0.3, jobs: int = 1,
                           config: PointingConfig | None = None, resume: bool = False) -> dict:
    """Write ``scenes`` pointing scenes (tasks round-robin; scene i has seed ``seed_base + i``; train,
    val, test are contiguous seed ranges) as an ``imagefolder`` data set under ``out_dir``; returns the
    info dict also written to ``info.json``. ``resume`` continues an interrupted run with the same
    arguments (scenes are deterministic, so the result is the same as one uninterrupted run)."""
    cfg = config or PointingConfig()
    slugs, skipped = resolve_tasks(tasks)
    if scenes < 1 or jobs < 1:
        raise ValueError(f"scenes and jobs must be >= 1, got {scenes} and {jobs}")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac and test_frac must lie in [0, 1) with a sum < 1, got {val_frac}, {test_frac}")
    if not 0 <= heldout_frac <= 1:
        raise ValueError(f"heldout_frac must lie in [0, 1], got {heldout_frac}")
    out = Path(out_dir)
    args = {"tasks": slugs, "scenes": scenes, "seed_base": seed_base, "val_frac": val_frac, "test_frac": test_frac,
            "heldout_frac": heldout_frac}
    info_path = out / "info.json"
    old = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else None
    if old is not None and not resume:
        raise FileExistsError(f"{out} already holds a pointing data set ({'complete' if old.get('complete') else 'unfinished'}); "
                              f"remove it, choose another output folder, or continue an unfinished one with --resume")
    if old is None and any((out / s / "metadata.jsonl").exists() for s in SPLITS):
        raise FileExistsError(f"{out} holds metadata but no info.json; remove it or choose another output folder")
    if old is not None and (old.get("args", {}).get("scenes") is None or
                            {k: old["args"].get(k) for k in args} != args or old.get("config") != json.loads(json.dumps(asdict(cfg)))):
        raise ValueError(f"--resume: {out} was started with other arguments ({old.get('args')}); pass the same "
                         f"ones or write to another folder")
    counts = split_counts(scenes, val_frac, test_frac)
    items, ranges, start = [], {}, 0
    for split in SPLITS:
        ranges[split] = [seed_base + start, seed_base + start + counts[split]]
        for i in range(start, start + counts[split]):
            seed = seed_base + i
            held = split != "train" and bool(np.random.default_rng([seed, 0x4E1D]).random() < heldout_frac)
            items.append((i, slugs[i % len(slugs)], seed, split, held, cfg))
        start += counts[split]
    info = {"complete": False, "scenes": scenes, "tasks": slugs, "skipped_tasks": skipped,
            "args": {**args, "jobs": jobs}, "config": asdict(cfg), "width": SimCameraConfig().width,
            "height": SimCameraConfig().height, "phrasings": {t: list(TASKS[t].phrasings) for t in slugs},
            "heldout_phrasings": {t: list(TASKS[t].heldout_phrasings) for t in slugs}}
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    done = _done_prefix(out, items) if old is not None else []
    if done:
        log.info("pointing: resuming %s after %d of %d scenes", out, len(done), scenes)
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    per_task = {s: {t: 0 for t in slugs} for s in SPLITS}
    held = {s: 0 for s in SPLITS}
    redraws = 0
    t0 = time.monotonic()
    every = max(1, scenes // 50)
    files = {s: open(out / s / "metadata.jsonl", "a", encoding="utf-8") for s in SPLITS}
    pool = None
    try:
        todo = items[len(done):]
        if jobs > 1 and todo:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(jobs)
            results = pool.imap(_render_item, todo, chunksize=2)
        else:
            results = map(_render_item, todo)
        new = ((row, None) for row in done)
        for n_done, (row, png) in enumerate(itertools.chain(new, results), 1):
            split = row["split"]
            if png is not None:
                tmp = out / split / (row["file_name"] + ".tmp")
                tmp.write_bytes(png)
                tmp.replace(out / split / row["file_name"])
                files[split].write(json.dumps(row) + "\n")
                files[split].flush()
            per_task[split][row["task"]] += 1
            held[split] += row["phrasing_heldout"]
            redraws += row["redraws"]
            if png is not None and (n_done % every == 0 or n_done == scenes):
                dt = time.monotonic() - t0
                rate = (n_done - len(done)) / dt
                log.info("pointing: %d/%d scenes, %.2f scenes/s, %d redraws, ETA %.0f s", n_done, scenes, rate,
                         redraws, (scenes - n_done) / rate)
    finally:
        for f in files.values():
            f.close()
        if pool is not None:
            pool.terminate()
    wall = time.monotonic() - t0
    info.update(complete=True, resumed_after=len(done), redraws=redraws, wall_s=round(wall, 2),
                scenes_per_s=round((scenes - len(done)) / max(wall, 1e-9), 3),
                splits={s: {"count": counts[s], "seeds": ranges[s], "tasks": per_task[s], "heldout_phrasings": held[s]}
                        for s in SPLITS})
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


__all__ = ["PointingConfig", "PointingScene", "randomize_scene",
           "render_pointing_scene", "write_pointing_dataset"]
