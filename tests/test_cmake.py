"""The device install without a device: CMake configures and ctest runs pytest (device targets off); the
device targets appear behind a faked Jetson; deploy/install.sh's preflight refuses x86 and the wrong L4T
(faked release files); the systemd units pass ``systemd-analyze verify``; the udev rules parse.

Needs ``cmake`` and ``systemd-analyze`` on PATH (Debian: cmake, systemd); a test skips naming the missing
tool. ``udevadm verify`` (systemd >= 254) is used when present; the rules' syntax is checked here either way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install.sh"
R36_4 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024\n"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed here (Debian: apt install {'systemd' if 'systemd' in tool else tool})")
    return path


def _script(path: Path, text: str) -> Path:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


@pytest.fixture
def jetson(tmp_path) -> dict:
    """Environment that makes preflight see a JetPack 6.1 Orin: release file, Python 3.10, nvcc 12.6."""
    rel = tmp_path / "nv_tegra_release"
    rel.write_text(R36_4)
    py = _script(tmp_path / "python3.10", 'echo 3.10\n')
    nvcc = _script(tmp_path / "nvcc", 'echo "Cuda compilation tools, release 12.6, V12.6.68"\n')
    return {**os.environ, "EDGEBRIDGE_ARCH": "aarch64", "EDGEBRIDGE_RELEASE_FILE": str(rel),
            "EDGEBRIDGE_PYTHON": str(py), "EDGEBRIDGE_NVCC": str(nvcc)}


def _preflight(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "preflight"], env=env, capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------------- preflight

def test_preflight_accepts_a_jetpack6_orin(jetson):
    res = _preflight(jetson)
    assert res.returncode == 0, res.stderr
    assert "preflight ok: aarch64, L4T R36.4.0 = JetPack 6.1+ (CUDA 12.6, TensorRT 10.3), Python 3.10, nvcc 12.6" in res.stdout
    Path(jetson["EDGEBRIDGE_RELEASE_FILE"]).write_text(R36_4.replace("REVISION: 4.0", "REVISION: 3.0"))
    assert "JetPack 6.0 (CUDA 12.2, TensorRT 8.6)" in _preflight(jetson).stdout


@pytest.mark.parametrize("change, message", [
    ({"EDGEBRIDGE_ARCH": "x86_64"}, "architecture x86_64; the device install needs aarch64"),
    ({"release": R36_4.replace("R36", "R35").replace("4.0", "5.0")}, r"L4T R35.5.0 in .*; needs r36.x"),
    ({"release": R36_4.replace("4.0", "0.0")}, r"R36.0.0 is a JetPack 6 developer preview"),
    ({"release": None}, r"no .*nv_tegra_release: not a Jetson running L4T"),
    ({"python": "3.11"}, r"Python 3.11 at .*; needs 3.10"),
    ({"EDGEBRIDGE_NVCC": "/nonexistent/nvcc"}, r"no nvcc at /nonexistent/nvcc; needs the CUDA toolkit"),
])
def test_preflight_refuses_naming_what_it_found_and_what_it_needs(jetson, tmp_path, change, message):
    env = dict(jetson)
    for key, value in change.items():
        if key == "release":
            if value is None:
                env["EDGEBRIDGE_RELEASE_FILE"] = str(tmp_path / "absent" / "nv_tegra_release")
            else:
                Path(env["EDGEBRIDGE_RELEASE_FILE"]).write_text(value)
        elif key == "python":
            env["EDGEBRIDGE_PYTHON"] = str(_script(tmp_path / "python-other", f"echo {value}\n"))
        else:
            env[key] = value
    res = _preflight(env)
    assert res.returncode == 3 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("preflight: refused: ") and re.search(message, lines[0])


def test_install_script_steps_and_shell_syntax():
    for script in (INSTALL, DEPLOY / "docker-entrypoint.sh"):
        assert os.access(script, os.X_OK), f"{script} must be executable"
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    res = subprocess.run(["bash", str(INSTALL), "flash"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown step flash" in res.stderr
    if shutil.which("shellcheck"):
        res = subprocess.run(["shellcheck", "-S", "warning", str(INSTALL), str(DEPLOY / "docker-entrypoint.sh")],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stdout


# ----------------------------------------------------------------------------------------------- CMake

def _configure(build: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_need("cmake"), "-S", str(ROOT), "-B", str(build), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cmake_configures_off_device_and_ctest_runs_pytest(tmp_path):
    passing, failing = tmp_path / "test_ok.py", tmp_path / "test_bad.py"
    passing.write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    failing.write_text("def test_bad():\n    assert 1 + 1 == 3\n")
    res = _configure(tmp_path / "b", f"-DPython3_EXECUTABLE={sys.executable}", "-DEDGEBRIDGE_DEVICE=OFF",
                     f"-DEDGEBRIDGE_PYTEST_ARGS={passing} -p no:cacheprovider")
    assert res.returncode == 0, res.stderr
    assert "device targets off (not a Jetson)" in res.stdout
    ctest = _need("ctest")
    listed = subprocess.run([ctest, "-N"], cwd=tmp_path / "b", capture_output=True, text=True)
    assert "Test #1: pytest" in listed.stdout
    ok = subprocess.run([ctest, "-V"], cwd=tmp_path / "b", capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "1 passed" in ok.stdout
    # the same project pointed at a failing test: ctest reports the failure, so it really ran pytest
    _configure(tmp_path / "b", f"-DEDGEBRIDGE_PYTEST_ARGS={failing} -p no:cacheprovider")
    bad = subprocess.run([ctest, "-V"], cwd=tmp_path / "b", capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "1 failed" in bad.stdout


def test_cmake_install_puts_units_and_rules_in_place(tmp_path):
    assert _configure(tmp_path / "b", f"-DPython3_EXECUTABLE={sys.executable}", "-DEDGEBRIDGE_DEVICE=OFF").returncode == 0
    res = subprocess.run([_need("cmake"), "--install", str(tmp_path / "b")], capture_output=True, text=True,
                         env={**os.environ, "DESTDIR": str(tmp_path / "dest")})
    assert res.returncode == 0, res.stderr
    got = sorted(p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*") if p.is_file())
    assert got == ["etc/systemd/system/edgebridge-power.service", "etc/systemd/system/edgebridge.service",
                   "etc/udev/rules.d/99-edgebridge-realsense.rules", "etc/udev/rules.d/99-edgebridge-serial.rules"]


def test_cmake_device_mode_refuses_a_machine_preflight_refuses(tmp_path, jetson):
    res = _configure(tmp_path / "b", "-DEDGEBRIDGE_DEVICE=ON", env={**jetson, "EDGEBRIDGE_ARCH": "x86_64"})
    assert res.returncode != 0
    assert "cannot take the device install" in res.stderr and "the device install needs aarch64" in res.stderr


def test_cmake_device_mode_on_a_faked_orin_has_the_install_targets(tmp_path, jetson):
    res = _configure(tmp_path / "b", "-DEDGEBRIDGE_DEVICE=ON", f"-DEDGEBRIDGE_PREFIX={tmp_path / 'opt'}", env=jetson)
    assert res.returncode == 0, res.stderr
    assert "preflight ok: aarch64, L4T R36.4.0" in res.stdout
    targets = subprocess.run([_need("cmake"), "--build", str(tmp_path / "b"), "--target", "help"],
                             capture_output=True, text=True).stdout
    for target in ("venv", "llama", "engines"):
        assert re.search(rf"^\.\.\. {target}\b", targets, re.M), targets
    assert not (tmp_path / "opt").exists()  # configuring installs nothing


# ------------------------------------------------------------------------------------- systemd, udev

def _unit(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_units_pass_systemd_analyze_verify(tmp_path):
    tool = _need("systemd-analyze")
    if not Path("/usr/lib/systemd/system/sysinit.target").is_file():
        pytest.skip("no systemd unit directory here (/usr/lib/systemd/system) for verify to resolve targets against")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for exe in ("opt/edgebridge/venv/bin/edge-run", "opt/edgebridge/venv/bin/python", "usr/sbin/nvpmodel",
                "usr/bin/jetson_clocks"):  # what the units run, present as on an installed Orin
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        _script(root / exe, "exit 0\n")
    for unit in ("edgebridge.service", "edgebridge-power.service"):
        shutil.copy(DEPLOY / "systemd" / unit, root / "etc/systemd/system" / unit)
    res = subprocess.run([tool, "verify", f"--root={root}", "edgebridge.service", "edgebridge-power.service"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr  # unknown keys only warn: none allowed
    svc, power = _unit("edgebridge.service"), _unit("edgebridge-power.service")
    assert svc["Restart"] == ["on-failure"] and svc["LimitMEMLOCK"] == ["infinity"] and int(svc["LimitRTPRIO"][0]) >= 80
    assert svc["CPUAffinity"] and svc["RestartPreventExitStatus"] == ["2"] and "edgebridge-power.service" in svc["After"][0]
    assert power["Type"] == ["oneshot"] and power["RemainAfterExit"] == ["yes"]
    assert [x.split()[0] for x in power["ExecStart"]] == ["/usr/sbin/nvpmodel", "/usr/bin/jetson_clocks",
                                                          "/usr/bin/jetson_clocks"]


UDEV_MATCH = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "DRIVER", "DRIVERS", "ATTR", "ATTRS", "ENV"}
UDEV_ASSIGN = {"SYMLINK", "GROUP", "MODE", "OWNER", "ATTR", "ENV", "RUN", "TAG"}
UDEV_PAIR = re.compile(r'^([A-Z]+)(\{[A-Za-z0-9_]+\})?(==|!=|\+=|-=|:=|=)"([^"]*)"$')


def udev_problems(text: str) -> list[str]:
    """Syntax of udev rules as udev reads them: comma-separated KEY[{attr}]OP"value" pairs, match keys with
    == / !=, assignments with = / += / :=, every rule with at least one assignment."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assigned = False
        for pair in (p.strip() for p in line.split(",")):
            m = UDEV_PAIR.match(pair)
            if not m:
                problems.append(f"line {n}: cannot parse {pair!r}")
                continue
            key, attr, op, _ = m.groups()
            if op in ("==", "!="):
                ok = key in UDEV_MATCH
            else:
                ok = key in UDEV_ASSIGN
                assigned = True
            if not ok or (key in ("ATTR", "ATTRS", "ENV") and not attr):
                problems.append(f"line {n}: {key}{attr or ''}{op} is not a udev {('match', 'assignment')[op not in ('==', '!=')]}")
        if not assigned:
            problems.append(f"line {n}: a rule without an assignment does nothing")
    return problems


