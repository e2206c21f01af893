"""A small TOML writer for calibration files (reading uses the standard library's ``tomllib``).

Handles what calibration files hold: tables, arrays of tables, strings, booleans, integers, floats
(written with ``repr`` so they read back bit-exactly) and (nested) arrays of those.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _scalar(v: Any, key: str) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{key}: cannot write non-finite float {f} to a calibration file")
        return repr(f)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple, np.ndarray)):
        items = v.tolist() if isinstance(v, np.ndarray) else v
        return "[" + ", ".join(_scalar(x, key) for x in items) + "]"
    raise TypeError(f"{key}: cannot write a {type(v).__name__} to TOML")


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def dumps(data: dict, _prefix: str = "") -> str:
    """Serialise a dict of the supported types to TOML text."""
    lines: list[str] = []
    for k, v in data.items():
        if v is None or _is_table(v) or _is_table_array(v):
            continue
        lines.append(f"{k} = {_scalar(v, _prefix + k)}")
    for k, v in data.items():
        name = f"{_prefix}{k}"
        if _is_table(v):
            lines += ["", f"[{name}]", dumps(v, name + ".").strip("\n")] if v else ["", f"[{name}]"]
        elif _is_table_array(v):
            for item in v:
                lines += ["", f"[[{name}]]", dumps(item, name + ".").strip("\n")]
    return "\n".join(x for x in lines if x is not None).strip("\n") + "\n"


def write(path: str | Path, data: dict, header: str = "") -> Path:
    """Write ``data`` as TOML to ``path`` (atomically: a temp file then rename)."""
    path = Path(path)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + dumps(data)
    tomllib.loads(text)  # never write a file we could not read back
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read(path: str | Path) -> dict:
    """Read a TOML file; errors name the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from e
