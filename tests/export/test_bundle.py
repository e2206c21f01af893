"""``edge-export bundle``: made, verified, a changed byte found. The wheelhouse step runs against a fake
``pip`` here (the command lines are checked); one slow test downloads two real aarch64/cp310 wheels."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from edgebridge.export.bundle import (EXTRA_WHEELS, FROM_JETPACK, PLATFORMS, BundleError, fill_wheelhouse,
                                      make_bundle, pip_download_commands, runtime_requirements, verify)
from edgebridge.export.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "edgebridge" / "assets" / "configs"


@pytest.fixture
def wheel(tmp_path) -> Path:
    """A stand-in for the edgebridge wheel (building the real one takes seconds and a checkout)."""
    whl = tmp_path / "wheels" / "edgebridge-0.1.0-py3-none-any.whl"
    whl.parent.mkdir()
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("edgebridge/__init__.py", "")
    return whl


@pytest.fixture
def setup_file(tmp_path) -> tuple[Path, Path]:
    """so101_serial with a camera calibration file next to it, named relatively."""
    d = tmp_path / "cell"
    d.mkdir()
    calib = d / "realsense_cell.toml"
    calib.write_text("# hand-eye result\nT_base_cam = [[1.0, 0.0, 0.0, 0.3], [0.0, 1.0, 0.0, 0.0], "
                     "[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.0, 1.0]]\n")
    text = (CONFIGS / "so101_serial.toml").read_text().replace(
        '# calibration = "calib/realsense_so101.toml"', 'calibration = "realsense_cell.toml"')
    cfg = d / "so101_cell.toml"
    cfg.write_text(text)
    return cfg, calib


@pytest.fixture
def bundle(tmp_path, wheel, setup_file) -> Path:
    return make_bundle(str(setup_file[0]), tmp_path / "bundle", wheelhouse=False, wheel=wheel)


def test_bundle_holds_models_setup_wheel_install_script_and_a_manifest(bundle, setup_file, wheel):
    from edgebridge.calib import toml_io

    m = json.loads((bundle / "manifest.json").read_text())
    assert m["target"]["sm"] == "8.7" and m["target"]["python"] == "3.10" and m["target"]["tensorrt"] == ["8.6", "10.3"]
    assert len(m["edgebridge"]["commit"]) in (40, len("unknown")) and m["edgebridge"]["version"]
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json", "SHA256SUMS"}
    assert set(m["files"]) == on_disk  # every file hashed, nothing else listed
    for rel, rec in m["files"].items():
        assert rec["sha256"] == hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    assert {"install.sh", "models/expert/expert.onnx", "models/expert/expert.json", "models/expert/parity_inputs.npz",
            "models/planner/vlm.gguf", "models/planner/vlm-mmproj.gguf", f"wheels/{wheel.name}",
            "deploy/systemd/edgebridge.service", "deploy/udev/99-edgebridge-serial.rules", "deploy/Dockerfile"} <= on_disk
    assert not any(p.endswith(".engine") for p in on_disk)  # engines are built on the device
    assert m["expert"]["inputs"] == {"cloud": [1, 512, 3], "proprio": [1, 10], "guidance": [1, 17, 10], "noise": [1, 16, 10]}
    assert m["expert"]["precision"] == "fp16"
    assert "tensorrt" in m["wheelhouse"]["from_jetpack"] and "skipped" in m["wheelhouse"]
    assert "pyrealsense2>=2.54" in m["wheelhouse"]["requirements"]  # the setup's camera is a RealSense
    # the setup: its calibration copied in, its paths relative to the bundle root, the device's backends
    cfg = toml_io.read(bundle / m["config"]["file"])
    rel = cfg["camera"]["options"]["calibration"]
    assert rel.startswith("config/files/") and (bundle / rel).read_bytes() == setup_file[1].read_bytes()
    assert m["config"]["files"] == {"camera.options.calibration": rel}
    assert cfg["expert"] == {**cfg["expert"], "backend": "trt", "model": "engines/expert.engine"}
    assert cfg["planner"]["model"] == "models/planner/vlm.gguf" and cfg["planner"]["options"]["n_gpu_layers"] == -1
    assert (bundle / "install.sh").stat().st_mode & 0o111  # executable
    sums = dict(line.split("  ", 1)[::-1] for line in (bundle / "SHA256SUMS").read_text().splitlines())
    assert sums == {rel: rec["sha256"] for rel, rec in m["files"].items()}


def test_verify_names_every_file_that_differs(bundle):
    assert verify(bundle) == []
    gguf = bundle / "models/planner/vlm.gguf"
    blob = bytearray(gguf.read_bytes())
    blob[1000] ^= 0x01  # one bit of one byte
    gguf.write_bytes(bytes(blob))
    (bundle / "models/expert/expert.json").unlink()
    (bundle / "notes.txt").write_text("left here")
    (bundle / "engines").mkdir()
    (bundle / "engines" / "expert.engine").write_bytes(b"built on the device")  # device output: not a difference
    assert verify(bundle) == ["missing: models/expert/expert.json",
                              "changed: models/planner/vlm.gguf (sha256 differs from the manifest)",
                              "not in the manifest: notes.txt"]
    if shutil.which("sha256sum"):  # what install.sh verify runs on the device agrees
        res = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
        assert res.returncode != 0 and "models/planner/vlm.gguf: FAILED" in res.stdout


def test_cli_tar_and_verify(tmp_path, wheel, setup_file, capsys):
    out = tmp_path / "b"
    assert main(["bundle", "--config", str(setup_file[0]), "--out", str(out), "--no-wheelhouse", "--wheel", str(wheel),
                 "--tar"]) == 0
    tgz = tmp_path / "b.tar.gz"
    assert f"wrote bundle {tgz}" in capsys.readouterr().out
    assert main(["bundle", "--verify", str(tgz)]) == 0
    assert "every file matches its manifest" in capsys.readouterr().out
    # the same tarball with one member changed
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(tgz) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            f = src.extractfile(member) if member.isfile() else None
            if member.name == "b/config/so101_cell.toml":
                data = f.read().replace(b"rate_hz = 100.0", b"rate_hz = 500.0")
                member.size = len(data)
                f = io.BytesIO(data)
            dst.addfile(member, f)
    assert main(["bundle", "--verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "changed: config/so101_cell.toml" in err
    # a non-empty --out is refused unless --force
    assert main(["bundle", "--config", str(setup_file[0]), "--out", str(out), "--no-wheelhouse", "--wheel", str(wheel)]) == 1
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert main(["bundle", "--out", str(out)]) == 2


def test_bad_inputs_are_one_line_errors(tmp_path, wheel):
    with pytest.raises(BundleError, match="no such config file"):
        make_bundle("no_such_setup", tmp_path / "x", wheelhouse=False, wheel=wheel)
    with pytest.raises(BundleError, match=r"no ONNX file with its \.json metadata"):
        make_bundle("so101_serial", tmp_path / "y", wheelhouse=False, wheel=wheel, expert=str(tmp_path / "none.onnx"))
    assert verify(tmp_path / "nothing") == [f"{tmp_path / 'nothing'}: no such bundle directory or .tar.gz"]


def test_runtime_requirements_for_the_device():
    reqs = runtime_requirements(("realsense",))
    names = {r.split(">")[0].split("=")[0].split("<")[0] for r in reqs}
    assert {"numpy", "numba", "onnxruntime", "pyserial", "pin", "pyrealsense2", "tomli"} <= names  # tomli: Python 3.10
    assert not names & {"torch", "tensorrt", "pycuda", "onnxruntime-gpu", "pybullet"}
    assert "pyrealsense2" not in {r.split(">")[0] for r in runtime_requirements(())}
    assert set(FROM_JETPACK) >= {"tensorrt", "pycuda", "onnxruntime-gpu", "torch", "llama-cpp-python"}


class FakePip:
    """Records pip's command lines and writes one file per requirement, as pip download would."""

    def __init__(self, rc: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.rc = rc

    def __call__(self, cmd, capture_output=True, text=True):
        self.calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        if "--no-binary=:all:" in cmd:
            (dest / "llama_cpp_python-0.3.36.tar.gz").write_bytes(b"sdist")
        else:
            (dest / "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl").write_bytes(b"whl")
        return subprocess.CompletedProcess(cmd, self.rc, "", "ERROR: No matching distribution found for numpy")


def test_wheelhouse_asks_pip_for_aarch64_cp310_binaries(tmp_path):
    pip = FakePip()
    names = fill_wheelhouse(tmp_path / "wh", ["numpy>=1.24", "pyserial>=3.5"], run=pip, llama="llama-cpp-python==0.3.36")
    assert names == ["llama_cpp_python-0.3.36.tar.gz",
                     "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    wheels, sdist = pip.calls
    assert wheels[wheels.index("--python-version") + 1] == "3.10" and "--only-binary=:all:" in wheels
    assert [wheels[i + 1] for i, a in enumerate(wheels) if a == "--platform"] == list(PLATFORMS)
    assert {"numpy>=1.24", "pyserial>=3.5", *EXTRA_WHEELS, "scikit-build-core[pyproject]>=0.9.2"} <= set(wheels)
    assert sdist[-1] == "llama-cpp-python==0.3.36" and "--no-deps" in sdist
    assert pip_download_commands(tmp_path, ["numpy"], None)[0][-1] == EXTRA_WHEELS[-1]  # no llama: one call
    with pytest.raises(BundleError, match=r"No matching distribution found for numpy.*--no-wheelhouse"):
        fill_wheelhouse(tmp_path / "wh2", ["numpy"], run=FakePip(rc=1), llama=None)


def test_bundle_with_a_wheelhouse_records_and_hashes_it(tmp_path, wheel, setup_file):
    out = make_bundle(str(setup_file[0]), tmp_path / "b", wheel=wheel, run=FakePip())
    m = json.loads((out / "manifest.json").read_text())
    assert m["wheelhouse"]["files"] == ["llama_cpp_python-0.3.36.tar.gz",
                                        "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"]
    assert "wheelhouse/llama_cpp_python-0.3.36.tar.gz" in m["files"] and verify(out) == []
    assert m["wheelhouse"]["platforms"] == list(PLATFORMS) and "cuda-python>=12.2,<13" in m["wheelhouse"]["requirements"]


@pytest.mark.slow
def test_real_pip_download_of_aarch64_cp310_wheels(tmp_path):
    """Two real wheels through the same command line (needs the package index)."""
    names = fill_wheelhouse(tmp_path / "wh", ["pyserial>=3.5", "markupsafe>=2"], llama=None,
                            run=lambda cmd, **kw: subprocess.run([*cmd[:-len(EXTRA_WHEELS)], "--no-deps"], **kw))
    assert any(n.startswith("pyserial-") for n in names)
    mk = [n for n in names if n.lower().startswith("markupsafe-")]
    assert mk and "cp310" in mk[0] and "aarch64" in mk[0]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="sha256sum (coreutils) is not installed here")
def test_install_sh_in_a_bundle_verifies_it_before_installing(bundle):
    res = subprocess.run(["bash", str(bundle / "install.sh"), "verify"], capture_output=True, text=True)
    assert res.returncode == 0 and "every file matches SHA256SUMS" in res.stdout
    (bundle / "models/expert/expert.json").write_text("{}")
    res = subprocess.run(["bash", str(bundle / "install.sh"), "verify"], capture_output=True, text=True)
    assert res.returncode == 1 and "models/expert/expert.json: FAILED" in res.stdout + res.stderr
    assert "copy the bundle again" in res.stderr
