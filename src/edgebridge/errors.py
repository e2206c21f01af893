"""Error types. Every message names the thing that failed and what to try next."""

from __future__ import annotations

import importlib
from types import ModuleType


class EdgebridgeError(Exception):
    """Base class for edgebridge errors."""


class DeviceNotConnectedError(ConnectionError, EdgebridgeError):
    """A device method was called before ``connect()`` or after ``disconnect()``."""


class DeviceFaultError(EdgebridgeError):
    """A driver reported a fault (bus timeout, CRC error, lost frame, protocol error)."""


class PlanError(EdgebridgeError):
    """A plan could not be produced, parsed, validated or lifted to 3-D."""


class ExpertError(EdgebridgeError):
    """The action expert failed or produced an unusable output (non-finite values, wrong shape)."""


class SafetyViolation(EdgebridgeError):
    """A command failed validation against the arm's limits; it was not sent."""


class UnknownNameError(KeyError):
    """A lookup by name (task, expert, object, register) found nothing. A ``KeyError`` whose message
    prints as written: ``str(KeyError(msg))`` would wrap it in quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingExtraError(ImportError, EdgebridgeError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import an optional dependency lazily; a missing one raises a one-line error naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        need = what or module
        raise MissingExtraError(
            f"{need} needs the Python module '{module}', which is not importable ({e}). "
            f"Install it with: pip install 'edgebridge[{extra}]'"
        ) from e
