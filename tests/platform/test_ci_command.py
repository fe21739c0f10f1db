"""CI runs the README's test command, and that command fails on failures and on no tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_test_command(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MEDGRAPH_"))}
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "test"), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ci_runs_the_readme_test_command() -> None:
    ci_script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci_script
    readme = (REPO_ROOT / "README.md").read_text()
    assert "./scripts/test" in readme and "./scripts/demo" in readme


def test_a_failing_test_fails_the_command(tmp_path: Path) -> None:
    failing = tmp_path / "test_failing.py"
    failing.write_text("def test_fails():\n    assert 1 + 1 == 3\n")
    result = run_test_command(str(failing), "-p", "no:cacheprovider")
    assert result.returncode != 0
    assert "1 failed" in result.stdout


def test_no_tests_collected_fails_the_command() -> None:
    result = run_test_command("tests/platform/test_docker_compose.py", "-k", "no_such_test_zz")
    assert result.returncode != 0
    assert "collected no tests" in result.stderr
