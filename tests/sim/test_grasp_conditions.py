"""Wrong first plans (the oracle's ``wrong_first_plan``), a cup pushed before the grasp
(``sim/disturb.py``), and what the runtime makes of them in real episodes: the empty grasp detected and
re-planned, the pre-grasp re-plan. Also the benchmark conditions that name them."""

import sys
from pathlib import Path

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.sim.camera import SimCamera
from edgebridge.sim.disturb import CupPush
from edgebridge.sim.oracle import WRONG_GRASP_OFFSET_M, OracleConfig, OraclePlanner
from edgebridge.sim.tasks import get_task, setup_scene
from edgebridge.sim.world import SimWorld

INSTRUCTION = "put the cup in the tray"


@pytest.fixture()
def scene():
    w = SimWorld()
    setup_scene(w, get_task("put_cup_in_tray"), seed=6000)
    cam = SimCamera(w)
    cam.connect()
    yield w, cam
    cam.disconnect()
    w.close()


def lifted(cam, anchor) -> np.ndarray:
    """The base-frame point a pixel of the last (clean) frame sees."""
    _, depth, _ = cam.render()
    k, T = cam.intrinsics, cam.T_base_cam
    z = float(depth[anchor.v, anchor.u])
    pc = np.array([(anchor.u - k.cx) / k.fx * z, (anchor.v - k.cy) / k.fy * z, z])
    return T[:3, :3] @ pc + T[:3, 3]


def test_wrong_object_first_plan_grasps_another_object_then_plans_right(scene):
    w, cam = scene
    events = {}
    oracle = OraclePlanner(w, cam, OracleConfig(seed=6000, wrong_first_plan="wrong_object"), events=events)
    right = OraclePlanner(w, cam).plan(cam.read(), INSTRUCTION)
    first, second = oracle.plan(cam.read(), INSTRUCTION), oracle.plan(cam.read(), INSTRUCTION)
    seg = cam.last_segmentation
    other = events["wrong_plan"]["object"]
    assert other != "cup" and not w.object(other).fixed and events["wrong_plan"]["instead_of"] == "cup"
    assert seg[first.anchors[0].v, first.anchors[0].u] == w.object(other).body  # the grasp is on the other object
    assert first.anchors[1:] == right.anchors[1:]  # the destination is unchanged
    assert second.anchors == right.anchors  # the re-plan is the normal one


def test_grasp_8cm_first_plan_points_8cm_beside_the_object(scene):
    w, cam = scene
    events = {}
    oracle = OraclePlanner(w, cam, OracleConfig(seed=6000, wrong_first_plan="grasp_8cm"), events=events)
    right = OraclePlanner(w, cam).plan(cam.read(), INSTRUCTION)
    first, second = oracle.plan(cam.read(), INSTRUCTION), oracle.plan(cam.read(), INSTRUCTION)
    p_wrong, p_right = lifted(cam, first.anchors[0]), lifted(cam, right.anchors[0])
    assert np.linalg.norm(p_wrong[:2] - p_right[:2]) == pytest.approx(WRONG_GRASP_OFFSET_M, abs=0.01)
    assert abs(p_wrong[2]) < 0.01  # on the table top, clear of every object
    assert cam.last_segmentation[first.anchors[0].v, first.anchors[0].u] == w.table
    assert events["wrong_plan"]["mode"] == "grasp_8cm" and events["wrong_plan"]["clear"]
    assert first.anchors[1:] == right.anchors[1:] and second.anchors == right.anchors
    # seeded: the same direction again
    again = OraclePlanner(w, cam, OracleConfig(seed=6000, wrong_first_plan="grasp_8cm")).plan(cam.read(), INSTRUCTION)
    assert again.anchors[0] == first.anchors[0]


def test_unknown_wrong_plan_and_wrong_plans_without_the_oracle_are_refused():
    with pytest.raises(ConfigError, match="oracle.wrong_first_plan: expected None or one of"):
        OracleConfig(wrong_first_plan="grasp_1m")
    from edgebridge.runtime.config import load_robot_config
    from edgebridge.runtime.devices import RunChoices, build_devices

    with pytest.raises(ConfigError, match="made by the oracle planner; it does not apply to planner 'gguf'"):
        build_devices(load_robot_config("sim_panda"), RunChoices(planner="gguf", sim_wrong_plan="grasp_8cm"))


