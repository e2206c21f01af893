"""A simulated FR3 + Franka Hand speaking libfranka's protocol (franky-sim, MuJoCo) in a child process.

For the Franka driver tests and ``benchmarks/arm_tracking.py``. The child runs::

    python tests/drivers/franka_sim_server.py --host 127.0.0.1

prints ``READY <host>`` once its ports are bound, and on SIGTERM stops, then prints ``STATS {json}``
(1 ms ticks run, wall seconds, real-time factor, ticks run more than 1 ms late).

Two patches, in the child only:

* the UDP state socket binds the server's own loopback address (stock franky-sim binds 0.0.0.0);
* the 1 kHz loop waits for absolute 1 ms deadlines on ``time.monotonic`` (stock: a relative sleep after
  each tick, which falls behind real time when the CPU is shared) and catches up at most 20 ms.

The parent side is :class:`SimServer`: it picks a loopback address whose ports 1337 (robot) and 1338
(gripper) are free (127.0.0.1 first), starts the child in its own process group, and on ``stop()`` or
``kill()`` ends the whole group and waits until both ports are free again.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PORTS = (1337, 1338)  # libfranka: robot commands, gripper commands (fixed by the protocol)
TICK_S = 0.001
MAX_CATCH_UP_S = 0.02


# --------------------------------------------------------------------------- parent side


def ports_free(host: str) -> bool:
    """True when TCP 1337 and 1338 can be bound on ``host`` (as the server binds them: SO_REUSEADDR)."""
    for port in PORTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_loopback(candidates=tuple(f"127.0.0.{i}" for i in range(1, 10))) -> str | None:
    """The first loopback address whose libfranka ports are free, or None."""
    return next((h for h in candidates if ports_free(h)), None)


class SimServer:
    """The franky-sim server as a child process (see module docstring). A context manager."""

    def __init__(self, host: str | None = None, start_timeout_s: float = 30.0) -> None:
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.stats: dict | None = None

    def start(self) -> "SimServer":
        host = self.host or free_loopback()
        if host is None or not ports_free(host):
            raise RuntimeError(f"franky-sim: TCP ports {PORTS} are taken on {self.host or '127.0.0.1-9'}; "
                               f"stop the other libfranka server (ss -ltnp | grep 133)")
        self.host = host
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--host", host],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        line = ""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    return self
            if self.proc.poll() is not None:
                break
        err = self._end(signal.SIGKILL)
        raise RuntimeError(f"franky-sim server on {host} did not start within {self.start_timeout_s} s "
                           f"(last output {line.strip()!r}, stderr tail {err[-400:]!r})")

    def _end(self, sig: int) -> str:
        """Signal the whole process group, wait for it, then for the ports; returns stderr."""
        proc, err = self.proc, ""
        if proc is None:
            return err
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=5.0)
        for line in (out or "").splitlines():
            if line.startswith("STATS "):
                self.stats = json.loads(line[6:])
        self.proc = None
        deadline = time.monotonic() + 10.0
        while not ports_free(self.host) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ports_free(self.host):
            raise RuntimeError(f"franky-sim: ports {PORTS} on {self.host} still taken 10 s after the server ended")
        return err or ""

    def stop(self) -> dict | None:
        """End the server cleanly (SIGTERM; SIGKILL after 5 s); returns its STATS."""
        self._end(signal.SIGTERM)
        return self.stats

    def kill(self) -> None:
        """End the server at once (SIGKILL): a controller that dies mid-motion."""
        self._end(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.stop()


# --------------------------------------------------------------------------- child side


def _patch_udp_bind() -> None:
    """Bind the UDP state socket to the server's own address, not 0.0.0.0."""
    from franky_sim import franka_server as fs

    def _setup_udp_connection(self, network_udp_port: int) -> None:
        self._FrankaServer__client_udp_port = network_udp_port
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.hostname, 0))
        sock.setblocking(False)
        self._FrankaServer__udp_socket = sock
        self._FrankaServer__udp_receiver = fs.NonBlockingReceiver(sock)
        self._FrankaServer__message_id = 0

    fs.FrankaServer._setup_udp_connection = _setup_udp_connection


def serve(host: str) -> dict:
    import logging

    logging.basicConfig(level=logging.WARNING)
    _patch_udp_bind()
    from franky_sim import SimulationServer
    from franky_sim.mujoco_simulator import MujocoSimulator

    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    signal.signal(signal.SIGINT, lambda *_: running.__setitem__(0, False))
    ticks = late = 0
    with MujocoSimulator() as sim:
        sim.add_robot()
        with SimulationServer(sim, hostname_candidates=[host]) as server:
            print(f"READY {host}", flush=True)
            t0 = t_next = time.monotonic()
            while running[0]:
                server.run_once(realtime=False)
                ticks += 1
                t_next += TICK_S
                now = time.monotonic()
                if now > t_next + TICK_S:
                    late += 1
                if now - t_next > MAX_CATCH_UP_S:
                    t_next = now - MAX_CATCH_UP_S
                elif t_next > now:
                    time.sleep(t_next - now)
            wall = time.monotonic() - t0
    return {"ticks": ticks, "wall_s": wall, "realtime_factor": ticks * TICK_S / wall if wall > 0 else 0.0,
            "late_ticks": late}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind (ports 1337, 1338)")
    args = ap.parse_args(argv)
    stats = serve(args.host)
    print("STATS " + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
