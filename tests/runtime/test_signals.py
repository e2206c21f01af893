"""SIGINT / SIGTERM end an ``edge-run`` run, whatever it waits on: the arm is braked and held, no further
episode starts, the exit code is 128 + the signal, and the process is gone well within a second or two.

Subprocess runs of ``edge-run`` in the simulator (oracle planner, IK expert) and one against a planner
server that accepts a connection and never answers. The figures the tests measure (signal to exit) are
printed with ``-s``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from edgebridge.runtime.config import CONFIG_DIR
from edgebridge.runtime.watchdog import SignalGuard, StopRequest, Watchdog

EDGE_RUN = [sys.executable, "-m", "edgebridge.runtime.cli"]
EXIT_LIMIT_S = 2.0  # the target is well under 1 s; the margin is for a loaded test machine


def _run_and_signal(args: list[str], sig: int, after_line: str, delay_s: float) -> tuple[int, float, str]:
    """Start edge-run in its own process group, send ``sig`` ``delay_s`` after a line containing
    ``after_line``; returns (exit code, seconds from the signal to the exit, everything it printed). Checks
    that nothing it started outlives it (its process group is empty)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([*EDGE_RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    out = []
    try:
        for line in p.stdout:
            out.append(line)
            if after_line in line:
                break
        else:
            pytest.fail(f"edge-run ended before printing {after_line!r}:\n{''.join(out)}")
        time.sleep(delay_s)
        t0 = time.monotonic()
        p.send_signal(sig)
        rest, _ = p.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        with pytest.raises(ProcessLookupError):  # no child process or anything else of its group is left
            os.killpg(p.pid, 0)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    text = "".join(out) + rest
    print(f"{signal.Signals(sig).name} -> exit {p.returncode} in {elapsed:.3f} s")
    return p.returncode, elapsed, text


@pytest.mark.parametrize("sig, mode", [(signal.SIGINT, "lock-step"), (signal.SIGTERM, "realtime")])
def test_a_signal_in_episode_one_ends_the_run(sig, mode):
    args = ["--planner", "oracle", "--expert", "ik", "--episodes", "3"] + (["--realtime"] if mode == "realtime" else [])
    code, elapsed, text = _run_and_signal(args, sig, "episode 1/3", 0.6)
    name = signal.Signals(sig).name
    assert code == 128 + sig, text
    assert "episode 2/3" not in text and "result 2/3" not in text, text  # nothing after the first episode
    assert "result 1/3: FAILED" in text and f"{name} received" in text, text
    assert f"stopped by {name}" in text and "Traceback" not in text, text
    assert elapsed < EXIT_LIMIT_S, f"{name}: {elapsed:.2f} s from the signal to the exit"


class _SilentServer:
    """A TCP server that accepts connections and never answers (a planner server that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or answered

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.sock.close()


def test_sigint_while_lockstep_planning_waits_on_a_planner_that_never_answers(tmp_path):
    server = _SilentServer()
    try:
        text = (CONFIG_DIR / "sim_panda.toml").read_text()
        assert "\n[expert]" in text
        setup = tmp_path / "sim_remote.toml"
        setup.write_text(text.replace("\n[expert]", f'\n[planner.options]\nbase_url = "http://127.0.0.1:{server.port}/v1"'
                                                    f'\ntimeout_s = 60.0\ntext_only = true\n\n[expert]', 1))
        code, elapsed, out = _run_and_signal(["--config", str(setup), "--planner", "remote", "--expert", "ik"],
                                             signal.SIGINT, "episode 1/1", 1.0)
        assert server.accepted, "the planner request never reached the server"
    finally:
        server.close()
    assert code == 130, out
    assert "SIGINT" in out and "Traceback" not in out, out
    assert elapsed < EXIT_LIMIT_S, f"{elapsed:.2f} s from SIGINT to the exit while planning waited"


def test_stop_request_exit_codes_and_the_guard_outside_an_episode():
    req = StopRequest()
    assert not req() and req.exit_code is None
    req.set("SIGTERM received", signal.SIGTERM)
    req.set("SIGINT received", signal.SIGINT)  # the first reason wins
    assert req() and req.reason == "SIGTERM received" and req.exit_code == 143
    wd = Watchdog(0.5, stop=req)
    assert wd.stop_requested() and wd.check(0)[1] == "SIGTERM received"
    # inside interrupting() (devices opening, nothing moves) a signal raises at once
    fresh = StopRequest()
    with SignalGuard(fresh) as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.interrupting():
                threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
                time.sleep(5)
    assert fresh.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is not guard._handle
