"""Planner benchmark on the tiny random GGUF model (nothing downloaded).

Measures, in one run:
- grammar parse rate over N seeded generations (every answer must parse into a valid Plan);
- tokens per plan;
- planner overhead (image/prompt formatting, grammar, parsing, depth lift) vs the raw llama.cpp call
  (``create_chat_completion`` wall time) measured on the same plans; target < 5 %;
- tokens/s with vs without the grammar;
- file size and load time of Q8_0 / Q4_K_M vs the f16 model;
- GIL release: a Python counter loop's rate in the main thread while generations run in a worker
  thread, vs idle, vs a pure-Python worker that holds the GIL.

The tiny model's speed says nothing about a real VLM's; the ratios (overhead share, grammar cost,
GIL release) are what carry over.

    python benchmarks/planner.py [--n 200] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, fmt_ratio, machine_line, print_table, write_json  # noqa: E402

from edgebridge.errors import PlanError  # noqa: E402
from edgebridge.export.tiny_gguf import write_tiny_gguf  # noqa: E402
from edgebridge.export.vlm import quantize  # noqa: E402
from edgebridge.runtime.lift import lift_plan  # noqa: E402
from edgebridge.runtime.planner.format import parse_plan  # noqa: E402
from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig, blank_frame  # noqa: E402

RUNTIME_PATHS = ["edgebridge.runtime.planner.gguf:GGUFPlanner.plan", "edgebridge.runtime.lift:lift_plan"]
INSTRUCTION = "put the red block in the tray"


def run_plans(planner: GGUFPlanner, n: int, frame, *, lift: bool) -> dict:
    ok, tokens, llama_ms, overhead_ms, eval_tps = 0, [], [], [], []
    for seed in range(n):
        planner.config = dataclasses.replace(planner.config, seed=seed)
        try:
            plan = planner.plan(frame, INSTRUCTION)
        except PlanError:
            continue
        t0 = time.perf_counter()
        if lift:
            lift_plan(plan, frame, np.eye(4))
        lift_ms = (time.perf_counter() - t0) * 1e3
        ok += 1
        t = plan.timings_ms
        tokens.append(t["n_tokens"])
        llama_ms.append(t["llama_ms"])
        overhead_ms.append(t["overhead_ms"] + lift_ms)
        eval_tps.append(t["tokens_per_s"])
    return {"ok": ok, "n": n, "tokens": tokens, "llama_ms": llama_ms, "overhead_ms": overhead_ms,
            "eval_tps": eval_tps}


def no_grammar_rate(planner: GGUFPlanner, n: int, frame) -> tuple[float, float]:
    """(wall tokens/s, parse rate) without grammar; answers are capped at max_tokens."""
    toks, ms, ok = 0.0, 0.0, 0
    for seed in range(n):
        planner.config = dataclasses.replace(planner.config, seed=seed)
        msgs = [{"role": "user", "content": planner.assets.render(INSTRUCTION, frame.intrinsics.width,
                                                                   frame.intrinsics.height)}]
        text, t = _gen_allow_cut(planner, msgs, frame)
        toks += t["n_tokens"]
        ms += t["llama_ms"]
        try:
            parse_plan(text, INSTRUCTION, frame.intrinsics.width, frame.intrinsics.height)
            ok += 1
        except PlanError:
            pass
    return toks / (ms / 1e3), ok / n


def _gen_allow_cut(planner: GGUFPlanner, msgs, frame):
    try:
        return planner.generate(msgs, frame.intrinsics.width, frame.intrinsics.height)
    except PlanError:  # cut off at max_tokens: count the tokens anyway
        llm = planner.llm
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=msgs, max_tokens=planner.config.max_tokens,
                                         temperature=planner.config.temperature, seed=planner.config.seed)
        dt = (time.perf_counter() - t0) * 1e3
        return out["choices"][0]["message"]["content"] or "", {"n_tokens": out["usage"]["completion_tokens"],
                                                               "llama_ms": dt}


def counter_rate(seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n / seconds


def gil_measure(planner: GGUFPlanner, frame, seconds: float) -> dict:
    idle = counter_rate(seconds)
    stop = threading.Event()

    def generate():
        seed = 0
        while not stop.is_set():
            planner.config = dataclasses.replace(planner.config, seed=seed)
            seed += 1
            try:
                planner.plan(frame, INSTRUCTION)
            except PlanError:
                pass

    def python_busy():
        x = 0
        while not stop.is_set():
            x += 1

    out = {"idle": idle}
    for name, fn in (("llama", generate), ("python", python_busy)):
        stop.clear()
        th = threading.Thread(target=fn, daemon=True)
        th.start()
        time.sleep(0.05)
        out[name] = counter_rate(seconds)
        stop.set()
        th.join()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="seeded grammar generations")
    ap.add_argument("--n-free", type=int, default=20, help="generations without grammar")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--gil-seconds", type=float, default=1.0)
    add_json_arg(ap)
    args = ap.parse_args()

    frame = blank_frame(640, 480)
    with tempfile.TemporaryDirectory() as d:
        f16 = write_tiny_gguf(Path(d) / "tiny-f16.gguf")
        files = {"F16": f16, "Q8_0": quantize(f16, Path(d) / "tiny-Q8_0.gguf", "Q8_0"),
                 "Q4_K_M": quantize(f16, Path(d) / "tiny-Q4_K_M.gguf", "Q4_K_M")}
        loads = {}
        for q, p in files.items():
            ms = []
            for _ in range(5):
                cfg = GGUFPlannerConfig(str(p), text_only=True, n_ctx=2048, n_threads=args.threads, warmup=False)
                with GGUFPlanner(cfg) as pl:
                    ms.append(pl.load_timings_ms["load_ms"])
            loads[q] = (p.stat().st_size / 1e6, statistics.median(ms))

        cfg = GGUFPlannerConfig(str(files["Q8_0"]), text_only=True, temperature=1.0, n_ctx=2048,
                                n_threads=args.threads)
        with GGUFPlanner(cfg) as planner:
            res = run_plans(planner, args.n, frame, lift=True)
            grammar_tps = sum(res["tokens"]) / (sum(res["llama_ms"]) / 1e3)
            planner.config = dataclasses.replace(cfg, use_grammar=False, max_tokens=256)
            free_tps, free_rate = no_grammar_rate(planner, args.n_free, frame)
            planner.config = cfg
            gil = gil_measure(planner, frame, args.gil_seconds)

    parse_rate = res["ok"] / res["n"]
    tokens_per_plan = float(np.mean(res["tokens"])) if res["tokens"] else float("nan")
    overhead_pct = 100.0 * sum(res["overhead_ms"]) / sum(res["llama_ms"])
    rows = [
        ["grammar parse rate", f"{res['ok']}/{res['n']} = {100 * parse_rate:.1f} %",
         f"no grammar: {100 * free_rate:.0f} % of {args.n_free}"],
        ["tokens per plan (mean)", f"{tokens_per_plan:.1f}", ""],
        ["llama.cpp call per plan (median ms)", f"{statistics.median(res['llama_ms']):.1f}", "baseline"],
        ["planner overhead per plan (median ms)", f"{statistics.median(res['overhead_ms']):.3f}",
         f"{overhead_pct:.2f} % of llama.cpp time (target < 5 %)"],
        ["tokens/s with grammar (wall)", f"{grammar_tps:.0f}", f"{fmt_ratio(grammar_tps / free_tps)} vs no grammar"],
        ["tokens/s without grammar (wall)", f"{free_tps:.0f}", "baseline"],
        ["tokens/s llama.cpp eval counter (median)", f"{statistics.median(res['eval_tps']):.0f}", ""],
    ]
    for q in ("F16", "Q8_0", "Q4_K_M"):
        size, ms = loads[q]
        rows.append([f"{q} size MB / load ms", f"{size:.2f} / {ms:.1f}",
                     "baseline" if q == "F16" else f"size {loads['F16'][0] / size:.2f}x smaller, "
                                                    f"load {fmt_ratio(loads['F16'][1] / ms)}"])
    rows += [
        ["main-thread counter, idle (M/s)", f"{gil['idle'] / 1e6:.2f}", "baseline"],
        ["... while llama.cpp generates (M/s)", f"{gil['llama'] / 1e6:.2f}", f"{gil['llama'] / gil['idle']:.2f}x idle"],
        ["... while a Python thread spins (M/s)", f"{gil['python'] / 1e6:.2f}", f"{gil['python'] / gil['idle']:.2f}x idle"],
    ]
    print_table("planner (tiny random GGUF, text-only)", ["measure", "value", "vs baseline"], rows,
                caption=f"{machine_line()}; llama.cpp threads={args.threads}")
    write_json(args.json, {
        "grammar_parse_rate": parse_rate, "tokens_per_plan": tokens_per_plan, "planner_overhead_pct": overhead_pct,
        "n_generations": res["n"], "no_grammar_parse_rate": free_rate, "llama_ms_per_plan": statistics.median(res["llama_ms"]),
        "overhead_ms_per_plan": statistics.median(res["overhead_ms"]), "grammar_tokens_per_s": grammar_tps,
        "no_grammar_tokens_per_s": free_tps, "f16_mb": loads["F16"][0], "q8_0_mb": loads["Q8_0"][0],
        "q4_k_m_mb": loads["Q4_K_M"][0], "f16_load_ms": loads["F16"][1], "q8_0_load_ms": loads["Q8_0"][1],
        "q4_k_m_load_ms": loads["Q4_K_M"][1], "gil_main_rate_ratio_llama": gil["llama"] / gil["idle"],
        "gil_main_rate_ratio_python": gil["python"] / gil["idle"],
    })
    return 0 if parse_rate == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
