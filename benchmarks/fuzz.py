"""Fuzzing the runtime's input edges: a plan answer, a remote planner's HTTP body, a robot setup file and the
servo buses' status frames, ``--cases`` random inputs per target.

Each target feeds mutated inputs (built from valid ones: character and byte flips, truncations, spliced
JSON/TOML fragments, extreme numbers, deep nesting, random bytes) to the code the runtime calls on that input,
and counts two things:

- ``fuzz_<target>_crashes``: an exception other than the documented one (``PlanError`` for plans and
  answers, ``ConfigError`` for setups, ``DeviceFaultError`` for bus frames). Target 0.
- ``fuzz_<target>_accepted_invalid``: an input accepted although it breaks the format, checked by rules
  written out here independently of the parser (a plan anchor off the image, a non-finite number in a
  setup, a camera pose that is not rigid, a frame whose checksum or id does not match). Target 0.

Also ``fuzz_<target>_accepted`` (how many inputs were valid and accepted, so a fuzzer that never reaches
the accepting path shows) and ``fuzz_<target>_cases_per_s``. The ratio printed is cases/s against the
cost of building the inputs alone (the generator's own rate, measured in the same run).

    python benchmarks/fuzz.py --cases 100000 --json benchmarks/results/fuzz.json
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("COLUMNS", "150")  # the table is wide; rich reads COLUMNS when not on a terminal
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_json_arg, machine_line, print_table, write_json  # noqa: E402

# parse_plan: every planner answer; config._build: every setup file edge-run loads (load_robot_config reads
# the file, then the same parse + build the fuzzer drives through loads_robot_config).
RUNTIME_PATHS = ["edgebridge.runtime.planner.format:parse_plan", "edgebridge.config:_build"]  # the servo frames: edge-run
# reaches ServoBus only on a real servo arm (the sim episode of the path check has none)

W, H = 320, 240
GOOD_PLANS = [
    '{"anchors": [{"point_2d": [120, 88], "gripper": "open"}, {"point_2d": [122, 90], "gripper": "close"}, '
    '{"point_2d": [250, 140], "gripper": "open"}], "yaw": -90, "subtasks": [0]}',
    '{"anchors": [{"point_2d": [0, 0], "gripper": "close"}], "yaw": 0}',
    '{"anchors": [{"point_2d": [319, 239], "gripper": "open"}, {"point_2d": [10, 20], "gripper": "close"}], '
    '"yaw": 90, "subtasks": [0, 1]}',
]
JSON_BITS = ['{', '}', '[', ']', ',', ':', '"', '-', '.', 'e', 'E', '0', '9', ' ', 'null', 'true', 'NaN',
             'Infinity', '-Infinity', '1e999', '9' * 400, '-0', '"\\ud800"', '\\', '\x00', '"point_2d"',
             '"gripper"', '"open"', '"close"', '"yaw"', '"subtasks"', '"anchors"', '[' * 50, '{"a":' * 30,
             '1.5', '320', '240', '-1', '2147483648']


# ----------------------------------------------------------------------------- mutators

def mutate_text(rng: random.Random, text: str, bits: list[str]) -> str:
    """One to four edits of ``text``: delete / insert / replace a span, splice a fragment, swap numbers,
    truncate, nest deeply."""
    s = text
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        i = rng.randrange(len(s) + 1) if s else 0
        if op == 0 and s:
            s = s[:i] + s[i + rng.randint(1, 8):]
        elif op == 1:
            s = s[:i] + rng.choice(bits) + s[i:]
        elif op == 2 and s:
            s = s[:i] + chr(rng.randrange(0, 0x11000)) + s[i + 1:]
        elif op == 3:
            s = s[:i]
        elif op == 4:  # replace one number with an extreme one
            nums = [k for k, c in enumerate(s) if c.isdigit()]
            if nums:
                k = rng.choice(nums)
                s = s[:k] + rng.choice(["-7", "1e308", "NaN", "99999999999999999999", "0.5", "-0", "inf",
                                        "3.0", "1_0", "0x10", "true"]) + s[k + 1:]
        elif op == 5:
            depth = rng.choice([10, 100, 2000, 50000])
            s = "[" * depth + s + "]" * rng.choice([0, depth])
        elif op == 6 and s:  # duplicate a span
            j = min(len(s), i + rng.randint(1, 40))
            s = s[:j] + s[i:j] + s[j:]
        else:
            s = "".join(rng.choice(bits) for _ in range(rng.randint(0, 12)))
    return s


# ----------------------------------------------------------------------------- target: plan

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def plan_answer_valid(text: str, width: int, height: int, max_anchors: int) -> bool:
    """The plan answer format, written out by hand (not through the runtime's schema code)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict) or not {"anchors", "yaw"} <= set(obj) <= {"anchors", "yaw", "subtasks"}:
        return False
    anchors, yaw = obj["anchors"], obj["yaw"]
    if not isinstance(anchors, list) or not 1 <= len(anchors) <= max_anchors:
        return False
    for a in anchors:
        if not isinstance(a, dict) or set(a) != {"point_2d", "gripper"} or a["gripper"] not in ("open", "close"):
            return False
        p = a["point_2d"]
        if not (isinstance(p, list) and len(p) == 2 and all(_is_int(c) for c in p)
                and 0 <= p[0] < width and 0 <= p[1] < height):
            return False
    if not _is_int(yaw) or not -90 <= yaw <= 90:
        return False
    sub = obj.get("subtasks", [])
    return (isinstance(sub, list) and all(_is_int(s) for s in sub) and all(0 <= s < len(anchors) for s in sub)
            and sub == sorted(set(sub)))


def plan_ok(plan: Any, width: int, height: int, max_anchors: int) -> bool:
    """What the runtime relies on in an accepted plan."""
    from edgebridge.contracts import Plan

    if not isinstance(plan, Plan) or not 1 <= len(plan.anchors) <= max_anchors:
        return False
    for a in plan.anchors:
        if not (0 <= a.u < width and 0 <= a.v < height and a.gripper in (0.0, 1.0)):
            return False
    q = np.asarray(plan.orientation, dtype=float)
    return bool(q.shape == (4,) and np.all(np.isfinite(q)) and abs(np.linalg.norm(q) - 1.0) < 1e-6)


def target_plan(rng: random.Random) -> tuple[Callable[[], Any], Callable[[], bool], Callable[[Any], bool], type]:
    from edgebridge.errors import PlanError
    from edgebridge.runtime.planner.format import MAX_ANCHORS, parse_plan

    text = mutate_text(rng, rng.choice(GOOD_PLANS), JSON_BITS) if rng.random() < 0.9 else rng.choice(GOOD_PLANS)
    return (lambda: parse_plan(text, "put the cup in the tray", W, H, source="fuzz"),
            lambda: plan_answer_valid(text, W, H, MAX_ANCHORS),
            lambda plan: plan_ok(plan, W, H, MAX_ANCHORS), PlanError)


# ----------------------------------------------------------------------------- target: remote answer

def _completion(content: Any) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 40}, "timings": {"predicted_ms": 90.0}}


