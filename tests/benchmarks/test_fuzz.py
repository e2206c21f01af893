"""benchmarks/fuzz.py: a short run writes every key, finds nothing, and reaches the accepting path of each
target; and its checks are not blind (a parser that lets through a bad plan is counted)."""

from __future__ import annotations

import json

import fuzz


def test_a_short_fuzz_run_writes_its_keys_and_finds_nothing(tmp_path):
    out = tmp_path / "fuzz.json"
    assert fuzz.main(["--cases", "400", "--json", str(out)]) == 0
    flat = json.loads(out.read_text())
    for target in fuzz.TARGETS:
        assert flat[f"fuzz_{target}_crashes"] == 0
        assert flat[f"fuzz_{target}_accepted_invalid"] == 0
        assert flat[f"fuzz_{target}_accepted"] > 0, f"{target}: the fuzzer never reached the accepting path"


def test_the_checks_count_a_parser_that_accepts_anything_or_crashes(monkeypatch):
    from edgebridge.contracts import Anchor, Plan
    from edgebridge.runtime.planner import format as fmt

    def lax(text, instruction, width, height, **kw):  # accepts every answer with a pixel off the image
        if "yaw" not in str(text):
            raise KeyError("yaw")  # not the documented PlanError: a crash
        return Plan(instruction, (Anchor(u=width + 5, v=0, gripper=1.0),), source="lax")

    monkeypatch.setattr(fmt, "parse_plan", lax)
    r = fuzz.run_target("plan", 300, seed=1)
    assert r["crashes"] > 0 and r["accepted_invalid"] > 0


def test_the_frame_checks_count_a_bus_that_returns_a_value_no_frame_holds(monkeypatch):
    from edgebridge.drivers.servo_bus import ServoBus

    real = ServoBus.read
    monkeypatch.setattr(ServoBus, "read", lambda self, sid, reg: real(self, sid, reg) ^ 1)  # off by one bit
    for target in ("feetech_frame", "dynamixel_frame"):
        r = fuzz.run_target(target, 200, seed=2)
        assert r["accepted_invalid"] == r["accepted"] > 0


def test_a_fuzz_run_leaves_logging_on(caplog):
    import logging

    fuzz.main(["--cases", "5", "--targets", "plan"])
    logging.getLogger("edgebridge.test").warning("still logging")
    assert "still logging" in caplog.text
