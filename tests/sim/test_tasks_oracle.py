"""Tasks, success predicates, instruction lookup and the oracle planner."""

import numpy as np
import pytest

from edgebridge.contracts import Pose
from edgebridge.errors import PlanError
from edgebridge.sim.camera import SimCamera
from edgebridge.sim.oracle import OracleConfig, OraclePlanner
from edgebridge.sim.tasks import TASKS, check_success, get_task, resolve_steps, setup_scene, stacked
from edgebridge.sim.world import SimWorld


@pytest.fixture()
def cup_world():
    w = SimWorld()
    setup_scene(w, get_task("put_cup_in_tray"), seed=3)
    yield w
    w.close()


def test_registry_by_slug_and_phrasing():
    spec = get_task("put_cup_in_tray")
    for phrase in ("put cup in tray", "Place the mug into the tray.", "put the cup in the tray"):
        assert get_task(phrase) is spec
    with pytest.raises(KeyError, match="known tasks: put_cup_in_tray"):
        get_task("make coffee")
    assert {s.level for s in TASKS.values()} == {"short", "middle", "long"}


def test_scenes_are_seeded():
    a, b = SimWorld(), SimWorld()
    try:
        setup_scene(a, get_task("clear_table"), seed=5)
        setup_scene(b, get_task("clear_table"), seed=5)
        for n in a.objects:
            np.testing.assert_allclose(a.pose(n).position, b.pose(n).position, atol=1e-9)
            assert a.object(n).color == b.object(n).color
    finally:
        a.close()
        b.close()


def test_success_by_teleport(cup_world):
    w = cup_world
    steps = get_task("put_cup_in_tray").steps
    ok, why = check_success(w, steps)
    assert not ok and "not inside the tray" in why
    tray = w.pose("tray").position
    w.set_pose("cup", Pose(tray + [0.02, -0.03, 0.02], w.pose("cup").quat))
    w.settle(0.5)
    ok, why = check_success(w, steps)
    assert ok, why
    w.set_pose("cup", Pose([0.4, 0.0, -0.4]))  # below the table: knocked off
    w.settle(0.1)
    ok, why = check_success(w, steps)
    assert not ok and "knocked off" in why


def test_stack_predicate():
    w = SimWorld()
    try:
        setup_scene(w, get_task("stack_red_on_blue"), seed=0)
        assert not stacked(w, "red_cube", "blue_cube")[0]
        blue = w.pose("blue_cube")
        w.set_pose("red_cube", Pose(blue.position + [0, 0, 0.052], blue.quat))
        w.settle(0.5)
        ok, why = stacked(w, "red_cube", "blue_cube")
        assert ok, why
    finally:
        w.close()


def test_instruction_resolution_and_errors(cup_world):
    assert resolve_steps(cup_world, "place the mug into the tray")[0].obj == "cup"
    green = [n for n in cup_world.objects if n.endswith("_cube")][0]
    colour = green.split("_")[0]
    assert resolve_steps(cup_world, f"put the {colour} cube in the tray")[0].obj == green
    with pytest.raises(PlanError, match=r"no object 'banana' in the scene; it has: .*cup \("):
        resolve_steps(cup_world, "put the banana in the tray")
    with pytest.raises(PlanError, match="cannot understand instruction"):
        resolve_steps(cup_world, "dance")
    with pytest.raises(PlanError, match="needs 'red_cube'"):
        resolve_steps(cup_world, "stack the red cube on the blue cube")


def test_oracle_plan_points_at_the_right_objects(cup_world):
    w = cup_world
    cam = SimCamera(w)
    with cam:
        frame = cam.read()
        plan = OraclePlanner(w, cam).plan(frame, "put the cup in the tray")
    assert plan.privileged and plan.source == "oracle" and plan.subtasks == (0,)
    assert [a.gripper for a in plan.anchors] == [0.0, 1.0]
    seg = cam.last_segmentation
    for a, name in zip(plan.anchors, ("cup", "tray")):
        assert seg[a.v, a.u] == w.object(name).body, name
    # fingers across the mug: the tool's y axis (finger direction) is the mug's x axis, up to sign
    from edgebridge.rotations import quat_to_matrix

    fingers = quat_to_matrix(plan.orientation)[:, 1]
    mug_x = quat_to_matrix(w.pose("cup").quat)[:, 0]
    assert abs(abs(np.dot(fingers, mug_x)) - 1) < 1e-6
    # plan noise moves the anchors, seeded
    with cam:
        noisy = OraclePlanner(w, cam, OracleConfig(offset_m=0.03, seed=1)).plan(frame, "put the cup in the tray")
        again = OraclePlanner(w, cam, OracleConfig(offset_m=0.03, seed=1)).plan(frame, "put the cup in the tray")
    assert [(a.u, a.v) for a in noisy.anchors] == [(a.u, a.v) for a in again.anchors]
    assert [(a.u, a.v) for a in noisy.anchors] != [(a.u, a.v) for a in plan.anchors]


def test_oracle_camera_looking_away_is_a_clear_error(cup_world):
    cam = SimCamera(cup_world)
    cam.set_pose(eye=(0.5, 0.0, 1.0), target=(0.5, 0.0, 2.0), up=(1, 0, 0))
    with cam:
        frame = cam.read()
        with pytest.raises(PlanError, match="cup is not visible from the camera"):
            OraclePlanner(cup_world, cam).plan(frame, "put cup in tray")
