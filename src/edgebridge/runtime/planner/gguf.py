"""GGUF planner: a VLM run in-process by llama.cpp (llama-cpp-python), grammar-constrained.

The model is loaded once (and warmed up) when the planner is constructed; ``plan()`` renders the
versioned prompt, sends the image as a PNG data URI in the chat message (when a vision projector,
``mmproj``, is configured), decodes under the bounded plan grammar, parses and validates the answer.
Per-call timings (image encode, prompt format, prompt eval, generation, tokens/s) come from llama.cpp's
perf counters and land in ``Plan.timings_ms``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...config import check
from ...contracts import RGBD, Anchor, Plan
from ...errors import PlanError, require
from .cpu_repack import REPACK_SETTINGS, model_params_override, resolve_cpu_repack
from .format import MAX_ANCHORS, build_grammar, parse_plan
from .prompt import (GGUF_KEY_PLAN_HEIGHT, GGUF_KEY_PLAN_WIDTH, GGUF_KEY_VERSION, chat_messages, downscale,
                     image_data_uri, load_assets, resize)

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 60.0  # how long close() waits for a generation still running (bounded by max_tokens)

# config name -> llama_cpp.llama_chat_format class
CHAT_HANDLERS = {
    "qwen2.5-vl": "Qwen25VLChatHandler",
    "mtmd": "MTMDChatHandler",
    "llava-1.5": "Llava15ChatHandler",
    "llava-1.6": "Llava16ChatHandler",
    "moondream": "MoondreamChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler",
}


@dataclass(frozen=True)
class GGUFPlannerConfig:
    """``model_path``: the language model GGUF; ``mmproj_path``: its vision projector GGUF.
    Without ``mmproj_path`` the planner refuses image requests unless ``text_only`` is set, in which
    case it plans from the instruction alone and says so in the log (for tests and text models).
    ``n_threads``: 0 means all cores but one, which is left to the control loop (llama.cpp's worker
    threads spin; on an oversubscribed CPU more threads than free cores makes generation many times slower).
    ``n_gpu_layers``: -1 offloads all layers (Jetson with a CUDA build), 0 keeps everything on the CPU.
    ``image_max_side``: the image is block-averaged down to this long side before encoding; anchors are
    scaled back to full resolution. ``cpu_repack``: whether llama.cpp repacks quantised weights for the CPU's
    matrix units; ``auto`` is off on CPUs that report Intel AMX (llama.cpp's AMX kernels aborted on one such
    machine) and on elsewhere (see ``cpu_repack.py``)."""

    model_path: str
    mmproj_path: str | None = None
    chat_handler: str = "qwen2.5-vl"
    text_only: bool = False
    n_ctx: int = 4096
    n_threads: int = 0
    n_gpu_layers: int = 0
    max_tokens: int = 768
    temperature: float = 0.0
    seed: int = 0
    max_anchors: int = MAX_ANCHORS
    image_max_side: int | None = 448
    use_grammar: bool = True
    warmup: bool = True
    cpu_repack: str = "auto"
    verbose: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.model_path, str) and bool(self.model_path), "model_path",
              f"expected a path to a .gguf file, got {self.model_path!r}")
        check(self.chat_handler in CHAT_HANDLERS, "chat_handler",
              f"expected one of {sorted(CHAT_HANDLERS)}, got {self.chat_handler!r}")
        check(self.n_ctx >= 256, "n_ctx", f"must be >= 256, got {self.n_ctx}")
        check(self.n_threads >= 0, "n_threads", f"must be >= 0 (0 = all cores), got {self.n_threads}")
        check(self.n_gpu_layers >= -1, "n_gpu_layers", f"must be >= -1 (-1 = all), got {self.n_gpu_layers}")
        check(self.max_tokens >= 16, "max_tokens", f"must be >= 16, got {self.max_tokens}")
        check(0.0 <= self.temperature <= 5.0, "temperature", f"must lie in [0, 5], got {self.temperature}")
        check(1 <= self.max_anchors <= 64, "max_anchors", f"must lie in [1, 64], got {self.max_anchors}")
        check(self.image_max_side is None or self.image_max_side >= 32, "image_max_side",
              f"must be None or >= 32, got {self.image_max_side}")
        check(self.cpu_repack in REPACK_SETTINGS, "cpu_repack",
              f"expected one of {list(REPACK_SETTINGS)}, got {self.cpu_repack!r}")


def _perf(llm) -> tuple[float, float, int, int]:
    """(prompt eval ms, generation ms, prompt tokens, generated tokens) since the last reset."""
    lc = require("llama_cpp", "vlm")
    d = lc.llama_perf_context(llm._ctx.ctx)
    return float(d.t_p_eval_ms), float(d.t_eval_ms), int(d.n_p_eval), int(d.n_eval)


def map_plan(plan: Plan, src_w: int, src_h: int, width: int, height: int) -> Plan:
    """Map anchors from a ``src_w`` x ``src_h`` image the model saw back to the ``width`` x ``height``
    frame (pixel centres, per axis)."""
    if (src_w, src_h) == (width, height):
        return plan
    sx, sy = width / src_w, height / src_h
    anchors = tuple(Anchor(min(width - 1, max(0, round((a.u + 0.5) * sx - 0.5))),
                           min(height - 1, max(0, round((a.v + 0.5) * sy - 0.5))), a.gripper, a.depth)
                    for a in plan.anchors)
    return dataclasses.replace(plan, anchors=anchors)


def scale_plan(plan: Plan, factor: int, width: int, height: int) -> Plan:
    """Map anchors from a ``factor``-times downscaled image back to full resolution (pixel centres)."""
    if factor == 1:
        return plan
    anchors = tuple(Anchor(min(width - 1, int((a.u + 0.5) * factor)),
                           min(height - 1, int((a.v + 0.5) * factor)), a.gripper, a.depth)
                    for a in plan.anchors)
    return dataclasses.replace(plan, anchors=anchors)


class GGUFPlanner:
    """In-process llama.cpp planner implementing the ``Planner`` protocol."""

    name = "gguf"

    def __init__(self, config: GGUFPlannerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._grammars: dict[tuple[int, int], object] = {}
        self._llm = None
        self._handler = None
        self.plan_size: tuple[int, int] | None = None
        self.assets = load_assets()
        self.load_timings_ms: dict[str, float] = {}
        self._load()

    # ------------------------------------------------------------------ lifecycle
    def _load(self) -> None:
        cfg = self.config
        lc = require("llama_cpp", "vlm", "the GGUF planner")
        path = Path(cfg.model_path)
        if not path.is_file():
            raise PlanError(f"GGUF planner: model file {path} not found; export one with 'edge-export vlm' "
                            f"or fix planner.model_path")
        if not cfg.text_only and cfg.mmproj_path is None:
            raise PlanError(f"GGUF planner: model {path.name} is configured without a vision projector "
                            f"(mmproj_path), so it cannot see the image; set mmproj_path to the model's "
                            f"mmproj GGUF, or text_only=true to plan from the instruction alone")
        if cfg.mmproj_path is not None and not Path(cfg.mmproj_path).is_file():
            raise PlanError(f"GGUF planner: vision projector {cfg.mmproj_path} not found; fix planner.mmproj_path")
        t0 = time.perf_counter()
        if cfg.mmproj_path is not None and not cfg.text_only:
            from llama_cpp import llama_chat_format

            cls = getattr(llama_chat_format, CHAT_HANDLERS[cfg.chat_handler])
            try:
                self._handler = cls(clip_model_path=str(cfg.mmproj_path), verbose=cfg.verbose)
            except (ValueError, OSError) as e:
                raise PlanError(f"GGUF planner: cannot use vision projector {cfg.mmproj_path} with "
                                f"{cfg.chat_handler!r} ({e})") from e
        try:
            with model_params_override(use_extra_bufts=resolve_cpu_repack(cfg.cpu_repack)):
                self._llm = lc.Llama(model_path=str(path), chat_handler=self._handler, n_ctx=cfg.n_ctx,
                                     n_threads=cfg.n_threads or max(1, (os.cpu_count() or 2) - 1),
                                     n_gpu_layers=cfg.n_gpu_layers, seed=cfg.seed, verbose=cfg.verbose)
        except (ValueError, RuntimeError, OSError) as e:
            raise PlanError(f"GGUF planner: llama.cpp could not load {path} ({e}); is it a complete GGUF "
                            f"file of a supported architecture? Re-export it with 'edge-export vlm'") from e
        if self._handler is not None and hasattr(self._handler, "_init_mtmd_context"):
            try:  # load the projector now (llama-cpp-python would on the first image): a bad one fails here
                self._handler._init_mtmd_context(self._llm)
            except (ValueError, RuntimeError, OSError) as e:
                self.close()
                raise PlanError(f"GGUF planner: vision projector {cfg.mmproj_path} does not load with model "
                                f"{path.name} ({e}); is it the complete mmproj GGUF exported with this model? "
                                f"Re-export both with 'edge-export vlm' or fix planner.mmproj_path") from e
        self.load_timings_ms["load_ms"] = (time.perf_counter() - t0) * 1e3
        meta = self._llm.metadata or {}
        try:  # a model trained in one image size: every frame is resized to it, anchors mapped back
            self.plan_size = (int(meta[GGUF_KEY_PLAN_WIDTH]), int(meta[GGUF_KEY_PLAN_HEIGHT]))
        except (KeyError, ValueError):
            self.plan_size = None
        version = meta.get(GGUF_KEY_VERSION)
        if version is not None and version != self.assets.version:
            log.warning("model %s was exported for plan format %s, runtime speaks %s: answers may not parse",
                        path.name, version, self.assets.version)
        if cfg.text_only:
            log.warning("GGUF planner %s runs text-only: it ignores the camera image and plans from the "
                        "instruction alone", path.name)
        if cfg.warmup:
            t0 = time.perf_counter()
            self._llm.create_completion("{", max_tokens=1, temperature=0.0)
            self.load_timings_ms["warmup_ms"] = (time.perf_counter() - t0) * 1e3
        log.info("GGUF planner loaded %s in %.0f ms", path.name, self.load_timings_ms["load_ms"])

    @property
    def vision(self) -> bool:
        return self._handler is not None

    @property
    def llm(self):
        if self._llm is None:
            raise PlanError("GGUF planner is closed; create a new one")
        return self._llm

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Free the model, after a generation still running in another thread (a planner worker left
        behind by a stop request) has finished: freeing under it would crash the process. If it is still
        running after ``timeout`` s the model is left allocated (the process is ending) and this is logged."""
        if not self._lock.acquire(timeout=timeout):
            log.warning("GGUF planner: a generation is still running after %.0f s; the model is not freed", timeout)
            return
        try:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
            stack = getattr(self._handler, "_exit_stack", None)
            if stack is not None:
                stack.close()
            self._handler = None
        finally:
            self._lock.release()

    def __enter__(self) -> "GGUFPlanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ planning
    def grammar(self, width: int, height: int):
        key = (int(width), int(height))
        if key not in self._grammars:
            lc = require("llama_cpp", "vlm")
            self._grammars[key] = lc.LlamaGrammar.from_string(
                build_grammar(width, height, self.config.max_anchors), verbose=self.config.verbose)
        return self._grammars[key]

    def generate(self, messages: list[dict], width: int, height: int) -> tuple[str, dict]:
        """Run one chat completion; return the answer text and llama.cpp timings."""
        cfg = self.config
        lc = require("llama_cpp", "vlm")
        llm = self.llm
        t0 = time.perf_counter()
        grammar = self.grammar(width, height) if cfg.use_grammar else None
        t1 = time.perf_counter()
        lc.llama_perf_context_reset(llm._ctx.ctx)
        try:
            # repeat_penalty 1: a plan repeats tokens by design (the same pixel, the same separators), and
            # llama-cpp-python's default of 1.1 would push greedy decoding off the model's own answer
            out = llm.create_chat_completion(messages=messages, grammar=grammar, max_tokens=cfg.max_tokens,
                                             temperature=cfg.temperature, seed=cfg.seed, repeat_penalty=1.0)
        except (ValueError, RuntimeError) as e:
            raise PlanError(f"GGUF planner: generation failed ({e}); check n_ctx ({cfg.n_ctx}) and the model") from e
        t2 = time.perf_counter()
        p_ms, g_ms, n_p, n_g = _perf(llm)
        choice = out["choices"][0]
        text = choice["message"]["content"] or ""
        timings = {"grammar_ms": (t1 - t0) * 1e3, "llama_ms": (t2 - t1) * 1e3, "prompt_eval_ms": p_ms,
                   "generation_ms": g_ms, "n_prompt_tokens": float(n_p),
                   "n_tokens": float(out.get("usage", {}).get("completion_tokens", n_g)),
                   "tokens_per_s": (n_g / (g_ms / 1e3)) if g_ms > 0 else 0.0}
        if choice.get("finish_reason") == "length":
            raise PlanError(f"GGUF planner: answer cut off at max_tokens={cfg.max_tokens} before the plan was "
                            f"complete ({len(text)} chars); raise max_tokens")
        return text, timings

    def plan(self, rgbd: RGBD, instruction: str) -> Plan:
        if not isinstance(rgbd, RGBD):
            raise PlanError(f"GGUF planner: expected an RGBD frame, got {type(rgbd).__name__}")
        cfg = self.config
        t0 = time.perf_counter()
        h, w = rgbd.rgb.shape[:2]
        factor = 1
        if cfg.text_only:  # the model sees no image: coordinates refer to the full frame
            sh, sw, uri = h, w, None
        elif self.plan_size is not None:  # the model plans in its own image size
            sw, sh = self.plan_size
            uri = image_data_uri(resize(rgbd.rgb, sw, sh))
        else:
            small, factor = downscale(rgbd.rgb, cfg.image_max_side)
            sh, sw = small.shape[:2]
            uri = image_data_uri(small)
        t1 = time.perf_counter()
        try:
            prompt = self.assets.render(instruction, sw, sh, cfg.max_anchors)
        except ValueError as e:
            raise PlanError(f"GGUF planner: {e}") from e
        messages = chat_messages(prompt, uri)
        t2 = time.perf_counter()
        with self._lock:
            text, timings = self.generate(messages, sw, sh)
        t3 = time.perf_counter()
        plan = parse_plan(text, instruction, sw, sh, max_anchors=cfg.max_anchors, source=self.name)
        plan = scale_plan(plan, factor, w, h) if factor != 1 else map_plan(plan, sw, sh, w, h)
        t4 = time.perf_counter()
        timings.update(image_encode_ms=(t1 - t0) * 1e3, prompt_format_ms=(t2 - t1) * 1e3,
                       parse_ms=(t4 - t3) * 1e3, total_ms=(t4 - t0) * 1e3)
        timings["overhead_ms"] = timings["total_ms"] - timings["llama_ms"]
        return dataclasses.replace(plan, timings_ms=timings, stamp_ns=rgbd.stamp_ns)


def blank_frame(width: int = 64, height: int = 48) -> RGBD:
    """A grey frame with flat 1 m depth and simple intrinsics (warm-up, tests, benchmarks)."""
    from ...contracts import Intrinsics

    intr = Intrinsics(width, height, float(width), float(width), width / 2 - 0.5, height / 2 - 0.5)
    return RGBD(np.full((height, width, 3), 128, np.uint8), np.ones((height, width), np.float32), intr)
