"""``edge-run --planner gguf --vlm tiny.gguf`` end to end in the simulator.

The tiny GGUF has random weights and no vision projector: it plans nonsense from the instruction alone
(text-only, stated in the output). The pipeline must handle that safely: the plan is validated (lifted
with depth, checked against the workspace) and either rejected with a reason or executed, and every
command the arm receives is inside the limits. A wrapper around the simulated arm re-checks each
command on its own (joint range, joint velocity, workspace by forward kinematics, gripper range)."""

import json

import numpy as np
import pytest

from edgebridge.config import ConfigError
from edgebridge.runtime import devices as devices_mod
from edgebridge.runtime.config import load_robot_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("gguf", reason="gguf (extra 'vlm') not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    pytest.importorskip("pybullet", reason="the sim world needs pybullet ('sim' extra)")
    from edgebridge.export.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


class CheckingArm:
    """Delegates to the real arm; records every command and checks it against ``limits`` independently
    of the safety layer (velocity between consecutive commands, reset by ``hold``)."""

    def __init__(self, arm, limits, kinematics, period_s: float) -> None:
        self._arm, self.limits, self.kin, self.period_s = arm, limits, kinematics, period_s
        self.commands, self.violations, self._last = [], [], None

    def __getattr__(self, name):
        return getattr(self._arm, name)

    def command(self, cmd):
        lim, q = self.limits, np.asarray(cmd.joints, dtype=np.float64)
        tol = 1e-6
        if not np.all(np.isfinite(q)) or not np.isfinite(cmd.gripper):
            self.violations.append(f"non-finite {q}")
        if np.any(q < np.array(lim.joint_lower) - tol) or np.any(q > np.array(lim.joint_upper) + tol):
            self.violations.append(f"joint limit {q}")
        if self._last is not None:
            v = np.abs(q - self._last) / self.period_s
            if np.any(v > np.array(lim.joint_velocity) * (1 + 1e-3)):
                self.violations.append(f"velocity {v}")
        p = self.kin.fk(q).position
        if np.any(p < np.array(lim.workspace_min) - 1e-4) or np.any(p > np.array(lim.workspace_max) + 1e-4):
            self.violations.append(f"workspace {p}")
        if not lim.gripper_min <= cmd.gripper <= lim.gripper_max:
            self.violations.append(f"gripper {cmd.gripper}")
        self._last = q
        self.commands.append(cmd)
        return self._arm.command(cmd)

    def hold(self):
        self._last = None
        return self._arm.hold()


def test_edge_run_with_the_tiny_random_gguf_is_safe(tiny_model, tmp_path, monkeypatch, capsys):
    from edgebridge.runtime.cli import main

    arms = []
    build = devices_mod.build_devices

    def checked(cfg, choices):
        dev, instruction = build(cfg, choices)
        dev.arm = CheckingArm(dev.arm, cfg.limits, dev.kinematics, 1.0 / cfg.loop.rate_hz)
        arms.append(dev.arm)
        return dev, instruction

    monkeypatch.setattr(devices_mod, "build_devices", checked)
    out = tmp_path / "eps.jsonl"
    rc = main(["--planner", "gguf", "--vlm", str(tiny_model), "--task", "put_cup_in_tray", "--expert", "ik",
               "--max-seconds", "4", "--json", str(out)])
    text = capsys.readouterr().out
    assert "text-only" in text and "no vision projector" in text  # the blind planner is stated
    row = json.loads(out.read_text().splitlines()[0])
    assert rc == (0 if row["success"] else 1)  # documented: 0 success, 1 an episode failed
    assert row["task"] == "put_cup_in_tray" and row["reason"]
    assert not row["success"]  # a random model does not put the cup in the tray
    # validated: either rejected with the planner's/lift's reason, or executed until the time limit
    assert row["reason"].startswith("plan rejected:") or row["reason"] in ("time limit reached",) \
        or "tray" in row["reason"], row["reason"]
    assert row["planning"]["requests"] >= 1  # --json: the episode's planning and loop counts
    assert row["planning"]["accepted"] + row["planning"]["rejected"] >= 1
    arm = arms[0]
    assert arm.violations == [], arm.violations[:3]
    if row["reason"].startswith("plan rejected:"):
        assert arm.commands == []  # nothing moves without a valid plan
    else:
        assert row["planning"]["accepted"] >= 1 and len(arm.commands) == row["loop"]["sent"]


def test_gguf_without_projector_on_a_real_setup_is_a_config_error(tmp_path):
    cfg = load_robot_config("so101_serial")
    with pytest.raises(ConfigError, match="no vision projector.*--mmproj.*text_only"):
        devices_mod.make_planner(cfg, "gguf", str(tmp_path / "model.gguf"), None)


def test_gguf_missing_model_file_exits_2(tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    pytest.importorskip("pybullet", reason="the sim world needs pybullet ('sim' extra)")
    from edgebridge.runtime.cli import main

    assert main(["--planner", "gguf", "--vlm", str(tmp_path / "missing.gguf"), "--expert", "ik"]) == 2
    assert "missing.gguf not found" in capsys.readouterr().err
