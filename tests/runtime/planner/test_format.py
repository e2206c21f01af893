"""Plan format: bounded grammar, schema, parser, versioned assets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from edgebridge.contracts import Anchor, Plan
from edgebridge.rotations import quat_to_matrix
from edgebridge.errors import PlanError
from edgebridge.runtime.planner.format import (MAX_ANCHORS, build_grammar, int_range_gbnf, parse_plan, plan_schema,
                                               plan_to_json, validate_json, yaw_to_quat)
from edgebridge.runtime.planner.prompt import compute_meta, load_assets, _asset_dir

GOOD = '{"anchors": [{"point_2d": [10, 20], "gripper": "open"}, {"point_2d": [30, 40], "gripper": "close"}], ' \
       '"yaw": -30, "subtasks": [0, 1]}'


def _gbnf_alts_to_regex(rule: str) -> str:
    return "^(?:" + "|".join(a.replace('"', "").replace(" ", "") for a in rule.split(" | ")) + ")$"


@pytest.mark.parametrize("hi", [1, 7, 9, 10, 47, 90, 100, 479, 639, 999, 1000, 1919])
@pytest.mark.parametrize("zero", [True, False])
def test_int_range_exact_and_no_leading_zeros(hi, zero):
    rx = re.compile(_gbnf_alts_to_regex(int_range_gbnf(hi, zero=zero)))
    for n in range(0, 2100):
        assert bool(rx.match(str(n))) == ((0 if zero else 1) <= n <= hi), (hi, n)
    for s in ("00", "01", "007", "-1", ""):
        assert not rx.match(s)


def test_grammar_is_bounded_and_loads_in_llama_cpp():
    g = build_grammar(640, 480)
    assert "+" not in g and "*" not in g, "no unbounded repetition"
    assert 'ws ::= " "?' in g
    lc = pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    lc.LlamaGrammar.from_string(g, verbose=False)
    lc.LlamaGrammar.from_string(load_assets().grammar, verbose=False)


def test_parse_good_plan():
    p = parse_plan(GOOD, "pick", 64, 48, source="t")
    assert [(a.u, a.v, a.gripper) for a in p.anchors] == [(10, 20, 1.0), (30, 40, 0.0)]
    assert p.subtasks == (0, 1) and p.source == "t"
    R = quat_to_matrix(p.orientation)
    np.testing.assert_allclose(R[:, 2], [0, 0, -1], atol=1e-12)  # tool z points down
    np.testing.assert_allclose(R[:, 0], [np.cos(np.radians(-30)), np.sin(np.radians(-30)), 0], atol=1e-12)


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("the cup is red", "not JSON"),
    ('{"anchors": [], "yaw": 0}', "0 items"),
    ('{"anchors": [{"point_2d": [64, 1], "gripper": "open"}], "yaw": 0}', "maximum 63"),
    ('{"anchors": [{"point_2d": [1, 1], "gripper": "half"}], "yaw": 0}', "not one of"),
    ('{"anchors": [{"point_2d": [1, 1], "gripper": "open"}], "yaw": 91}', "maximum 90"),
    ('{"anchors": [{"point_2d": [1, 1], "gripper": "open"}]}', "missing required key 'yaw'"),
    ('{"anchors": [{"point_2d": [1, 1], "gripper": "open"}], "yaw": 0, "x": 1}', "unexpected key"),
    ('{"anchors": [{"point_2d": [1.5, 1], "gripper": "open"}], "yaw": 0}', "expected integer"),
    ('{"anchors": [{"point_2d": [1, 1], "gripper": "open"}, {"point_2d": [2, 2], "gripper": "open"}], '
     '"yaw": 0, "subtasks": [1, 0]}', "increasing"),
])
def test_parse_rejects_bad_answers(text, why):
    with pytest.raises(PlanError, match=re.escape(why)):
        parse_plan(text, "pick", 64, 48)


def test_too_many_anchors_rejected():
    obj = {"anchors": [{"point_2d": [1, 1], "gripper": "open"}] * (MAX_ANCHORS + 1), "yaw": 0}
    with pytest.raises(PlanError, match=f"{MAX_ANCHORS + 1} items"):
        parse_plan(json.dumps(obj), "pick", 64, 48)


def test_plan_json_round_trip():
    p = Plan("pick", (Anchor(3, 4, 1.0), Anchor(5, 6, 0.0)), orientation=yaw_to_quat(45), subtasks=(0,))
    q = parse_plan(plan_to_json(p), "pick", 64, 48)
    assert q.anchors == p.anchors and q.subtasks == p.subtasks
    np.testing.assert_allclose(q.orientation, p.orientation, atol=1e-12)


def test_schema_validator_independent_checks():
    s = plan_schema(64, 48)
    assert validate_json(json.loads(GOOD), s) == []
    assert validate_json({"anchors": [{"point_2d": [1, 2, 3], "gripper": "open"}], "yaw": 0}, s)
    assert validate_json({"anchors": [{"point_2d": [True, 2], "gripper": "open"}], "yaw": 0}, s)


def test_assets_versioned_together():
    a = load_assets()
    assert a.grammar == build_grammar(), "plan.gbnf is stale: run python -m edgebridge.runtime.planner.prompt"
    assert a.schema == json.loads(json.dumps(plan_schema()))
    meta = json.loads((_asset_dir() / "meta.json").read_text())
    assert meta == compute_meta(_asset_dir()) and meta["format_version"] == a.version
    assert "{instruction}" in a.template
    assert "pick the cup" in a.render("pick the cup", 640, 480)


@pytest.mark.parametrize("yaw", [-90, -89, 0, 89, 90])
def test_plan_json_round_trip_keeps_both_ends_of_the_yaw_range(yaw):
    p = parse_plan('{"anchors": [{"point_2d": [1, 2], "gripper": "open"}], "yaw": %d}' % yaw, "pick", 64, 48)
    assert json.loads(plan_to_json(p))["yaw"] == yaw
    q = Plan("pick", (Anchor(1, 2, 1.0),), orientation=yaw_to_quat(120))  # outside the range: the same grasp
    assert json.loads(plan_to_json(q))["yaw"] == -60
