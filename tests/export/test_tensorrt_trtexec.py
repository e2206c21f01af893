"""The trtexec path of the engine build, against a stand-in trtexec (a script that prints the version banner
TensorRT 8.6 or 10.x prints and writes the files it is told to). What only an Orin can check: that NVIDIA's
trtexec accepts these flags and the engine it writes runs (tests/runtime/expert/test_tensorrt.py, gpu)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgebridge.export.tensorrt_build import (EngineBuildError, build, build_engine_trtexec, parse_trtexec_version,
                                              record_parity_inputs, trtexec_command)

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "edgebridge" / "assets" / "expert" / "expert.onnx"
DEVICE = {"gpu": "Orin", "sm": "8.7", "l4t": "36.4.0"}

FAKE_TRTEXEC = '''#!{python}
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
print("&&&& RUNNING TensorRT.trtexec [TensorRT v{code}] # trtexec " + " ".join(sys.argv[1:]))
open("{log}", "w").write("\\n".join(sys.argv[1:]))
if {fail}:
    print("[E] Error[4]: ITensor::getDimensions: Error Code 4: Internal Error", file=sys.stderr)
    sys.exit(1)
open(args["saveEngine"], "wb").write(b"engine bytes")
if "timingCacheFile" in args:
    open(args["timingCacheFile"], "wb").write(b"cache")
print("&&&& PASSED TensorRT.trtexec [TensorRT v{code}]")
'''


@pytest.fixture
def onnx(tmp_path):
    dst = tmp_path / "expert.onnx"
    shutil.copy(SHIPPED, dst)
    shutil.copy(SHIPPED.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _trtexec(tmp_path: Path, code: str, fail: bool = False) -> tuple[Path, Path]:
    exe, log = tmp_path / f"trtexec-{code}", tmp_path / f"trtexec-{code}.args"
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable, code=code, log=log, fail=fail))
    exe.chmod(0o755)
    return exe, log


@pytest.mark.parametrize("banner, version", [("8601", "8.6.1"), ("100300", "10.3.0"), ("100700", "10.7.0"),
                                             ("8503", "8.5.3")])
def test_trtexec_version_banner(banner, version):
    assert parse_trtexec_version(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}] # trtexec") == version
    assert parse_trtexec_version("no banner here") is None


def test_trtexec_command_uses_flags_both_8_6_and_10_accept():
    shapes = {"cloud": (512, 3), "proprio": (10,)}
    cmd = trtexec_command(Path("/usr/src/tensorrt/bin/trtexec"), Path("m.onnx"), Path("e.engine"), shapes,
                          workspace_mb=512, timing_cache=Path("t.cache"), batch=(1, 2, 4))
    assert cmd[1:] == ["--onnx=m.onnx", "--saveEngine=e.engine", "--minShapes=cloud:1x512x3,proprio:1x10",
                       "--optShapes=cloud:2x512x3,proprio:2x10", "--maxShapes=cloud:4x512x3,proprio:4x10",
                       "--memPoolSize=workspace:512", "--skipInference", "--fp16", "--timingCacheFile=t.cache"]
    # removed in TensorRT 10 (an error there), deprecated in 8.x
    assert not any(a.startswith(("--workspace=", "--explicitBatch", "--buildOnly", "--maxBatch")) for a in cmd)
    assert "--fp16" not in trtexec_command(Path("trtexec"), Path("m.onnx"), Path("e.engine"), shapes, fp16=False)


@pytest.mark.parametrize("code, version", [("8601", "8.6.1"), ("100300", "10.3.0")])
def test_trtexec_build_records_what_built_the_engine(onnx, tmp_path, code, version):
    exe, log = _trtexec(tmp_path, code)
    engine = build_engine_trtexec(onnx, tmp_path / "engines" / "expert.engine", trtexec=exe,
                                  timing_cache=tmp_path / "engines" / "timing.cache", device=DEVICE)
    assert engine.read_bytes() == b"engine bytes" and (tmp_path / "engines" / "timing.cache").read_bytes() == b"cache"
    meta = json.loads(engine.with_suffix(".json").read_text())
    rec = meta["engine"]
    assert rec["builder"] == "trtexec" and rec["tensorrt"] == version and rec["fp16"] is True
    assert rec["device"] == {**DEVICE, "tensorrt": version}  # trtexec's version, not the bindings'
    assert rec["shapes"] == {"cloud": [8, 512, 3], "proprio": [8, 10], "guidance": [8, 17, 10], "noise": [8, 16, 10]}
    assert rec["flags"] == log.read_text().splitlines()
    assert "--optShapes=cloud:1x512x3,proprio:1x10,guidance:1x17x10,noise:1x16x10" in rec["flags"]
    assert meta["horizon"] == 16  # the ONNX metadata the runtime needs travels with the engine


def test_trtexec_failures_are_named(onnx, tmp_path):
    exe, _ = _trtexec(tmp_path, "100300", fail=True)
    with pytest.raises(EngineBuildError, match=r"trtexec failed \(exit 1\): .*Error Code 4"):
        build_engine_trtexec(onnx, tmp_path / "e.engine", trtexec=exe, device=DEVICE)
    old, _ = _trtexec(tmp_path, "8503")
    with pytest.raises(EngineBuildError, match=r"TensorRT 8\.5\.3 is too old; edgebridge needs TensorRT 8\.6"):
        build_engine_trtexec(onnx, tmp_path / "e.engine", trtexec=old, device=DEVICE)
    with pytest.raises(EngineBuildError, match=r"could not run trtexec"):
        build_engine_trtexec(onnx, tmp_path / "e.engine", trtexec=tmp_path / "missing-trtexec", device=DEVICE)


def test_no_tensorrt_at_all_names_both_ways_to_get_it(onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr("edgebridge.export.tensorrt_build.find_trtexec", lambda: None)
    with pytest.raises(EngineBuildError, match=r"python3-libnvinfer.*trtexec.*build the engine on the Jetson"):
        build(onnx, tmp_path / "e.engine")
    with pytest.raises(EngineBuildError, match="builder 'cuda'"):
        build(onnx, tmp_path / "e.engine", builder="cuda")


def test_auto_builder_falls_back_to_trtexec(onnx, tmp_path, monkeypatch):
    exe, _ = _trtexec(tmp_path, "100300")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr("edgebridge.export.tensorrt_build.find_trtexec", lambda: exe)
    engine, builder = build(onnx, tmp_path / "e.engine", device=DEVICE, int8=False)
    assert builder == "trtexec" and engine.is_file()


def test_recorded_parity_inputs_hold_onnx_runtime_outputs(onnx, tmp_path):
    import onnxruntime as ort

    npz = record_parity_inputs(onnx, tmp_path / "parity.npz", n=2, seed=3)
    data = np.load(npz)
    assert data["cloud"].shape == (2, 512, 3) and data["action"].shape == (2, 16, 10)
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feeds = {k: data[k][1:2] for k in ("cloud", "proprio", "guidance", "noise")}
    np.testing.assert_allclose(sess.run(None, feeds)[0], data["action"][1:2], atol=1e-6)
