"""Stand-in for torchvision inside the LeRobot check environment only (tests/lerobot_format/test_lerobot_library.py).

``lerobot-dataset`` imports torchvision at module level but uses only ``transforms.ToTensor`` (for PNG image
features) and, for its ``pyav`` video backend, ``io.VideoReader`` + ``set_video_backend``. The torchvision
wheels on PyPI are built against the CUDA torch and do not load beside the CPU torch, and torchvision 0.24+
no longer has ``VideoReader`` at all; this package gives those three names, the reader on PyAV, with the
behaviour of torchvision's pyav backend (seek to the key frame before a time, frames as uint8 CHW tensors
with ``pts`` in seconds). Everything else the check runs (metadata, parquet loading through ``datasets``,
episode and task lookup, timestamp checks, frame selection) is the library's own code.
"""

from . import io, transforms

__all__ = ["io", "transforms", "set_video_backend", "get_video_backend"]
__version__ = "0.0+edgebridge.check"
_backend = "pyav"


def set_video_backend(backend: str) -> None:
    global _backend
    if backend != "pyav":
        raise RuntimeError(f"torchvision stand-in: only the 'pyav' video backend, not {backend!r}")
    _backend = backend


def get_video_backend() -> str:
    return _backend
