"""Nothing in the project reads a path outside its own checkout.

A user's clone has nothing beside it, so a test or benchmark that builds a path from `__file__` and
climbs above the repository root (`Path(__file__).parents[2]`, `ROOT.parent / "sibling"`) passes here
and fails there. This check follows each path expression rooted at `__file__` through `.parent`,
`.parents[N]`, `.resolve()` and `/ "a/b"` (also through module-level names bound to one) and counts
how far above the file's folder it climbs; anything above the repository root is reported. String
literals that climb out with `../` from their file's folder are reported too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("tests", "bench", "daemon", "connectors", "policies", "grafana")
KEEPS_LEVEL = {"resolve", "absolute", "expanduser"}


class _PathLevels(ast.NodeVisitor):
    """Depth below the repository root of every `__file__`-rooted path expression in one module."""

    def __init__(self, file_depth: int) -> None:
        self.file_depth = file_depth  # depth of the module file itself: tests/x.py is 2
        self.names: dict[str, int] = {}
        self.escapes: list[int] = []  # line numbers

    def level(self, node: ast.expr) -> int | None:
        """Depth below the root of a path expression, or None when it is not rooted at __file__."""
        if isinstance(node, ast.Name):
            return self.file_depth if node.id == "__file__" else self.names.get(node.id)
        if isinstance(node, ast.Call):
            return self._call_level(node)
        inner: int | None = None
        climbed = 0
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            inner, climbed = self.level(node.value), 1
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            index = node.slice.value if isinstance(node.slice, ast.Constant) else None
            if node.value.attr == "parents" and isinstance(index, int):
                inner, climbed = self.level(node.value.value), index + 1
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self._join_level(node)
        return None if inner is None else inner - climbed

    def _call_level(self, node: ast.Call) -> int | None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("Path", "PurePath") and node.args:
            return self.level(node.args[0])
        if isinstance(func, ast.Attribute) and func.attr in KEEPS_LEVEL:
            return self.level(func.value)
        return None

    def _join_level(self, node: ast.BinOp) -> int | None:
        inner = self.level(node.left)
        right = node.right.value if isinstance(node.right, ast.Constant) else None
        if inner is None or not isinstance(right, str):
            return inner
        lowest = inner
        for part in Path(right).parts:
            inner += -1 if part == ".." else 1
            lowest = min(lowest, inner)
        return lowest if lowest < 0 else inner

    def _check(self, node: ast.expr) -> int | None:
        level = self.level(node)
        if level is not None and level < 0:
            self.escapes.append(node.lineno)
        return level

    def visit_Assign(self, node: ast.Assign) -> None:
        level = self._check(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name) and level is not None:
                self.names[target.id] = level
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            level = self._check(node.value)
            if isinstance(node.target, ast.Name) and level is not None:
                self.names[node.target.id] = level
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check(node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._check(node)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self._check(node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # A relative literal such as "../sibling/data" read from the file's own folder.
        if isinstance(node.value, str) and node.value.startswith("../"):
            depth = self.file_depth - 1
            for part in Path(node.value).parts:
                depth += -1 if part == ".." else 1
                if depth < 0:
                    self.escapes.append(node.lineno)
                    break


def escapes_in(source: str, relative_path: str) -> list[int]:
    """Lines of `source` (a module at `relative_path` in the repository) that reach above the root."""
    visitor = _PathLevels(file_depth=len(Path(relative_path).parts))
    visitor.visit(ast.parse(source))
    return sorted(set(visitor.escapes))


def project_modules() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (REPO / folder).rglob("*.py"))


def test_no_test_benchmark_or_module_reads_a_path_outside_the_checkout() -> None:
    found = {
        str(path.relative_to(REPO)): lines
        for path in project_modules()
        if (lines := escapes_in(path.read_text(), str(path.relative_to(REPO))))
    }
    assert found == {}, f"paths above the repository root (file: lines): {found}"


@pytest.mark.parametrize(
    ("source", "relative_path"),
    [
        # The three shapes the bare-clone bug had (tests/test_drift.py, conftest.py, bench/freeform.py).
        ('SEED = Path(__file__).resolve().parents[2] / "sibling" / "data"', "tests/test_drift.py"),
        ('REPO = Path(__file__).resolve().parents[1]\nDATA = REPO.parent / "sibling"', "tests/conftest.py"),
        ('ROOT = Path(__file__).resolve().parent.parent\nS = ROOT.parent / "sibling"', "bench/freeform.py"),
        ('DATA = Path(__file__).parent / "../../sibling/data"', "tests/x.py"),
        ('DEFAULT = "../../sibling/data/seed_tasks.jsonl"', "bench/policies.py"),
    ],
)
def test_the_check_finds_a_path_that_climbs_out(source: str, relative_path: str) -> None:
    assert escapes_in(source, relative_path) != []


def test_the_check_accepts_paths_inside_the_checkout() -> None:
    inside = (
        'ROOT = Path(__file__).resolve().parents[1]\nDATA = ROOT / "bench" / "data"\n'
        'HERE = Path(__file__).parent / "../bench/data"\nCOMPOSE = "../grafana/dashboards"\n'
    )
    assert escapes_in(inside, "tests/test_x.py") == []
