"""``edge-run``: whatever building the devices raises is one line on stderr (no traceback) and a
documented exit code (2 configuration, 3 device); --port / --host reach the arm's options; the doctor
sub-command is dispatched; a signal while the devices open ends the run at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import types

import pytest

from edgebridge.config import ConfigError
from edgebridge.errors import DeviceFaultError, MissingExtraError, PlanError
from edgebridge.runtime import cli
from edgebridge.runtime import devices as devmod

ORACLE = ["--planner", "oracle", "--expert", "ik"]


@pytest.mark.parametrize("exc, code", [
    (ConfigError("arm.options.port: expected a serial device path, got ''"), 2),
    (ValueError("bad depth scale"), 2),
    (RuntimeError("onnxruntime: cannot load model"), 2),
    (PlanError("model.gguf: not a GGUF file"), 2),
    (MissingExtraError("the RealSense camera needs pyrealsense2; pip install 'edgebridge[realsense]'"), 2),
    (OSError(16, "Device or resource busy", "/dev/ttyACM0"), 3),
    (TimeoutError("no answer from servo 1 within 20 ms"), 3),
    (DeviceFaultError("RealSense camera: no RealSense camera is attached; plug it into a USB-3 port"), 3),
])
def test_any_build_failure_is_one_line_and_an_exit_code(monkeypatch, capsys, exc, code):
    def fail(cfg, choices):
        raise exc

    monkeypatch.setattr(devmod, "build_devices", fail)
    assert cli.main(ORACLE) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("edge-run: ") and "Traceback" not in err, err
    assert str(exc).split(";")[0].strip("'") in err or str(exc.args[-1]) in err, err
    if not isinstance(exc, (ConfigError, DeviceFaultError, PlanError, MissingExtraError)):
        assert type(exc).__name__ in err  # a bare exception says what it was


def test_exit_codes_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert f"  {code}" in out, code
    assert not [d for d in devmod.ARM_DRIVERS if "ethernet" in d] and "franka" in devmod.ARM_DRIVERS


def test_port_and_host_reach_the_arm_options(monkeypatch, capsys):
    seen = []

    def capture(cfg, choices):
        seen.append(dict(cfg.arm.options))
        raise DeviceFaultError("stop here")

    monkeypatch.setattr(devmod, "build_devices", capture)
    assert cli.main(["--config", "so101_serial", "--planner", "remote", "--port", "/dev/ttyUSB3"]) == 3
    assert seen[-1]["port"] == "/dev/ttyUSB3" and seen[-1]["timeout_s"] == 0.02  # the rest of the options kept
    assert cli.main(["--config", "so101_serial", "--planner", "remote", "--host", "172.16.0.2"]) == 3
    assert seen[-1]["host"] == "172.16.0.2"
    capsys.readouterr()
    assert cli.main(["--port", "/dev/ttyUSB0", *ORACLE]) == 2  # the simulated arm has no address
    assert "simulates its arm" in capsys.readouterr().err


def test_doctor_is_dispatched(monkeypatch, capsys):
    import edgebridge.runtime as runtime

    calls = []
    fake = types.ModuleType("edgebridge.runtime.doctor")
    fake.main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "edgebridge.runtime.doctor", fake)
    monkeypatch.setattr(runtime, "doctor", fake, raising=False)
    assert cli.main(["doctor", "--quick"]) == 7 and calls == [["--quick"]]
    monkeypatch.setitem(sys.modules, "edgebridge.runtime.doctor", None)  # a build without it
    monkeypatch.delattr(runtime, "doctor")
    assert cli.main(["doctor"]) == 2
    assert capsys.readouterr().err.strip() == "edge-run: edge-run doctor is not available in this build"


def test_a_signal_while_the_devices_open_ends_the_run_at_once(monkeypatch, capsys):
    closed = []

    def slow_open(cfg, choices):
        try:
            time.sleep(20)  # a device that takes long to answer
        finally:
            closed.append(True)

    monkeypatch.setattr(devmod, "build_devices", slow_open)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.monotonic()
    try:
        code = cli.main(ORACLE)
    finally:
        timer.cancel()
    assert code == 143 and time.monotonic() - t0 < 2.0 and closed
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored
