"""Cypher kept as resource files in ``cypher/``, one concern per file, loaded by name.

Values always go in as parameters; no code builds Cypher from user input.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from services.config import REPO_ROOT

CYPHER_DIR = REPO_ROOT / "cypher"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class UnknownCypher(KeyError):
    pass


def cypher_path(name: str) -> Path:
    if not _NAME.match(name):
        raise UnknownCypher(f"invalid Cypher file name {name!r}")
    path = CYPHER_DIR / f"{name}.cypher"
    if not path.exists():
        raise UnknownCypher(f"no Cypher file {path}")
    return path


@cache
def load_cypher(name: str) -> str:
    """The text of ``cypher/<name>.cypher`` (a single statement)."""
    return _strip_comments(cypher_path(name).read_text()).strip().rstrip(";")


@cache
def load_cypher_statements(name: str) -> tuple[str, ...]:
    """The statements of a multi-statement file, split on ';' at line ends."""
    text = _strip_comments(cypher_path(name).read_text())
    return tuple(part.strip() for part in re.split(r";\s*\n", text + "\n") if part.strip())


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
