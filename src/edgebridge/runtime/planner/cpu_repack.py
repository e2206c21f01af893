"""Whether llama.cpp may repack quantised weights for the host CPU's matrix units.

llama.cpp's CPU backend copies quantised weights into "extra buffer types" laid out for the CPU it runs
on: interleaved blocks for AVX2 / NEON dot products, and tiles for Intel AMX. The AMX kernels aborted the
whole process with an illegal instruction on an x86 virtual machine whose CPU reports ``amx_tile`` and
``amx_int8``: Q8_0 and Q4_K_M models died at ``tilezero`` in ``ggml_backend_amx_mul_mat`` at the first
decode, and ran with the extra buffers off. Whether the machine or llama.cpp is at fault was not
established (a minimal ``ldtilecfg``/``tilezero`` sequence did run there, also in several threads). A
planner that kills the runtime is worse than a slower one, so ``auto`` keeps repacking off on CPUs that
report AMX and on everywhere else (the Jetson's NEON repack stays).

llama-cpp-python does not expose the switch (``llama_model_params.use_extra_bufts``) as a ``Llama``
argument; :func:`model_params_override` sets it on the default parameters ``Llama`` starts from, for the
duration of one load.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

REPACK_SETTINGS = ("auto", "on", "off")
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
_PATCH_LOCK = threading.Lock()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``);
    empty where the file does not exist (not Linux) or lists none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_cpu_repack(setting: str, cpuinfo: str | None = None) -> bool:
    """``setting`` ("auto", "on", "off") -> whether llama.cpp may use its extra (repacked) weight buffers."""
    if setting not in REPACK_SETTINGS:
        raise ValueError(f"cpu_repack: expected one of {REPACK_SETTINGS}, got {setting!r}")
    if setting != "auto":
        return setting == "on"
    amx = sorted(cpu_flags(cpuinfo) & AMX_FLAGS)
    if amx:
        log.info("CPU reports %s: llama.cpp weight repacking (AMX tiles, AVX interleaving) is off; "
                 "planner.options.cpu_repack = \"on\" turns it on where AMX is known to work", ", ".join(amx))
        return False
    return True


@contextlib.contextmanager
def model_params_override(**fields):
    """Within the block, ``llama_cpp.Llama`` loads models with ``fields`` set on its default model
    parameters. Fields this llama-cpp-python build does not know are skipped with a warning."""
    import llama_cpp.llama_cpp as low

    known = {name for name, _ in low.llama_model_params._fields_}
    unknown = sorted(set(fields) - known)
    if unknown:
        log.warning("llama-cpp-python %s has no model parameter(s) %s; loading without them",
                    getattr(sys.modules.get("llama_cpp"), "__version__", "?"), ", ".join(unknown))
    fields = {k: v for k, v in fields.items() if k in known}
    if not fields:
        yield
        return
    with _PATCH_LOCK:
        default_params = low.llama_model_default_params

        def patched():
            params = default_params()
            for name, value in fields.items():
                setattr(params, name, value)
            return params

        low.llama_model_default_params = patched
        try:
            yield
        finally:
            low.llama_model_default_params = default_params
