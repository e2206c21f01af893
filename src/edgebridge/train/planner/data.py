"""Pointing data for the planner VLM: the Hugging Face ``imagefolder`` layout ``edge-sim pointing``
writes, turned into image tensors and token rows exactly as llama.cpp will see them at run time.

Image preprocessing is llama.cpp's for an ``mlp`` (LLaVA-1.5) projector: the image is padded to a
square, centred, with the colour ``int(255 * image_mean)`` (122, 116, 104 for CLIP's mean), then each
channel is normalised as ``(x / 255 - mean) / std``. The plan image is 320x240 and the square is 320,
so no resampling happens on either side. A test holds this against llama.cpp's own preprocessing.

The prompt is the runtime's: the versioned template (``runtime/planner/prompt.py``) in the chat
messages the GGUF planner sends, rendered with the model's chat template, split at the image marker.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...runtime.planner.prompt import SYSTEM_MESSAGE, chat_messages, load_assets
from .tokenizer import PlanTokenizer

log = logging.getLogger(__name__)

MEDIA_MARKER = "<__media__>"  # llama.cpp's mtmd default marker, where the image embeddings go


def pad_colour(mean) -> np.ndarray:
    return np.array([int(255 * m) for m in mean], np.uint8)


def letterbox(rgb: np.ndarray, size: int, mean) -> np.ndarray:
    """Pad an (H, W, 3) uint8 image to (size, size), centred, as llama.cpp does before encoding."""
    h, w = rgb.shape[:2]
    if max(h, w) != size:
        raise ValueError(f"letterbox: image {w}x{h} must have a long side of {size} px; resize it first")
    out = np.empty((size, size, 3), np.uint8)
    out[:] = pad_colour(mean)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = rgb
    return out


def preprocess(rgb: np.ndarray, size: int, mean, std) -> np.ndarray:
    """(3, size, size) float32: letterboxed and normalised (the vision tower's input)."""
    sq = letterbox(rgb, size, mean).astype(np.float32) / 255.0
    return ((sq - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1).copy()


def render_chat(instruction: str, width: int, height: int) -> tuple[str, str]:
    """The text before and after the image marker, as the model's chat template renders the GGUF
    planner's messages (system message, then the user turn with the image first)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from .tokenizer import CHAT_TEMPLATE

    prompt = load_assets().render(instruction, width, height)
    messages = chat_messages(prompt, "data:image/png;base64,")
    # as llama.cpp's MTMDChatHandler does: image parts become text parts holding the media marker
    for m in messages:
        if isinstance(m["content"], list):
            m["content"] = [{"type": "text", "text": MEDIA_MARKER} if p["type"] == "image_url" else p
                            for p in m["content"]]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    before, sep, after = text.partition(MEDIA_MARKER)
    if not sep:
        raise ValueError("chat template did not place the image marker")
    return before, after


def constant_phrases(width: int, height: int) -> list[str]:
    """The parts of the rendered chat that never change, between control tokens and the instruction."""
    import re

    probe = "\x00"
    before, after = render_chat(probe, width, height)
    parts = []
    for text in (before, after):
        for seg in re.split(r"<\|im_start\|>|<\|im_end\|>", text):
            parts += [p for p in seg.split(probe) if len(p) > 1]
    return parts


def vocab_texts(instructions: list[str], width: int, height: int) -> list[str]:
    before, after = render_chat("x", width, height)
    return [before, after, SYSTEM_MESSAGE, *instructions]


def read_split(root: str | Path, split: str) -> list[dict]:
    path = Path(root) / split / "metadata.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write the data set with 'edge-sim pointing --out {root}'")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_png(path: Path) -> np.ndarray:
    try:
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))[..., :3]
    except ImportError:  # pragma: no cover - either is installed with the train extra
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))


@dataclass
class PointingSplit:
    """One split in memory: uint8 images, token rows and the answer's slots."""

    rows: list[dict]
    images: np.ndarray           # (N, H, W, 3) uint8
    prefix: list[int]            # tokens before the image (BOS first), the same for every row
    suffix: list[list[int]]      # tokens after the image (prompt + generation prompt)
    answer: list[list[int]]      # canonical answer tokens, ending with </s>
    slots: list[list[int]]
    values: list[list[int]]

    def __len__(self) -> int:
        return len(self.rows)


def load_split(root: str | Path, split: str, tok: PlanTokenizer, width: int = 320, height: int = 240,
               limit: int | None = None) -> PointingSplit:
    rows = read_split(root, split)[:limit]
    if not rows:
        raise ValueError(f"{root}/{split} holds no scenes")
    images = np.stack([read_png(Path(root) / split / r["file_name"]) for r in rows])
    if images.shape[1:3] != (height, width):
        raise ValueError(f"{root}/{split}: images are {images.shape[2]}x{images.shape[1]}, the model plans in "
                         f"{width}x{height}")
    prefix_text, _ = render_chat("x", width, height)
    prefix = tok.encode(prefix_text, bos=True)
    suffix, answer, slots, values = [], [], [], []
    for r in rows:
        before, after = render_chat(r["instruction"], width, height)
        if before != prefix_text:
            raise ValueError("the text before the image depends on the instruction; the prefix must be shared")
        suffix.append(tok.encode(after))
        a, s, v = tok.encode_answer(r["plan"])
        answer.append(a)
        slots.append(s)
        values.append(v)
    log.info("%s/%s: %d scenes", root, split, len(rows))
    return PointingSplit(rows, images, prefix, suffix, answer, slots, values)
