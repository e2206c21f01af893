"""llama.cpp weight repacking: CPU flag detection, the auto rule, and the load-time override."""

from __future__ import annotations

import logging

import pytest

from edgebridge.config import ConfigError
from edgebridge.runtime.planner.cpu_repack import cpu_flags, model_params_override, resolve_cpu_repack
from edgebridge.runtime.planner.gguf import GGUFPlanner, GGUFPlannerConfig

X86_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme avx avx2 avx512f amx_bf16 avx512_fp16 amx_tile amx_int8
bogomips\t: 4200.00
processor\t: 1
flags\t\t: fpu second_cpu_only
"""
X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c\n"
JETSON = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


def test_cpu_flags_reads_x86_and_arm_and_first_processor_only():
    assert {"amx_tile", "amx_int8", "avx2"} <= cpu_flags(X86_AMX)
    assert "second_cpu_only" not in cpu_flags(X86_AMX)
    assert "asimd" in cpu_flags(JETSON)
    assert cpu_flags("processor\t: 0\n") == frozenset()


def test_auto_is_off_only_where_amx_is_reported(caplog):
    with caplog.at_level(logging.INFO, logger="edgebridge.runtime.planner.cpu_repack"):
        assert resolve_cpu_repack("auto", X86_AMX) is False
    assert "amx_int8, amx_tile" in caplog.text and "cpu_repack" in caplog.text
    assert resolve_cpu_repack("auto", X86_PLAIN) is True
    assert resolve_cpu_repack("auto", JETSON) is True
    assert resolve_cpu_repack("on", X86_AMX) is True
    assert resolve_cpu_repack("off", JETSON) is False
    with pytest.raises(ValueError, match="cpu_repack"):
        resolve_cpu_repack("yes", JETSON)


def test_config_rejects_unknown_setting():
    with pytest.raises(ConfigError, match="cpu_repack"):
        GGUFPlannerConfig("m.gguf", cpu_repack="maybe")


def test_override_applies_inside_the_block_only(caplog):
    low = pytest.importorskip("llama_cpp.llama_cpp", reason="llama-cpp-python (extra 'vlm') not installed")
    assert low.llama_model_default_params().use_extra_bufts is True
    with model_params_override(use_extra_bufts=False):
        assert low.llama_model_default_params().use_extra_bufts is False
    assert low.llama_model_default_params().use_extra_bufts is True
    with pytest.raises(RuntimeError), model_params_override(use_extra_bufts=False):
        raise RuntimeError("load failed")
    assert low.llama_model_default_params().use_extra_bufts is True
    with caplog.at_level(logging.WARNING), model_params_override(no_such_field=1):
        assert low.llama_model_default_params().use_extra_bufts is True
    assert "no_such_field" in caplog.text


@pytest.mark.parametrize("setting, expected", [("off", False), ("on", True)])
def test_planner_loads_with_the_setting(tiny_model, setting, expected):
    cfg = GGUFPlannerConfig(str(tiny_model), text_only=True, n_ctx=512, n_threads=1, cpu_repack=setting)
    with GGUFPlanner(cfg) as planner:
        assert planner.llm.model_params.use_extra_bufts is expected
