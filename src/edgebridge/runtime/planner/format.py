"""The planner's answer format: compact JSON, its JSON schema, a bounded GBNF grammar, and the parser.

An answer looks like (whitespace optional, at most one space between tokens)::

    {"anchors": [{"point_2d": [312, 188], "gripper": "open"},
                 {"point_2d": [305, 240], "gripper": "close"}],
     "yaw": -30, "subtasks": [0]}

- ``point_2d``: pixel ``[u, v]`` (column, row) in the image the model saw; ``point_2d`` is the key
  Qwen2.5-VL already uses for pointing, so a real VLM emits it readily.
- ``gripper``: ``"open"`` or ``"close"``, the state to reach at that anchor (-> 1.0 / 0.0).
- ``yaw``: integer degrees in [-90, 90], the top-down grasp yaw about the base z axis. A parallel
  gripper is symmetric under 180 deg, so this range covers every grasp with one answer each. The
  orientation is ``Rz(yaw) * R_down`` where ``R_down`` (quaternion ``(1, 0, 0, 0)``, a half turn about
  x) points the tool z axis down; an integer is what a VLM emits reliably, a quaternion is not.
- ``subtasks`` (optional): increasing anchor indices where a new sub-task starts (long-horizon tasks).

The grammar is **bounded**: integers have no leading zeros and are limited to the image size, the
anchor list has 1..``max_anchors`` items, whitespace is at most one space. Every string it accepts is
JSON that passes :func:`validate_json` against :func:`plan_schema` and :func:`parse_plan` (the
grammar has one branch per anchor count, so subtask indices are increasing and below the anchor
count), and every generation stops in a bounded number of tokens.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np

from ...contracts import Anchor, Plan
from ...errors import PlanError

MAX_ANCHORS = 12
YAW_LIMIT_DEG = 90
GENERIC_PIXEL_MAX = 9999  # the shipped, image-size-agnostic grammar bounds pixels to 4 digits
GRIPPER_VALUES = {"open": 1.0, "close": 0.0}
_DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # half turn about x: tool z axis points down (x, y, z, w)


# --------------------------------------------------------------------------- grammar


def int_range_gbnf(hi: int, *, zero: bool = True) -> str:
    """GBNF alternatives for the decimal integers in ``[0 or 1, hi]``, no leading zeros."""
    if hi < 1:
        raise ValueError(f"int_range_gbnf: hi must be >= 1, got {hi}")
    s = str(hi)
    alts = ["[0-9]" if zero else "[1-9]"]
    alts += ["[1-9]" + "[0-9]" * (k - 1) for k in range(2, len(s))]
    if len(s) == 1:
        return f"[{0 if zero else 1}-{s}]"
    for i, ch in enumerate(s):
        d = int(ch)
        lo = 1 if i == 0 else 0
        last = i == len(s) - 1
        top = d if last else d - 1
        if top >= lo:
            rng = f"[{lo}-{top}]" if top > lo else f"[{lo}]"
            alts.append((f'"{s[:i]}" ' if i else "") + rng + "[0-9]" * (len(s) - i - 1))
    return " | ".join(a.strip() for a in alts)


def build_grammar(width: int | None = None, height: int | None = None, max_anchors: int = MAX_ANCHORS) -> str:
    """The GBNF grammar of a valid plan. With ``width``/``height`` pixels are bounded to the image
    (u <= width-1, v <= height-1); without, to :data:`GENERIC_PIXEL_MAX` (the shipped asset)."""
    if not isinstance(max_anchors, int) or not 1 <= max_anchors <= 64:
        raise ValueError(f"build_grammar: max_anchors must be an int in [1, 64], got {max_anchors!r}")
    u_hi = GENERIC_PIXEL_MAX if width is None else int(width) - 1
    v_hi = GENERIC_PIXEL_MAX if height is None else int(height) - 1
    if u_hi < 1 or v_hi < 1:
        raise ValueError(f"build_grammar: image must be at least 2x2, got {width}x{height}")
    head = '"{" ws "\\"anchors\\"" ws ":" ws "["'
    tail = 'ws "]" ws "," ws "\\"yaw\\"" ws ":" ws yaw'
    lines = ["root ::= " + head + " ws ( " + " | ".join(f"plan-{k}" for k in range(1, max_anchors + 1)) + ' ) ws "}"']
    # one alternative per anchor count k, so the subtask indices can be bounded by k and increasing
    for k in range(1, max_anchors + 1):
        rep = f' (ws "," ws anchor){{{k - 1}}}' if k > 1 else ""
        lines.append(f"plan-{k} ::= anchor{rep} {tail} subtasks-{k}?")
        lines.append(f'subtasks-{k} ::= ws "," ws "\\"subtasks\\"" ws ":" ws "[" ws st-{k}-0? ws "]"')
        for i in range(k):
            alts = [f'"{j}" (ws "," ws st-{k}-{j + 1})?' if j + 1 < k else f'"{j}"' for j in range(i, k)]
            lines.append(f"st-{k}-{i} ::= " + " | ".join(alts))
    lines += [
        'anchor ::= "{" ws "\\"point_2d\\"" ws ":" ws "[" ws u ws "," ws v ws "]" ws "," ws '
        '"\\"gripper\\"" ws ":" ws gripper ws "}"',
        'gripper ::= "\\"open\\"" | "\\"close\\""',
        f"u ::= {int_range_gbnf(u_hi)}",
        f"v ::= {int_range_gbnf(v_hi)}",
        f'yaw ::= "0" | "-"? ({int_range_gbnf(YAW_LIMIT_DEG, zero=False)})',
        'ws ::= " "?',
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- schema


def plan_schema(width: int | None = None, height: int | None = None, max_anchors: int = MAX_ANCHORS) -> dict:
    """JSON schema (draft 2020-12 subset) of a plan answer; same bounds as :func:`build_grammar`."""
    u_hi = GENERIC_PIXEL_MAX if width is None else int(width) - 1
    v_hi = GENERIC_PIXEL_MAX if height is None else int(height) - 1
    anchor = {
        "type": "object",
        "properties": {
            "point_2d": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": u_hi},
                                                          {"type": "integer", "minimum": 0, "maximum": v_hi}],
                         "items": False, "minItems": 2, "maxItems": 2},
            "gripper": {"type": "string", "enum": sorted(GRIPPER_VALUES)},
        },
        "required": ["point_2d", "gripper"],
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "edgebridge plan",
        "type": "object",
        "properties": {
            "anchors": {"type": "array", "items": anchor, "minItems": 1, "maxItems": max_anchors},
            "yaw": {"type": "integer", "minimum": -YAW_LIMIT_DEG, "maximum": YAW_LIMIT_DEG},
            "subtasks": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": max_anchors - 1},
                         "maxItems": max_anchors},
        },
        "required": ["anchors", "yaw"],
        "additionalProperties": False,
    }


def _brief(value: Any, limit: int = 40) -> str:
    """A short, safe ``repr`` for error messages: containers by type and size (a deeply nested one
    would overflow ``repr``), long strings cut."""
    if isinstance(value, (list, dict)):
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validate_json(value: Any, schema: dict, path: str = "$") -> list[str]:
    """Check ``value`` against the schema subset used here; return the list of violations (empty = valid).

    Supports type (object/array/integer/string), enum, properties, required, additionalProperties,
    items / prefixItems, minItems / maxItems, minimum / maximum. Independent of the grammar, so tests
    can check one against the other, and a server answer without grammar is checked the same way."""
    errs: list[str] = []
    t = schema.get("type")
    if t == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected object, got {type(value).__name__}"]
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}: missing required key {k!r}")
        for k, v in value.items():
            if k in props:
                errs += validate_json(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{path}: unexpected key {_brief(k)}")
        return errs
    if t == "array":
        if not isinstance(value, list):
            return [f"{path}: expected array, got {type(value).__name__}"]
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            return [f"{path}: {len(value)} items, allowed {schema.get('minItems', 0)}.."
                    f"{schema.get('maxItems', 'any')}"]  # items of a list of the wrong size are not checked
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", {})
            if sub is False:
                errs.append(f"{path}[{i}]: no item allowed here")
            elif isinstance(sub, dict):
                errs += validate_json(item, sub, f"{path}[{i}]")
        return errs
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: expected integer, got {_brief(value)}"]
    elif t == "string" and not isinstance(value, str):
        return [f"{path}: expected string, got {_brief(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {_brief(value)} not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errs.append(f"{path}: {value} < minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errs.append(f"{path}: {value} > maximum {schema['maximum']}")
    return errs


# --------------------------------------------------------------------------- parse


def yaw_to_quat(yaw_deg: float) -> np.ndarray:
    """Top-down grasp orientation ``Rz(yaw) * R_down`` as a unit quaternion (x, y, z, w)."""
    h = math.radians(float(yaw_deg)) / 2.0
    qz = np.array([0.0, 0.0, math.sin(h), math.cos(h)])
    x1, y1, z1, w1 = qz
    x2, y2, z2, w2 = _DOWN
    return np.array([w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
                     w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2])


def _snippet(text: str) -> str:
    return _brief(text if len(text) <= 200 else text[:200] + "...", 220)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@functools.lru_cache(maxsize=32)
def _schema(width: int, height: int, max_anchors: int) -> dict:
    return plan_schema(width, height, max_anchors)  # read only: validate_json never changes it


def parse_plan(text: str, instruction: str, width: int, height: int, *, max_anchors: int = MAX_ANCHORS,
               source: str = "unknown", timings_ms: dict | None = None) -> Plan:
    """Parse and validate a model answer into a :class:`Plan`; any problem, whatever ``text`` holds,
    raises :class:`PlanError` quoting the offending part of the answer (nothing else escapes: not
    deep nesting, huge numbers, ``NaN`` or a non-string answer)."""
    for name, val, lo in (("width", width, 2), ("height", height, 2), ("max_anchors", max_anchors, 1)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise PlanError(f"parse_plan: {name} must be an int >= {lo}, got {_brief(val)}")
    if not isinstance(text, str):
        raise PlanError(f"planner {source}: the answer is {type(text).__name__}, not text; expected a JSON plan")
    if not text.strip():
        raise PlanError(f"planner {source}: empty answer; expected a JSON plan")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise PlanError(f"planner {source}: answer is not JSON ({e.msg} at char {e.pos}): {_snippet(text)}; "
                        f"is grammar-constrained decoding enabled?") from e
    except (ValueError, RecursionError) as e:  # NaN/Infinity, an integer of thousands of digits, deep nesting
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise PlanError(f"planner {source}: answer is not a plan ({why}): {_snippet(text)}") from e
    errs = validate_json(obj, _schema(int(width), int(height), int(max_anchors)))
    if errs:
        raise PlanError(f"planner {source}: answer violates the plan schema: {'; '.join(errs[:5])} "
                        f"(answer {_snippet(text)})")
    anchors = tuple(Anchor(int(a["point_2d"][0]), int(a["point_2d"][1]), GRIPPER_VALUES[a["gripper"]])
                    for a in obj["anchors"])
    subtasks = tuple(obj.get("subtasks", ()))
    if list(subtasks) != sorted(set(subtasks)) or any(s >= len(anchors) for s in subtasks):
        raise PlanError(f"planner {source}: subtasks {list(subtasks)} must be increasing anchor indices "
                        f"< {len(anchors)} (answer {_snippet(text)})")
    try:
        return Plan(instruction=instruction, anchors=anchors, orientation=yaw_to_quat(obj["yaw"]),
                    subtasks=subtasks, source=source, timings_ms=dict(timings_ms or {}))
    except (ValueError, TypeError) as e:
        raise PlanError(f"planner {source}: plan rejected ({e}); answer {_snippet(text)}") from e


def plan_to_json(plan: Plan) -> str:
    """Inverse of :func:`parse_plan` for plans whose orientation is a top-down yaw (few-shot examples,
    replay logs)."""
    q = np.asarray(plan.orientation)
    # q = qz(yaw) * (1,0,0,0) = (cos h, sin h, 0, 0)  ->  yaw = 2 atan2(qy, qx)
    yaw = int(round(math.degrees(2 * math.atan2(q[1], q[0]))))  # (-180, 180]
    if not -YAW_LIMIT_DEG <= yaw <= YAW_LIMIT_DEG:  # the same grasp turned a half turn (a symmetric gripper)
        yaw -= 180 if yaw > 0 else -180
    out: dict[str, Any] = {"anchors": [{"point_2d": [a.u, a.v], "gripper": "open" if a.gripper >= 0.5 else "close"}
                                       for a in plan.anchors], "yaw": yaw}
    if plan.subtasks:
        out["subtasks"] = list(plan.subtasks)
    return json.dumps(out, separators=(", ", ": "))
