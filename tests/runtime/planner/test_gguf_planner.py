"""GGUF planner on the tiny random model: grammar parse rate, errors, timings, quantisation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from edgebridge.contracts import Anchor, Plan
from edgebridge.errors import PlanError
from edgebridge.runtime.planner.format import plan_schema, validate_json
from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig, blank_frame, scale_plan

N_GENERATIONS = 50  # benchmarks/planner.py runs 200


@pytest.fixture(scope="module")
def planner(tiny_model):
    cfg = GGUFPlannerConfig(str(tiny_model), text_only=True, temperature=1.0, n_ctx=2048, n_threads=1)
    with GGUFPlanner(cfg) as p:
        yield p


def test_every_grammar_generation_parses_and_validates(planner):
    """Random weights + bounded grammar: every answer is a valid plan (and valid against the schema)."""
    frame = blank_frame(640, 480)
    schema = plan_schema(640, 480)
    raw = []
    orig = planner.generate

    def spy(messages, w, h):
        text, t = orig(messages, w, h)
        raw.append(text)
        return text, t

    planner.generate = spy
    try:
        n_anchors = set()
        for seed in range(N_GENERATIONS):
            planner.config = dataclasses.replace(planner.config, seed=seed)
            plan = planner.plan(frame, "put the red block in the tray")
            n_anchors.add(len(plan.anchors))
            assert all(a.u < 640 and a.v < 480 for a in plan.anchors)
    finally:
        del planner.generate
    assert len(raw) == N_GENERATIONS
    for text in raw:
        assert validate_json(json.loads(text), schema) == []
    assert len(set(raw)) > N_GENERATIONS // 2, "seeds should give different answers"
    assert len(n_anchors) > 1


def test_without_grammar_random_model_does_not_answer_json(tiny_model):
    cfg = GGUFPlannerConfig(str(tiny_model), text_only=True, temperature=1.0, use_grammar=False, max_tokens=64,
                            n_ctx=2048)
    with GGUFPlanner(cfg) as p:
        failures = 0
        for seed in range(3):
            p.config = dataclasses.replace(cfg, seed=seed)
            try:
                p.plan(blank_frame(), "pick")
            except PlanError:
                failures += 1
    assert failures == 3


def test_timings_reported(planner):
    planner.config = dataclasses.replace(planner.config, seed=1)
    t = planner.plan(blank_frame(), "pick").timings_ms
    for key in ("prompt_eval_ms", "generation_ms", "tokens_per_s", "n_tokens", "llama_ms", "parse_ms",
                "prompt_format_ms", "total_ms", "overhead_ms"):
        assert key in t and t[key] >= 0, key
    assert t["n_tokens"] > 10 and t["total_ms"] >= t["llama_ms"]


def test_cut_off_answer_is_an_error(tiny_model):
    cfg = GGUFPlannerConfig(str(tiny_model), text_only=True, max_tokens=16, n_ctx=2048)
    with GGUFPlanner(cfg) as p, pytest.raises(PlanError, match="max_tokens=16"):
        p.plan(blank_frame(), "pick")


def test_missing_model_file(tmp_path):
    with pytest.raises(PlanError, match=r"model file .*nope\.gguf not found"):
        GGUFPlanner(GGUFPlannerConfig(str(tmp_path / "nope.gguf"), text_only=True))


def test_unreadable_model_file(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(PlanError, match="could not load"):
        GGUFPlanner(GGUFPlannerConfig(str(bad), text_only=True))


def test_image_request_without_vision_is_refused(tiny_model):
    with pytest.raises(PlanError, match="without a vision projector"):
        GGUFPlanner(GGUFPlannerConfig(str(tiny_model)))
    with pytest.raises(PlanError, match="vision projector .* not found"):
        GGUFPlanner(GGUFPlannerConfig(str(tiny_model), mmproj_path=str(tiny_model) + ".missing"))


def test_projector_that_is_not_a_vision_model(tiny_model):
    """A language model passed as mmproj fails with a PlanError, at load or at the first plan."""
    with pytest.raises(PlanError):
        with GGUFPlanner(GGUFPlannerConfig(str(tiny_model), mmproj_path=str(tiny_model), chat_handler="mtmd",
                                           n_ctx=2048)) as p:
            p.plan(blank_frame(), "pick")


def test_config_validation():
    from edgebridge.config import ConfigError

    with pytest.raises(ConfigError, match="chat_handler"):
        GGUFPlannerConfig("m.gguf", chat_handler="gpt")
    with pytest.raises(ConfigError, match="n_gpu_layers"):
        GGUFPlannerConfig("m.gguf", n_gpu_layers=-2)


def test_scale_plan_maps_to_pixel_centres():
    p = Plan("pick", (Anchor(0, 0, 1.0), Anchor(319, 239, 0.0)), orientation=np.array([1.0, 0, 0, 0]))
    q = scale_plan(p, 2, 640, 480)
    assert [(a.u, a.v) for a in q.anchors] == [(1, 1), (639, 479)]  # inside the 2x2 block each came from
    assert scale_plan(p, 1, 640, 480) is p


def test_close_waits_for_a_running_generation_before_freeing_the_model(caplog):
    import threading

    class Model:
        closed = False

        def close(self):
            self.closed = True

    planner = object.__new__(GGUFPlanner)  # no model file: only the lifecycle is under test
    planner._lock, planner._llm, planner._handler = threading.Lock(), Model(), None
    model = planner._llm
    planner._lock.acquire()  # a worker thread inside generate()
    planner.close(timeout=0.05)
    assert not model.closed and "generation is still running" in caplog.text
    threading.Timer(0.1, planner._lock.release).start()
    planner.close(timeout=5.0)  # waits for the generation, then frees
    assert model.closed and planner._llm is None
