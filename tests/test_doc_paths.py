"""Every repository path the documentation cites exists, and nothing cites a place outside the repository.

Sources scanned
    * markdown: ``README.md``, ``docs/*.md``, ``benchmarks/results/*.md``. Fenced code blocks are skipped
      (they are commands, whose paths are mostly outputs); inline code spans and link targets are read.
    * Python: the docstrings (module, class, function) and ``#`` comments of ``src/**/*.py`` and
      ``benchmarks/*.py``; every whitespace-separated word there is a candidate (quotes, backticks and
      surrounding punctuation stripped).

What counts as a cited path (kept simple on purpose)
    * A markdown link target ``[text](target)`` that is not a URL or a pure ``#anchor``: resolved against the
      citing file's directory (``#fragment`` dropped).
    * A code span (markdown) or word (Python) without spaces that starts with a top-level entry of the
      repository (``src/``, ``docs/``, ``benchmarks/``, ``tests/``, ``.ci/``, ``README.md``, ...): resolved
      against the repository root. One that starts with a directory of the package (``assets/``,
      ``runtime/``, ``kernels/``, ...) or with ``edgebridge/``: resolved against ``src/edgebridge`` (or
      ``src``), the way the docs write package paths. Anything else (a bare ``expert.json``, a dotted
      module name) is not a repository path and is not checked.
    * ``*`` is a glob: at least one file must match.
    * Placeholders are skipped: a word holding ``<``, ``>``, ``{``, ``}``, ``$``, ``...`` or ``…``, or with a
      segment in capitals without an extension (``RUN_DIR/expert.onnx``, ``W/out``).
    * Outputs are skipped: paths under ``OUTPUT_PREFIXES`` and ``benchmarks/results/*.json`` (written by
      commands, never committed).

Outside the repository
    * No project text file (code, docs, configs) contains ``../shared`` or ``/work/``.
    * Docs (code blocks included), docstrings and comments cite no absolute path into a home or scratch directory
      (``ABSOLUTE_PREFIXES``) and no capitalised ``*.md`` note (``NOTES.md``, ``DESIGN.md``) that is not a
      file at the repository root.
"""

from __future__ import annotations

import ast
import glob
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "edgebridge"

# Top-level entries a root-relative path may start with.
ROOT_ENTRIES = ("src", "docs", "benchmarks", "tests", ".ci", "deploy", "README.md", "Makefile", "pyproject.toml",
                "CMakeLists.txt", ".gitignore")
# Directories of the package; docs write e.g. `assets/configs/sim_panda.toml` or `runtime/lift.py`.
PKG_ENTRIES = tuple(sorted(p.name for p in PKG.iterdir() if p.is_dir() and not p.name.startswith("__")))

# Outputs of commands (runs, builds, exports, benchmark JSON): cited as places to write, never committed.
OUTPUT_PREFIXES = ("runs/", "out/", "build/", "dist/", "models/")
OUTPUT_RE = re.compile(r"^benchmarks/results/[^/]*\.json$")  # gitignored: `make bench` writes them

# Places outside the repository that no project file may name.
FORBIDDEN = ("../" + "shared", "/" + "work/")
ABSOLUTE_PREFIXES = ("/" + "work/", "/" + "tmp/", "/" + "home/", "/" + "root/", "/" + "mnt/")

PLACEHOLDER_CHARS = ("<", ">", "{", "}", "$", "...", "…")
CAPS_SEGMENT = re.compile(r"^[A-Z][A-Z0-9_]*$")
NOTE_MD = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_]*\.md)\b")
STRIP = "`'\"()[],;:!?*"
SKIP_DIRS = {".git", ".venv", "build", "dist", "runs", "out", "__pycache__", ".pytest_cache", ".hypothesis"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".json", ".gbnf", ".yaml", ".yml", ".sh", ".cmake"}
TEXT_NAMES = {"Makefile", "CMakeLists.txt", "run", ".gitignore"}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]


def python_files() -> list[Path]:
    return [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---- candidates -----------------------------------------------------------------------------------------

def markdown_citations(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, str]]]:
    """(line, link target), (line, code span) and (line, prose text) outside fenced code blocks."""
    links, spans, prose = [], [], []
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        links += [(n, m) for m in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line)]
        spans += [(n, m) for m in re.findall(r"`([^`]+)`", line)]
        prose.append((n, line))
    return links, spans, prose


