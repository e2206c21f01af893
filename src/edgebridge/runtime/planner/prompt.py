"""Prompt template, grammar and schema assets (versioned together), chat messages and image encoding.

The assets in ``edgebridge/assets/planner/`` are ``prompt.txt``, ``plan.gbnf`` (the generic bounded
grammar, pixels up to 4 digits), ``plan.schema.json`` and ``meta.json`` holding the format version and
the sha256 of each file plus one combined hash. Exported GGUF files carry the same version and hash in
their metadata, so a model and the runtime that prompts it can be checked against each other.
``python -m edgebridge.runtime.planner.prompt`` regenerates grammar, schema and meta after a change
(bump :data:`FORMAT_VERSION` when the format changes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from .format import MAX_ANCHORS, build_grammar, plan_schema

FORMAT_VERSION = "1.1.0"
ASSET_FILES = ("prompt.txt", "plan.gbnf", "plan.schema.json")
SYSTEM_MESSAGE = "You are a robot task planner. You answer with JSON only."
GGUF_KEY_VERSION = "edgebridge.planner.format_version"
GGUF_KEY_HASH = "edgebridge.planner.format_hash"
# A model trained to plan in one image size names it; the planner resizes every frame to it.
GGUF_KEY_PLAN_WIDTH = "edgebridge.planner.image_width"
GGUF_KEY_PLAN_HEIGHT = "edgebridge.planner.image_height"


def _asset_dir() -> Path:
    return Path(str(resources.files("edgebridge") / "assets" / "planner"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PromptAssets:
    """The versioned prompt template, grammar and schema as shipped."""

    template: str
    grammar: str
    schema: dict
    version: str
    hash: str

    def render(self, instruction: str, width: int, height: int, max_anchors: int = MAX_ANCHORS) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("planner prompt: instruction must be a non-empty string")
        return self.template.format(instruction=instruction.strip(), width=width, height=height,
                                    max_anchors=max_anchors)


def compute_meta(asset_dir: Path) -> dict:
    files = {name: _sha256((asset_dir / name).read_bytes()) for name in ASSET_FILES}
    combined = _sha256("".join(f"{n}:{files[n]}\n" for n in ASSET_FILES).encode() + FORMAT_VERSION.encode())
    return {"format_version": FORMAT_VERSION, "files": files, "hash": combined}


@lru_cache(maxsize=1)
def load_assets() -> PromptAssets:
    """Load the shipped assets; a file edited without regenerating meta.json is an error."""
    d = _asset_dir()
    try:
        meta = json.loads((d / "meta.json").read_text())
        actual = compute_meta(d)
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"planner assets in {d} are missing or unreadable ({e}); reinstall edgebridge") from e
    if meta != actual:
        raise RuntimeError(f"planner assets in {d} do not match meta.json (version {meta.get('format_version')}); "
                           f"run 'python -m edgebridge.runtime.planner.prompt' and bump FORMAT_VERSION")
    return PromptAssets(template=(d / "prompt.txt").read_text(), grammar=(d / "plan.gbnf").read_text(),
                        schema=json.loads((d / "plan.schema.json").read_text()),
                        version=meta["format_version"], hash=meta["hash"])


def write_assets(asset_dir: Path | None = None) -> dict:
    """Regenerate plan.gbnf, plan.schema.json and meta.json from the format module."""
    d = asset_dir or _asset_dir()
    (d / "plan.gbnf").write_text(build_grammar())
    (d / "plan.schema.json").write_text(json.dumps(plan_schema(), indent=2) + "\n")
    meta = compute_meta(d)
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    load_assets.cache_clear()
    return meta


# --------------------------------------------------------------------------- image


def downscale(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, int]:
    """Block-average ``rgb`` by the smallest integer factor that makes its long side <= ``max_side``."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1
    f = -(-max(h, w) // int(max_side))
    hh, ww = h // f, w // f
    sums = np.zeros((hh, ww, 3), np.uint32)
    for i in range(f):  # f*f strided adds: much faster than a reshape-sum over non-contiguous axes
        for j in range(f):
            sums += rgb[i:hh * f:f, j:ww * f:f]
    return ((sums + (f * f) // 2) // (f * f)).astype(np.uint8), f


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``width`` x ``height``: block averaging for an integer
    downscale, else bilinear sampling at pixel centres."""
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    if w % width == 0 and h % height == 0 and w // width == h // height:
        return downscale(rgb, max(width, height))[0]
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = rgb.astype(np.float32)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG with the standard library (no image dependency)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def image_data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def chat_messages(prompt: str, image_uri: str | None) -> list[dict]:
    """OpenAI-style chat messages: a system message and the user turn (image first, then the text)."""
    if image_uri is None:
        user: object = prompt
    else:
        user = [{"type": "image_url", "image_url": {"url": image_uri}}, {"type": "text", "text": prompt}]
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user}]


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    print(json.dumps(write_assets(), indent=2))
