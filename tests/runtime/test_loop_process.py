"""The loop in its own process: chunks in and state out through shared memory, stop flag, result."""

import time

import numpy as np
import pytest

from edgebridge.runtime.loop_process import LoopProcess

from helpers.waiting import wait_until
from runtime_fakes import LIMITS, PointKinematics, RecordingArm, chunk_line, loop_cfg


def make_arm():  # module level: the child process imports it
    return RecordingArm()


def test_loop_process_follows_chunks_and_stops_on_request():
    cfg = loop_cfg(rate_hz=200.0, chunk_timeout_s=2.0, gc="disable")
    with LoopProcess(make_arm, PointKinematics, LIMITS, cfg) as lp:
        st = wait_until(lp.latest_state, 10, "the first state published by the loop process")
        assert st is not None and np.allclose(st.joints, [0, 0, 0.3])
        t_put = time.monotonic_ns()
        lp.put(chunk_line(t_put, (0, 0, 0.3), (0.05, 0.0, 0.3), n=11, dt=0.05))
        # the chunk lasts 0.5 s; a state stamped 1 s after it was sent is past its end
        st = wait_until(lambda: (s := lp.latest_state()).stamp_ns >= t_put + 1_000_000_000 and s, 10,
                        "a loop-process state stamped 1 s after the chunk was sent")
        assert st.joints[0] > 0.04, st.joints  # the child followed the chunk
        t0 = time.monotonic()
        assert lp.join(0.05) is None and lp.alive  # still running: join returns after its timeout
        assert time.monotonic() - t0 < 2.0
        lp.request_stop("test finished")
        res = lp.join(10)
    assert res is not None and res.reason == "test finished" and not res.fault
    assert res.sent > 50 and res.stats["cycles"] > 150
    with pytest.raises(RuntimeError, match="not running"):  # closed: a late producer is told, not crashed
        lp.put(chunk_line(time.monotonic_ns(), (0, 0, 0.3), (0.05, 0.0, 0.3), n=11, dt=0.05))


def test_loop_process_reports_a_child_failure():
    cfg = loop_cfg(rate_hz=100.0)
    lp = LoopProcess(_broken_arm, PointKinematics, LIMITS, cfg)
    try:
        lp.start()
    except RuntimeError as e:
        assert "failed to start" in str(e) or "did not start" in str(e)
    else:  # pragma: no cover
        raise AssertionError("a child that cannot build its arm must fail start()")


def _broken_arm():
    raise ConnectionError("no such port /dev/ttyNOPE")


def test_killed_loop_process_is_reported_as_a_fault():
    import os
    import signal

    cfg = loop_cfg(rate_hz=100.0)
    with LoopProcess(make_arm, PointKinematics, LIMITS, cfg) as lp:
        os.kill(lp._proc.pid, signal.SIGKILL)
        res = lp.join(10)
    assert res is not None and res.fault and "died" in res.reason


def test_a_signal_to_the_loop_process_is_a_controlled_stop():
    """Ctrl-C reaches the whole process group: the child brakes and holds, it does not die mid-command."""
    import os
    import signal

    cfg = loop_cfg(rate_hz=100.0, chunk_timeout_s=2.0)
    with LoopProcess(make_arm, PointKinematics, LIMITS, cfg) as lp:
        assert lp.wait_first_state(10.0)
        os.kill(lp._proc.pid, signal.SIGINT)
        res = lp.join(5.0)
    assert res is not None and res.reason == "SIGINT received" and not res.fault, res


def _slow_arm():  # an arm whose connect hangs (a bus that never answers)
    time.sleep(30)


def test_start_and_first_state_waits_give_up_on_a_stop_request():
    cfg = loop_cfg(rate_hz=100.0)
    t_stop = time.monotonic() + 0.3
    lp = LoopProcess(_slow_arm, PointKinematics, LIMITS, cfg, stop=lambda: time.monotonic() > t_stop)
    with pytest.raises(InterruptedError, match="stop was requested"):
        lp.start()
    assert time.monotonic() - t_stop < 1.0 and not lp.alive  # the child was stopped, not left behind
    lp.close()
    stopped = []
    with LoopProcess(_arm_slow_to_read, PointKinematics, LIMITS, cfg, stop=lambda: bool(stopped)) as lp:
        stopped.append(True)
        t0 = time.monotonic()
        assert not lp.wait_first_state(10.0) and time.monotonic() - t0 < 0.5


class _SlowFirstRead(RecordingArm):
    def state(self):
        if self.n_state == 0:
            time.sleep(1.5)  # the first state comes late: the parent waits for it
        return super().state()


def _arm_slow_to_read():
    return _SlowFirstRead()


def test_a_writer_stalled_mid_write_yields_the_previous_state_not_none():
    """A loop preempted inside a state write leaves the seqlock odd; the reader must not hand out a torn
    state, nor None once a state was seen (the supervisor and the expert read it every period)."""
    from edgebridge.contracts import ArmState, Pose
    from edgebridge.runtime.loop_process import ShmStatePublisher, _Shm

    lp = LoopProcess(make_arm, PointKinematics, LIMITS, loop_cfg(rate_hz=100.0))
    lp._shm = _Shm(LIMITS.n_joints, 4)
    try:
        assert lp.latest_state() is None  # nothing published yet
        pub = ShmStatePublisher(lp._shm)
        pub.publish(ArmState(np.array([0.1, 0.2, 0.3]), Pose(np.zeros(3), np.array([1.0, 0, 0, 0])), 0.0,
                             stamp_ns=123), cycle=1)
        assert lp.latest_state().stamp_ns == 123
        lp._shm.state["seq"][0] += 1  # a writer stopped half-way through the next state
        lp._shm.state["stamp_ns"][0] = 456
        t0 = time.monotonic()
        st = lp.latest_state()
        assert st is not None and st.stamp_ns == 123 and time.monotonic() - t0 < 0.5
    finally:
        lp._shm.close()
        lp._shm = None