class _FuzzRemote:
    """A RemotePlanner whose HTTP exchange returns the fuzzed body (everything after the socket is real)."""

    def __init__(self) -> None:
        from edgebridge.runtime.planner.remote import RemotePlanner, RemotePlannerConfig

        self.planner = RemotePlanner(RemotePlannerConfig(base_url="http://127.0.0.1:9", text_only=True))
        self.body = b""
        self.planner._post = lambda body: self.planner._decode(self.body)  # noqa: SLF001 (the transport is out of scope)
        from edgebridge.contracts import RGBD, Intrinsics

        self.frame = RGBD(np.zeros((H, W, 3), np.uint8), np.ones((H, W), np.float32),
                          Intrinsics(width=W, height=H, fx=250.0, fy=250.0, cx=W / 2, cy=H / 2))


_REMOTE: _FuzzRemote | None = None


def target_remote(rng: random.Random):
    from edgebridge.errors import PlanError
    from edgebridge.runtime.planner.format import MAX_ANCHORS

    global _REMOTE
    if _REMOTE is None:
        _REMOTE = _FuzzRemote()
    remote = _REMOTE
    content = rng.choice(GOOD_PLANS)
    if rng.random() < 0.4:
        content = mutate_text(rng, content, JSON_BITS)
    body = json.dumps(_completion(content))
    if rng.random() < 0.7:
        body = mutate_text(rng, body, JSON_BITS + ['"choices"', '"message"', '"content"', '"usage"', '"timings"'])
    raw = body.encode("utf-8", "surrogatepass") if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(40))

    def valid() -> bool:
        try:
            out = json.loads(raw)
            msg = out["choices"][0]["message"]
            ok = (isinstance(out, dict) and isinstance(msg, dict) and isinstance(msg.get("content"), str)
                  and out["choices"][0].get("finish_reason") in ("stop", None)
                  and all(isinstance(out.get(k), (dict, type(None))) for k in ("usage", "timings")))
            return ok and plan_answer_valid(msg["content"], W, H, MAX_ANCHORS)
        except Exception:
            return False

    def run():
        remote.body = raw
        return remote.planner.plan(remote.frame, "put the cup in the tray")

    return run, valid, lambda plan: plan_ok(plan, W, H, MAX_ANCHORS), PlanError


