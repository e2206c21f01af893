"""Deadline-bound calls for the Franka driver: :class:`_Caller` runs blocking franky calls on one worker
thread, each waited for with a deadline (:class:`CallTimeout`), and :func:`cut_connections` shuts down this
process's sockets to the controller so that a blocked libfranka call returns."""

from __future__ import annotations

import os
import queue
import socket
import threading
from typing import Any, Callable

ROBOT_PORT, GRIPPER_PORT = 1337, 1338  # libfranka's fixed TCP ports (robot, hand); UDP ports are ephemeral


class CallTimeout(Exception):
    """A franky call did not return before its deadline."""


class _Caller:
    """Runs blocking calls on one daemon thread, one at a time, each waited for with a deadline. A call
    that overruns leaves the thread ``stuck``; the owner must cut the connection and make a new caller."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.stuck: str | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done, box = job
            try:
                box.append((True, fn()))
            except BaseException as e:  # handed to the caller
                box.append((False, e))
            done.set()

    def call(self, fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
        if self.stuck is not None:
            raise CallTimeout(f"{what}: an earlier call ({self.stuck}) never returned")
        if not self._lock.acquire(timeout=timeout_s):
            raise CallTimeout(f"{what}: waited {timeout_s:.2f} s for another call to return")
        try:
            done, box = threading.Event(), []
            self._jobs.put((fn, done, box))
            if not done.wait(timeout_s):
                self.stuck = what
                raise CallTimeout(f"{what}: no answer within {timeout_s:.2f} s")
            ok, value = box[0]
            if ok:
                return value
            raise value
        finally:
            self._lock.release()

    def close(self) -> None:
        self._jobs.put(None)


def cut_connections(host: str, ports: tuple[int, ...] = (ROBOT_PORT, GRIPPER_PORT)) -> int:
    """Shut down every TCP socket of this process connected to ``host`` on ``ports`` (Linux: /proc), so
    a libfranka call blocked on it returns. Returns how many were cut."""
    try:
        ip = socket.gethostbyname(host)
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    peers, n = {(ip, p) for p in ports}, 0
    for name in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername()[:2] in peers:
                s.shutdown(socket.SHUT_RDWR)
                n += 1
        except OSError:
            pass
        finally:
            s.close()
    return n
