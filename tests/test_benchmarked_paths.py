"""Every benchmark that times runtime code times code the runtime really calls.

Each script in ``benchmarks/`` that measures runtime code declares, at module top, ``RUNTIME_PATHS``: the
functions and methods it times, as ``"module:qualname"``. The scripts are read with ``ast`` (never
imported). The slow test wraps every declared callable with a call counter, runs ``edge-run`` in-process
in the lock-step simulator (the default demo: oracle planner, shipped ONNX expert; then the GGUF planner
on a tiny random model) and requires every counter to be > 0: a benchmark of code that nothing runs fails.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Scripts that time no runtime code, with the reason.
EXEMPT = {
    "_common.py": "shared timing, table and JSON helpers; measures nothing",
    "run_all.py": "runs the other scripts; measures nothing itself",
    "appf_ablations.py": "trains and compares expert variants (training recipe), not runtime code",
    "expert_novelty.py": "analyses a trained expert's feature space offline, not runtime code",
    "arm_tracking.py": "tracks joints through FrankaArm against franky-sim; edge-run's simulated episode drives "
                       "no Franka",
    "calib_handeye.py": "hand-eye calibration accuracy (collect + handeye in the sim) and success with the recovered "
                        "camera pose; times no runtime code",
    "servo_bus.py": "times SerialArm on the pseudo-terminal bus emulators (wire time emulated); edge-run reaches it "
                    "only with a real servo arm, which the simulated episode of the slow test has not",
    "sim_success.py": "success rates of simulated episodes and simulator step/render times; no runtime "
                      "function timed",
}


def _declared(path: Path) -> list[str] | None:
    """The module-level ``RUNTIME_PATHS`` list of ``path``, or None when it has none."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "RUNTIME_PATHS" for t in targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list) and all(isinstance(v, str) and ":" in v for v in value), \
                f"{path.name}: RUNTIME_PATHS must be a list of 'module:qualname' strings, got {value!r}"
            return value
    return None


def _imports_edgebridge(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "edgebridge" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "edgebridge":
            return True
    return False


def _all_declared() -> dict[str, list[str]]:
    """script name -> its RUNTIME_PATHS, for every script that is not exempt."""
    out = {}
    for path in sorted(BENCHMARKS.glob("*.py")):
        if path.name in EXEMPT:
            continue
        paths = _declared(path)
        if paths is None:
            assert not _imports_edgebridge(path), (
                f"benchmarks/{path.name} imports edgebridge but declares no RUNTIME_PATHS: declare at module "
                f"top RUNTIME_PATHS = ['module:qualname', ...] naming the runtime functions it times (checked "
                f"here against an edge-run episode), or add it to EXEMPT in {Path(__file__).name} with the "
                f"reason it times no runtime code")
            continue
        out[path.name] = paths
    return out


def _resolve(spec: str):
    """(owner, attribute name, the attribute as stored) for ``module:qualname``."""
    mod_name, qual = spec.split(":")
    owner = importlib.import_module(mod_name)
    *outer, name = qual.split(".")
    for part in outer:
        owner = getattr(owner, part)
    return owner, name, inspect.getattr_static(owner, name)


def test_every_benchmark_declares_what_it_times():
    for name in EXEMPT:
        assert (BENCHMARKS / name).exists(), f"EXEMPT names benchmarks/{name}, which no longer exists"
    declared = _all_declared()
    assert declared, "no benchmark declares RUNTIME_PATHS"
    for script, paths in declared.items():
        assert paths, f"benchmarks/{script}: RUNTIME_PATHS is empty"


def test_a_benchmark_of_edgebridge_without_runtime_paths_fails(tmp_path, monkeypatch):
    for name in EXEMPT:
        (tmp_path / name).write_text("from edgebridge.kernels import depth_to_cloud\n")
    (tmp_path / "declared.py").write_text('RUNTIME_PATHS = ["edgebridge.kernels.cloud:depth_to_cloud"]\n')
    (tmp_path / "plain.py").write_text("import numpy\n")
    monkeypatch.setattr(sys.modules[__name__], "BENCHMARKS", tmp_path)
    assert _all_declared() == {"declared.py": ["edgebridge.kernels.cloud:depth_to_cloud"]}
    (tmp_path / "new_bench.py").write_text("def main():\n    from edgebridge.runtime import loop\n")
    with pytest.raises(AssertionError, match="new_bench.py imports edgebridge but declares no RUNTIME_PATHS"):
        _all_declared()


def test_declared_paths_resolve_to_callables():
    for script, paths in _all_declared().items():
        for spec in paths:
            try:
                owner, name, _ = _resolve(spec)
            except (ImportError, AttributeError) as e:
                if isinstance(e, ImportError) and e.name and e.name.split(".")[0] != "edgebridge":
                    pytest.skip(f"{spec}: optional dependency {e.name} not installed")
                raise AssertionError(f"benchmarks/{script}: {spec} does not resolve: {e}") from e
            assert callable(getattr(owner, name)), f"benchmarks/{script}: {spec} is not callable"


def _counted(counts: dict, spec: str, func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        counts[spec] += 1
        return func(*args, **kwargs)
    return wrapper


def _count_calls(monkeypatch, specs) -> dict[str, int]:
    """Wrap every callable in ``specs`` with a counter, wherever the runtime can reach it: the defining
    class, or the defining module and every loaded module that imported the same function by name."""
    counts = {spec: 0 for spec in specs}
    for spec in specs:
        owner, name, raw = _resolve(spec)
        func = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        wrapped = _counted(counts, spec, func)
        if isinstance(raw, (staticmethod, classmethod)):
            wrapped = type(raw)(wrapped)
        monkeypatch.setattr(owner, name, wrapped)
        if inspect.isclass(owner):
            continue
        for mod in list(sys.modules.values()):  # ``from module import func`` copies made before this
            if mod is not owner and getattr(mod, "__dict__", {}).get(name) is raw:
                monkeypatch.setattr(mod, name, wrapped)
    return counts


@pytest.mark.slow
def test_edge_run_calls_every_benchmarked_path(monkeypatch, tmp_path, capsys):
    pytest.importorskip("pybullet", reason="the sim world needs pybullet ('sim' extra)")
    pytest.importorskip("onnxruntime", reason="the shipped expert needs onnxruntime")
    pytest.importorskip("gguf", reason="gguf (extra 'vlm') not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    from edgebridge.export.tiny_gguf import write_tiny_gguf
    from edgebridge.runtime import cli, devices, pipeline  # noqa: F401  (loaded before the wrapping)

    if devices.shipped_expert() is None:
        pytest.skip("no shipped ONNX expert in assets/expert")
    declared = _all_declared()
    specs = sorted({spec for paths in declared.values() for spec in paths})
    counts = _count_calls(monkeypatch, specs)
    # the default demo: sim_panda, oracle planner, the shipped ONNX expert, lock-step
    rc = cli.main(["--max-seconds", "20", "--expert", "onnx"])
    assert rc in (0, 1), capsys.readouterr()
    # the GGUF planner on a tiny random model (it plans from the instruction alone; IK expert for speed)
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    rc = cli.main(["--planner", "gguf", "--vlm", str(model), "--expert", "ik", "--max-seconds", "4"])
    assert rc in (0, 1), capsys.readouterr()
    never = {spec: [s for s, p in declared.items() if spec in p] for spec, n in counts.items() if n == 0}
    assert not never, ("benchmarked but not called by edge-run (default demo and --planner gguf): " +
                       "; ".join(f"{spec} (timed by benchmarks/{', '.join(s)})" for spec, s in never.items()))
