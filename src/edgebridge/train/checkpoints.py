"""Training checkpoints that hold tensors and plain JSON types only: :func:`plain` turns metadata into plain
values, :func:`load_checkpoint` reads a checkpoint with ``torch.load(weights_only=True)`` and refuses
anything else with a :class:`CheckpointError` naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgebridgeError


class CheckpointError(EdgebridgeError, ValueError):
    """A checkpoint file holds more than tensors and plain values, or is not the checkpoint expected."""


def plain(value):
    """``value`` as plain JSON types (dicts, lists, str, numbers, bool, None), what a checkpoint may hold
    besides tensors; numpy scalars become Python numbers, other objects raise TypeError."""
    def item(o):
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"checkpoint metadata: a {type(o).__name__} is not a plain JSON value")
    return json.loads(json.dumps(value, default=item))


def load_checkpoint(path: str | Path, keys: tuple[str, ...] = (), map_location: str = "cpu") -> dict:
    """A checkpoint dict read with ``torch.load(weights_only=True)``: tensors and plain values only, never
    code. A pickled object (an old checkpoint, a tampered one), a file that is not a checkpoint or a dict
    without ``keys`` raise :class:`CheckpointError` naming the file; a missing file ``FileNotFoundError``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the unpickler says, the file is not loaded
        m = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        why = (f"it holds more than tensors and plain values ({m.group(1).split(' was not an allowed')[0]}), "
               "and unpickling that could run code" if m else f"not a torch checkpoint ({type(e).__name__})")
        raise CheckpointError(f"{path}: not loaded: {why}; re-train to write it again, or re-save it from code "
                              "you trust with tensors and plain types only") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}; re-train")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (no {', '.join(map(repr, missing))}); "
                              "re-train, or point at the right run directory")
    return state
