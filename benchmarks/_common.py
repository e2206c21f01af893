"""Shared helpers for the benchmark scripts: timing, a rich table, and ``--json FILE`` output.

Usage::

    from _common import add_json_arg, print_table, time_call, write_json

    parser = argparse.ArgumentParser(); add_json_arg(parser); args = parser.parse_args()
    t = time_call(lambda: work(x), repeats=50, warmup=5)        # {"median_ms", "p10_ms", "p90_ms", ...}
    print_table("my bench", ["case", "median ms", "vs numpy"], [["fast", f"{t['median_ms']:.3f}", "12.0x"]])
    write_json(args.json, {"my_case_ms": t["median_ms"]})      # no-op when args.json is None
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np


def time_call(fn: Callable[[], Any], repeats: int = 30, warmup: int = 3, *,
              min_time_s: float = 0.0) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls (more while the total stays
    under ``min_time_s``). Returns ``median_ms``, ``p10_ms``, ``p90_ms``, ``min_ms``, ``mean_ms``, ``n``
    (milliseconds, ``time.perf_counter`` per call)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_call: need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(samples)
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
            "n": int(a.size),
            # backwards-friendly short aliases
            "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90))}


def ratio(baseline_ms: float, candidate_ms: float) -> float:
    """How many times faster ``candidate`` is than ``baseline`` (> 1 means faster). NaN if undefined."""
    if not (candidate_ms > 0 and math.isfinite(candidate_ms) and math.isfinite(baseline_ms)):
        return float("nan")
    return baseline_ms / candidate_ms


def fmt_ratio(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.1f}x"


def fmt_ms(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def machine_line() -> str:
    """One line naming the machine the numbers came from."""
    return f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores, " \
           f"Python {platform.python_version()}, numpy {np.__version__}"


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                caption: str | None = None) -> None:
    """Print a rich table; cells are converted with ``str``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(str(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console().print(table)


def add_json_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--json FILE``: write the benchmark's results as one flat JSON object."""
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="write the results as one flat JSON object to FILE")
    return parser


def write_json(path: str | os.PathLike | None, flat: dict) -> None:
    """Write ``flat`` (str -> number/str/bool/None) to ``path``; does nothing when ``path`` is None.
    Non-finite floats become null so the file stays valid JSON."""
    if path is None:
        return
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if isinstance(v, (dict, list, tuple, set)):
            raise ValueError(f"write_json: key {k!r} holds a {type(v).__name__}; the object must be flat")
        if isinstance(v, (np.floating, np.integer, np.bool_)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[str(k)] = v
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def quiet_llama_logs() -> None:
    """Send libmtmd's log lines (one block per image: tokens, encode and decode times) through
    llama-cpp-python's logger, which prints errors only unless a model is loaded with ``verbose=True``, as
    llama.cpp's own lines are. Without it a benchmark's progress drowns in them. Harmless when llama-cpp-python
    is missing or has no such hooks."""
    import ctypes

    try:
        from llama_cpp import _logger, mtmd_cpp
    except ImportError:
        return
    for name in ("mtmd_log_set", "mtmd_helper_log_set"):
        fn = getattr(mtmd_cpp, name, None)
        if fn is not None:
            fn(_logger.llama_log_callback, ctypes.c_void_p(0))