# ----------------------------------------------------------------------------- target: setup

SETUP_BITS = ['inf', '-inf', 'nan', '1e308', '-1', '0', '0.0', 'true', '"x"', '[]', '{}', '{a = 1}', '[1, 2]',
              '\n[arm]\n', '\n[loop]\n', '\n[camera]\n', 'rate_hz = ', ' = ', '"""', "'", '#', '\x00', '\xff',
              '\n', '=', '[[', ']]', 'T_base_cam = [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]', '1e-320']


def setup_ok(cfg: Any) -> bool:
    """Every float finite, the camera pose (when given) rigid."""
    import dataclasses

    def floats(x):
        if dataclasses.is_dataclass(x):
            for f in dataclasses.fields(x):
                yield from floats(getattr(x, f.name))
        elif isinstance(x, dict):
            for v in x.values():
                yield from floats(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from floats(v)
        elif isinstance(x, float):
            yield x

    if not all(math.isfinite(v) for v in floats(cfg)):
        return False
    if cfg.camera.T_base_cam:
        T = np.asarray(cfg.camera.T_base_cam, dtype=float)
        R = T[:3, :3]
        return bool(T.shape == (4, 4) and np.allclose(T[3], [0, 0, 0, 1]) and np.abs(R.T @ R - np.eye(3)).max() < 1e-6
                    and np.linalg.det(R) > 0)
    return True


_SHIPPED: list[str] = []


def target_setup(rng: random.Random):
    from edgebridge.config import ConfigError
    from edgebridge.runtime.config import CONFIG_DIR, loads_robot_config

    if not _SHIPPED:
        _SHIPPED.extend(p.read_text() for p in sorted(CONFIG_DIR.glob("*.toml")))
    text = rng.choice(_SHIPPED)
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):  # value-level edits keep most documents parseable TOML
        k = rng.randrange(len(lines))
        if "=" in lines[k] and not lines[k].lstrip().startswith("#"):
            key = lines[k].split("=", 1)[0]
            lines[k] = f"{key}= {rng.choice(SETUP_BITS)}"
        elif rng.random() < 0.3:
            del lines[k]
    text = "\n".join(lines)
    if rng.random() < 0.3:
        text = mutate_text(rng, text, SETUP_BITS)
    # accepted_invalid here is checked on the result (setup_ok): a setup has no simpler independent rule
    return (lambda: loads_robot_config(text, "fuzz.toml")), (lambda: True), setup_ok, ConfigError



# ----------------------------------------------------------------------------- targets: servo status frames

