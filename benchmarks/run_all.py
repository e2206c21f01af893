"""Run every benchmark in this folder, each writing its figures to benchmarks/results/<name>.json.

Usage: python benchmarks/run_all.py [--only kernels,expert] [--quick]

``--quick`` passes each script its own shortening flag (fewer seeds, shorter loop runs) so the whole set
finishes in a few minutes; without it the scripts run at the sizes their docstrings name.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# script name -> extra arguments for --quick
BENCHMARKS = {
    "kernels": [],
    "planner": [],
    "expert": [],
    "loop": ["--seconds", "5"],
    "sim_success": ["--seeds", "5"],
    "servo_bus": [],
    "arm_tracking": ["--seconds", "4"],
    "fuzz": ["--cases", "2000"],
    "soak": ["--minutes", "1"],
    "memory": ["--seconds", "10", "--repeats", "1", "--skip-cold"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    ap.add_argument("--quick", action="store_true", help="shortened runs")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"[skip] {name}: {script.name} not present")
            continue
        cmd = [sys.executable, str(script), "--json", str(RESULTS / f"{name}.json")]
        if args.quick:
            cmd += BENCHMARKS[name]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} after {time.monotonic() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