def python_text(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring line and comment of a Python file."""
    src = path.read_text(encoding="utf-8")
    out: list[tuple[int, str]] = []
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                first = body[0].lineno
                out += [(first + i, text) for i, text in enumerate(body[0].value.value.splitlines())]
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


# ---- resolution -----------------------------------------------------------------------------------------

def is_placeholder(token: str) -> bool:
    if any(c in token for c in PLACEHOLDER_CHARS):
        return True
    return any(CAPS_SEGMENT.match(seg) for seg in token.split("/"))


def is_output(token: str) -> bool:
    return token.startswith(OUTPUT_PREFIXES) or bool(OUTPUT_RE.match(token))


def repo_target(token: str) -> Path | None:
    """Where a code span / word points in the repository, or None when it is not a repository path."""
    token = token.strip().rstrip(".")
    if not token or any(c.isspace() for c in token) or "://" in token or is_placeholder(token):
        return None
    if token.startswith("./"):
        token = token[2:]
    head = token.split("/", 1)[0]
    if token.startswith("/") or is_output(token):
        return None
    if head in ROOT_ENTRIES and (head == token or "/" in token):
        return ROOT / token
    if "/" in token and head in PKG_ENTRIES:
        return PKG / token
    if "/" in token and head == "edgebridge":
        return ROOT / "src" / token
    return None


def exists(target: Path) -> bool:
    text = str(target)
    if "*" in text:
        return bool(glob.glob(text, recursive=True))
    return target.exists()


PATH_CHARS = re.compile(r"[A-Za-z0-9_./*+-]+")


def word_tokens(text: str) -> list[str]:
    """The path-like head of each word (quotes, backticks, a trailing "'s" or "." dropped); placeholders kept whole."""
    out = []
    for w in text.split():
        w = w.lstrip(STRIP)
        m = PATH_CHARS.match(w)
        if not m:
            continue
        head, rest = m.group(0), w[m.end():]
        out.append(w if rest[:1] in ("<", ">", "{", "}", "$", "…") else head.rstrip("."))
    return out


# ---- the tests ------------------------------------------------------------------------------------------

def test_cited_paths_exist():
    missing: list[str] = []
    for md in markdown_files():
        links, spans, _ = markdown_citations(md)
        for n, target in links:
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            target = target.split("#", 1)[0]
            if not (md.parent / target).exists():
                missing.append(f"{rel(md)}:{n} cites missing path {target}")
        for n, span in spans:
            t = repo_target(span)
            if t is not None and not exists(t):
                missing.append(f"{rel(md)}:{n} cites missing path {span}")
    for py in python_files():
        for n, text in python_text(py):
            for word in word_tokens(text):
                t = repo_target(word)
                if t is not None and not exists(t):
                    missing.append(f"{rel(py)}:{n} cites missing path {word}")
    assert not missing, "stale path citations:\n" + "\n".join(sorted(set(missing)))


def project_text_files() -> list[Path]:
    out = []
    for p in ROOT.rglob("*"):
        parts = p.relative_to(ROOT).parts
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES) and p != Path(__file__).resolve():
            out.append(p)
    return out


def test_nothing_cites_outside_the_repository():
    bad: list[str] = []
    for p in project_text_files():
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(lines, 1):
            for f in FORBIDDEN:
                if f in line:
                    bad.append(f"{rel(p)}:{n} cites {f!r} (outside the repository)")
    prose: list[tuple[Path, int, str]] = []
    for md in markdown_files():  # code blocks included: an example command must not write to /tmp either
        prose += [(md, n, line) for n, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1)]
    for py in python_files():
        prose += [(py, n, text) for n, text in python_text(py)]
    for path, n, text in prose:
        for a in ABSOLUTE_PREFIXES:
            if a in text:
                bad.append(f"{rel(path)}:{n} cites an absolute path {a}... outside the repository")
        for note in NOTE_MD.findall(text):
            if not (ROOT / note).exists():
                bad.append(f"{rel(path)}:{n} cites missing note {note} (not a file of the repository)")
    assert not bad, "citations outside the repository:\n" + "\n".join(sorted(set(bad)))
