"""Session fixtures shared by several test directories, each built once and only when a test asks for it.

``tiny_model``: the tiny random GGUF planner model (tests/runtime/planner, tests/export/test_vlm.py).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    pytest.importorskip("gguf", reason="gguf (extra 'vlm') not installed")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    from edgebridge.export.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf")