class _FuzzPort:
    """A serial port whose answer to each request is the fuzzed reply (the bus's own receive path reads it:
    pyserial's ``read`` / ``in_waiting``, as without a file descriptor)."""

    def __init__(self) -> None:
        self.reply = b""
        self._out = bytearray()

    def reset_input_buffer(self) -> None:
        self._out.clear()

    def write(self, packet: bytes) -> int:
        self._out = bytearray(self.reply)
        return len(packet)

    def flush(self) -> None:
        pass

    @property
    def in_waiting(self) -> int:
        return len(self._out)

    def read(self, n: int = 1) -> bytes:
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def close(self) -> None:
        pass


def feetech_frames(reply: bytes, sid: int, n: int) -> list[bytes]:
    """Every well-formed Feetech status frame for servo ``sid`` with ``n`` data bytes and no error bit in
    ``reply`` (FF FF id len err data chk, chk = ~(id + len + err + data) & 0xFF), as their data bytes."""
    out = []
    for i in range(len(reply) - 5 - n + 1):
        f = reply[i:i + 6 + n]
        if f[:2] == b"\xff\xff" and f[2] == sid and f[3] == n + 2 and f[4] == 0 and \
                f[-1] == (~sum(f[2:-1])) & 0xFF:
            out.append(bytes(f[5:-1]))
    return out


def dynamixel_frames(reply: bytes, sid: int, n: int) -> list[bytes]:
    """Every well-formed Dynamixel 2.0 status frame for ``sid`` with ``n`` data bytes and no error in
    ``reply``; the CRC is checked with dynamixel-sdk's own ``updateCRC`` (Robotis' implementation)."""
    from dynamixel_sdk import PacketHandler

    crc = PacketHandler(2.0).updateCRC
    out = []
    for i in range(len(reply) - 10):
        if reply[i:i + 4] != b"\xff\xff\xfd\x00" or reply[i + 4] != sid:
            continue
        length = reply[i + 5] | (reply[i + 6] << 8)
        f = reply[i:i + 7 + length]
        if length < 4 or len(f) != 7 + length or crc(0, list(f[:-2]), len(f) - 2) != (f[-2] | f[-1] << 8):
            continue
        body = f[7:-2].replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd")
        if body[0] == 0x55 and body[1] == 0 and len(body) == 2 + n:
            out.append(bytes(body[2:]))
    return out


_BUSES: dict = {}


def _bus(protocol: str, model: str):
    if protocol not in _BUSES:
        from edgebridge.drivers.servo_bus import ServoBus, ServoBusConfig

        bus = ServoBus(ServoBusConfig(port="fuzz", model=model, timeout_s=0.0005, retries=0, protocol=protocol))
        bus._ser, bus._fd = _FuzzPort(), None  # noqa: SLF001 (the port is the fuzzer; the bus code is real)
        _BUSES[protocol] = bus
    return _BUSES[protocol]


def _servo_target(rng: random.Random, protocol: str, model: str, frames: Callable):
    from edgebridge.errors import DeviceFaultError

    bus = _bus(protocol, model)
    bus._out_of_step.clear()  # noqa: SLF001 (every case is a fresh transaction)
    sid = rng.choice([1, 2, 6])
    register = rng.choice(["Present_Position", "Goal_Position"])
    m = bus.model_of(sid)
    addr, size = m.register(register)
    value = rng.randrange(0, 4096)
    p = bus.protocol
    answer = p.instruction(sid, 0x55, bytes([0]) + value.to_bytes(size, "little")) if protocol == "dynamixel2" else \
        bytes([0xFF, 0xFF, sid, size + 2, 0, *value.to_bytes(size, "little")])
    if protocol != "dynamixel2":
        answer += bytes([(~sum(answer[2:])) & 0xFF])
    reply = answer
    op = rng.randrange(6)
    if op == 0:  # bit flips
        b = bytearray(reply)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        reply = bytes(b)
    elif op == 1:  # truncated or padded
        reply = reply[:rng.randrange(len(reply))] if rng.random() < 0.5 else reply + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 2:  # an answer from another id first (a late or duplicate servo), then maybe ours
        other = reply[:2] + bytes([(sid % 6) + 1]) + reply[3:] if protocol != "dynamixel2" else reply[:4] + bytes([(sid % 6) + 1]) + reply[5:]
        reply = other + (reply if rng.random() < 0.5 else b"")
    elif op == 3:  # random bytes
        reply = bytes(rng.randrange(256) for _ in range(rng.randint(0, 24)))
    elif op == 4:  # noise before the answer
        reply = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))) + reply
    # op 5: the answer as sent

    def run():
        bus._ser.reply = reply  # noqa: SLF001
        bus._rx.clear()  # noqa: SLF001
        return bus.read(sid, register)

    def valid_result(out) -> bool:
        return any(m.decode(register, data) == out for data in frames(reply, sid, size))

    return run, (lambda: True), valid_result, DeviceFaultError


