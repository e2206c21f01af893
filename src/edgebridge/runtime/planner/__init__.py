"""VLM planner: plan format + bounded grammar, llama.cpp (GGUF) and remote backends, async wrapper.

Backends import llama-cpp-python lazily (extra ``vlm``); the format, parser and remote planner need
only the standard library and numpy.
"""

from .asynchronous import AsyncPlanner, PlannerStatus
from .format import (MAX_ANCHORS, build_grammar, parse_plan, plan_schema, plan_to_json, validate_json,
                     yaw_to_quat)
from .gguf import CHAT_HANDLERS, GGUFPlanner, GGUFPlannerConfig
from .prompt import FORMAT_VERSION, load_assets
from .remote import RemotePlanner, RemotePlannerConfig

__all__ = [
    "AsyncPlanner", "PlannerStatus", "MAX_ANCHORS", "build_grammar", "parse_plan", "plan_schema", "plan_to_json",
    "validate_json", "yaw_to_quat", "CHAT_HANDLERS", "GGUFPlanner", "GGUFPlannerConfig", "FORMAT_VERSION",
    "load_assets", "RemotePlanner", "RemotePlannerConfig",
]
