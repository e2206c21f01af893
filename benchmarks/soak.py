"""Soak: the 500 Hz control loop under load for minutes, with simulated episodes running beside it.

What runs, all at once, for ``--minutes``:

- **episodes**: one ``edge-run`` process (the embedded default: simulated Panda, shipped VLM planner,
  shipped expert, lock-step) running episode after episode, as a robot runs it, and ended with SIGINT at the
  end (it must exit 130). It loads the CPU, and it is what the memory figure watches: a leak per episode
  shows as resident memory that keeps growing.
- **the loop**: the runtime's ``ControlLoop`` at ``--rate`` (500 Hz) in its own process (``LoopProcess``, as
  the setups use it) with ``--rt`` (SCHED_FIFO) and ``--cpu``, on a null arm, fed action chunks at 10 Hz by
  the shipped expert ONNX.
- **the floor**: for the first third of the run, instead of the loop, a bare absolute-deadline sleep/wake
  loop at the same rate and priority (no runtime work): the deadline misses this machine causes by itself
  under the same load. The loop then runs the remaining two thirds.

Figures (``--json FILE``, one flat object):

- ``soak_rss_growth_mb_per_min``: slope of a least-squares line through the resident memory (the edge-run
  process + the loop's process, ``/proc/<pid>/status`` VmRSS) sampled every ``--sample-s`` after the warm-up
  (``--warmup-min``, default the first 20 % of the run). Target <= 0.1 MB/min.
- ``soak_loop_misses_per_min`` and ``soak_floor_misses_per_min``, and their ratio
  ``soak_misses_vs_floor`` (target <= 2).
- episodes run, episodes that succeeded, and any episode that raised.

    python benchmarks/soak.py --minutes 10 --rt 80 --cpu 1 --json benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, machine_line, print_table, write_json  # noqa: E402
from loop import LIMITS, NullArm, PointKinematics, build_expert_session, expert_worker, run_floor  # noqa: E402

from edgebridge.runtime.config import LoopConfig  # noqa: E402
from edgebridge.runtime.loop_process import LoopProcess  # noqa: E402

RUNTIME_PATHS = ["edgebridge.runtime.loop:ControlLoop.run", "edgebridge.runtime.cli:main"]


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (``VmRSS``); NaN when the process is gone or not on Linux."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def growth_mb_per_min(t_s: np.ndarray, mb: np.ndarray) -> float:
    """Least-squares slope of ``mb`` against time, in MB per minute (NaN with fewer than 3 samples)."""
    ok = np.isfinite(mb)
    if ok.sum() < 3:
        return float("nan")
    slope, _ = np.polyfit(t_s[ok] / 60.0, mb[ok], 1)
    return float(slope)


class Episodes:
    """One ``edge-run`` process running episode after episode (``--episodes`` large, as a robot runs it),
    ended with SIGINT at the end of the soak (it must exit 130). Its resident memory is sampled by pid."""

    def __init__(self, argv: list[str], seed0: int) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="soak-")) / "episodes.jsonl"
        exe = Path(sys.executable).with_name("edge-run")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgebridge.runtime.cli"]
        self.proc = subprocess.Popen([*cmd, *argv, "--episodes", "100000", "--seed", str(seed0),
                                      "--json", str(self.out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.pid = self.proc.pid
        self.rc: int | None = None
        self.errors: list[str] = []

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.rc = self.proc.returncode
        if self.rc != 130:
            self.errors.append(f"edge-run exited {self.rc} on SIGINT (expected 130): {err.strip()[-300:]}")

    def rows(self) -> list[dict]:
        import json

        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text().splitlines() if x.strip()]


def run_loop(rate: float, seconds: float, rt: int, cpu: int, samples: list, t0: float) -> dict:
    """The runtime loop in its own process for ``seconds``, fed by the expert at 10 Hz; RSS sampled into
    ``samples`` as (t, loop_pid_rss)."""
    cfg = LoopConfig(rate_hz=rate, chunk_timeout_s=1.0, gc="disable", realtime_priority=rt, cpu=cpu,
                     isolation="process", max_ee_speed=0.5)
    lp = LoopProcess(NullArm, PointKinematics, LIMITS, cfg).start()
    stop = threading.Event()
    session, _ = build_expert_session()
    feeder = threading.Thread(target=expert_worker, args=(session, lp.put, stop), daemon=True)
    feeder.start()
    pid = getattr(getattr(lp, "_proc", None), "pid", None)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        if pid:
            samples.append((time.monotonic() - t0, rss_mb(pid)))
    lp.request_stop("soak done")
    result = lp.join(30)
    stop.set()
    feeder.join(30)
    lp.close()
    s = result.stats
    return {"misses": int(s.get("misses", -1)), "cycles": int(s.get("cycles", 0)),
            "p99": float(s.get("period_err_p99_ms", float("nan"))), "max": float(s.get("period_err_max_ms", float("nan"))),
            "reason": result.reason}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    ap.add_argument("--rate", type=float, default=500.0, help="control-loop rate in Hz (default 500)")
    ap.add_argument("--rt", type=int, default=0, help="SCHED_FIFO priority of the loop and the floor (0 = off)")
    ap.add_argument("--cpu", type=int, default=-1, help="pin the loop and the floor to this CPU (-1 = no pinning)")
    ap.add_argument("--warmup-min", type=float, default=None, help="minutes left out of the memory slope "
                    "(default: the first 20 %% of the run)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="memory sampling period in s (default 5)")
    ap.add_argument("--episode-args", default="--max-seconds 60",
                    help="extra edge-run arguments for the episodes (default '--max-seconds 60')")
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if not (args.minutes > 0 and args.rate > 0):
        ap.error("--minutes and --rate must be > 0")
    logging.basicConfig(level=logging.ERROR)
    total = args.minutes * 60.0
    warm = (args.warmup_min * 60.0) if args.warmup_min is not None else 0.2 * total
    floor_s, loop_s = total / 3.0, total * 2.0 / 3.0

    stop = threading.Event()
    t0 = time.monotonic()
    episodes = Episodes(args.episode_args.split(), seed0=10_000)
    main_rss: list[tuple[float, float]] = []
    loop_rss: list[tuple[float, float]] = []

    def sampler() -> None:
        while not stop.is_set():
            main_rss.append((time.monotonic() - t0, rss_mb(episodes.pid)))
            stop.wait(args.sample_s)

    threading.Thread(target=sampler, daemon=True).start()
    print(f"soak: {args.minutes:g} min; floor {floor_s:.0f} s then loop {loop_s:.0f} s at {args.rate:g} Hz, "
          f"SCHED_FIFO {args.rt or 'off'}; edge-run episodes throughout", flush=True)
    floor = run_floor(args.rate, floor_s, args.rt, args.cpu)
    print(f"floor: {floor['misses']} misses in {floor['cycles']} cycles", flush=True)
    loop = run_loop(args.rate, loop_s, args.rt, args.cpu, loop_rss, t0)
    print(f"loop: {loop['misses']} misses in {loop['cycles']} cycles ({loop['reason']})", flush=True)
    stop.set()
    episodes.stop()
    rows = episodes.rows()

    t_m, mb_m = (np.array(x, dtype=float) for x in zip(*main_rss)) if main_rss else (np.zeros(0), np.zeros(0))
    keep = t_m >= warm
    main_growth = growth_mb_per_min(t_m[keep], mb_m[keep])
    loop_growth = float("nan")
    if loop_rss:
        t_l, mb_l = (np.array(x, dtype=float) for x in zip(*loop_rss))
        # the loop process starts after the floor; its own first 20 % is its warm-up
        keep_l = t_l >= t_l[0] + 0.2 * (t_l[-1] - t_l[0])
        loop_growth = growth_mb_per_min(t_l[keep_l], mb_l[keep_l])
    growth = main_growth + (loop_growth if np.isfinite(loop_growth) else 0.0)
    floor_pm = floor["misses"] / (floor_s / 60.0)
    loop_pm = loop["misses"] / (loop_s / 60.0)
    vs_floor = loop_pm / floor_pm if floor_pm > 0 else (0.0 if loop_pm == 0 else float("inf"))
    flat = {"soak_minutes": args.minutes, "soak_rate_hz": args.rate, "soak_rt_priority": args.rt,
            "soak_rss_growth_mb_per_min": growth, "soak_rss_growth_episodes_mb_per_min": main_growth,
            "soak_rss_growth_loop_mb_per_min": loop_growth,
            "soak_rss_start_mb": float(mb_m[keep][0]) if keep.any() else float("nan"),
            "soak_rss_end_mb": float(mb_m[-1]) if mb_m.size else float("nan"),
            "soak_loop_misses": loop["misses"], "soak_loop_cycles": loop["cycles"],
            "soak_loop_misses_per_min": loop_pm, "soak_floor_misses": floor["misses"],
            "soak_floor_cycles": floor["cycles"], "soak_floor_misses_per_min": floor_pm,
            "soak_misses_vs_floor": vs_floor, "soak_loop_p99_ms": loop["p99"], "soak_floor_p99_ms": floor["p99"],
            "soak_episodes": len(rows), "soak_episodes_succeeded": sum(bool(r.get("success")) for r in rows),
            "soak_edge_run_rc": episodes.rc,
            "soak_episode_errors": len(episodes.errors)}
    rows = [["resident memory growth (after warm-up)", f"{growth:.3f} MB/min", "<= 0.1",
             "ok" if growth <= 0.1 else "MISSED"],
            ["  episodes process / loop process", f"{main_growth:.3f} / {loop_growth:.3f} MB/min", "", ""],
            ["loop misses", f"{loop['misses']} in {loop['cycles']} ({loop_pm:.1f}/min)", "", ""],
            ["floor misses (bare loop, same load)", f"{floor['misses']} in {floor['cycles']} ({floor_pm:.1f}/min)", "", ""],
            ["loop misses / floor misses (per min)", f"{vs_floor:.2f}", "<= 2", "ok" if vs_floor <= 2 else "MISSED"],
            ["edge-run episodes (succeeded)", f"{len(rows)} ({sum(bool(r.get('success')) for r in rows)})", "", ""],
            ["edge-run exit on SIGINT", str(episodes.rc), "130", "ok" if episodes.rc == 130 else "MISSED"]]
    print_table("soak", ["figure", "value", "target", ""], rows,
                caption=f"{machine_line()}; {args.minutes:g} min, {args.rate:g} Hz, SCHED_FIFO {args.rt or 'off'}")
    for e in episodes.errors[:5]:
        print(f"episode error: {e}")
    write_json(args.json, flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
