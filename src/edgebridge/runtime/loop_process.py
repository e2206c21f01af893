"""The control loop in its own process: no GIL shared with the planner and the expert.

Chunks go in through a shared-memory ring of fixed-size slots; the latest arm state comes out through
a shared-memory slot guarded by a sequence number (seqlock); a stop request is a flag in shared memory
the loop polls every cycle. The arm and the kinematics are built *in the child* by picklable factories
(a driver's bus handle cannot cross a process boundary). The final :class:`LoopResult` comes back
through a pipe.

Signals: SIGINT/SIGTERM reaching the child (Ctrl-C reaches the whole process group) are a controlled
stop there too, never a ``KeyboardInterrupt`` mid-command; a child whose parent is gone (killed) stops
the same way. The parent's waits for the child to start poll the caller's ``stop``.

    with LoopProcess(make_arm, make_kin, limits, cfg) as lp:
        lp.put(chunk)            # from the expert worker
        st = lp.latest_state()   # ArmState or None
        lp.request_stop("done")
    result = lp.result
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from multiprocessing import shared_memory
from typing import Callable

import numpy as np

from ..contracts import ActionChunk, ArmState, Pose
from ..errors import DeviceFaultError
from .config import LoopConfig, SafetyLimits
from .loop import ControlLoop, LoopResult, StateBox
from .watchdog import SignalGuard, Watchdog

log = logging.getLogger(__name__)

MAX_HORIZON = 128
SLOTS = 16


def _chunk_dtype(hmax: int) -> np.dtype:
    return np.dtype([("seq", "i8"), ("start_ns", "i8"), ("n", "i8"), ("dt", "f8"), ("inference_ms", "f8"),
                     ("observed_ns", "i8"), ("poses", "f4", (hmax, 8))])


def _state_dtype(n_joints: int) -> np.dtype:
    return np.dtype([("seq", "i8"), ("cycle", "i8"), ("stamp_ns", "i8"), ("joints", "f8", (n_joints,)),
                     ("position", "f8", (3,)), ("quat", "f8", (4,)), ("gripper", "f8")])


_CTRL = np.dtype([("write_count", "i8"), ("stop", "i8"), ("reason", "S200")])


class _Shm:
    """Owns (or attaches to) the three shared blocks and exposes them as numpy records."""

    def __init__(self, n_joints: int, hmax: int, names: tuple[str, str, str] | None = None) -> None:
        self.n_joints, self.hmax = n_joints, hmax
        dts = (_CTRL, _chunk_dtype(hmax), _state_dtype(n_joints))
        counts = (1, SLOTS, 1)
        self.owner = names is None
        self.blocks = []
        for i, (dt, n) in enumerate(zip(dts, counts)):
            if names is None:
                shm = shared_memory.SharedMemory(create=True, size=dt.itemsize * n)
            else:
                shm = shared_memory.SharedMemory(name=names[i])
            self.blocks.append(shm)
        self.ctrl = np.ndarray((1,), _CTRL, buffer=self.blocks[0].buf)
        self.chunks = np.ndarray((SLOTS,), dts[1], buffer=self.blocks[1].buf)
        self.state = np.ndarray((1,), dts[2], buffer=self.blocks[2].buf)
        if self.owner:
            self.ctrl[0] = (0, 0, b"")
            self.chunks["seq"] = 0
            self.state["seq"] = 0

    @property
    def names(self) -> tuple[str, str, str]:
        return tuple(b.name for b in self.blocks)  # type: ignore[return-value]

    def close(self) -> None:
        self.ctrl = self.chunks = self.state = None  # drop views before closing the buffers
        for b in self.blocks:
            b.close()
            if self.owner:
                try:
                    b.unlink()
                except FileNotFoundError:  # pragma: no cover
                    pass
        self.blocks = []


class ShmInbox:
    """Child side of the chunk ring; also polls the stop flag and whether the parent still lives
    (``parent_pid``; None: not checked), both forwarded to the watchdog."""

    def __init__(self, shm: _Shm, watchdog: Watchdog, profiler=None, parent_pid: int | None = None) -> None:
        self.shm, self.watchdog, self.profiler = shm, watchdog, profiler
        self.parent_pid = parent_pid
        self.read_count = 0
        self.dropped = 0

    def drain(self) -> list[ActionChunk]:
        ctrl = self.shm.ctrl[0]
        if ctrl["stop"] and self.watchdog.stop_reason is None:
            self.watchdog.request_stop(ctrl["reason"].decode(errors="replace") or "stop requested")
        if self.parent_pid is not None and os.getppid() != self.parent_pid and self.watchdog.stop_reason is None:
            self.watchdog.request_stop(f"the supervising process {self.parent_pid} is gone")
        wc = int(ctrl["write_count"])
        if wc - self.read_count > SLOTS:
            self.dropped += wc - self.read_count - SLOTS
            self.read_count = wc - SLOTS
        out = []
        while self.read_count < wc:
            slot = self.shm.chunks[self.read_count % SLOTS]
            n = int(slot["n"])
            poses = slot["poses"][:n].copy()
            start, dt, inf = int(slot["start_ns"]), float(slot["dt"]), float(slot["inference_ms"])
            observed = int(slot["observed_ns"])
            if int(slot["seq"]) == self.read_count + 1:  # not overwritten while we copied
                try:
                    out.append(ActionChunk(poses, start, dt, inf))
                    if self.profiler is not None and observed:
                        self.profiler.chunk_observed(out[-1], observed)
                except ValueError as e:  # the parent validated it; a torn slot is dropped, not followed
                    log.warning("dropped a malformed chunk from shared memory: %s", e)
            else:
                self.dropped += 1
            self.read_count += 1
        return out


class ShmStatePublisher(StateBox):
    """Publishes the loop's state into shared memory; sets ``first_state`` (a process-shared event) once
    the first state is there, so the parent waits on it instead of polling."""

    def __init__(self, shm: _Shm, first_state=None) -> None:
        super().__init__()
        self.shm = shm
        self.first_state = first_state

    def publish(self, state: ArmState, cycle: int) -> None:
        rec = self.shm.state
        seq = int(rec["seq"][0])
        rec["seq"][0] = seq + 1  # odd: writing
        rec["cycle"][0] = cycle
        rec["stamp_ns"][0] = state.stamp_ns
        rec["joints"][0] = state.joints
        rec["position"][0] = state.ee_pose.position
        rec["quat"][0] = state.ee_pose.quat
        rec["gripper"][0] = state.gripper
        rec["seq"][0] = seq + 2
        if self.first_state is not None and seq == 0:
            self.first_state.set()


LOOP_STAGES = ("loop_compute", "driver_io", "end_to_end")  # what the child profiles and sends back


def _child(names, n_joints, hmax, arm_factory, kin_factory, limits, cfg, dry_run, profile, conn, first_state,
           parent_pid) -> None:
    shm = _Shm(n_joints, hmax, names)
    result = None
    watchdog = Watchdog(cfg.chunk_timeout_s)
    try:
        with SignalGuard(watchdog) as guard, contextlib.ExitStack() as devices:
            prof = None
            if profile:
                from .profiling import Profiler

                prof = Profiler()
            with guard.interrupting():  # opening the arm (nothing commanded yet): a signal ends it at once
                arm = devices.enter_context(arm_factory())
                kin = kin_factory()
            loop = ControlLoop(arm, limits, cfg, kin, inbox=ShmInbox(shm, watchdog, prof, parent_pid),
                               states=ShmStatePublisher(shm, first_state), watchdog=watchdog, profiler=prof,
                               dry_run=dry_run)
            conn.send(("ready", None))
            result = loop.run()
            if prof is not None:
                result.profile = prof.samples_ns(LOOP_STAGES)
                result.profile["__events__"] = prof.events_array()
                result.period_stats = loop.stats
    except BaseException as e:  # report, never hang the parent
        result = LoopResult(reason=f"loop process failed: {type(e).__name__}: {e}", cycles=0, sent=0,
                            rejections={}, holds=0, fault=True)
    finally:
        try:
            conn.send(("result", result))
        finally:
            shm.close()


class LoopStartError(DeviceFaultError, RuntimeError):
    """The control-loop process could not open its arm or kinematics (the child's error is in the message)."""


class LoopProcess:
    """Runs :class:`ControlLoop` in a child process (``spawn``); see the module docstring. ``stop``:
    polled while ``start`` and ``wait_first_state`` wait; when it returns True they give up (``start``
    stops the child and raises ``InterruptedError``)."""

    def __init__(self, arm_factory: Callable, kin_factory: Callable, limits: SafetyLimits, cfg: LoopConfig,
                 *, dry_run: bool = False, max_horizon: int = MAX_HORIZON, start_timeout_s: float = 60.0,
                 profile: bool = False, stop: Callable[[], bool] | None = None) -> None:
        self.stop = stop or (lambda: False)
        self.arm_factory, self.kin_factory = arm_factory, kin_factory
        self.profile = bool(profile)
        self.limits, self.cfg, self.dry_run = limits, cfg, dry_run
        self.hmax = int(max_horizon)
        self.start_timeout_s = start_timeout_s
        self.result: LoopResult | None = None
        self._shm: _Shm | None = None
        self._proc = None
        self._conn = None
        self._seq = 0
        self._first_state = None
        self._last_state: ArmState | None = None  # the last consistent read of the state slot

    def start(self) -> "LoopProcess":
        ctx = mp.get_context("spawn")
        self._shm = _Shm(self.limits.n_joints, self.hmax)
        parent, child = ctx.Pipe()
        self._conn = parent
        self._first_state = ctx.Event()
        self._proc = ctx.Process(target=_child, name="control-loop", daemon=True,
                                 args=(self._shm.names, self.limits.n_joints, self.hmax, self.arm_factory,
                                       self.kin_factory, self.limits, self.cfg, self.dry_run, self.profile, child,
                                       self._first_state, os.getpid()))
        self._proc.start()
        t_end = time.monotonic() + self.start_timeout_s
        while not parent.poll(0.05):
            if self.stop():  # the child is still opening its arm (nothing commanded): end it now
                self._proc.terminate()
                self._proc.join(2.0)
                if self._proc.is_alive():
                    self._proc.kill()
                self.close()
                raise InterruptedError("control-loop process: start abandoned, a stop was requested")
            if not self._proc.is_alive() or time.monotonic() > t_end:
                code = self._proc.exitcode
                self.close()
                raise RuntimeError(f"control-loop process did not start (exit code {code}, limit "
                                   f"{self.start_timeout_s} s); the arm/kinematics factories must be importable "
                                   f"module-level callables and the main module guarded by __name__ == '__main__'")
        kind, payload = parent.recv()
        if kind != "ready":
            self.result = payload
            self.close()
            raise LoopStartError(f"control-loop process failed to start: {payload.reason if payload else kind}")
        return self

    def put(self, chunk: ActionChunk, observed_ns: int = 0) -> None:
        """Queue a chunk for the loop; ``observed_ns``: the stamp of the observation it was computed from
        (camera frame or arm state), for the loop's end-to-end latency when profiling."""
        n = len(chunk)
        if n > self.hmax:
            raise ValueError(f"LoopProcess.put: chunk has {n} steps, the shared ring holds at most {self.hmax}; "
                             f"raise max_horizon")
        shm = self._shm
        if shm is None:
            raise RuntimeError("LoopProcess.put: the control loop is not running (never started, or closed); "
                               "stop the producer before closing the loop")
        wc = int(shm.ctrl["write_count"][0])
        slot = shm.chunks[wc % SLOTS]
        slot["seq"] = -1
        slot["poses"][:n] = chunk.poses
        slot["n"], slot["start_ns"], slot["dt"], slot["inference_ms"] = n, chunk.start_ns, chunk.dt, chunk.inference_ms
        slot["observed_ns"] = int(observed_ns)
        slot["seq"] = wc + 1
        shm.ctrl["write_count"][0] = wc + 1

    def wait_first_state(self, timeout_s: float) -> bool:
        """Block until the loop has published its first arm state (True), or ``timeout_s`` passed or a
        stop was requested (False)."""
        if self._first_state is None:
            return False
        t_end = time.monotonic() + timeout_s
        while not self._first_state.wait(min(0.05, max(0.0, t_end - time.monotonic()))):
            if self.stop() or time.monotonic() >= t_end:
                return False
        return True

    def latest_state(self) -> ArmState | None:
        """The newest consistent arm state; None only before the loop published its first one.

        A writer preempted mid-write (the slot's sequence number odd or changed under the read) is
        retried, yielding the CPU, for up to 5 ms; past that the previous consistent state is returned,
        never a torn one and never None once a state was seen."""
        rec = self._shm.state
        t_end = None
        while True:
            s0 = int(rec["seq"][0])
            if s0 == 0:
                return None
            if not s0 % 2:
                vals = (rec["joints"][0].copy(), rec["position"][0].copy(), rec["quat"][0].copy(),
                        float(rec["gripper"][0]), int(rec["stamp_ns"][0]))
                if int(rec["seq"][0]) == s0:
                    j, p, q, g, t = vals
                    self._last_state = ArmState(j, Pose(p, q), g, stamp_ns=t)
                    return self._last_state
            now = time.monotonic()
            t_end = now + 0.005 if t_end is None else t_end
            if now >= t_end:
                return self._last_state
            os.sched_yield()

    def request_stop(self, reason: str) -> None:
        if self._shm is not None:
            self._shm.ctrl["reason"][0] = reason.encode()[:200]
            self._shm.ctrl["stop"][0] = 1

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def join(self, timeout: float | None = None) -> LoopResult | None:
        """Wait up to ``timeout`` s (None: for ever) for the loop's result; None while it still runs."""
        t_end = None if timeout is None else time.monotonic() + timeout
        if self._conn is not None and self.result is None and self._conn.poll(timeout):
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError):  # the child died without reporting (killed, crashed interpreter)
                self._proc.join(1.0)
                kind, payload = "result", LoopResult(
                    reason=f"control-loop process died (exit code {self._proc.exitcode}) without reporting",
                    cycles=0, sent=0, rejections={}, holds=0, fault=True)
            if kind == "result":
                self.result = payload
        if self._proc is not None:
            if self.result is not None:  # it has reported and is exiting
                self._proc.join(5.0)
            else:
                self._proc.join(None if t_end is None else max(0.0, t_end - time.monotonic()))
        return self.result

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self.request_stop("closing")
            self.join(10.0)
            if self._proc.is_alive():
                log.error("control-loop process did not stop within 10 s; terminating it")
                self._proc.terminate()
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    def __enter__(self) -> "LoopProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
