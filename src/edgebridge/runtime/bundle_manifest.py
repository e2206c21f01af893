"""A bundle's manifest on the device side: the files a manifest lists (:func:`bundle_files`), their hashes
(:func:`sha256_file`), and re-hashing an installed bundle against its manifest (:func:`verify_bundle`),
for ``edge-run doctor`` and ``edge-export bundle --verify``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
DEVICE_DIRS = ("venv", "engines", "build")  # written on the device, not part of the bundle


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` that a manifest lists: all but the manifest, SHA256SUMS and device dirs."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or rel in (MANIFEST, SUMS) or rel.split("/", 1)[0] in DEVICE_DIRS:
            continue
        out.append(rel)
    return out


def verify_bundle(root: Path) -> list[str]:
    """Re-hash a bundle against its manifest: one line per file that changed, is missing or is not listed."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"{root / MANIFEST}: no manifest; not a bundle made by edge-export bundle"]
    except json.JSONDecodeError as e:
        return [f"{root / MANIFEST}: not valid JSON ({e})"]
    listed = manifest.get("files") or {}
    problems = []
    for rel, rec in sorted(listed.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(p) != rec["sha256"]:
            problems.append(f"changed: {rel} (sha256 differs from the manifest)")
    problems += [f"not in the manifest: {rel}" for rel in bundle_files(root) if rel not in listed]
    return problems