def test_udev_rules_parse_and_say_what_the_issue_asks():
    serial = (DEPLOY / "udev" / "99-edgebridge-serial.rules").read_text()
    realsense = (DEPLOY / "udev" / "99-edgebridge-realsense.rules").read_text()
    assert udev_problems(serial) == [] and udev_problems(realsense) == []
    assert udev_problems('SUBSYSTEM=="tty" ATTRS{idVendor}=="0403"') != []  # a missing comma is caught
    assert udev_problems('SYMLINK=="x", GROUP="dialout"') != []             # a comparison on an assignment key
    assert udev_problems('SUBSYSTEM=="tty"') == ["line 1: a rule without an assignment does nothing"]
    rules = [ln for ln in serial.splitlines() if ln and not ln.startswith("#")]
    assert all('SYMLINK+="edgebridge-arm"' in ln and 'GROUP="dialout"' in ln for ln in rules if 'SUBSYSTEM=="tty"' in ln)
    assert any('DRIVER=="ftdi_sio"' in ln and 'ATTR{latency_timer}="1"' in ln for ln in rules)
    assert re.search(r'ATTRS\{idVendor\}=="8086", ATTRS\{idProduct\}=="0b07".*GROUP="plugdev"', realsense)  # D435
    udevadm = shutil.which("udevadm")
    if udevadm and subprocess.run([udevadm, "verify", "--help"], capture_output=True).returncode == 0:
        res = subprocess.run([udevadm, "verify", *map(str, (DEPLOY / "udev").glob("*.rules"))],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
