"""benchmarks/memory.py: the import shares measure what a step allocates and add up to the total; the
runtime run on the replay scene stays under the target (slow)."""

from __future__ import annotations

import pytest

import memory
from memory import Step

SMALL = (
    Step("python", "the interpreter", ""),
    Step("numpy", "import numpy", "import numpy"),
    Step("ballast", "40 MiB written", "_ballast = b'x' * (40 * 2**20)"),
    Step("json", "import json", "import json"),
)


def test_import_shares_add_up_and_see_what_a_step_allocates():
    shares = memory.import_shares(SMALL, repeats=1, timeout_s=60)
    steps = {s["name"]: s for s in shares["steps"]}
    assert list(steps) == [s.name for s in SMALL]
    assert sum(s["step_mb"] for s in shares["steps"]) == pytest.approx(shares["total_mb"])
    assert sum(s["share"] for s in shares["steps"]) == pytest.approx(1.0)
    assert shares["total_mb"] == pytest.approx(shares["steps"][-1]["rss_mb"])
    assert 3 < steps["python"]["rss_mb"] < 60
    assert 38 < steps["ballast"]["step_mb"] < 46  # 40 MiB of written bytes, all resident
    assert steps["ballast"]["file_mb"] < 2  # anonymous memory, not library pages
    assert steps["numpy"]["step_mb"] > 3  # numpy's extension modules and libraries
    flat = memory.share_keys(shares)
    assert set(flat) == {f"mem_import_{n}_mb" for n in steps} | {"mem_import_total_mb"}
    assert all(isinstance(v, float) for v in flat.values())


def test_a_failing_step_names_the_error_and_bad_step_lists_are_refused():
    with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
        memory.import_shares((Step("python", "", ""), Step("gone", "", "import no_such_module_here")), repeats=1)
    with pytest.raises(ValueError, match="distinct"):
        memory.import_shares((Step("a", "", ""), Step("a", "", "")), repeats=1)
    with pytest.raises(ValueError, match="at least one"):
        memory.import_shares((), repeats=1)


def test_the_runtime_steps_cover_the_heavy_imports():
    names = [s.name for s in memory.RUNTIME_STEPS]
    assert names[0] == "python" and len(set(names)) == len(names)
    for heavy in ("numpy", "scipy", "numba", "kernels", "onnxruntime", "expert", "pinocchio", "kinematics", "rich"):
        assert heavy in names


@pytest.mark.slow
def test_the_runtime_on_the_replay_scene_stays_under_the_target(tmp_path):
    pytest.importorskip("pybullet", reason="recording the scene needs the simulator ('sim' extra)")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("pinocchio")
    scene = memory.record_scene(tmp_path / "scene", n_frames=2)
    assert len(scene["q0"]) == 7 and scene["plan"]["anchors"]
    r = memory._run_child(f"runtime_child({str(tmp_path / 'scene')!r}, 4.0)", timeout_s=300)
    assert r["episodes"] >= 1 and r["samples"] > 10
    assert "expert: ONNX" in " ".join(r["notes"])
    assert not any("fault" in why or "rejected" in why for why in r["reasons"]), r["reasons"]
    assert r["steady_mb"] <= r["peak_mb"] < memory.TARGET_MB
