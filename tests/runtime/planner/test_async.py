"""AsyncPlanner: worker thread, re-trigger coalescing, failures kept as a reason, validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgebridge.contracts import Anchor, Plan
from edgebridge.errors import PlanError
from edgebridge.runtime.lift import lift_plan
from edgebridge.runtime.planner.asynchronous import AsyncPlanner
from edgebridge.runtime.planner.gguf import blank_frame

from helpers.waiting import wait_until

TIMEOUT = 10


class Gated:
    """A planner that blocks until released; records instructions; fails on 'fail'."""

    def __init__(self):
        self.gate = threading.Semaphore(0)
        self.started = threading.Event()
        self.seen: list[str] = []
        self.closed = False

    def plan(self, rgbd, instruction):
        self.seen.append(instruction)
        self.started.set()
        if not self.gate.acquire(timeout=TIMEOUT):
            raise RuntimeError("test gate never released")
        if instruction == "fail":
            raise PlanError("model answered garbage")
        u = 10 if instruction != "off table" else 60
        return Plan(instruction, (Anchor(u, 20, 1.0),), source="gated")

    def close(self):
        self.closed = True


def test_retrigger_coalesces_and_latest_is_newest():
    inner = Gated()
    with AsyncPlanner(inner) as ap:
        assert ap.latest() is None
        r0 = ap.request(blank_frame(), "first")
        assert inner.started.wait(TIMEOUT)
        r1 = ap.request(blank_frame(), "second", reason="sub-task done")
        r2 = ap.request(blank_frame(), "third", reason="new instruction")  # supersedes 'second'
        assert ap.wait(r1, 0) and not ap.wait(r2, 0)  # 'second' was dropped without running
        inner.gate.release()
        assert ap.wait(r0, TIMEOUT)
        inner.gate.release()
        assert ap.wait(r2, TIMEOUT)
        assert inner.seen == ["first", "third"]
        assert ap.latest().instruction == "third"
        st = ap.status()
        assert (st.n_requests, st.n_ok, st.n_failed, st.last_reason) == (3, 2, 0, "new instruction")
    assert inner.closed


def test_failure_is_kept_as_reason_and_last_plan_stays():
    inner = Gated()
    with AsyncPlanner(inner) as ap:
        inner.gate.release()
        ap.wait(ap.request(blank_frame(), "ok"), TIMEOUT)
        inner.gate.release()
        ap.wait(ap.request(blank_frame(), "fail", reason="plan rejected"), TIMEOUT)
        st = ap.status()
        assert st.n_failed == 1 and "PlanError: model answered garbage" in st.last_error
        assert ap.latest().instruction == "ok"
        ap.reject("unreachable waypoint")
        assert ap.latest() is None and "unreachable" in ap.status().last_error


def test_clear_drops_plans_of_the_old_instruction():
    inner = Gated()
    with AsyncPlanner(inner) as ap:
        inner.gate.release()
        ap.wait(ap.request(blank_frame(), "old"), TIMEOUT)
        inner.started.clear()
        r_old = ap.request(blank_frame(), "old again")
        assert inner.started.wait(TIMEOUT)
        r_new = ap.request(blank_frame(), "new", clear=True)
        assert ap.latest() is None
        inner.gate.release()
        ap.wait(r_old, TIMEOUT)
        assert ap.latest() is None, "a plan requested before clear must not be published"
        inner.gate.release()
        ap.wait(r_new, TIMEOUT)
        assert ap.latest().instruction == "new"


class Box:
    def contains(self, pts):
        return pts[:, 0] < 0.2


def test_validate_with_lift_rejects_plan_off_the_table():
    inner = Gated()
    frame = blank_frame(64, 48)
    validate = lambda plan, rgbd: lift_plan(plan, rgbd, np.eye(4), Box())  # noqa: E731
    with AsyncPlanner(inner, validate) as ap:
        inner.gate.release()
        ap.wait(ap.request(frame, "pick"), TIMEOUT)
        plan, wp = ap.latest_result()
        assert len(wp) == 1 and wp.positions[0, 2] == pytest.approx(1.0)
        inner.gate.release()
        ap.wait(ap.request(frame, "off table"), TIMEOUT)
        assert "outside the workspace" in ap.status().last_error
        assert ap.latest().instruction == "pick"


def test_real_gguf_planner_in_worker_does_not_block_caller(tiny_model):
    from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig

    cfg = GGUFPlannerConfig(str(tiny_model), text_only=True, temperature=1.0, n_ctx=2048, n_threads=1)
    with AsyncPlanner(GGUFPlanner(cfg)) as ap:
        rid = ap.request(blank_frame(640, 480), "pick the cup")
        polls = []
        wait_until(lambda: polls.append(rid) or ap.wait(rid, 0), 120, "the tiny GGUF planner's plan")
        assert ap.status().n_ok == 1 and ap.latest() is not None
        assert len(polls) > 1  # the caller kept running during the generation


def test_request_after_close_raises():
    ap = AsyncPlanner(Gated())
    ap.close()
    with pytest.raises(PlanError, match="closed"):
        ap.request(blank_frame(), "x")


def test_wait_returns_promptly_when_stop_turns_true():
    import time

    planner = Gated()
    with AsyncPlanner(planner) as ap:
        rid = ap.request(blank_frame(), "pick")
        assert planner.started.wait(TIMEOUT)
        flag = threading.Event()
        threading.Timer(0.1, flag.set).start()
        t0 = time.monotonic()
        assert ap.wait(rid, 30.0, stop=flag.is_set) is False
        assert 0.08 < time.monotonic() - t0 < 0.2  # polled every STOP_POLL_S, not at the 30 s timeout
        planner.gate.release()
        assert ap.wait(rid, TIMEOUT, stop=lambda: False)
