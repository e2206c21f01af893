"""Fuzzing the robot setup loader: mutations of the shipped setups (as parsed tables, as TOML text and as
raw bytes) either load into a RobotConfig whose every float is finite and whose camera pose is rigid, or
raise one ConfigError line; nothing else escapes."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import tomllib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebridge.config import ConfigError, load_config
from edgebridge.contracts import check_transform
from edgebridge.rotations import quat_to_matrix
from edgebridge.runtime.config import CONFIG_DIR, RobotConfig, loads_robot_config, robot_config_from_dict

SHIPPED = {p.stem: p.read_text() for p in sorted(CONFIG_DIR.glob("*.toml"))}
DOCS = {name: tomllib.loads(text) for name, text in SHIPPED.items()}
FIELDS = sorted({f.name for cls in (RobotConfig, *[f.type for f in dataclasses.fields(RobotConfig)])
                 if dataclasses.is_dataclass(cls) for f in dataclasses.fields(cls)} - {"name"})
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- TOML out

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_doc(doc: dict) -> str:
    return "\n".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in doc.items()) + "\n"


# ----------------------------------------------------------------------------- strategies

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, 1e-6, 0.5, 100.0])
ints = st.integers(-2 ** 63, 2 ** 63 - 1) | st.integers(-3, 5000)
scalars = floats | ints | st.booleans() | st.text("abc _/.", max_size=6) | st.sampled_from(
    ["auto", "sim", "onnx", "ik", "gguf", "oracle", "freeze", "thread", "process", ""])


@st.composite
def poses(draw):
    """Near-rigid 4x4 transforms: a random rotation, then (sometimes) noise, a mirror or a bad last row."""
    q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
    q = q / np.linalg.norm(q) if np.linalg.norm(q) > 1e-3 else np.array([0, 0, 0, 1.0])
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(q)
    T[:3, 3] = draw(st.lists(st.floats(-2, 2), min_size=3, max_size=3))
    T[:3, :3] += draw(st.sampled_from([0.0, 1e-7, 3e-5, 1e-3])) * np.array(
        draw(st.lists(st.floats(-1, 1), min_size=9, max_size=9))).reshape(3, 3)
    if draw(st.booleans()):
        T[draw(st.integers(0, 3)), draw(st.integers(0, 3))] = draw(floats)
    rows = [[float(x) for x in r] for r in T]
    return rows[:draw(st.sampled_from([4, 4, 4, 3]))]


values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(FIELDS) | st.text("xyz", min_size=1, max_size=3), inner, max_size=3), max_leaves=8) | poses()


def paths(node, prefix=()):
    """Every (container path, key) in a parsed document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield prefix, k
        yield from paths(v, prefix + (k,))


def at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutated_docs(draw):
    name = draw(st.sampled_from(sorted(DOCS)))
    doc = json.loads(json.dumps(DOCS[name]))  # a deep copy of plain tables
    rnd = draw(st.randoms(use_true_random=True))  # uniform over places (sampled_from favours the first)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "pose"]))
        if op == "pose":
            if not isinstance(doc.get("camera"), dict):
                doc["camera"] = {}
            doc["camera"]["T_base_cam"] = draw(poses())
            continue
        where = list(paths(doc))
        if op == "add":
            tables = [()] + [p + (k,) for p, k in where if isinstance(at(doc, p)[k], dict)]
            table = at(doc, rnd.choice(tables))
            table[draw(st.sampled_from(FIELDS) | st.text("xyz_", min_size=1, max_size=4))] = draw(values)
            continue
        path, key = rnd.choice(where)
        container = at(doc, path)
        if op == "delete":
            del container[key]
        else:
            container[key] = draw(values)
    return doc


# ----------------------------------------------------------------------------- the property

def floats_of(x, key="cfg"):
    if dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            yield from floats_of(getattr(x, f.name), f"{key}.{f.name}")
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from floats_of(v, f"{key}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from floats_of(v, f"{key}[{i}]")
    elif isinstance(x, float):
        yield key, x


def outcome(load, name: str):
    """The loaded config, or the error message without its leading name; anything else fails the test."""
    try:
        cfg = load()
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"{name}: "), msg
        return msg[len(name) + 2:]
    assert isinstance(cfg, RobotConfig)
    for key, v in floats_of(cfg):
        assert math.isfinite(v), f"{key} = {v}"
    if cfg.camera.T_base_cam:
        T = check_transform("T_base_cam", cfg.camera.T_base_cam)
        assert np.abs(T[:3, :3].T @ T[:3, :3] - np.eye(3)).max() < 1e-9
    return cfg


@FUZZ
@given(mutated_docs())
def test_mutated_setups_load_valid_or_refuse_in_one_line(doc):
    from_dict = outcome(lambda: robot_config_from_dict(doc, "setup"), "setup")
    from_text = outcome(lambda: loads_robot_config(toml_doc(doc), "setup.toml"), "setup.toml")
    assert from_text == from_dict  # the file route and the table route agree


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SHIPPED)), st.data())
def test_edited_setup_text_loads_valid_or_refuses(name, data):
    text = SHIPPED[name]
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, min(len(text), i + 12)))
    insert = data.draw(st.text("0123456789.-+einfa[]{}=,\"' \n#_x", max_size=8))
    outcome(lambda: loads_robot_config(text[:i] + insert + text[j:], "edited.toml"), "edited.toml")


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(sorted(SHIPPED)), st.binary(min_size=1, max_size=4), st.data())
def test_setup_files_with_odd_bytes_load_valid_or_refuse(name, junk, data):
    raw = SHIPPED[name].encode()
    i = data.draw(st.integers(0, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bytes.toml"
        path.write_bytes(raw[:i] + junk + raw[i:])
        try:
            cfg = load_config(path, RobotConfig)
        except ConfigError as e:
            assert "\n" not in str(e) and "bytes.toml" in str(e).split(": ")[0]
        else:
            outcome(lambda: cfg, "bytes.toml")


def test_the_fuzzer_reaches_both_outcomes():
    """The mutations are not all refused: a finite in-range replacement and a rigid pose load."""
    doc = json.loads(json.dumps(DOCS["sim_panda"]))
    doc["loop"]["rate_hz"] = 250.0
    doc["camera"]["T_base_cam"] = [[1.0, 0, 0, 0.1], [0, 1.0, 0, 0], [0, 0, 1.0, 0.9], [0, 0, 0, 1.0]]
    assert isinstance(outcome(lambda: loads_robot_config(toml_doc(doc), "s"), "s"), RobotConfig)
    doc["loop"]["rate_hz"] = math.inf
    assert outcome(lambda: loads_robot_config(toml_doc(doc), "s"), "s") == "loop.rate_hz = inf: must be a finite number"
