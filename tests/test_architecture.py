"""The shape of the code base (docs/architecture.md): imports run one way, ground package -> model -> index ->
service -> cli, checked on the syntax tree of every module, imports inside functions included; exactly one library
module creates ONNX Runtime sessions; library modules and functions stay small."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("seisbind", "model", "index", "service")
PACKAGES = (*LIBRARY, "cli")
FORBIDDEN: dict[str, set[str]] = {
    "seisbind": {"model", "index", "service", "cli", "torch", "deepwave"},
    "model": {"index", "service", "cli"},
    "index": {"model", "service", "cli", "torch", "deepwave"},
    "service": {"model", "cli", "torch", "deepwave"},
    "cli": set(),
}
"""Top-level modules each package must never import (the ground package ``seisbind`` imports nothing above it;
``model`` is the only torch side; ``cli`` is the application layer on top, imported by nothing)."""
SESSION_FACTORY = "seisbind/bundle.py"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules(packages: tuple[str, ...], root: Path = REPO) -> Iterator[tuple[str, Path, ast.Module]]:
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            yield package, path, ast.parse(path.read_text(), str(path))


def imported_roots(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every import in the tree, at module level or inside functions and classes."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def import_violations(packages: tuple[str, ...] = PACKAGES, root: Path = REPO) -> list[str]:
    """Every import that runs against the allowed directions, as "file:line imports X"."""
    bad = []
    for package, path, tree in modules(packages, root):
        for line, top in imported_roots(tree):
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(root)}:{line} imports {top}")
    return bad


def test_imports_run_one_way() -> None:
    assert import_violations() == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The checker itself: a lazy import of torch inside a function of index/ is caught."""
    fake = tmp_path / "index"
    fake.mkdir()
    (fake / "lazy.py").write_text("def f():\n    import torch.nn\n    from model.encoders import x\n")
    assert import_violations(("index",), tmp_path) == ["index/lazy.py:2 imports torch", "index/lazy.py:3 imports model"]


def test_only_the_bundle_module_creates_onnx_runtime_sessions() -> None:
    creators = set()
    for _, path, tree in modules(LIBRARY + ("cli",)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name == "InferenceSession":
                    creators.add(str(path.relative_to(REPO)))
    assert creators == {SESSION_FACTORY}


def test_library_files_and_functions_stay_small() -> None:
    too_long = []
    for _, path, tree in modules(PACKAGES):
        rel = path.relative_to(REPO)
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            too_long.append(f"{rel}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert too_long == []


def test_no_reference_to_documents_outside_the_repository() -> None:
    """Code points readers at docs/ in this repository, never at a design document they cannot open."""
    cited = [f"{p.relative_to(REPO)}" for _, p, _ in modules(PACKAGES) if "DESIGN" in p.read_text()]
    assert cited == []
    for ref in ("docs/architecture.md", "docs/data.md", "docs/formats.md", "docs/api.md", "docs/cli.md",
                "docs/evaluation.md", "docs/benchmarks.md"):
        assert (REPO / ref).is_file(), f"{ref} is cited by the code but missing"
