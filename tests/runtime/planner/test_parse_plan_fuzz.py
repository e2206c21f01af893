"""Property tests of the plan parser: whatever the text, ``parse_plan`` returns a valid ``Plan`` or raises
``PlanError``, nothing else; and whatever it accepts holds the plan's invariants, checked here
independently of the schema code (``accepted_invalid`` would be a plan the runtime must not act on)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (extra 'dev') not installed")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from edgebridge.contracts import Plan  # noqa: E402
from edgebridge.errors import PlanError  # noqa: E402
from edgebridge.rotations import quat_to_matrix  # noqa: E402
from edgebridge.runtime.planner.format import MAX_ANCHORS, parse_plan, plan_to_json  # noqa: E402

W, H = 64, 48
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = ('{"anchors": [{"point_2d": [10, 20], "gripper": "open"}, {"point_2d": [63, 47], "gripper": "close"}, '
        '{"point_2d": [0, 0], "gripper": "open"}], "yaw": -90, "subtasks": [0, 2]}')


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def valid_answer(obj, width: int = W, height: int = H, max_anchors: int = MAX_ANCHORS) -> bool:
    """The answer format, written out by hand (not through plan_schema / validate_json)."""
    if not isinstance(obj, dict) or not {"anchors", "yaw"} <= set(obj) <= {"anchors", "yaw", "subtasks"}:
        return False
    anchors, yaw = obj["anchors"], obj["yaw"]
    if not isinstance(anchors, list) or not 1 <= len(anchors) <= max_anchors:
        return False
    for a in anchors:
        if not isinstance(a, dict) or set(a) != {"point_2d", "gripper"} or a["gripper"] not in ("open", "close"):
            return False
        p = a["point_2d"]
        if not isinstance(p, list) or len(p) != 2 or not all(_is_int(c) for c in p):
            return False
        if not (0 <= p[0] < width and 0 <= p[1] < height):
            return False
    if not _is_int(yaw) or not -90 <= yaw <= 90:
        return False
    subtasks = obj.get("subtasks", [])
    if not isinstance(subtasks, list) or not all(_is_int(s) for s in subtasks):
        return False
    return all(0 <= s < len(anchors) for s in subtasks) and subtasks == sorted(set(subtasks))


def check(text, width: int = W, height: int = H, max_anchors: int = MAX_ANCHORS) -> Plan | None:
    """parse_plan's whole contract on one input; returns the plan when accepted."""
    try:
        plan = parse_plan(text, "pick the cube", width, height, max_anchors=max_anchors, source="fuzz")
    except PlanError as e:
        assert str(e) and "\n" not in str(e)[:200]
        return None
    # accepted_invalid: everything accepted is a plan the runtime may lift
    assert isinstance(plan, Plan) and plan.source == "fuzz" and plan.instruction == "pick the cube"
    assert 1 <= len(plan.anchors) <= max_anchors
    for a in plan.anchors:
        assert type(a.u) is int and type(a.v) is int and 0 <= a.u < width and 0 <= a.v < height
        assert a.gripper in (0.0, 1.0) and a.depth is None
    q = np.asarray(plan.orientation)
    assert q.shape == (4,) and np.all(np.isfinite(q)) and math.isclose(float(np.linalg.norm(q)), 1.0, abs_tol=1e-9)
    np.testing.assert_allclose(quat_to_matrix(q)[:, 2], [0, 0, -1], atol=1e-9)  # a top-down grasp
    assert list(plan.subtasks) == sorted(set(plan.subtasks)) and all(0 <= s < len(plan.anchors) for s in plan.subtasks)
    obj = json.loads(text)
    assert valid_answer(obj, width, height, max_anchors), f"accepted_invalid: {text!r}"
    again = parse_plan(plan_to_json(plan), "pick the cube", width, height, max_anchors=max_anchors)
    assert again.anchors == plan.anchors and again.subtasks == plan.subtasks
    np.testing.assert_allclose(again.orientation, plan.orientation, atol=1e-9)
    return plan


