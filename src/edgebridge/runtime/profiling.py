"""Latency profiling for ``edge-run --profile``: per-stage timings, loop jitter, CPU and memory.

Stages (milliseconds, wall time): capture, cloud (kernels), planner, planner_wait, planner_hold, lift,
spline, expert, loop_compute, driver_io and end_to_end: observation -> the first command sent from the
chunk computed on it, on the wall clock (``time.monotonic_ns``). The observation is the camera frame when
the expert uses the cloud, else the arm state; in real time its stamp, in lock-step the wall time its
capture started (the simulated clock stands still while stages compute, so it cannot time them).
When profiling is off the runtime holds ``None`` instead of a :class:`Profiler`, so the only cost is an
``is not None`` test per stage. Samples and timeline events go to preallocated arrays (no allocation
in the loop).

``Profiler.report(out_dir, loop_stats, realtime=...)`` prints a rich table and writes ``profile.json``,
``profile.trace.json`` (Chrome trace events: one track per process and thread; open it in
https://ui.perfetto.dev or chrome://tracing), PNG plots (matplotlib, Agg, imported only here) and
``index.html`` showing them. Loop period and jitter are wall-clock figures only in real time: in
lock-step the loop never waits on the wall clock, so the report leaves them out and says why.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LOCKSTEP_NOTE = ("period and jitter not measured in lock-step: the loop does not wait on the wall clock "
                 "(simulated time stands still while stages compute); run with --realtime to measure them")

STAGES = ("capture", "cloud", "planner", "planner_wait", "planner_hold", "lift", "spline", "expert", "loop_compute",
          "driver_io", "end_to_end")


class _Samples:
    __slots__ = ("buf", "n")

    def __init__(self, capacity: int) -> None:
        self.buf = np.zeros(capacity, dtype=np.int64)
        self.n = 0

    def add(self, ns: int) -> None:
        self.buf[self.n % len(self.buf)] = ns
        self.n += 1

    def values_ms(self) -> np.ndarray:
        return self.buf[:min(self.n, len(self.buf))] / 1e6


EVENT_DTYPE = np.dtype([("stage", np.int16), ("pid", np.int64), ("tid", np.int64), ("start_ns", np.int64),
                        ("dur_ns", np.int64)])


class Profiler:
    """Thread-safe enough for its use: each stage is written by one thread (the loop or one worker);
    timeline events share one ring whose slot counter is taken under a lock."""

    def __init__(self, capacity: int = 1 << 16, event_capacity: int = 1 << 17) -> None:
        self._s = {name: _Samples(capacity) for name in STAGES}
        self._lock = threading.Lock()
        self._obs: dict[int, int] = {}
        self._t0_wall = time.perf_counter()
        self._t0_cpu = time.process_time()
        self._events = np.zeros(event_capacity, dtype=EVENT_DTYPE)
        self._n_events = 0
        self._stage_ids: dict[str, int] = {name: i for i, name in enumerate(STAGES)}
        self._threads: dict[tuple[int, int], str] = {}  # (pid, tid) -> thread name
        self._pid = os.getpid()

    def record_ns(self, stage: str, ns: int) -> None:
        s = self._s.get(stage)
        if s is None:
            with self._lock:
                s = self._s.setdefault(stage, _Samples(1 << 12))
        s.add(int(ns))

    def record_span(self, stage: str, start_ns: int, dur_ns: int) -> None:
        """A stage that ran on the calling thread from ``start_ns`` (``time.monotonic_ns``) for ``dur_ns``:
        a latency sample and a timeline event."""
        self.record_ns(stage, dur_ns)
        sid = self._stage_ids.get(stage)
        if sid is None:
            with self._lock:
                sid = self._stage_ids.setdefault(stage, len(self._stage_ids))
        tid = threading.get_ident()
        key = (self._pid, tid)
        if key not in self._threads:
            self._threads[key] = threading.current_thread().name
        with self._lock:
            i = self._n_events % len(self._events)
            self._n_events += 1
        self._events[i] = (sid, self._pid, tid, start_ns, dur_ns)

    def events_array(self) -> dict:
        """The timeline events (oldest lost when the ring wrapped) with their stage and thread names, to
        ship to another process or write as a trace."""
        n = min(self._n_events, len(self._events))
        names = {i: name for name, i in self._stage_ids.items()}
        return {"rows": self._events[:n].copy(), "stages": names, "threads": dict(self._threads)}

    def merge_events(self, ev: dict) -> None:
        """Add timeline events recorded by another process's profiler (see :meth:`events_array`)."""
        for row in ev["rows"]:
            name = ev["stages"][int(row["stage"])]
            sid = self._stage_ids.setdefault(name, len(self._stage_ids))
            i = self._n_events % len(self._events)
            self._n_events += 1
            self._events[i] = (sid, row["pid"], row["tid"], row["start_ns"], row["dur_ns"])
        self._threads.update(ev["threads"])

    def trace_events(self) -> dict:
        """Chrome trace-event JSON (``{"traceEvents": [...]}``): one complete ("X") event per recorded
        span, microseconds from the first event, named tracks per process and thread."""
        ev = self.events_array()
        rows = ev["rows"]
        t0 = int(rows["start_ns"].min()) if rows.size else 0
        out = []
        for pid in sorted({int(p) for p in rows["pid"]} | {self._pid}):
            name = "edge-run" if pid == self._pid else "control loop process"
            out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"{name} ({pid})"}})
        for (pid, tid), tname in sorted(ev["threads"].items()):
            out.append({"name": "thread_name", "ph": "M", "pid": int(pid), "tid": int(tid), "args": {"name": tname}})
        for r in rows[np.argsort(rows["start_ns"], kind="stable")]:
            out.append({"name": ev["stages"][int(r["stage"])], "ph": "X", "pid": int(r["pid"]), "tid": int(r["tid"]),
                        "ts": (int(r["start_ns"]) - t0) / 1e3, "dur": int(r["dur_ns"]) / 1e3})
        return {"traceEvents": out, "displayTimeUnit": "ms"}

    def time(self, stage: str) -> "_Timer":
        """``with profiler.time("expert"): ...``"""
        return _Timer(self, stage)

    def chunk_observed(self, chunk, observed_ns: int) -> None:
        """The expert worker registers the stamp of the observation (camera frame, else arm state) a chunk
        was computed from; the first command sent from that chunk closes the end-to-end measurement."""
        self._obs[id(chunk)] = int(observed_ns)
        if len(self._obs) > 64:  # chunks that were never used (superseded before the next tick)
            self._obs.pop(next(iter(self._obs)), None)

    def take_observed(self, chunk) -> int:
        """The observation stamp registered for ``chunk`` (0 if none), removed here: for a loop in its own
        process, which gets the stamp with the chunk through shared memory and measures end-to-end there."""
        return self._obs.pop(id(chunk), 0)

    def samples_ns(self, stages: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Raw samples (int64 ns, oldest first lost when a ring wrapped) per stage, to ship to another process."""
        return {k: s.buf[:min(s.n, len(s.buf))].copy() for k, s in self._s.items()
                if (stages is None or k in stages) and s.n}

    def merge_samples(self, samples: dict) -> None:
        """Add samples recorded elsewhere (the control-loop process) to this profiler; the key
        ``__events__`` holds that process's timeline events (:meth:`events_array`)."""
        for stage, values in (samples or {}).items():
            if stage == "__events__":
                self.merge_events(values)
                continue
            for v in np.asarray(values, dtype=np.int64):
                self.record_ns(stage, int(v))

    def command_sent(self, now_ns: int, chunk) -> None:
        """Called by the loop after each sent command with the wall time (``time.monotonic_ns``):
        end-to-end latency, once per chunk."""
        if chunk is not None:
            obs = self._obs.pop(id(chunk), None)
            if obs is not None:
                self._s["end_to_end"].add(int(now_ns - obs))

    def stage_table(self) -> dict[str, dict]:
        out = {}
        for name, s in self._s.items():
            v = s.values_ms()
            if v.size == 0:
                continue
            out[name] = {"n": int(s.n), "p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
                         "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max()), "mean_ms": float(v.mean())}
        return out

    def system(self) -> dict:
        wall = time.perf_counter() - self._t0_wall
        cpu = time.process_time() - self._t0_cpu
        ru = resource.getrusage(resource.RUSAGE_SELF)
        rss_mb = ru.ru_maxrss / 1024.0
        try:
            with open("/proc/self/statm") as f:
                rss_mb_now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # pragma: no cover - non-Linux
            rss_mb_now = float("nan")
        from .power import read_power_mode

        return {"wall_s": wall, "cpu_s": cpu, "cpu_percent": 100.0 * cpu / wall if wall > 0 else float("nan"),
                "rss_peak_mb": rss_mb, "rss_mb": rss_mb_now, "cpus": os.cpu_count(),
                "power": read_power_mode()}  # Jetson power mode and clocks; {} elsewhere

    # ------------------------------------------------------------------ report
    def report(self, out_dir: str | Path | None, loop_stats=None, title: str = "edge-run profile", *,
               realtime: bool = True) -> dict:
        """Print the table; with ``out_dir`` also write profile.json, profile.trace.json, PNGs and
        index.html. Returns the data. ``realtime=False`` (lock-step): the loop's period statistics are
        on simulated time, so only its cycle count is kept, with a note saying why."""
        stages = self.stage_table()
        loop = loop_stats.summary() if loop_stats else {}
        if loop and not realtime:
            loop = {"cycles": loop.get("cycles", 0),
                    "note": LOCKSTEP_NOTE}
        data = {"stages": stages, "system": self.system(), "loop": loop, "realtime": bool(realtime)}
        self._print(stages, data, title)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "profile.json").write_text(json.dumps(data, indent=2) + "\n")
            (out / "profile.trace.json").write_text(json.dumps(self.trace_events()) + "\n")
            pngs = self._plots(out, loop_stats if realtime else None)
            self._html(out, data, pngs, title)
            log.info("profile written to %s", out)
        return data

    def _print(self, stages: dict, data: dict, title: str) -> None:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in ("stage", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"):
            t.add_column(c, justify="left" if c == "stage" else "right")
        for name in list(STAGES) + [k for k in stages if k not in STAGES]:
            if name in stages:
                s = stages[name]
                t.add_row(name, str(s["n"]), f"{s['p50_ms']:.3f}", f"{s['p95_ms']:.3f}", f"{s['p99_ms']:.3f}",
                          f"{s['max_ms']:.3f}")
        lp, sy = data["loop"], data["system"]
        cap = (f"CPU {sy['cpu_percent']:.0f}% of one core over {sy['wall_s']:.1f} s, RSS {sy['rss_mb']:.0f} MB "
               f"(peak {sy['rss_peak_mb']:.0f} MB). Stage times are wall time.")
        if sy.get("power"):
            from .power import describe_power

            cap += f" Power: {describe_power(sy['power'])}."
        if lp.get("cycles", 0) > 1 and "period_err_p99_ms" in lp:
            cap = (f"loop: {lp['cycles']} cycles, {lp['misses']} deadline misses, period error p50 "
                   f"{lp['period_err_p50_ms']:.3f} / p99 {lp['period_err_p99_ms']:.3f} / max "
                   f"{lp['period_err_max_ms']:.3f} ms (wall clock). " + cap)
        elif "note" in lp:
            cap = f"loop: {lp['cycles']} cycles; {lp['note']}. " + cap
        t.caption = cap
        Console().print(t)

    def _plots(self, out: Path, loop_stats) -> list[str]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            log.warning("profile plots skipped: matplotlib is not importable (%s); pip install 'edgebridge[plot]'", e)
            return []
        names = []
        stages = [(n, s.values_ms()) for n, s in self._s.items() if s.n]
        if stages:
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.boxplot([v for _, v in stages], showfliers=True)
            ax.set_xticks(range(1, len(stages) + 1), [n for n, _ in stages], rotation=30)
            ax.set_yscale("log")
            ax.set_ylabel("ms")
            ax.set_title("per-stage latency")
            fig.tight_layout()
            fig.savefig(out / "stages.png", dpi=100)
            plt.close(fig)
            names.append("stages.png")
        if loop_stats is not None and loop_stats.n > 2:
            m = min(loop_stats.n, len(loop_stats.period))
            per = loop_stats.period[1:m] / 1e6
            nominal = loop_stats.period_ns / 1e6
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.hist(per - nominal, bins=100, log=True)
            ax.set_xlabel("period - nominal (ms)")
            ax.set_ylabel("cycles")
            ax.set_title(f"loop period jitter ({loop_stats.misses} deadline misses)")
            fig.tight_layout()
            fig.savefig(out / "jitter.png", dpi=100)
            plt.close(fig)
            names.append("jitter.png")
        return names

    @staticmethod
    def _html(out: Path, data: dict, pngs: list[str], title: str) -> None:
        rows = "".join(f"<tr><td>{n}</td><td>{s['n']}</td><td>{s['p50_ms']:.3f}</td><td>{s['p95_ms']:.3f}</td>"
                       f"<td>{s['p99_ms']:.3f}</td><td>{s['max_ms']:.3f}</td></tr>" for n, s in data["stages"].items())
        imgs = "".join(f'<p><img src="{p}" alt="{p}"></p>' for p in pngs)
        loop = "".join(f"<li>{k}: {v:.4g}</li>" if isinstance(v, float) else f"<li>{k}: {v}</li>"
                       for k, v in {**data["loop"], **data["system"]}.items())
        (out / "index.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            f"<h1>{title}</h1><table border='1' cellpadding='4'><tr><th>stage</th><th>n</th><th>p50 ms</th>"
            f"<th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr>{rows}</table><ul>{loop}</ul>{imgs}"
            f"<p>Raw numbers: <a href='profile.json'>profile.json</a></p></body></html>\n")


class _Timer:
    __slots__ = ("p", "stage", "t0")

    def __init__(self, p: Profiler | None, stage: str) -> None:
        self.p, self.stage = p, stage

    def __enter__(self) -> "_Timer":
        self.t0 = time.monotonic_ns()
        return self

    def __exit__(self, *exc) -> None:
        if self.p is not None:
            self.p.record_span(self.stage, self.t0, time.monotonic_ns() - self.t0)


class _NullTimer:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


NULL_TIMER = _NullTimer()


def timer(profiler: Profiler | None, stage: str):
    """``with timer(prof, "expert"):`` — a shared no-op when ``prof`` is None."""
    return NULL_TIMER if profiler is None else _Timer(profiler, stage)
