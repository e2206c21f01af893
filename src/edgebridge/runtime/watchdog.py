"""Watchdog: turns missing inputs and faults into hold or stop decisions for the control loop.

- No fresh chunk within ``chunk_timeout_s`` -> ``HOLD`` (the loop decelerates and holds; a fresh chunk
  resumes it).
- The newest camera frame older than ``camera_timeout_s`` (its own capture stamp, not the time it was
  read; a frame that repeats the previous one's stamp or sequence number is not new) -> ``STOP``: the
  loop brakes and holds. The reason says whether frames stopped coming (``camera lost``) or kept
  coming but old or repeated (``camera frame stale``).
- A fault reported by any stage (camera lost, expert failed repeatedly, driver fault) or a stop request
  (SIGINT/SIGTERM through :class:`SignalGuard` into a :class:`StopRequest`, or ``request_stop``) ->
  ``STOP`` with the reason: the loop brings the arm to a controlled stop, leaves it holding and exits.

Thread-safe: other threads call ``report_fault`` / ``request_stop`` / ``feed_camera``; only the loop calls
``check``. A signal handler only sets plain attributes of a :class:`StopRequest` (no locks), which the
watchdog and every wait of the run poll.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from enum import Enum
from typing import Iterator

log = logging.getLogger(__name__)


class Health(Enum):
    OK = "ok"
    HOLD = "hold"
    STOP = "stop"


class StopRequest:
    """A run-wide request to stop, set once (the first reason wins) by SIGINT/SIGTERM through
    :class:`SignalGuard` or by a caller, read from any thread. Calling it returns whether it is set, so
    it can be handed to anything that polls a ``stop: Callable[[], bool]``. Lock-free: a signal handler
    sets it. ``exit_code``: 128 + the signal number (130 SIGINT, 143 SIGTERM), None without a signal."""

    def __init__(self) -> None:
        self._set = False
        self.reason: str | None = None
        self.signum: int | None = None

    def set(self, reason: str, signum: int | None = None) -> None:
        if self._set:
            return
        self.reason, self.signum = reason, signum
        self._set = True

    def is_set(self) -> bool:
        return self._set

    __call__ = is_set

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + int(self.signum)


class Watchdog:
    """``chunk_timeout_s``: max age of the last chunk before HOLD. ``camera_timeout_s``: max age of the
    newest camera frame before STOP (None = camera not supervised). ``stop``: the run's
    :class:`StopRequest` (signals), read by ``check`` and ``stop_requested``; default: one of its own.
    Before the first chunk the loop is in HOLD (nothing to follow yet) but that is not a fault."""

    def __init__(self, chunk_timeout_s: float, camera_timeout_s: float | None = None,
                 stop: StopRequest | None = None) -> None:
        if chunk_timeout_s <= 0:
            raise ValueError(f"Watchdog.chunk_timeout_s: must be > 0, got {chunk_timeout_s}")
        self.chunk_timeout_ns = int(chunk_timeout_s * 1e9)
        self.camera_timeout_ns = None if camera_timeout_s is None else int(camera_timeout_s * 1e9)
        self.signals = stop if stop is not None else StopRequest()
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._last_chunk_ns: int | None = None
        self._last_camera_ns: int | None = None  # capture stamp of the newest new frame
        self._last_read_ns: int | None = None    # when a read last succeeded (any frame)
        self._last_seq: int | None = None
        self.repeats = 0  # reads in a row that returned no new frame
        self.holds = 0  # transitions into HOLD because of a stale chunk stream
        self._stale = False
        self._warned_clock = False

    # ---------------------------------------------------------------- fed by other stages
    def request_stop(self, reason: str) -> None:
        """Ask for a controlled stop; the first reason wins."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
                log.info("stop requested: %s", reason)

    def report_fault(self, source: str, message: str) -> None:
        self.request_stop(f"{source} fault: {message}")

    def feed_camera(self, stamp_ns: int, seq: int | None = None, read_ns: int | None = None) -> None:
        """A frame was read: its capture ``stamp_ns`` (the loop's clock), its sequence number ``seq``
        (None: the camera has none) and when it was read (``read_ns``; default ``stamp_ns``). A frame
        whose stamp is not newer than the newest one's, or that repeats its sequence number, is not new:
        the camera's age keeps growing."""
        stamp = int(stamp_ns)
        self._last_read_ns = stamp if read_ns is None else int(read_ns)
        if read_ns is not None and stamp - int(read_ns) > 1_000_000_000 and not self._warned_clock:
            self._warned_clock = True
            log.warning("camera frame stamped %.1f s after it was read: the camera's stamps are not on the "
                        "loop's clock (time.monotonic_ns), so stale frames cannot be told", (stamp - read_ns) / 1e9)
        last = self._last_camera_ns
        repeated = (seq is not None and seq == self._last_seq) or (last is not None and stamp <= last)
        self._last_seq = seq if seq is not None else self._last_seq
        if repeated:
            self.repeats += 1
            return
        self.repeats = 0
        self._last_camera_ns = stamp

    def feed_chunk(self, now_ns: int) -> None:
        self._last_chunk_ns = int(now_ns)

    @property
    def stop_reason(self) -> str | None:
        if self._stop_reason is None and self.signals.is_set():
            self.request_stop(self.signals.reason or "stop requested")
        return self._stop_reason

    def stop_requested(self) -> bool:
        """A stop was requested (a signal, a fault, a caller): for waits that poll (planning, start-up)."""
        return self.stop_reason is not None

    # ---------------------------------------------------------------- read by the loop
    def check(self, now_ns: int) -> tuple[Health, str]:
        reason = self.stop_reason
        if reason is not None:
            return Health.STOP, reason
        cam = self._last_camera_ns
        if self.camera_timeout_ns is not None and cam is not None and now_ns - cam > self.camera_timeout_ns:
            self.request_stop(self._camera_reason(now_ns, cam))
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

    def _camera_reason(self, now_ns: int, cam_ns: int) -> str:
        age, limit = (now_ns - cam_ns) / 1e9, self.camera_timeout_ns / 1e9
        read = self._last_read_ns
        if self.repeats or (read is not None and read - cam_ns > self.camera_timeout_ns):  # reads, no new frame
            seq = "" if self._last_seq is None else f", frame number {self._last_seq}"
            return (f"camera frame stale: the newest frame was captured {age:.2f} s ago (limit {limit:.2f} s; "
                    f"{self.repeats} read(s) returned no new frame{seq}); the camera is frozen or its driver "
                    f"returns old frames")
        return f"camera lost: no frame for {age:.2f} s (limit {limit:.2f} s)"


