"""Watchdog: turns missing inputs and faults into hold or stop decisions for the control loop.

- No fresh chunk within ``chunk_timeout_s`` -> ``HOLD`` (the loop decelerates and holds; a fresh chunk
  resumes it).
- A fault reported by any stage (camera lost, expert failed repeatedly, driver fault) or a stop request
  (SIGINT/SIGTERM through :class:`SignalGuard`, or ``request_stop``) -> ``STOP`` with the reason: the loop
  brings the arm to a controlled stop, leaves it holding and exits.

Thread-safe: other threads call ``report_fault`` / ``request_stop`` / ``feed_camera``; only the loop calls
``check``.
"""

from __future__ import annotations

import logging
import signal
import threading
from enum import Enum

log = logging.getLogger(__name__)


class Health(Enum):
    OK = "ok"
    HOLD = "hold"
    STOP = "stop"


class Watchdog:
    """``chunk_timeout_ns``: max age of the last chunk before HOLD. ``camera_timeout_ns``: max age of the
    last camera heartbeat before STOP (None = camera not supervised). Before the first chunk the loop
    is in HOLD (nothing to follow yet) but that is not a fault."""

    def __init__(self, chunk_timeout_s: float, camera_timeout_s: float | None = None) -> None:
        if chunk_timeout_s <= 0:
            raise ValueError(f"Watchdog.chunk_timeout_s: must be > 0, got {chunk_timeout_s}")
        self.chunk_timeout_ns = int(chunk_timeout_s * 1e9)
        self.camera_timeout_ns = None if camera_timeout_s is None else int(camera_timeout_s * 1e9)
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._last_chunk_ns: int | None = None
        self._last_camera_ns: int | None = None
        self.holds = 0  # transitions into HOLD because of a stale chunk stream
        self._stale = False

    # ---------------------------------------------------------------- fed by other stages
    def request_stop(self, reason: str) -> None:
        """Ask for a controlled stop; the first reason wins."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
                log.info("stop requested: %s", reason)

    def report_fault(self, source: str, message: str) -> None:
        self.request_stop(f"{source} fault: {message}")

    def feed_camera(self, now_ns: int) -> None:
        self._last_camera_ns = int(now_ns)

    def feed_chunk(self, now_ns: int) -> None:
        self._last_chunk_ns = int(now_ns)

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    # ---------------------------------------------------------------- read by the loop
    def check(self, now_ns: int) -> tuple[Health, str]:
        reason = self._stop_reason
        if reason is not None:
            return Health.STOP, reason
        cam = self._last_camera_ns
        if self.camera_timeout_ns is not None and cam is not None and now_ns - cam > self.camera_timeout_ns:
            age = (now_ns - cam) / 1e9
            self.request_stop(f"camera lost: no frame for {age:.2f} s (limit {self.camera_timeout_ns / 1e9:.2f} s)")
            return Health.STOP, self._stop_reason or "camera lost"
        last = self._last_chunk_ns
        if last is None:
            return Health.HOLD, "waiting for the first action chunk"
        if now_ns - last > self.chunk_timeout_ns:
            if not self._stale:
                self._stale = True
                self.holds += 1
                log.warning("no fresh action chunk for %.2f s: decelerating and holding", (now_ns - last) / 1e9)
            return Health.HOLD, f"no fresh chunk for {(now_ns - last) / 1e9:.2f} s"
        self._stale = False
        return Health.OK, ""


class SignalGuard:
    """Context manager: SIGINT/SIGTERM request a controlled stop from the watchdog instead of raising
    ``KeyboardInterrupt`` mid-command. Handlers are only installed from the main thread (Python's rule);
    elsewhere it does nothing. Previous handlers are restored on exit. A second SIGINT while stopping
    raises ``KeyboardInterrupt`` as usual, so a wedged stop can still be interrupted."""

    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        name = signal.Signals(signum).name
        if self.watchdog.stop_reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.watchdog.request_stop(f"{name} received")

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
