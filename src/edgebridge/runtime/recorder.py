"""``--record DIR``: what an episode did, step by step (:class:`Recorder`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contracts import RGBD, ActionChunk, ArmState

if TYPE_CHECKING:
    from .pipeline import EpisodeOutcome

log = logging.getLogger(__name__)


class Recorder:
    """``--record DIR``: one JSON line per expert step (state, first chunk pose), ``result.json`` and,
    when the expert saw camera frames and imageio is installed, ``camera.gif`` (every ``gif_every``-th
    frame the expert used)."""

    def __init__(self, out: Path | None, gif_every: int = 2) -> None:
        self.out = out
        self._f = None
        self.gif_every = int(gif_every)
        self._frames: list[np.ndarray] = []
        self._n = 0
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self._f = open(out / "steps.jsonl", "w")

    def step(self, t: float, state: ArmState, chunk: ActionChunk, frame: RGBD | None = None) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps({"t": round(t, 4), "joints": state.joints.round(5).tolist(),
                                  "ee": state.ee_pose.position.round(5).tolist(), "gripper": round(state.gripper, 4),
                                  "chunk0": chunk.poses[0].round(5).tolist(), "inference_ms": chunk.inference_ms}) + "\n")
        if frame is not None and self.wants_frames and self._n % self.gif_every == 0:
            self._frames.append(frame.rgb)
        self._n += 1

    @property
    def wants_frames(self) -> bool:
        return self._f is not None and self.gif_every > 0

    def close(self, outcome: "EpisodeOutcome | None") -> None:
        if self._f is None:
            return
        self._f.close()
        self._f = None
        if outcome is not None:
            (self.out / "result.json").write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
        if self._frames:
            try:
                import imageio.v2 as imageio
            except ImportError:
                log.info("--record: camera.gif skipped (imageio is not installed: pip install 'edgebridge[sim]')")
            else:
                imageio.mimsave(self.out / "camera.gif", self._frames, duration=0.2, loop=0)
            self._frames = []
