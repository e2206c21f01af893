"""The pipeline's expert side: :class:`_ExpertWorker` runs one expert step (latest state, frame -> cloud,
act on the current guidance, check, chunk queue) per call or periodically on its own thread;
:class:`_LoopProxy` stands in for a control loop that runs in its own process; :func:`_join_worker`
waits for the worker once the loop stopped."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from ..contracts import ActionChunk, ArmState
from ..errors import EdgebridgeError
from .loop import ControlLoop
from .plan_session import PlanSession
from .profiling import Profiler, timer
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .pipeline import Pipeline

log = logging.getLogger(__name__)


def _join_worker(t: threading.Thread, watchdog: Watchdog) -> None:
    """Wait for the expert worker after the loop stopped: up to 5 s, or 0.5 s on a signal (the worker is
    a daemon thread; a stalled expert call must not keep a stopped run alive)."""
    t.join(0.5 if watchdog.signals.is_set() else 5.0)
    if t.is_alive():
        log.warning("expert worker still busy after the loop stopped (a stalled expert call)")

class _LoopProxy:
    """What the expert worker needs from a loop (latest state, chunk inbox), for a loop in its own process."""

    def __init__(self, lp, profiler: Profiler | None = None) -> None:
        self.states = self
        self.inbox = self
        self._lp = lp
        self._profiler = profiler

    def latest(self) -> ArmState | None:
        return self._lp.latest_state()

    def put(self, chunk: ActionChunk) -> None:
        # the loop process measures end-to-end itself: hand it the observation stamp with the chunk
        observed = self._profiler.take_observed(chunk) if self._profiler is not None else 0
        self._lp.put(chunk, observed_ns=observed)


class _ExpertWorker:
    """One expert step: latest state (+ frame -> cloud) -> act on the session's current guidance ->
    check -> chunk queue."""

    def __init__(self, pipe: Pipeline, loop: ControlLoop, watchdog: Watchdog, session: PlanSession) -> None:
        self.pipe, self.loop, self.watchdog, self.session = pipe, loop, watchdog, session
        self.failures = 0
        self.camera_failures = 0
        self.steps = 0

    def step(self) -> None:
        pipe = self.pipe
        state = self.loop.states.latest()
        if state is None:
            return
        frame = None
        realtime = pipe.dev.clock.realtime
        observed_ns = state.stamp_ns if realtime else time.monotonic_ns()  # end-to-end runs on the wall clock
        if pipe.needs_cloud or pipe.obs:  # observers (--record, --rerun) see what the camera saw, for any expert
            if not realtime:
                observed_ns = time.monotonic_ns()
            try:
                frame = pipe.capture(self.watchdog)
            except Exception as e:  # the watchdog stops the episode once frames are missing for too long
                self.camera_failures += 1
                if self.camera_failures == 1:
                    log.warning("camera read failed: %s: %s (the loop holds if this continues)", type(e).__name__, e)
                if pipe.needs_cloud:
                    return
            else:
                self.camera_failures = 0
                if realtime and pipe.needs_cloud:
                    observed_ns = frame.stamp_ns
        guidance = self.session.guidance  # swapped by the planning side at sub-task boundaries
        if guidance is None:  # no plan yet: nothing to follow (frames above still feed the camera watchdog)
            return
        try:
            cloud = None
            if frame is not None and pipe.needs_cloud:
                box_fn = getattr(pipe.dev.expert, "cloud_box", None)
                cloud = pipe.cloud(frame, box_fn(state, guidance, pipe.workspace_bounds) if box_fn else None)
                if cloud.n_valid == 0:
                    raise EdgebridgeError("the workspace crop of the camera frame is empty (camera blocked or moved?)")
            with timer(pipe.profiler, "expert"):
                chunk = pipe.dev.expert.act(cloud, state, guidance)
            if not isinstance(chunk, ActionChunk):
                raise EdgebridgeError(f"expert returned {type(chunk).__name__}, not an ActionChunk")
            if not np.all(np.isfinite(chunk.poses)):
                raise EdgebridgeError("expert chunk holds non-finite values")
        except Exception as e:  # an expert failure is counted, never raised into the loop
            self.failures += 1
            log.warning("expert step failed (%d in a row): %s: %s", self.failures, type(e).__name__, e)
            if self.failures >= pipe.max_expert_failures:
                self.watchdog.report_fault("expert", f"{self.failures} consecutive failures, last: "
                                                     f"{type(e).__name__}: {e}")
            return
        self.failures = 0
        self.steps += 1
        if pipe.profiler is not None:
            pipe.profiler.chunk_observed(chunk, observed_ns)
        self.loop.inbox.put(chunk)
        if frame is not None:
            pipe.obs.on_frame(frame, cloud)
        pipe.obs.on_state(state)
        pipe.obs.on_chunk(chunk, guidance, state)

    def run_periodic(self, period_s: float, stop: threading.Event) -> None:
        t_next = time.monotonic()
        while not stop.is_set():
            self.step()
            t_next += period_s
            delay = t_next - time.monotonic()
            if delay < 0:  # the expert is slower than its period: run back to back, do not pile up
                t_next = time.monotonic()
                delay = 0.0
            stop.wait(delay)
