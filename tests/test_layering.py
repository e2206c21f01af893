"""The import rules of docs/design.md hold for every module under src/edgebridge.

The rules are read from the two tables in docs/design.md (``package | may import | must not import``
and ``module | may also import | why``); every import of every module is read with ``ast``: module
level and inside functions, ``from . import x`` and other relative imports resolved, plus
``importlib.import_module("...")`` / ``require("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "edgebridge"
DESIGN = ROOT / "docs" / "design.md"
CORE = "core"
DYNAMIC_IMPORTERS = {"import_module", "require", "__import__"}


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rules:
    may: dict[str, frozenset[str]]
    must_not: dict[str, frozenset[str]]
    exceptions: dict[str, frozenset[str]]  # module path relative to src/edgebridge -> extra packages


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table in ``text`` as (header cells, body rows of cells)."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            tables.append((block[0], [r for r in block[2:]]))
        block = []
    return tables


def _names(cell: str) -> frozenset[str]:
    return frozenset(re.findall(r"`([^`]+)`", cell))


def load_rules(text: str) -> Rules:
    may, must_not, exceptions = {}, {}, {}
    for header, rows in _tables(text):
        head = [h.lower() for h in header]
        if head == ["package", "may import", "must not import"]:
            for row in rows:
                (pkg,) = _names(row[0])
                may[pkg], must_not[pkg] = _names(row[1]), _names(row[2])
        elif head[:2] == ["module", "may also import"]:
            for row in rows:
                (mod,) = _names(row[0])
                exceptions[mod] = _names(row[1])
    return Rules(may, must_not, exceptions)


@pytest.fixture(scope="module")
def rules() -> Rules:
    r = load_rules(DESIGN.read_text(encoding="utf-8"))
    assert r.may, "docs/design.md has no `| package | may import | must not import |` table"
    return r


# --------------------------------------------------------------------------- the imports


def _packages() -> set[str]:
    return {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}


def module_name(rel: str) -> str:
    """``calib/depth_tare.py`` -> ``edgebridge.calib.depth_tare``; ``calib/__init__.py`` -> ``edgebridge.calib``."""
    parts = ["edgebridge", *Path(rel).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(dotted: str, packages: set[str]) -> str | None:
    """The layer an ``edgebridge`` module belongs to (its subpackage, else ``core``); None outside it."""
    parts = dotted.split(".")
    if parts[0] != "edgebridge":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in packages else CORE


def _is_module(dotted: str) -> bool:
    p = SRC.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(rel: str, text: str) -> list[tuple[int, str]]:
    """(line, imported dotted name) for every import in ``text``, the module at ``src/edgebridge/<rel>``."""
    mod = module_name(rel)
    package = mod if rel.endswith("__init__.py") else mod.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text, rel)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if a.name != "*" and _is_module(sub) else target))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if (name in DYNAMIC_IMPORTERS and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
                found.append((node.lineno, node.args[0].value))
    return sorted(found)


def source_files() -> list[tuple[str, str]]:
    """(path relative to src/edgebridge, text) of every module of the package."""
    return [(p.relative_to(PKG).as_posix(), p.read_text(encoding="utf-8")) for p in sorted(PKG.rglob("*.py"))]


def violations(rules: Rules, files: list[tuple[str, str]]) -> list[str]:
    packages = _packages()
    out = []
    for rel, text in files:
        here = layer_of(module_name(rel), packages)
        extra = rules.exceptions.get(rel, frozenset())
        for line, target in imports_of(rel, text):
            layer = layer_of(target, packages)
            where = f"src/edgebridge/{rel}:{line}: imports {target}"
            if layer is None:  # a third-party or standard-library module
                top = target.split(".")[0]
                if top in rules.must_not.get(here, ()) and top not in extra:
                    out.append(f"{where}: `{here}` must not import `{top}`")
            elif layer == here or layer in extra:
                continue
            elif layer in rules.must_not.get(here, ()):
                out.append(f"{where}: `{here}` must not import `{layer}`")
            elif layer not in rules.may.get(here, ()):
                out.append(f"{where}: `{layer}` is not in what `{here}` may import")
    return out


# --------------------------------------------------------------------------- tests


def test_every_package_has_a_complete_row(rules):
    layers = _packages() | {CORE}
    assert set(rules.may) == layers, f"rows in docs/design.md {sorted(rules.may)} != packages {sorted(layers)}"
    for pkg in layers:
        named = rules.may[pkg] | rules.must_not[pkg]
        assert not rules.may[pkg] & rules.must_not[pkg], f"{pkg}: a package both allowed and forbidden"
        assert layers - {pkg} <= named, f"{pkg}: row does not name {sorted(layers - {pkg} - named)}"
    for rel, extra in rules.exceptions.items():
        assert (PKG / rel).is_file(), f"exception for {rel}, which does not exist"
        assert extra <= layers, f"exception for {rel} names unknown packages {sorted(extra - layers)}"


def test_stated_rules_are_in_the_table(rules):
    for pkg in ("runtime", "drivers", "kernels", "calib"):
        assert "torch" in rules.must_not[pkg], f"{pkg} must not import torch"
    assert "sim" in rules.must_not["runtime"] and "train" in rules.must_not["runtime"]
    assert "sim" in rules.must_not["train"]
    assert {rel for rel, extra in rules.exceptions.items() if "sim" in extra} == {"runtime/devices.py"}


def test_imports_follow_the_rules(rules):
    bad = violations(rules, source_files())
    assert not bad, "imports against docs/design.md:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_relative_and_named_imports(rules):
    probe = ("import numpy as np\n"
             "def f():\n"
             "    from ..runtime.lift import lift_plan\n"
             "    from .. import sim\n"
             "    torch = require('torch', 'export')\n")
    assert imports_of("calib/probe.py", probe) == [(1, "numpy"), (3, "edgebridge.runtime.lift"),
                                                   (4, "edgebridge.sim"), (5, "torch")]
    assert violations(rules, [("calib/probe.py", probe)]) == [
        "src/edgebridge/calib/probe.py:3: imports edgebridge.runtime.lift: `calib` must not import `runtime`",
        "src/edgebridge/calib/probe.py:4: imports edgebridge.sim: `calib` must not import `sim`",
        "src/edgebridge/calib/probe.py:5: imports torch: `calib` must not import `torch`",
    ]
    # the same imports are fine where the table or an exception allows them
    assert violations(rules, [("runtime/devices.py", "from ..sim.tasks import get_task\n")]) == []
    assert violations(rules, [("runtime/pipeline.py", "from ..sim.tasks import get_task\n")]) == [
        "src/edgebridge/runtime/pipeline.py:1: imports edgebridge.sim.tasks: `runtime` must not import `sim`"]
    assert violations(rules, [("export/probe.py", "import torch\nfrom ..train.model import make_net\n")]) == []