def target_feetech(rng: random.Random):
    return _servo_target(rng, "feetech", "sts3215", feetech_frames)


def target_dynamixel(rng: random.Random):
    return _servo_target(rng, "dynamixel2", "xl430-w250", dynamixel_frames)


# ----------------------------------------------------------------------------- driver

TARGETS: dict[str, Callable] = {"plan": target_plan, "remote_answer": target_remote, "setup": target_setup,
                                "feetech_frame": target_feetech, "dynamixel_frame": target_dynamixel}


def run_target(name: str, cases: int, seed: int, show: int = 3) -> dict:
    """``cases`` inputs through target ``name``."""
    make = TARGETS[name]
    rng = random.Random(seed)
    crashes = accepted = accepted_invalid = 0
    examples: list[str] = []
    t_gen = 0.0
    t0 = time.perf_counter()
    for _ in range(cases):
        g0 = time.perf_counter()
        call, valid, result_ok, documented = make(rng)
        t_gen += time.perf_counter() - g0
        try:
            out = call()
        except documented:
            continue
        except Exception as e:  # the finding this benchmark exists for
            crashes += 1
            if len(examples) < show:
                examples.append(f"{name}: {type(e).__name__}: {str(e)[:160]} at "
                                f"{traceback.extract_tb(e.__traceback__)[-1].name}")
            continue
        accepted += 1
        if not (valid() and result_ok(out)):
            accepted_invalid += 1
            if len(examples) < show:
                examples.append(f"{name}: accepted an invalid input")
    total = time.perf_counter() - t0
    return {"crashes": crashes, "accepted_invalid": accepted_invalid, "accepted": accepted, "cases": cases,
            "cases_per_s": cases / total if total > 0 else float("nan"),
            "gen_per_s": cases / t_gen if t_gen > 0 else float("nan"), "examples": examples}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="inputs per target (default 100000)")
    ap.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    ap.add_argument("--seed", type=int, default=0)
    add_json_arg(ap)
    args = ap.parse_args(argv)
    if args.cases < 1:
        ap.error("--cases must be >= 1")
    import logging

    logging.disable(logging.CRITICAL)  # rejected inputs log warnings by design; a million of them is noise
    try:
        flat, rows, failed = {"fuzz_cases_per_target": args.cases}, [], False
        for k, name in enumerate(args.targets):
            r = run_target(name, args.cases, args.seed + k)
            flat.update({f"fuzz_{name}_crashes": r["crashes"], f"fuzz_{name}_accepted_invalid": r["accepted_invalid"],
                         f"fuzz_{name}_accepted": r["accepted"], f"fuzz_{name}_cases_per_s": r["cases_per_s"]})
            failed |= bool(r["crashes"] or r["accepted_invalid"])
            rows.append([name, r["cases"], r["crashes"], r["accepted_invalid"], r["accepted"], f"{r['cases_per_s']:.0f}",
                         f"{r['cases_per_s'] / r['gen_per_s']:.2f}x" if math.isfinite(r["gen_per_s"]) else "n/a"])
            for ex in r["examples"]:
                print(ex)
        print_table("fuzzing the input edges", ["target", "cases", "crashes", "accepted invalid", "accepted", "cases/s",
                                                "vs generator alone"], rows,
                    caption=f"{machine_line()}; crashes = exceptions other than the documented one; targets 0 and 0")
    finally:
        logging.disable(logging.NOTSET)
    write_json(args.json, flat)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
