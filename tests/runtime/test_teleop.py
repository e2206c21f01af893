"""Teleoperation: the loop goes through the joint limiter and the safety layer, gripper events, and end to
end in the simulator: a scripted leader records episodes with edge-record, they read back as a LeRobot data
set, get their guidance in hindsight, and fine-tune an expert (python -m edgebridge.train --from-dataset)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgebridge.contracts import ArmCommand, ArmState, Pose
from edgebridge.drivers.kinematics import PANDA_HOME, Kinematics
from edgebridge.drivers.teleop_devices import EEDelta, JointTarget
from edgebridge.runtime.config import load_robot_config
from edgebridge.runtime.record_cli import main as record_main
from edgebridge.runtime.teleop import TeleopLoop, gripper_events, next_event


def test_gripper_events_and_each_frames_goal():
    g = np.array([1, 1, 0.9, 0.3, 0, 0, 0.6, 1, 1])
    ev = gripper_events(g)
    np.testing.assert_array_equal(ev, [3, 6])
    np.testing.assert_array_equal(next_event(len(g), ev), [3, 3, 3, 6, 6, 6, 8, 8, 8])
    np.testing.assert_array_equal(next_event(3, gripper_events(np.ones(3))), [2, 2, 2])


class FakeArm:
    """An arm that is where it was last commanded (joint space), recording every command."""

    def __init__(self, kin: Kinematics, q) -> None:
        self.kin, self.q, self.gripper = kin, np.asarray(q, np.float64), 1.0
        self.sent: list[ArmCommand] = []
        self.holds = 0

    def state(self) -> ArmState:
        return ArmState(self.q.copy(), self.kin.fk(self.q), self.gripper)

    def command(self, cmd: ArmCommand) -> ArmCommand:
        self.sent.append(cmd)
        self.q, self.gripper = cmd.joints.copy(), cmd.gripper
        return cmd

    def hold(self) -> None:
        self.holds += 1


class Scripted:
    def __init__(self, outputs) -> None:
        self.outputs = list(outputs)

    def read(self, dt_s):
        return self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]


@pytest.fixture(scope="module")
def panda():
    return Kinematics(), load_robot_config("sim_panda").limits


def _run(loop: TeleopLoop, ticks: int) -> None:
    loop.prepare()
    for i in range(ticks):
        loop.step(i * loop.period_ns)


def test_a_far_leader_is_followed_within_the_joint_limits(panda):
    kin, limits = panda
    arm = FakeArm(kin, PANDA_HOME)
    far = np.array(PANDA_HOME)
    far[0] += 0.8  # a fast swing of the base
    far[6] = limits.joint_upper[6] + 1.0  # the wrist beyond its limit
    loop = TeleopLoop(arm, kin, limits, 0.01, Scripted([JointTarget(far, 0.0)]))
    _run(loop, 300)
    q = np.array([np.asarray(PANDA_HOME)] + [c.joints for c in arm.sent])
    v = np.diff(q, axis=0) / 0.01
    assert len(arm.sent) == 300 and loop.fault is None
    assert np.all(np.abs(v) <= np.asarray(limits.joint_velocity) * (1 + 1e-6))  # shaped, then validated
    assert np.all(q <= np.asarray(limits.joint_upper) + 1e-9)  # the target was clipped to the limits
    np.testing.assert_allclose(q[-1, [0, 6]], [far[0], limits.joint_upper[6]], atol=1e-3)  # and reached
    assert arm.sent[-1].gripper == 0.0
    # the recorded action is the pose and gripper actually sent
    st, action, joints = loop.latest
    np.testing.assert_allclose(action[:3], kin.fk(arm.sent[-1].joints).position)
    np.testing.assert_allclose(joints, arm.sent[-1].joints)


def test_end_effector_deltas_go_through_ik(panda):
    kin, limits = panda
    arm = FakeArm(kin, PANDA_HOME)
    start = kin.fk(np.asarray(PANDA_HOME)).position
    dx = 0.0004  # 4 cm/s at 100 Hz
    loop = TeleopLoop(arm, kin, limits, 0.01, Scripted([EEDelta(np.array([dx, 0, 0]), np.zeros(3))] * 100
                                                       + [EEDelta.zero(gripper=0.0)]))
    _run(loop, 200)
    end = kin.fk(arm.q).position
    np.testing.assert_allclose(end - start, [100 * dx, 0, 0], atol=2e-3)
    assert arm.gripper == 0.0 and loop.ik_failures == 0


def test_commands_the_safety_layer_rejects_stop_the_episode(panda):
    kin, limits = panda

    class OutsideFK:  # every pose lies outside the workspace box
        n_joints = kin.n_joints

        def fk(self, q):
            return Pose(np.array([5.0, 0.0, 0.0]))

    arm = FakeArm(kin, PANDA_HOME)
    near = np.asarray(PANDA_HOME) + 0.05
    loop = TeleopLoop(arm, OutsideFK(), limits, 0.01, Scripted([JointTarget(near, 1.0)]), max_rejections=10)
    _run(loop, 50)
    assert arm.sent == []  # nothing the safety layer refused was sent
    assert loop.fault is not None and "rejected" in loop.fault and arm.holds >= 1
    assert loop.safety.rejections["workspace"] >= 10


def test_cli_refuses_bad_choices(tmp_path, capsys):
    assert record_main(["--out", str(tmp_path / "a")]) == 2
    assert "--leader PORT" in capsys.readouterr().err
    assert record_main(["--config", "sim_panda", "--leader", "/dev/ttyACM9", "--out", str(tmp_path / "b")]) == 2
    assert "scripted" in capsys.readouterr().err
    assert record_main(["--config", "so101_serial", "--teleop", "scripted", "--out", str(tmp_path / "c")]) == 2
    assert "simulated setup" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    assert record_main(["--teleop", "scripted", "--out", str(tmp_path / "d")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.mark.slow
def test_scripted_leader_recording_trains_the_expert(tmp_path, tiny_onnx, capsys):
    pytest.importorskip("pybullet", reason="the simulator needs the 'sim' extra (pybullet)")
    pytest.importorskip("av", reason="camera video needs the 'dataset' extra")
    torch = pytest.importorskip("torch")
    from edgebridge.datasets.lerobot_v3 import LeRobotReader
    from edgebridge.train.__main__ import main as train_main
    from edgebridge.train.appf import load_final

    out = tmp_path / "stack"
    code = record_main(["--config", "sim_panda", "--teleop", "scripted", "--task", "stack_red_on_blue",
                        "--episodes", "2", "--seed", "3", "--out", str(out), "--vcodec", "h264"])
    assert code == 0, capsys.readouterr().err
    ds = LeRobotReader(out)
    assert len(ds) == 2 and ds.fps == 10
    for key in ("observation.images.front", "observation.state", "action", "observation.joints",
                "observation.cloud", "observation.cloud_n_valid"):
        assert key in ds.features, key
    assert "observation.guidance" not in ds.features  # built in hindsight, not recorded
    meta = json.loads((out / "meta" / "edgebridge.json").read_text())
    assert [e["success"] for e in meta["episodes"]] == [True, True] and meta["tasks"] == ["stack_red_on_blue"]
    assert meta["cloud_roi"] and meta["action_dt"] == 0.1
    for i in range(2):
        ep = ds.episode(i)
        assert len(gripper_events(ep["action"][:, 7])) == 2  # a grasp and a release
        assert np.all(ep["observation.cloud_n_valid"] > 100)
        assert ds.frames(i, "observation.images.front").shape[1:] == (240, 320, 3)
    run = tmp_path / "run"
    code = train_main(["--from-dataset", str(out), "--init", str(tiny_onnx), "--run", str(run), "--steps", "20",
                       "--batch", "16", "--eval-every", "10", "--val-fraction", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0 and "before" in printed and "after" in printed
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 20 and m["episodes"] == 2 and m["val_samples"] > 0
    for when in ("before", "after"):
        assert all(np.isfinite(v) for v in m[when].values()), m[when]
    assert m["before"] != m["after"]  # the weights changed
    net, rec = load_final(run)
    assert rec["extra_metadata"]["finetune"]["before"] == m["before"]
    assert set(rec["data"]["tasks"]) >= {"stack_red_on_blue"}
    assert all(torch.isfinite(p).all() for p in net.parameters())
