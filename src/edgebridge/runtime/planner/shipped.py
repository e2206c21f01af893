"""The shipped planner VLM: a GGUF language model and its GGUF vision projector in
``edgebridge/assets/planner``, run by llama.cpp's generic ``MTMDChatHandler``.

``planner.backend = "gguf"`` without a model (no ``--vlm``, no ``planner.model``) uses these files;
``make planner`` builds them. :func:`shipped_vlm` returns their paths when both are present.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

MODEL_FILE = "vlm.gguf"
MMPROJ_FILE = "vlm-mmproj.gguf"
CHAT_HANDLER = "mtmd"
N_CTX = 1024  # the shipped model's trained context (a plan is ~300 tokens with the image)
BUILD_COMMAND = "make planner"


def planner_dir() -> Path:
    """``edgebridge/assets/planner`` of the installed package."""
    return Path(str(importlib.resources.files("edgebridge") / "assets" / "planner"))


def shipped_files() -> tuple[Path, Path]:
    """Where the shipped model and projector live (present or not)."""
    d = planner_dir()
    return d / MODEL_FILE, d / MMPROJ_FILE


def shipped_vlm() -> tuple[Path, Path] | None:
    """(model, projector) of the shipped planner, or None when either file is missing."""
    model, mmproj = shipped_files()
    return (model, mmproj) if model.is_file() and mmproj.is_file() else None


def missing_message() -> str:
    """One line: which shipped files are missing and how to get a planner anyway."""
    missing = [p.name for p in shipped_files() if not p.is_file()]
    return (f"planner gguf: no model given and the shipped planner is missing ({', '.join(missing)} not in "
            f"{planner_dir()}); build it with '{BUILD_COMMAND}', pass --vlm MODEL.gguf --mmproj MMPROJ.gguf, "
            f"or use --planner oracle (simulator only)")