def test_the_cup_push_moves_it_3_to_6_cm_upright_and_clear(scene):
    w, _ = scene
    push = CupPush(w, seed=6000)
    before = w.pose("cup")
    rec = push.push()
    after = w.pose("cup")
    moved = np.linalg.norm(after.position[:2] - before.position[:2])
    assert rec["pushed"] and 0.03 <= moved <= 0.06 and moved == pytest.approx(rec["distance_m"], abs=1e-3)
    assert after.position[2] == pytest.approx(before.position[2], abs=1e-6)
    assert np.allclose(after.quat, before.quat, atol=1e-6)
    w.settle(0.3)
    assert w.on_table("cup") and np.linalg.norm(w.pose("cup").position - after.position) < 0.005  # it rests there
    with pytest.raises(ConfigError, match="no cup to push"):
        other = SimWorld()
        try:
            setup_scene(other, get_task("stack_red_on_blue"), seed=0)
            CupPush(other, seed=0)
        finally:
            other.close()


def test_an_8cm_grasp_closes_on_nothing_and_the_replan_picks_the_cup():
    from edgebridge.sim.episode import run_episode

    out = run_episode("put_cup_in_tray", 6000, "ik", wrong_plan="grasp_8cm")
    p = out.planning
    assert p["empty_grasps"] >= 1 and p["regrasps"] >= 1 and p["requests"] >= 2
    assert out.events["wrong_plan"]["mode"] == "grasp_8cm"
    assert out.success, out.reason


def test_a_pushed_cup_moves_during_the_episode_which_finishes(monkeypatch):
    from edgebridge.sim import disturb
    from edgebridge.sim.episode import run_episode

    seen = []
    push = disturb.CupPush.push

    def spy(self):
        before = self.world.pose(self.obj).position
        rec = push(self)
        seen.append((before, self.world.pose(self.obj).position, self.world.clock.now_ns()))
        return rec

    monkeypatch.setattr(disturb.CupPush, "push", spy)
    out = run_episode("put_cup_in_tray", 6001, "ik", push_cup=True)
    [(before, after, t_ns)] = seen
    rec = out.events["push_cup"]
    assert rec["pushed"] and 0.03 <= np.linalg.norm(after[:2] - before[:2]) <= 0.06
    assert rec["from"] == pytest.approx(before.tolist(), abs=1e-4)
    assert rec["to"] == pytest.approx(after.tolist(), abs=1e-4)
    assert rec["before_close_s"] > 0 and rec["at_s"] == pytest.approx(t_ns / 1e9, abs=1e-3)
    assert out.reason != "time limit reached" and out.success, out.reason


def test_replan_before_grasp_replans_a_pushed_cup_at_the_pregrasp_point():
    from edgebridge.sim.episode import run_episode

    out = run_episode("put_cup_in_tray", 6003, "ik", push_cup=True,
                      config_overrides={"planner": {"replan_before_grasp": True}})
    p = out.planning
    assert p["pregrasp_replans"] == 1 and p["requests"] == 2 and out.events["push_cup"]["pushed"]
    assert out.success, out.reason


def test_benchmark_conditions_and_the_cup_check(capsys):
    # appended, not first: benchmarks/kernels.py must not shadow the `kernels` package (transformers imports it)
    sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import sim_success

    c = sim_success.CONDITIONS
    assert c["grasp_8cm"] == {"wrong_plan": "grasp_8cm"} and c["wrong_object"] == {"wrong_plan": "wrong_object"}
    assert c["grasp_8cm_noregrasp"]["config_overrides"] == {"planner": {"max_regrasps": 0}}
    assert c["push_cup_replan"] == {"push_cup": True, "config_overrides": {"planner": {"replan_before_grasp": True}}}
    with pytest.raises(SystemExit):
        sim_success.main(["--tasks", "put_cup_in_tray,stack_red_on_blue", "--conditions", "push_cup", "--seeds", "1"])
    err = capsys.readouterr().err
    assert "tasks ['stack_red_on_blue'] have none" in err and "put_cup_in_tray" in err