any_char = st.characters(exclude_categories=())  # lone surrogates included
json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(any_char, max_size=8)
             | st.sampled_from(["open", "close", "anchors", "point_2d", "yaw", "subtasks"]))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(any_char, max_size=8) | st.sampled_from(
                              ["anchors", "point_2d", "gripper", "yaw", "subtasks"]), inner, max_size=4),
                          max_leaves=20)
coord = st.integers(-2, 70) | st.sampled_from([1.0, 2.5, True, None, "3", 10**25, float("nan")])
anchor = st.fixed_dictionaries({"point_2d": st.lists(coord, min_size=1, max_size=3),
                                "gripper": st.sampled_from(["open", "close", "half", "", None, 1.0])})
plan_like = st.fixed_dictionaries(
    {"anchors": st.lists(anchor, min_size=0, max_size=MAX_ANCHORS + 2),
     "yaw": st.integers(-100, 100) | st.sampled_from([0.0, 45.5, "0", None, float("inf"), 10**40, False])},
    optional={"subtasks": st.lists(st.integers(-1, MAX_ANCHORS + 1) | st.sampled_from([0.0, "0", True]), max_size=4),
              "extra": json_value})


@FUZZ
@given(st.text(any_char, max_size=200))
def test_arbitrary_text_is_a_plan_or_a_plan_error(text):
    check(text)


@FUZZ
@given(json_value)
def test_arbitrary_json_values_agree_with_the_format(value):
    text = json.dumps(value, allow_nan=True)
    plan = check(text)
    assert (plan is not None) == valid_answer(value)


@FUZZ
@given(plan_like, st.sampled_from([(64, 48), (2, 2), (640, 480)]), st.integers(1, MAX_ANCHORS))
def test_plan_shaped_answers_agree_with_the_format(value, size, max_anchors):
    text = json.dumps(value, allow_nan=True)
    plan = check(text, *size, max_anchors=max_anchors)
    assert (plan is not None) == valid_answer(value, *size, max_anchors)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["delete", "insert", "replace", "repeat"]), st.integers(0, len(GOOD) - 1),
                          st.sampled_from(list('{}[]",:-0123456789 eE.') + ["NaN", "Infinity", "\ud800", "\\u0000",
                                                                            "[" * 50, "9" * 5000, "1e999"])),
                min_size=1, max_size=4))
def test_mutated_valid_plans_are_a_plan_or_a_plan_error(edits):
    text = GOOD
    for op, i, piece in edits:
        i = min(i, len(text))
        if op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "replace":
            text = text[:i] + piece + text[i + 1:]
        else:
            text = text[:i] + text[i:i + 20] * 3 + text[i + 20:]
    check(text)


@pytest.mark.parametrize("text", [
    "[" * 100_000, '{"anchors": ' + "[" * 5000 + "]" * 5000 + "}", "9" * 5000, '{"yaw": ' + "1" * 4301 + "}",
    "NaN", '{"anchors": [], "yaw": Infinity}', '{"anchors": [{"point_2d": [1e999, 1], "gripper": "open"}], "yaw": 0}',
    '"\\ud800"', '{"\\udfff": 1}', b'{"anchors": []}', None, 3, ["{}"], "\x00", "  \n\t ",
    '{"anchors": [{"point_2d": [' + "[" * 900 + "]" * 900 + ', 1], "gripper": "open"}], "yaw": 0}',
])
def test_known_escapes_are_plan_errors(text):
    with pytest.raises(PlanError):
        parse_plan(text, "pick", W, H)


def test_the_valid_seed_parses_and_bad_sizes_are_plan_errors():
    assert check(GOOD) is not None
    for bad in ({"width": 0}, {"height": "48"}, {"max_anchors": 0}, {"width": True}):
        args = {"width": W, "height": H, "max_anchors": MAX_ANCHORS, **bad}
        with pytest.raises(PlanError, match="parse_plan: (width|height|max_anchors) must be"):
            parse_plan(GOOD, "pick", args["width"], args["height"], max_anchors=args["max_anchors"])