class SignalGuard:
    """Context manager: SIGINT/SIGTERM set a :class:`StopRequest` (a watchdog's ``signals``, or the one
    given) instead of raising ``KeyboardInterrupt`` mid-command; everything that runs the episode polls
    it. Inside ``interrupting()`` a signal also raises ``KeyboardInterrupt`` at once (for phases where
    no arm moves, e.g. opening devices, so a long load or connect ends now). A second SIGINT while
    stopping raises ``KeyboardInterrupt`` as usual, so a wedged stop can still be interrupted. Handlers
    are only installed from the main thread (Python's rule); elsewhere it does nothing. Previous handlers
    are restored on exit."""

    def __init__(self, target: "Watchdog | StopRequest") -> None:
        self.request = target.signals if isinstance(target, Watchdog) else target
        self._previous: dict[int, object] = {}
        self._interrupt = False

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        name = signal.Signals(signum).name
        if self.request.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request.set(f"{name} received", signum)
        if self._interrupt:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Within this block a signal raises ``KeyboardInterrupt`` in the main thread (after setting the
        request); also raises at once if a stop was already requested."""
        if self.request.is_set():
            raise KeyboardInterrupt
        was, self._interrupt = self._interrupt, True
        try:
            yield
        finally:
            self._interrupt = was

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
