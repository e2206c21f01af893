"""``edge-run doctor`` and the Jetson power/release readers (runtime.power): on this machine, and on a fake
Jetson file tree (release file, nvpmodel status, cpufreq and devfreq nodes, serial devices)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edgebridge.runtime import doctor
from edgebridge.runtime.doctor import FAIL, PASS, WARN, Host, bundle_files, sha256_file
from edgebridge.runtime.power import describe_power, jetson_release, read_power_mode

R36_4 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"


def fake_jetson(root: Path, *, release: str = R36_4, mode: tuple[int, str] = (0, "MAXN"), pinned: bool = True) -> Path:
    """The files the readers look at, as an AGX Orin with JetPack 6.1 shows them."""
    def put(rel: str, text: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    put("etc/nv_tegra_release", release)
    put("proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    put("proc/meminfo", "MemTotal:       65881892 kB\nMemFree:         1000000 kB\nMemAvailable:   50000000 kB\n")
    put("var/lib/nvpmodel/status", f"pmode:{mode[0]:04d} fmode:fanNull\n")
    put("etc/nvpmodel.conf", "< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=2 NAME=30W >\n")
    put("sys/devices/system/cpu/online", "0-11\n")
    for i in range(2):
        f = f"sys/devices/system/cpu/cpu{i}/cpufreq/"
        put(f + "scaling_cur_freq", "2201600\n")
        put(f + "scaling_min_freq", "2201600\n" if pinned else "729600\n")
        put(f + "scaling_max_freq", "2201600\n")
        put(f + "cpuinfo_max_freq", "2201600\n")
        put(f + "scaling_governor", "schedutil\n")
    g = "sys/class/devfreq/17000000.gpu/"
    put(g + "cur_freq", "1300500000\n")
    put(g + "min_freq", "1300500000\n" if pinned else "306000000\n")
    put(g + "max_freq", "1300500000\n")
    put(g + "governor", "nvhost_podgov\n")
    put("dev/ttyACM0", "")
    return root


def no_nvpmodel(cmd, **kw):
    raise FileNotFoundError(cmd[0])


def test_release_and_power_off_a_jetson_are_empty(tmp_path):
    assert jetson_release(tmp_path) == {} and read_power_mode(tmp_path, run=no_nvpmodel) == {}
    assert describe_power({}) == "not a Jetson (no power mode)"


@pytest.mark.parametrize("revision, jetpack, trt", [("4.0", "6.1+", "10.3"), ("4.3", "6.1+", "10.3"),
                                                    ("3.0", "6.0", "8.6"), ("2.0", "6.0", "8.6")])
def test_release_names_the_jetpack(tmp_path, revision, jetpack, trt):
    fake_jetson(tmp_path, release=R36_4.replace("REVISION: 4.0", f"REVISION: {revision}"))
    rel = jetson_release(tmp_path)
    assert rel["major"] == 36 and rel["jetpack"] == jetpack and rel["tensorrt"] == trt
    assert rel["l4t"] == f"36.{revision}" and rel["model"] == "NVIDIA Jetson AGX Orin Developer Kit"


def test_power_mode_from_the_status_file_and_from_nvpmodel(tmp_path):
    fake_jetson(tmp_path, mode=(2, "30W"), pinned=False)
    st = read_power_mode(tmp_path, run=no_nvpmodel)
    assert st["nvpmodel"]["id"] == 2 and st["nvpmodel"]["name"] == "30W" and st["jetson_clocks"] is False
    assert st["gpu"]["node"] == "17000000.gpu" and st["cpu"]["online"] == "0-11" and len(st["cpu"]["cpus"]) == 2

    def nvpmodel(cmd, **kw):
        assert cmd[-1] == "-q"
        return subprocess.CompletedProcess(cmd, 0, "NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n", "")

    fake_jetson(tmp_path)
    st = read_power_mode(tmp_path, run=nvpmodel)
    assert st["nvpmodel"] == {"name": "MAXN", "id": 0, "source": "nvpmodel -q"} and st["jetson_clocks"] is True
    assert describe_power(st) == "MAXN (mode 0), jetson_clocks on, GPU 1300 MHz"



def _by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_this_machine_is_reported_not_ready_with_a_fix_for_each_failure(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    code = doctor.main(["--quick", "--root", str(tmp_path), "--json", str(out)])
    rep = json.loads(out.read_text())
    assert code == rep["exit_code"] == doctor.EXIT_FAIL  # no L4T under this root: not a Jetson
    checks = {c["name"]: c for c in rep["checks"]}
    assert checks["L4T / JetPack"]["status"] == FAIL and "not a Jetson" in checks["L4T / JetPack"]["detail"]
    try:
        importlib.import_module("tensorrt")
    except Exception:
        assert checks["TensorRT"]["status"] == FAIL and "python3-libnvinfer" in checks["TensorRT"]["fix"]
    assert all(c["fix"] for c in rep["checks"] if c["status"] == FAIL)  # every failure says what to do
    assert checks["power mode"]["status"] == WARN and rep["power"] == {}
    assert "doctor:" in capsys.readouterr().out and doctor.main(["--no-such-option"]) == doctor.EXIT_USAGE


def test_a_ready_jetson_passes_the_platform_checks(tmp_path, monkeypatch):
    root = fake_jetson(tmp_path / "root")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    h = Host(root=root, machine="aarch64", python=(3, 10, 12), run=no_nvpmodel)
    c = _by_name(doctor.check_platform(h))
    assert c["platform"].status == PASS and c["python"].status == PASS
    l4t, rel = doctor.check_l4t(h)
    assert l4t[0].status == PASS and "JetPack 6.1+" in l4t[0].detail and "TensorRT 10.3" in l4t[0].detail
    assert doctor.check_tensorrt(rel)[0].status == PASS
    power, state = doctor.check_power(h)
    assert [p.status for p in power] == [PASS, PASS] and state["nvpmodel"]["name"] == "MAXN"
    assert doctor.check_memory(h)[0].status == PASS
    # JetPack 6.0's TensorRT on a 6.1 release: the wrong bindings on the path
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.2"))
    assert doctor.check_tensorrt(rel)[0].status == WARN


def test_wrong_release_power_mode_and_serial_port_are_named(tmp_path):
    root = fake_jetson(tmp_path / "root", release=R36_4.replace("R36", "R35"), mode=(2, "30W"), pinned=False)
    h = Host(root=root, machine="aarch64", python=(3, 10, 12), run=no_nvpmodel)
    l4t, _ = doctor.check_l4t(h)
    assert l4t[0].status == FAIL and "needs r36.x" in l4t[0].detail
    root = fake_jetson(tmp_path / "root", mode=(2, "30W"), pinned=False)
    power, _ = doctor.check_power(h)
    assert [p.status for p in power] == [WARN, WARN] and "nvpmodel -m 0" in power[0].fix
    cfg = types.SimpleNamespace(arm=types.SimpleNamespace(driver="so101_serial", options={"port": "/dev/ttyACM0"}))
    assert doctor.check_serial(cfg, h)[0].status == PASS
    cfg.arm.options["port"] = "/dev/ttyUSB3"
    bad = doctor.check_serial(cfg, h)[0]
    assert bad.status == FAIL and "/dev/ttyUSB3 (arm.options.port) does not exist; present: /dev/ttyACM0" in bad.detail
    lat = root / "sys/bus/usb-serial/devices/ttyUSB0/latency_timer"
    lat.parent.mkdir(parents=True)
    lat.write_text("16\n")
    ftdi = _by_name(doctor.check_serial(None, h))["FTDI latency ttyUSB0"]
    assert ftdi.status == WARN and "1 ms" in ftdi.fix


def _mini_bundle(d: Path) -> Path:
    (d / "models").mkdir(parents=True)
    (d / "models" / "m.bin").write_bytes(b"weights")
    (d / "install.sh").write_text("#!/bin/sh\n")
    files = {rel: {"sha256": sha256_file(d / rel)} for rel in bundle_files(d)}
    (d / "manifest.json").write_text(json.dumps({"files": files, "edgebridge": {"version": "0.1.0", "commit": "abc"}}))
    return d


def test_bundle_and_engine_checks(tmp_path, monkeypatch):
    b = _mini_bundle(tmp_path / "bundle")
    h = Host(root=tmp_path)
    assert doctor.check_bundle(b, h)[0].status == PASS
    (b / "models" / "m.bin").write_bytes(b"weightz")
    bad = doctor.check_bundle(b, h)[0]
    assert bad.status == FAIL and "changed: models/m.bin" in bad.detail
    assert doctor.check_bundle(None, h)[0].status == WARN
    # engines: the build record against this device
    monkeypatch.setattr("edgebridge.runtime.expert.tensorrt.current_device",
                        lambda trt=None, root="/": {"tensorrt": "10.3.0", "sm": "8.7", "gpu": "Orin"})
    eng = tmp_path / "expert.engine"
    eng.write_bytes(b"engine")
    eng.with_suffix(".json").write_text(json.dumps({"engine": {"tensorrt": "8.6.2", "device": {"sm": "8.7"}}}))
    c = doctor.check_engines([eng])[0]
    assert c.status == FAIL and "TensorRT 8.6.2 (engine) vs 10.3.0 (here)" in c.detail and "install.sh engines" in c.fix
    eng.with_suffix(".json").write_text(json.dumps({"engine": {"tensorrt": "10.3.0", "device": {"sm": "8.7"},
                                                               "parity": {"max_abs_err": 0.004}}}))
    c = doctor.check_engines([eng])[0]
    assert c.status == PASS and "parity 0.004" in c.detail
    assert doctor.check_engines([])[0].status == WARN


def test_timed_expert_pass_falls_back_to_onnx_runtime_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    checks, lat = doctor.measure_expert(None, None, [])
    assert checks[0].status == WARN and "the TensorRT engine did not run: no engine built" in checks[0].detail
    (name, ms), = lat.items()
    assert name == "expert (ONNX Runtime expert.onnx)" and 0 < ms < 5000


def test_doctor_dispatch_as_a_module():
    res = subprocess.run([sys.executable, "-m", "edgebridge.runtime.doctor", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--json FILE" in res.stdout and "Exit 0" in res.stdout
