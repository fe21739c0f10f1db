"""One direction of dependency (issue 14): the import contracts, no cycles, imports at the top.

- The import-linter contracts of pyproject.toml (``[tool.importlinter]``) hold: services never
  import workers, and the layers inside services (cli, demo, api, dashboard, then retrieval /
  ingest / communities / auth, runtime, encoder / graph / jobs / privacy, secrets, config).
- No import cycle among the modules of services and workers.
- No function-level import of a project module, unless a ``# defers <module>`` comment names the
  heavy third-party module it keeps out of start-up, and the imported module really imports it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

from services.config import REPO_ROOT

PROJECT_PACKAGES = ("services", "workers", "bench", "tests")
SCANNED = ("services", "workers", "bench", "tests")
DEFERS = re.compile(r"#.*\bdefers (\w+)")


# --- import-linter -----------------------------------------------------------------------------
def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree at ``root`` (its pyproject.toml, its packages first)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", command, "--no-cache", "--no-logo"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_import_contracts_hold() -> None:
    result = lint_imports(REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "services never import workers KEPT" in output
    assert "layers inside services KEPT" in output
    assert "0 broken" in output


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("services/graph/cypher.py", "import workers.celery_app", "services never import workers"),
        ("services/config.py", "import services.api.app", "layers inside services"),
        ("services/encoder/labels.py", "import services.ingest.submit", "layers inside services"),
    ],
)
def test_contracts_catch_a_forbidden_import(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    """The same contracts on a copy of the tree with one wrong import added must fail."""
    for part in ("services", "workers"):
        shutil.copytree(REPO_ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("static"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{broken} BROKEN" in output


# --- cycles ------------------------------------------------------------------------------------
def import_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One chain per direct import that the imported module leads back from."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append((importer, *back))
    return cycles


def test_no_import_cycles_among_project_modules() -> None:
    graph = grimp.build_graph("services", "workers", cache_dir=None)
    assert str(REPO_ROOT) in str(Path(sys.modules["services"].__file__ or "").resolve())
    assert len(graph.modules) > 50
    assert import_cycles(graph) == []


def test_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclepkg import b\n")
    (package / "b.py").write_text("def f() -> None:\n    from cyclepkg import a\n")
    (package / "c.py").write_text("from cyclepkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles = import_cycles(grimp.build_graph("cyclepkg", cache_dir=None))
    assert ("cyclepkg.a", "cyclepkg.b", "cyclepkg.a") in cycles
    assert all("cyclepkg.c" not in cycle for cycle in cycles)


# --- imports at the top ------------------------------------------------------------------------
def _project_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level or not node.module:
            return []
        names = [node.module]
    else:
        names = [alias.name for alias in node.names]
    return [name for name in names if name.split(".")[0] in PROJECT_PACKAGES]


def _deferral_comment(lines: list[str], node: ast.stmt) -> str | None:
    """The ``# defers X`` comment on the import's lines or in the run of comments and imports
    right above it (one comment may cover a group of imports)."""
    for line in lines[node.lineno - 1 : node.end_lineno]:
        if match := DEFERS.search(line):
            return match.group(1)
    index = node.lineno - 2
    while index >= 0:
        text = lines[index].strip()
        if match := DEFERS.search(text):
            return match.group(1)
        if not (text.startswith(("#", "from ", "import ", ")")) or text.endswith(",")):
            return None
        index -= 1
    return None


def _top_level_imports(module: str, root: Path, seen: set[str] | None = None) -> set[str]:
    """Top-level package names loaded when the module is imported: those it imports at its top,
    and, through the project modules among them, theirs (a module that imports torch through
    ``services.encoder.training`` defers torch as truly as one that imports it directly)."""
    seen = set() if seen is None else seen
    if module in seen:
        return set()
    seen.add(module)
    base = root / Path(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.is_file():
        return set()
    roots = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            roots.add(name.split(".")[0])
            if name.split(".")[0] in PROJECT_PACKAGES:
                roots |= _top_level_imports(name, root, seen)
    return roots


def function_level_imports(path: Path, root: Path) -> list[str]:
    """Problems: function-level imports of project modules without a true deferral comment."""
    source = path.read_text()
    lines = source.splitlines()
    problems = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for module in _project_modules(node):
                where = f"{path.relative_to(root)}:{node.lineno} imports {module} in a function"
                deferred = _deferral_comment(lines, node)
                if deferred is None:
                    problems.append(where)
                elif deferred in PROJECT_PACKAGES or deferred not in _top_level_imports(
                    module, root
                ):
                    problems.append(f"{where}, but {module} does not import {deferred} at its top")
    return sorted(set(problems))


def test_project_modules_are_imported_at_module_top() -> None:
    files = sorted(path for part in SCANNED for path in (REPO_ROOT / part).rglob("*.py"))
    assert len(files) > 100
    problems = [problem for path in files for problem in function_level_imports(path, REPO_ROOT)]
    assert problems == []


def test_import_check_flags_undocumented_and_false_deferrals(tmp_path: Path) -> None:
    (tmp_path / "services" / "heavy").mkdir(parents=True)
    (tmp_path / "services" / "heavy" / "model.py").write_text("import torch\n")
    (tmp_path / "services" / "light.py").write_text("import json\n")
    (tmp_path / "services" / "wrapper.py").write_text("from services.heavy.model import Net\n")
    sample = tmp_path / "services" / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            import json

            from services import light


            def hidden() -> None:
                from services.light import thing


            def documented() -> None:
                # defers torch: start-up stays quick
                from services.heavy.model import Net
                from services.heavy.model import Other


            def untrue() -> None:
                from services.light import thing  # defers torch


            def third_party_only() -> None:
                import numpy


            def through_a_project_module() -> None:
                # defers torch: services.wrapper imports services.heavy.model at its top
                from services.wrapper import run
            """
        )
    )
    problems = function_level_imports(sample, tmp_path)
    assert len(problems) == 2, problems
    assert "services/sample.py:8 imports services.light in a function" in problems
    assert any(
        problem.startswith("services/sample.py:18") and "does not import torch" in problem
        for problem in problems
    ), problems


# --- the README's folder table -----------------------------------------------------------------
def test_readme_folder_table_names_every_part_of_services_and_workers() -> None:
    """Each module and package of services/ and workers/ is named in its row of the README's
    folder table, and everything named there exists."""
    readme = (REPO_ROOT / "README.md").read_text()
    for folder in ("services", "workers"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{folder}/` |"))
        named = {
            name.rstrip("/").split("/")[-1]
            for name in re.findall(r"`([\w/]+(?:\.py)?/?)`", row.split("|")[2])
            if not name.startswith("-")
        }
        parts = {
            path.name
            for path in (REPO_ROOT / folder).iterdir()
            if (path.suffix == ".py" or (path / "__init__.py").is_file())
            and not path.name.startswith("_")
        }
        assert parts - named == set(), f"{folder}/ parts missing from the README's table"
        existing = {
            path.name for path in (REPO_ROOT / folder).rglob("*") if "static" not in path.parts
        }
        unknown = {name for name in named if name.endswith(".py") and name not in existing}
        assert unknown == set(), f"the README names {unknown} under {folder}/, which do not exist"
